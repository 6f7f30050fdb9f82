"""The procedural dSprites renderer against real dSprites pixels: the 320 frames of the dSprites repository's GIF.

The GIF (``dsprites.gif`` of https://github.com/deepmind/dsprites-dataset, frames of the official images) is read
from ``AMR_DSPRITES_GIF``, else from ``DEFAULT_GIF`` (``DIR/dsprites.gif``, outside the repository); the tests that
need it are skipped without it. The frames sweep one factor at a time: for each shape in turn (heart, ellipse,
square) the scale from 0.5 to 1 and back, the orientation once round, (the heart) the position round the border of
its range, and the scale back to 0.5. ``infer_cells`` reads every frame's grid cell off the frames alone (not off
the renderer), so the rendering of those cells can be compared with the real pixels.
"""

import os
from pathlib import Path

import numpy as np
import pytest

from amr_keras import dsprites

GIF_ENV = "AMR_DSPRITES_GIF"
DEFAULT_GIF = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsprites_gif" / "dsprites.gif"
# Real areas (white pixels) and boxes (columns x rows) at orientation 0, position (0, 0), measured on the frames:
# {(shape, scale class): (area, width, height)}.
REAL_CORNERS = {(0, 0): (100, 10, 10), (0, 5): (400, 20, 20), (1, 0): (76, 12, 8), (1, 5): (288, 26, 14),
                (2, 0): (58, 10, 9), (2, 5): (222, 20, 17)}
# A position step moves the sprite 32 / 31 pixels; an orientation step moves the heart's centroid about 0.3.
POSITION_STEP = 0.6


def gif_path():
    return Path(os.environ.get(GIF_ENV) or DEFAULT_GIF)


@pytest.fixture(scope="module")
def frames():
    path = gif_path()
    if not path.is_file():
        pytest.skip(f"no real dSprites frames: {path} is absent (set {GIF_ENV} to the dSprites repository's "
                    "dsprites.gif)")
    from PIL import Image, ImageSequence

    with Image.open(path) as gif:
        return np.stack([np.asarray(f.convert("L")) > 127 for f in ImageSequence.Iterator(gif)]).astype(np.uint8)


def _shape_of(image):
    """0 square, 1 ellipse, 2 heart: the heart alone is not symmetric under a half turn, the ellipse alone is long."""
    rows, cols = np.nonzero(image)
    box = image[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    if (box != box[::-1, ::-1]).sum() > 0.1 * box.sum():
        return 2
    small, large = np.linalg.eigvalsh(np.cov(np.stack([rows, cols]).astype(np.float64)))
    return 1 if large > 1.8 * small else 0


def infer_cells(frames):
    """The grid cell ``(shape, scale, orientation, x, y)`` classes of each frame, ``(N, 5)``, from the frames alone.

    Shape: ``_shape_of``. Scale: the grid value nearest ``sqrt(area / area at scale 1)`` (the real areas at scale
    1, ``REAL_CORNERS``). Orientation and position, from frame to frame: each shape's first frame is upright at
    position (0, 0); a frame of the same shape and scale whose pixels changed either moved (its centroid by more
    than ``POSITION_STEP`` pixels: one position step, in the direction it moved, along that image axis) or turned
    (the next orientation: the sweep is taken to run upwards, like the scale and position sweeps). The first image
    axis a position step moves along is the ``x`` factor's, since the frames sweep the factors in the dataset's
    order (scale, orientation, x, y); the other axis is ``y``'s.

    Returns:
        ``(cells, x_axis)``: the classes, and the image axis (0 rows, 1 columns) that ``x`` moves along.
    """
    cells = np.zeros((len(frames), 5), np.int64)
    x_axis = None
    for i, image in enumerate(frames):
        rows, cols = np.nonzero(image)
        shape = _shape_of(image)
        scale = np.sqrt(image.sum() / REAL_CORNERS[shape, 5][0])
        scale = int(np.clip(np.rint((scale - 0.5) / 0.1), 0, dsprites.FACTOR_SIZES[1] - 1))
        cell = np.array([shape, scale, 0, 0, 0])
        if i and shape == cells[i - 1, 0]:
            cell[2:] = cells[i - 1, 2:]
            if scale == cells[i - 1, 1] and (image != frames[i - 1]).any():
                before = np.argwhere(frames[i - 1]).mean(0)
                move = np.array([rows.mean(), cols.mean()]) - before
                if np.abs(move).max() > POSITION_STEP:
                    axis = int(np.argmax(np.abs(move)))
                    x_axis = axis if x_axis is None else x_axis
                    cell[3 if axis == x_axis else 4] += int(np.sign(move[axis]))
                else:
                    cell[2] += 1
        cells[i] = cell
    return cells, x_axis


def iou(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return (a & b).sum((1, 2)) / (a | b).sum((1, 2))


def test_frames_are_read_as_the_documented_sweep(frames):
    cells, x_axis = infer_cells(frames)
    assert len(frames) == 320 and set(np.unique(frames)) == {0, 1}
    # Heart, ellipse, square in turn, each once round the orientations and through every scale.
    starts = np.flatnonzero(np.diff(cells[:, 0])) + 1
    np.testing.assert_array_equal(cells[np.r_[0, starts], 0], [2, 1, 0])
    for shape in range(3):
        own = cells[cells[:, 0] == shape]
        assert set(own[:, 1]) == set(range(6)) and set(own[:, 2]) == set(range(40))
    assert cells[:, 3:].min() == 0 and cells[:, 3:].max() == 31
    # The position factor swept first, x, moves the sprite down the rows (y along the columns): 32 / 31 pixels a
    # step, from a centre at 16 to one at 48.
    assert x_axis == 0
    heart = (cells[:, 0] == 2) & (cells[:, 1] == 5) & (cells[:, 2] == 39)
    centroids = np.array([np.argwhere(f).mean(0) for f in frames[heart]])
    for axis, factor in ((0, 3), (1, 4)):
        slope = np.polyfit(cells[heart, factor], centroids[:, axis], 1)[0]
        assert slope == pytest.approx(32 / 31, abs=0.01)
    # Orientation turns counter-clockwise on screen: a quarter turn on, the heart's lobes (its heavy end) point left.
    # (Centroids relative to the sprite's centre, at 16, 16: pixel i's centre is at i + 0.5.)
    upright, quarter = (np.argwhere(frames[(cells[:, 0] == 2) & (cells[:, 1] == 5) & (cells[:, 2] == c)][0]).mean(0)
                        + 0.5 - 16 for c in (0, 10))
    assert upright[0] < -1 and abs(upright[1]) < 0.1
    assert quarter[1] < -1 and abs(quarter[0]) < 0.5


def test_rendering_matches_the_real_frames(frames):
    cells, _ = infer_cells(frames)
    overlap = iou(dsprites.render(cells), frames)
    worst = int(np.argmin(overlap))
    report = (f"IoU over the {len(frames)} real frames: mean {overlap.mean():.4f}, worst {overlap.min():.4f} "
              f"(frame {worst}, cell {cells[worst].tolist()}); by shape (square, ellipse, heart): "
              + ", ".join(f"{overlap[cells[:, 0] == k].mean():.4f}" for k in range(3)))
    print(report)
    assert overlap.mean() >= 0.9, report
    assert overlap.min() >= 0.8, report


@pytest.mark.parametrize("corner", sorted(REAL_CORNERS))
def test_areas_and_boxes_at_the_measured_scales(frames, corner):
    cells, _ = infer_cells(frames)
    shape, scale = corner
    real = frames[np.flatnonzero((cells[:, 0] == shape) & (cells[:, 1] == scale) & (cells[:, 2] == 0)
                                 & (cells[:, 3] == 0) & (cells[:, 4] == 0))[0]]
    ours = dsprites.render([[shape, scale, 0, 0, 0]])[0]

    def measure(image):
        rows, cols = np.nonzero(image)
        return int(image.sum()), int(np.ptp(cols)) + 1, int(np.ptp(rows)) + 1

    assert measure(real) == REAL_CORNERS[corner]
    area, width, height = measure(ours)
    assert abs(area - REAL_CORNERS[corner][0]) <= 3, (measure(ours), REAL_CORNERS[corner])
    assert (width, height) == REAL_CORNERS[corner][1:]


def test_adjacent_values_of_every_factor_render_different_pixels():
    """A step of any one factor changes the image: 2,000 random cells per factor, and the hardest cells.

    The hardest: the smallest square at orientations 175.4 and 184.6 degrees (classes 19 and 20, mirror images of
    each other) at the positions where the pixel grid is nearly mirror-symmetric about the centre. Orientation
    classes 0 and 39 (0 and 2 pi) coincide by definition and are not adjacent.
    """
    rng = np.random.default_rng(0)
    sizes = np.array(dsprites.FACTOR_SIZES)
    edge = np.array([[0, 0, 19, x, y] for x in (0, 1, 30, 31) for y in (0, 1, 30, 31)])
    for factor, name in enumerate(dsprites.FACTOR_NAMES):
        cells = np.stack([rng.integers(0, size, 2000) for size in sizes], axis=1)
        cells[:, factor] = rng.integers(0, sizes[factor] - 1, 2000)
        if name == "orientation":
            cells = np.concatenate([cells, edge])
        step = cells.copy()
        step[:, factor] += 1
        same = (dsprites.render(cells) == dsprites.render(step)).all(axis=(1, 2))
        assert not same.any(), f"{name}: {same.sum()} of {len(cells)} steps render the same pixels, e.g. " \
                               f"{cells[same][:3].tolist()}"


def test_the_window_holds_every_shape(monkeypatch):
    """Rendering only a WINDOW x WINDOW patch around the centre loses nothing (largest sprites, all orientations)."""
    cells = np.array([[shape, 5, orientation, x, y] for shape in range(3) for orientation in range(0, 40, 3)
                      for x, y in ((0, 0), (31, 31), (15, 16), (30, 1))])
    patch = dsprites.render(cells)
    monkeypatch.setattr(dsprites, "REACH", 24)
    monkeypatch.setattr(dsprites, "WINDOW", 64)
    np.testing.assert_array_equal(dsprites.render(cells), patch)

"""dSprites (Matthey et al., 2017): its factor grid, a procedural renderer, and the official files.

dSprites is every combination of five factors, 737,280 binary 64x64 images:

| factor | values |
|---|---|
| shape | square, ellipse, heart (classes 0, 1, 2) |
| scale | 6 values, 0.5 to 1 |
| orientation | 40 values, 0 to 2 pi (both ends included, as in the official file) |
| x, y | 32 values each, 0 to 1 (x moves the sprite down the rows, y along the columns) |

Image ``i`` of the official file is the grid cell ``np.unravel_index(i, FACTOR_SIZES)`` (row-major, shape
slowest, y fastest); ``index_of`` and ``classes_of`` convert.

Two datasets of ``amr_keras.data`` read it:

- ``dsprites``: the official pixels, from ``--data-dir`` holding ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``
  (keys ``imgs``, ``latents_classes``, ``latents_values``), else tensorflow-datasets ``dsprites``. Either holds
  the whole grid in memory (about 3 GB of uint8).
- ``dsprites_procedural``: the same factor grid rendered by ``render`` (numpy only, deterministic), any cell on
  demand. It is a re-rendering, not the official pixels. Its geometry (centres, sizes, the heart's outline, which
  image axis each position factor moves along, the direction of rotation) was fitted to the 320 frames of real
  dSprites pixels of the dSprites repository's ``dsprites.gif`` (``tests/test_dsprites_real.py`` reads it from
  ``AMR_DSPRITES_GIF``, else ``DIR/dsprites.gif``): rendered at the grid cells inferred from the frames, it matches
  them with intersection over union 0.997 on average and 0.957 at worst, and the areas of the three shapes at
  scales 0.5 and 1 (orientation 0) exactly. The frames hold 273 of the 737,280 cells (each shape at every scale
  at orientation 0 and at every orientation at scale 1; the heart also at the positions around the border of the
  position range), so the rest of the grid follows from the fitted geometry, unchecked against the official
  pixels: numbers on it are not numbers on dSprites.

Both give the same fixed draw of grid cells for training (``SPLIT_SIZES``: 60,000 / 5,000 / 5,000, a permutation
of the grid seeded by ``amr_keras.sources.SPLIT_SEED``), as uint8 images of 0 and 255 (scaled to [-1, 1] by
``amr_keras.data.preprocess``, which keeps their 64x64 size). The class label (for the linear probe and the
post-hoc evaluation) is the shape factor: 0 square, 1 ellipse, 2 heart. The disentanglement metric
(``amr_keras.disentanglement``) renders or looks up images of any factor combination through a ``FactorSource``.

Reference:
    L. Matthey, I. Higgins, D. Hassabis, A. Lerchner. dSprites: Disentanglement testing Sprites dataset, 2017.
    https://github.com/deepmind/dsprites-dataset
"""

import os
import zlib

import numpy as np

from amr_keras.attributes import DSPRITES_GROUPS, dsprites_attributes
from amr_keras import sources
from amr_keras.sources import DataError

FACTOR_NAMES = ("shape", "scale", "orientation", "x", "y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")
NUM_IMAGES = int(np.prod(FACTOR_SIZES))  # 737,280
IMAGE_SHAPE = (64, 64, 1)
NPZ_NAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
# Cells of the grid drawn for training, validation and test (disjoint; the rest of the grid is not loaded).
SPLIT_SIZES = {"train": 60000, "val": 5000, "test": 5000}
# The official file's latents also hold colour (one value) before shape: its column 0.
_OFFICIAL_COLUMNS = slice(1, 6)

# Geometry of the procedural renderer, in pixels of the 64x64 image: pixel (i, j) covers rows [i, i + 1] and
# columns [j, j + 1], and is on when its centre lies inside the shape. The shape's centre is at row 16 + 32 x and
# column 16 + 32 y (CENTRE_FIRST + CENTRE_SPAN * value: one grid step is 32 / 31 pixels); at scale 1 the square's
# half side is SQUARE_HALF, the ellipse's semi-axes ELLIPSE_AXES (along the columns and along the rows at
# orientation 0: the ellipse lies flat), the heart's outline HEART_RADII; all of it scales with the scale factor
# about the centre, and orientation turns it counter-clockwise on screen. Fitted to the real frames (module
# docstring), whose position sweep moves the sprite down the rows first and then along the columns: the frames sweep
# the factors in the dataset's order (scale, orientation, then position), so that first position factor is x
# (posX), and their orientation sweep, like the scale and position sweeps, is taken to run upwards. The square's best
# fit is a half side of 9.6 (mean IoU 0.9997 on its 64 frames); 9.52 (0.992) is used instead because with any half
# side from 9.532 up the smallest square at orientations 175.4 and 184.6 degrees (mirror images of each other)
# renders the same pixels at the positions where the pixel grid is mirror-symmetric about the centre.
# The renderer's version, recorded by every run on dsprites_procedural (version 1: the first, uncalibrated one).
RENDERER_VERSION = 2
SIZE = IMAGE_SHAPE[0]
CENTRE_FIRST = 16.0
CENTRE_SPAN = 32.0
SQUARE_HALF = 9.52
ELLIPSE_AXES = (12.75, 7.25)
# The heart (lobes up at orientation 0, mirror-symmetric) as the distance of its outline from its centre along a
# ray at angle a from straight up (a = 0: the notch between the lobes; a = 180 degrees: the tip), at
# a = 0, 7.5, ..., 180 degrees, linear in between, at scale 1: fitted to the real heart's pixels (mean IoU 0.998
# on its 192 frames).
HEART_ANGLES = np.linspace(0.0, np.pi, 25)
HEART_RADII = np.array([5.22, 7.36, 8.93, 10.02, 10.74, 11.14, 11.28, 11.22, 10.89, 10.42, 9.72, 8.91, 8.12,
                        7.41, 6.86, 6.46, 6.17, 5.97, 5.9, 5.94, 5.87, 6.39, 6.82, 7.66, 9.06])
# HEART_RADII squared, looked up by pseudo-angle (see _heart) in 4,097 steps: no arctangent per pixel.
_PSEUDO = np.linspace(-1.0, 1.0, 4097)
_HEART_R2 = (np.interp(np.arctan2(1 - np.abs(_PSEUDO), -_PSEUDO), HEART_ANGLES, HEART_RADII) ** 2).astype(np.float32)
# Every shape lies within 13.5 pixels of its centre (the square's corner, 9.52 * sqrt(2); the ellipse reaches 12.75,
# the heart 11.3): only the WINDOW x WINDOW patch of pixels from REACH before to REACH after the centre's pixel, in
# rows and in columns, is computed.
REACH = 14
WINDOW = 2 * REACH + 1


def factor_values(classes):
    """Factor values of grid cells: ``(N, 5)`` classes -> ``(N, 5)`` float values.

    Shape keeps its class (0, 1, 2); scale ``0.5 + 0.1 * c``; orientation ``2 pi c / 39``; x and y ``c / 31``.
    """
    c = np.asarray(classes, np.float64).reshape(-1, 5)
    sizes = np.asarray(FACTOR_SIZES, np.float64)
    values = c.copy()
    values[:, 1] = 0.5 + 0.5 * c[:, 1] / (sizes[1] - 1)
    values[:, 2] = 2 * np.pi * c[:, 2] / (sizes[2] - 1)
    values[:, 3:] = c[:, 3:] / (sizes[3:] - 1)
    return values


def index_of(classes):
    """Row of the official file of grid cells ``(N, 5)`` (row-major over ``FACTOR_SIZES``)."""
    c = np.asarray(classes, np.int64).reshape(-1, 5)
    return np.ravel_multi_index(tuple(c.T), FACTOR_SIZES)


def classes_of(index):
    """Factor classes ``(N, 5)`` of rows of the official file."""
    return np.stack(np.unravel_index(np.asarray(index, np.int64).reshape(-1), FACTOR_SIZES), axis=1)


def render_values(shape, scale, orientation, x, y):
    """Render sprites from factor *values* (arrays of one length N, or scalars): uint8 ``(N, 64, 64)`` of 0 and 1.

    A pixel is on when its centre lies inside the shape: the square ``max(|u|, |v|) <= 9.52 s``, the ellipse
    ``(u / 12.75 s)^2 + (v / 7.25 s)^2 <= 1``, the heart ``u^2 + v^2 <= (s r(a))^2`` with ``a = atan2(|u|, -v)`` and
    ``r`` its outline ``HEART_RADII`` (lobes up, tip down; looked up in 4,097 directions), where ``(u, v)`` (right,
    down) is the pixel centre's offset from the sprite's centre rotated by ``-orientation`` and ``s`` the scale.
    The centre is at row ``16 + 32 x`` and column ``16 + 32 y``, so every shape stays inside the image.

    Calibrated on the 320 frames of real dSprites pixels of the dSprites repository's ``dsprites.gif``: rendered at
    each frame's grid cell (inferred from the frames), the intersection over union of the white pixels is 0.997 on
    average and 0.957 at worst (squares 0.992 on average, worst 0.957: turned 14 degrees off its axes, 16 pixels of
    372 smaller than the real one; ellipses 0.997, worst 0.983; hearts 0.998, worst 0.991), and the areas and boxes of
    the square, ellipse and heart at scales 0.5 and 1, orientation 0 are the real ones (100 and 400, 76 and 288,
    58 and 222 pixels). Adjacent values of every factor render different pixels at every cell of the grid (checked
    over the whole grid; orientation classes 0 and 39, both the angle 0, coincide).

    Args:
        shape: 0 square, 1 ellipse, 2 heart.
        scale: size factor (0.5 to 1 on the grid).
        orientation: angle in radians (counter-clockwise on screen).
        x: position in [0, 1] down the rows (the official ``posX``).
        y: position in [0, 1] along the columns (the official ``posY``).
    """
    shape, scale, orientation, x, y = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, np.float64))
                                                           for v in (shape, scale, orientation, x, y)))
    out = np.zeros((len(shape), SIZE, SIZE), np.uint8)
    cr, cc = CENTRE_FIRST + CENTRE_SPAN * x, CENTRE_FIRST + CENTRE_SPAN * y
    top = np.clip(np.floor(cr).astype(np.int64) - REACH, 0, SIZE - WINDOW)
    left = np.clip(np.floor(cc).astype(np.int64) - REACH, 0, SIZE - WINDOW)
    # windows[i, top, left] is image i's WINDOW x WINDOW patch from (top, left): each sprite is written in one block.
    windows = np.lib.stride_tricks.sliding_window_view(out, (WINDOW, WINDOW), axis=(1, 2), writeable=True)
    local = np.arange(WINDOW)
    for kind, inside in enumerate((_square, _ellipse, _heart)):
        cells = np.flatnonzero(shape == kind)
        for start in range(0, len(cells), 4096):
            part = cells[start:start + 4096]
            # Offsets of the patch's pixel centres from the sprite's centre: rows down, columns right.
            dr = (top[part, None, None] + local[None, :, None] + 0.5 - cr[part, None, None]).astype(np.float32)
            dc = (left[part, None, None] + local[None, None, :] + 0.5 - cc[part, None, None]).astype(np.float32)
            # Screen rows grow downwards: a counter-clockwise rotation on screen is clockwise in (column, row).
            cos = np.cos(orientation[part]).astype(np.float32)[:, None, None]
            sin = np.sin(orientation[part]).astype(np.float32)[:, None, None]
            u, v = cos * dc - sin * dr, sin * dc + cos * dr
            windows[part, top[part], left[part]] = inside(u, v, scale[part].astype(np.float32)[:, None, None])
    return out


def _square(u, v, s):
    return np.maximum(np.abs(u), np.abs(v)) <= SQUARE_HALF * s


def _ellipse(u, v, s):
    return (u / (ELLIPSE_AXES[0] * s)) ** 2 + (v / (ELLIPSE_AXES[1] * s)) ** 2 <= 1.0


def _heart(u, v, s):
    # The direction's pseudo-angle p = v / (|u| + |v|) (-1 up, 1 down) picks the squared radius from _HEART_R2.
    au, av = np.abs(u), np.abs(v)
    p = v / np.maximum(au + av, np.float32(1e-12))
    r2 = _HEART_R2[((p + 1) * np.float32((len(_HEART_R2) - 1) / 2) + np.float32(0.5)).astype(np.int32)]
    return au * au + av * av <= r2 * (s * s)


def render(classes):
    """Render grid cells ``(N, 5)`` of factor classes: uint8 ``(N, 64, 64)`` of 0 and 1 (``render_values``)."""
    return render_values(*factor_values(classes).T)


class FactorSource:
    """Images of any grid cells, with the grid's factor sizes: what the disentanglement metric draws from.

    Subclasses implement ``images(classes) -> uint8 (N, 64, 64, 1)`` of 0 and 255.
    """

    factor_sizes = FACTOR_SIZES
    factor_names = FACTOR_NAMES

    def images(self, classes):
        raise NotImplementedError

    def sample_classes(self, rng, n, fixed=None, value=None):
        """``n`` random grid cells (each factor uniform), with factor ``fixed`` set to class ``value`` if given."""
        classes = np.stack([rng.integers(0, size, n) for size in self.factor_sizes], axis=1)
        if fixed is not None:
            classes[:, fixed] = value
        return classes


class ProceduralSource(FactorSource):
    """``render`` on demand: nothing is held in memory."""

    def images(self, classes):
        return (render(classes) * np.uint8(255))[..., None]


class ArraySource(FactorSource):
    """Images of the official grid (the ``.npz`` or tensorflow-datasets) looked up by their factor classes.

    Args:
        imgs: ``(N, 64, 64)`` uint8 of 0 and 1.
        classes: ``(N, 5)`` factor classes of each image (any order; the official file has the whole grid,
            737,280 images in grid order).
    """

    def __init__(self, imgs, classes):
        self.imgs = imgs
        self.cells = index_of(classes)
        self.row = np.full(NUM_IMAGES, -1, np.int64)
        self.row[self.cells] = np.arange(len(self.cells))
        self.complete = len(np.unique(self.cells)) == NUM_IMAGES

    def images(self, classes):
        rows = self.row[index_of(classes)]
        if (rows < 0).any():

            raise DataError(f"the dSprites file holds {len(self.cells):,} of the {NUM_IMAGES:,} images of the grid, "
                            "and a cell asked for is missing: use the official file (the whole grid), or "
                            "--dataset dsprites_procedural.")
        return (self.imgs[rows] * np.uint8(255)).reshape(-1, *IMAGE_SHAPE)


def split_cells(seed, available=None):
    """The grid cells of each split: ``{"train": index, "val": index, "test": index}``, disjoint, fixed by ``seed``.

    Args:
        seed: seed of the permutation.
        available: grid indices to draw from (default: the whole grid). With fewer than ``SPLIT_SIZES`` need,
            they are shared in the same proportions (12 : 1 : 1).
    """
    cells = np.arange(NUM_IMAGES) if available is None else np.unique(available)
    order = cells[np.random.default_rng(seed).permutation(len(cells))]
    total = sum(SPLIT_SIZES.values())
    shrink = min(1.0, len(cells) / total)
    out, start = {}, 0
    for split, n in SPLIT_SIZES.items():
        n = max(1, int(n * shrink))
        out[split] = np.sort(order[start:start + n])
        start += n
    return out


def read_official_npz(path):
    """Read the official ``.npz``: ``(imgs uint8 (N, 64, 64) of 0/1, classes int (N, 5))`` without colour.

    Raises:
        amr_keras.data.DataError: a file that is not the official one (missing keys, wrong shapes).
    """

    try:
        with np.load(path, allow_pickle=False, encoding="latin1") as f:
            missing = [key for key in ("imgs", "latents_classes") if key not in f.files]
            if missing:
                raise DataError(f"{path} has no {', '.join(missing)}: expected the official dSprites file "
                                f"{NPZ_NAME} (keys imgs, latents_classes, latents_values).")
            imgs, latents = f["imgs"], f["latents_classes"]
    except (OSError, ValueError, zlib.error) as e:
        raise DataError(f"{path} is not a readable .npz file ({e}); download {NPZ_NAME} again.") from e
    if imgs.ndim != 3 or imgs.shape[1:] != IMAGE_SHAPE[:2] or latents.shape != (len(imgs), 6):
        raise DataError(f"{path}: expected imgs of shape (N, 64, 64) and latents_classes of shape (N, 6), "
                        f"got {imgs.shape} and {latents.shape}.")
    return imgs.astype(np.uint8, copy=False), np.asarray(latents[:, _OFFICIAL_COLUMNS], np.int64)


def _load_tfds(tfds_data_dir):
    """The whole grid from tensorflow-datasets ``dsprites`` (its only split, ``train``)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds


    builder = tfds.builder("dsprites", data_dir=tfds_data_dir)
    if not tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json")) and not sources.network_available():
        raise DataError(f"tensorflow-datasets cannot download 'dsprites': no network, and it is not prepared in "
                        f"{builder.data_dir}. Pass --data-dir DIR with {NPZ_NAME}, or use --dataset "
                        "dsprites_procedural (rendered in code). " + sources.OFFLINE_HELP)
    keys = ("label_shape", "label_scale", "label_orientation", "label_x_position", "label_y_position")
    imgs, classes = [], []
    try:
        ds = tfds.load("dsprites", split="train", data_dir=tfds_data_dir)
        for batch in tfds.as_numpy(ds.batch(16384)):
            imgs.append(batch["image"][..., 0].astype(np.uint8))
            classes.append(np.stack([batch[k] for k in keys], axis=1))
    except Exception as e:  # download and preparation errors come in many types
        raise DataError(f"tensorflow-datasets failed to load 'dsprites' ({type(e).__name__}: {e}). "
                        f"Pass --data-dir DIR with {NPZ_NAME}, or use --dataset dsprites_procedural.") from e
    return ArraySource(np.concatenate(imgs), np.concatenate(classes))


def load_grid(data_dir=None, tfds_data_dir=None):
    """The official grid as an ``ArraySource``: the ``.npz`` in ``data_dir``, else tensorflow-datasets."""

    if data_dir is None:
        return _load_tfds(tfds_data_dir), "tensorflow-datasets"
    path = os.path.join(data_dir, NPZ_NAME)
    if not os.path.isfile(path):
        raise DataError(f"No {NPZ_NAME} in {data_dir}: download it from https://github.com/deepmind/dsprites-dataset, "
                        "or use --dataset dsprites_procedural (rendered in code, no file needed).")
    return ArraySource(*read_official_npz(path)), f"official {NPZ_NAME} in {data_dir}"


def factor_source(name, data_dir=None, tfds_data_dir=None):
    """The ``FactorSource`` of dataset ``name`` (``dsprites`` or ``dsprites_procedural``) and its description."""
    if name == "dsprites_procedural":
        return ProceduralSource(), "dSprites factor grid rendered in code (a re-rendering, not the official pixels)"
    return load_grid(data_dir, tfds_data_dir)


def load_arrays(name, data_dir=None, tfds_data_dir=None, seed=None):
    """``amr_keras.data``'s arrays of a dSprites dataset: the fixed draw of ``split_cells``.

    Returns:
        ``({"train": (images, labels), "test": (images, labels), "attributes": (DSPRITES_GROUPS, {split:
        codes})}, source)``: "train" holds the training and validation cells (``amr_keras.data`` carves
        validation out of it, ``VAL_FRACTION``), images uint8 ``(N, 64, 64, 1)`` of 0 and 255, labels the shape
        factor, the attributes the coarse factors of ``amr_keras.attributes``.
    """

    src, source = factor_source(name, data_dir, tfds_data_dir)
    partial = isinstance(src, ArraySource) and not src.complete
    cells = split_cells(sources.SPLIT_SEED if seed is None else seed, src.cells if partial else None)
    if partial:
        source += f" (only {len(src.cells):,} of the {NUM_IMAGES:,} images)"
    out, codes = {}, {}
    for split, index in (("train", np.sort(np.concatenate([cells["train"], cells["val"]]))), ("test", cells["test"])):
        classes = classes_of(index)
        out[split] = (src.images(classes), classes[:, 0].astype(np.int64))
        codes[split] = dsprites_attributes(classes)
    return {**out, "attributes": (DSPRITES_GROUPS, codes)}, source

"""Figures: fixed pixel sizes, grey vs RGB drawing, Bernoulli masks, the per-epoch callback and the script."""

import pathlib
import runpy

import numpy as np
import pytest
from matplotlib.image import imread

from amr_keras.export import Endpoints
from amr_keras.model import AMR
from amr_keras.networks import build_networks
from amr_keras.plots import (
    CAPTION_PX,
    CELL_PX,
    DEFAULT_ALPHAS,
    LEFT_PX,
    PAD_PX,
    TOP_PX,
    InterpolationCallback,
    bernoulli_masks,
    grid_pixel_size,
    interpolation_grid,
    make_figures,
    pick_pairs,
    reconstruction_grid,
)

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"


def _png(path):
    """(height, width, 3) float RGB of a PNG."""
    img = imread(path)
    return img[..., :3]


def _images(n, shape, seed=0):
    return np.random.default_rng(seed).random((n, *shape), np.float32)


def _cell(img, row, col, size):
    """What the PNG ``img`` shows in grid cell (row, col): one sample at the centre of each of the ``size`` x
    ``size`` image pixels drawn there, as a (size, size, 3) RGB array.

    Cells are placed independently of ``plots._Grid``: the titles take ``TOP_PX``, each row a caption strip and
    a cell, each column ``CELL_PX``; the image fills its cell less ``PAD_PX`` on each side.
    """
    top = TOP_PX + row * (CELL_PX + CAPTION_PX) + CAPTION_PX + PAD_PX
    left = LEFT_PX + col * CELL_PX + PAD_PX
    centres = (np.arange(size) + 0.5) * (CELL_PX - 2 * PAD_PX) / size
    return img[np.ix_((top + centres).astype(int), (left + centres).astype(int))]


def _assert_cell_shows(img, row, col, image):
    """The cell shows ``image`` ((H, W, 1) grey or (H, W, 3) RGB in [0, 1]) to within 8-bit rounding."""
    shown = _cell(img, row, col, image.shape[0])
    np.testing.assert_allclose(shown, np.broadcast_to(image, shown.shape), atol=0.02, err_msg=f"cell {row}, {col}")


@pytest.fixture(scope="module")
def rgb_endpoints():
    model = AMR(*build_networks(colors=3, depth=4, code_channels=8), num_classes=10)
    return Endpoints(model, (32, 32, 3))


def test_grid_pixel_size_formula():
    # 6 pairs, 5 alphas: 12 rows of 96 px + 30 px titles; 7 columns of 80 px + 110 px labels.
    assert grid_pixel_size(12, 7) == (670, 1182)


def test_interpolation_grid_from_export_is_grey_and_sized(loaded_export, tmp_path):
    pairs = 3
    a, b = _images(pairs, (28, 28, 1)), _images(pairs, (28, 28, 1), 1)
    path = interpolation_grid(loaded_export, a, b, tmp_path / "interp.png")
    img = _png(path)
    steps = len(DEFAULT_ALPHAS)
    assert (img.shape[1], img.shape[0]) == grid_pixel_size(2 * pairs, steps + 2) == (670, 606)
    # Grey images drawn with the grey colormap: every pixel of the figure is achromatic.
    assert np.abs(img - img.mean(axis=-1, keepdims=True)).max() < 1e-6
    # Each cell shows what it is titled, computed here from the export's encode and decode alone: x1 and x2
    # in the first and last columns, then per pair a mixup row, (1 - alpha) * f(x1) + alpha * f(x2) decoded,
    # and a Bernoulli row, whose code channels come from f(x2) where the (seeded) mask is 1.
    za, zb = np.asarray(loaded_export.encode(a)), np.asarray(loaded_export.encode(b))
    masks = bernoulli_masks(DEFAULT_ALPHAS, za.shape[-1], pairs, seed=0)
    for p in range(pairs):
        for row in (2 * p, 2 * p + 1):
            _assert_cell_shows(img, row, 0, a[p])
            _assert_cell_shows(img, row, steps + 1, b[p])
        for j, alpha in enumerate(DEFAULT_ALPHAS):
            mixup = np.asarray(loaded_export.decode((1 - alpha) * za[p:p + 1] + alpha * zb[p:p + 1]))[0]
            _assert_cell_shows(img, 2 * p, j + 1, mixup)
            bern = np.asarray(loaded_export.decode(np.where(masks[p, j] == 1, zb[p:p + 1], za[p:p + 1])))[0]
            _assert_cell_shows(img, 2 * p + 1, j + 1, bern)
    # The cells differ enough for these checks to tell them apart (alpha's direction included).
    first, last = (np.asarray(loaded_export.decode((1 - t) * za[:1] + t * zb[:1])) for t in DEFAULT_ALPHAS[::4])
    assert np.abs(first - last).max() > 0.1 and np.abs(first[0] - a[0]).max() > 0.1


def test_interpolation_grid_rgb_keeps_colour(rgb_endpoints, tmp_path):
    path = interpolation_grid(rgb_endpoints, _images(2, (32, 32, 3)), _images(2, (32, 32, 3), 1),
                              tmp_path / "rgb.png", alphas=(0.25, 0.5, 0.75))
    img = _png(path)
    assert (img.shape[1], img.shape[0]) == grid_pixel_size(4, 5)
    assert np.abs(img[..., 0] - img[..., 1]).max() > 0.3


def test_reconstruction_grid_size_and_cells(rgb_endpoints, tmp_path):
    x = _images(5, (32, 32, 3))
    path = reconstruction_grid(rgb_endpoints, x, tmp_path / "sub" / "rec.png")
    img = _png(path)
    assert (img.shape[1], img.shape[0]) == grid_pixel_size(2, 5) == (510, 222)
    # Originals above, their reconstructions (the decoded codes) below, column by column.
    rec = np.asarray(rgb_endpoints.decode(rgb_endpoints.encode(x)))
    assert np.abs(rec - x).max() > 0.1
    for i in range(5):
        _assert_cell_shows(img, 0, i, x[i])
        _assert_cell_shows(img, 1, i, rec[i])


def test_figures_refuse_uint8_range_images(rgb_endpoints, tmp_path):
    x = np.full((2, 32, 32, 3), 255, np.uint8)
    with pytest.raises(ValueError, match="divide uint8 images by 255"):
        reconstruction_grid(rgb_endpoints, x, tmp_path / "rec.png")
    with pytest.raises(ValueError, match="one shape"):
        interpolation_grid(rgb_endpoints, _images(2, (32, 32, 3)), _images(3, (32, 32, 3)), tmp_path / "i.png")


def test_bernoulli_masks_mix_both_codes_in_rounded_fractions():
    masks = bernoulli_masks(DEFAULT_ALPHAS, channels=8, pairs=4, seed=0)
    assert masks.shape == (4, 5, 8)
    np.testing.assert_array_equal(masks.sum(axis=-1), np.tile([2, 3, 4, 5, 6], (4, 1)))
    np.testing.assert_array_equal(masks, bernoulli_masks(DEFAULT_ALPHAS, 8, 4, seed=0))
    assert not np.array_equal(masks, bernoulli_masks(DEFAULT_ALPHAS, 8, 4, seed=1))
    # With 2 channels every mask still takes one from each code, never a plain reconstruction.
    two = bernoulli_masks((0.0, 0.2, 0.8, 1.0), channels=2, pairs=10, seed=0)
    assert (two.sum(axis=-1) == 1).all()
    assert 0 < two[..., 0].mean() < 1  # both channels get picked


def test_interpolation_callback_writes_one_png_per_epoch(tmp_path):
    model = AMR(*build_networks(depth=4), num_classes=10)
    a, b = _images(2, (28, 28, 1)), _images(2, (28, 28, 1), 1)
    callback = InterpolationCallback(a, b, tmp_path / "figures", alphas=(0.5,))
    callback.set_model(model)
    for epoch in range(2):
        callback.on_epoch_end(epoch, {})
    written = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert written == ["interpolations_epoch001.png", "interpolations_epoch002.png"]
    img = _png(tmp_path / "figures" / written[0])
    assert (img.shape[1], img.shape[0]) == grid_pixel_size(4, 3)


def test_pick_pairs_is_seeded_and_distinct():
    images = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1) * 10
    a, b = pick_pairs(images, 5, seed=3)
    assert a.shape == b.shape == (5, 1, 1, 1) and a.dtype == np.float32
    picked = np.concatenate([a, b]).ravel()
    assert len(set(picked.tolist())) == 10 and picked.max() <= 1.0
    np.testing.assert_array_equal(a, pick_pairs(images, 5, seed=3)[0])
    with pytest.raises(ValueError, match="need 22 images"):
        pick_pairs(images, 11)


def test_interpolate_script_draws_embedded_mnist(tiny_export, tmp_path, capsys):
    # The export's metadata names mnist_sample, which ships with the package.
    main = runpy.run_path(str(SCRIPTS / "interpolate.py"), run_name="interpolate_script")["main"]
    main([str(tiny_export.path), "--pairs", "2", "--out", str(tmp_path)])
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"Wrote {tmp_path / 'interpolations.png'}", f"Wrote {tmp_path / 'reconstructions.png'}"]
    # The pairs are test images of the dataset, picked with the default seed.
    from amr_keras.data import load_arrays

    a, b = pick_pairs(load_arrays("mnist_sample")[0]["test"][0], 2, seed=0)
    img = _png(tmp_path / "interpolations.png")
    assert (img.shape[1], img.shape[0]) == grid_pixel_size(4, len(DEFAULT_ALPHAS) + 2)
    for p in range(2):
        _assert_cell_shows(img, 2 * p, 0, a[p])
        _assert_cell_shows(img, 2 * p + 1, len(DEFAULT_ALPHAS) + 1, b[p])
    img = _png(tmp_path / "reconstructions.png")
    assert (img.shape[1], img.shape[0]) == grid_pixel_size(2, 4)
    for i, original in enumerate(np.concatenate([a, b])):
        _assert_cell_shows(img, 0, i, original)


def test_make_figures_refuses_a_dataset_of_another_shape(tiny_export, tmp_path, monkeypatch):
    import amr_keras.data

    rgb = {"test": (np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.int64))}
    monkeypatch.setattr(amr_keras.data, "load_arrays", lambda name, data_dir=None: (rgb, "fake"))
    with pytest.raises(ValueError, match=r"export takes \(28, 28, 1\) images but 'svhn' has \(32, 32, 3\)"):
        make_figures(tiny_export.path, dataset="svhn", out=tmp_path)

"""dSprites: the procedural renderer against the factor definitions, the official .npz format, the data flow."""

import numpy as np
import pytest

from amr_keras import data, dsprites, sources


def _centroid(image):
    rows, cols = np.nonzero(image)
    return cols.mean(), rows.mean()


def _one(shape, scale=1.0, orientation=0.0, x=0.5, y=0.5):
    return dsprites.render_values(shape, scale, orientation, x, y)[0].astype(np.int64)


def test_grid_index_round_trip_and_factor_values():
    index = np.array([0, 1, 32, 12345, dsprites.NUM_IMAGES - 1])
    classes = dsprites.classes_of(index)
    np.testing.assert_array_equal(dsprites.index_of(classes), index)
    np.testing.assert_array_equal(classes[-1], np.array(dsprites.FACTOR_SIZES) - 1)
    values = dsprites.factor_values(classes[-1:])[0]
    np.testing.assert_allclose(values, [2, 1.0, 2 * np.pi, 1.0, 1.0])
    assert dsprites.factor_values([[0, 0, 0, 0, 0]])[0, 1] == 0.5


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_centre_moves_with_x_and_y(shape):
    col0, row0 = _centroid(_one(shape, x=0.0, y=0.0))
    col1, row1 = _centroid(_one(shape, x=1.0, y=0.0))
    col2, row2 = _centroid(_one(shape, x=0.0, y=1.0))
    # As in dSprites, the centre runs 32 pixels (16 to 48) from x = 0 to x = 1 down the rows and likewise from
    # y = 0 to y = 1 along the columns; the other stays put.
    assert row1 - row0 == pytest.approx(32, abs=0.6) and col1 == pytest.approx(col0, abs=0.6)
    assert col2 - col0 == pytest.approx(32, abs=0.6) and row2 == pytest.approx(row0, abs=0.6)
    if shape < 2:  # centrally symmetric: the centroid is the centre (pixel i's centre is at i + 0.5)
        assert (col0 + 0.5, row0 + 0.5, row1 + 0.5) == pytest.approx((16, 16, 48), abs=0.05)


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_area_scales_with_scale_squared(shape):
    big, small = _one(shape, scale=1.0).sum(), _one(shape, scale=0.5).sum()
    # Pixel counts of the smallest sprites (about 40 pixels) are a few pixels off the continuous area.
    assert small / big == pytest.approx(0.25, rel=0.12)
    if shape == 0:
        assert big == 20 * 20 and small == 10 * 10  # half side 9.52 at scale 1, as dSprites' 20 x 20 pixels
    if shape == 1:
        assert big == pytest.approx(np.pi * dsprites.ELLIPSE_AXES[0] * dsprites.ELLIPSE_AXES[1], rel=0.05)


@pytest.mark.parametrize("shape", [1, 2])
def test_orientation_rotates_the_ellipse_and_the_heart(shape):
    upright = _one(shape, orientation=0.0)
    quarter = _one(shape, orientation=np.pi / 2)
    # A quarter turn about the centre (32, 32 for x = y = 0.5, a pixel corner) is a rotation of the pixel grid.
    np.testing.assert_array_equal(np.rot90(upright), quarter)
    assert (upright != quarter).sum() > 0.2 * upright.sum()
    # Area is kept under any rotation.
    assert _one(shape, orientation=0.7).sum() == pytest.approx(upright.sum(), rel=0.05)


def test_square_has_four_fold_symmetry_and_the_heart_none():
    for angle in (0.3, 1.1):
        square = _one(0, orientation=angle)
        assert (square != _one(0, orientation=angle + np.pi / 2)).sum() <= 2
    heart = _one(2, orientation=0.0)
    assert (heart != _one(2, orientation=np.pi)).sum() > 0.2 * heart.sum()
    # The ellipse has two-fold symmetry.
    ellipse = _one(1, orientation=0.4)
    assert (ellipse != _one(1, orientation=0.4 + np.pi)).sum() <= 2


def test_render_is_deterministic_binary_and_stays_inside():
    classes = dsprites.classes_of(np.arange(0, dsprites.NUM_IMAGES, 997))
    a, b = dsprites.render(classes), dsprites.render(classes)
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {0, 1}
    # Every sprite is drawn whole: the corners of the largest at the far positions are inside the image.
    assert a.reshape(len(a), -1).sum(1).min() > 0
    corner = dsprites.render([[0, 5, 0, 31, 31]])[0]
    assert corner[57, 57] == 1 and corner[58:].sum() == 0 and corner[:, 58:].sum() == 0 and corner.sum() == 400


def write_official_npz(path, classes, imgs=None):
    """A small file in the official format (colour column first, images 0/1)."""
    classes = np.asarray(classes, np.int64)
    imgs = dsprites.render(classes) if imgs is None else imgs
    latents = np.concatenate([np.zeros((len(classes), 1), np.int64), classes], axis=1)
    values = np.concatenate([np.ones((len(classes), 1)), dsprites.factor_values(classes)], axis=1)
    np.savez_compressed(path, imgs=imgs, latents_classes=latents, latents_values=values)
    return path


def test_official_npz_is_read_and_checked(tmp_path):
    classes = dsprites.classes_of(np.array([5, 70000, 3]))
    path = write_official_npz(str(tmp_path / dsprites.NPZ_NAME), classes)
    imgs, got = dsprites.read_official_npz(path)
    np.testing.assert_array_equal(got, classes)
    assert imgs.shape == (3, 64, 64) and imgs.dtype == np.uint8
    np.savez(str(tmp_path / "bad.npz"), imgs=imgs)
    with pytest.raises(data.DataError, match="no latents_classes"):
        dsprites.read_official_npz(str(tmp_path / "bad.npz"))
    with pytest.raises(data.DataError, match="dsprites_procedural"):
        dsprites.load_grid(str(tmp_path / "nowhere"))


def test_array_source_looks_up_grid_cells_and_names_missing_ones(tmp_path):
    index = np.array([9, 2, 40000, 7])
    imgs = np.zeros((4, 64, 64), np.uint8)
    imgs[:, 0, 0] = [1, 0, 1, 1]
    source = dsprites.ArraySource(imgs, dsprites.classes_of(index))
    assert not source.complete
    out = source.images(dsprites.classes_of(np.array([2, 9, 40000])))
    assert out.shape == (3, 64, 64, 1)
    np.testing.assert_array_equal(out[:, 0, 0, 0], [0, 255, 255])
    with pytest.raises(data.DataError, match="holds 4 of the 737,280"):
        source.images(dsprites.classes_of(np.array([3])))


def test_offline_npz_flows_through_load_dataset(tmp_path):
    index = np.random.default_rng(1).choice(dsprites.NUM_IMAGES, 280, replace=False)
    write_official_npz(str(tmp_path / dsprites.NPZ_NAME), dsprites.classes_of(index))
    splits = data.load_dataset("dsprites", data_dir=str(tmp_path), batch_size=8)
    info = splits.info
    assert info.num_train + info.num_val + info.num_test == 280 and info.num_test == 20
    assert "only 280 of the 737,280" in info.source
    x, y = next(iter(splits.train))
    assert x.shape == (8, 64, 64, 1) and set(np.unique(x.numpy())) <= {-1.0, 1.0}
    # The images are the file's: those of the test cells, rendered again, are the same.
    test_images, test_labels = splits.arrays["test"]
    assert test_labels.max() <= 2
    assert test_images.sum() > 0


def test_sample_classes_fixes_one_factor():
    rng = np.random.default_rng(0)
    classes = dsprites.ProceduralSource().sample_classes(rng, 500, fixed=2, value=7)
    assert (classes[:, 2] == 7).all()
    assert classes[:, 0].max() == 2 and classes[:, 4].max() == 31 and classes.min() == 0


def test_procedural_dataset_flows_through_load_dataset(monkeypatch):
    monkeypatch.setattr(dsprites, "SPLIT_SIZES", {"train": 240, "val": 20, "test": 40})
    splits = data.load_dataset("dsprites_procedural", batch_size=16)
    info = splits.info
    assert (info.num_train, info.num_val, info.num_test) == (240, 20, 40)
    assert info.image_shape == (64, 64, 1)
    x, y = next(iter(splits.train))
    # 64x64 is kept, values in [-1, 1] (binary: exactly -1 and 1), labels the shape factor.
    assert x.shape == (16, 64, 64, 1)
    assert set(np.unique(x.numpy())) <= {-1.0, 1.0}
    assert set(np.unique(splits.arrays["train"][1])) == {0, 1, 2}
    again = data.load_dataset("dsprites_procedural", batch_size=16).arrays
    np.testing.assert_array_equal(again["test"][0], splits.arrays["test"][0])


def test_procedural_dataset_refuses_a_data_dir(tmp_path):
    with pytest.raises(data.DataError, match="rendered in code"):
        data.load_arrays("dsprites_procedural", data_dir=str(tmp_path))


def test_tfds_dsprites_is_read_by_its_factor_labels(monkeypatch, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(sources, "network_available", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=300):
        source, where = dsprites.load_grid(tfds_data_dir=str(tmp_path))
    assert where == "tensorflow-datasets" and source.imgs.shape[1:] == (64, 64)
    # Each image is found again under the factor classes tfds gave it.
    assert source.images(dsprites.classes_of(source.cells[:3])).shape == (3, 64, 64, 1)


def test_tfds_without_network_names_the_offline_options(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "network_available", lambda *a, **k: False)
    with pytest.raises(data.DataError, match="dsprites_procedural"):
        dsprites.load_grid(tfds_data_dir=str(tmp_path))

"""Data: raw-file readers on files written here in the official formats, tfds (mocked), splits, errors."""

import gzip
import os
import struct

import numpy as np
import pytest
import tensorflow as tf

from amr_keras import data


def write_idx(path, array, compress=True):
    array = np.asarray(array, np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    raw = header + array.tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(raw)


def write_mnist_folder(folder, n_train=120, n_test=40, seed=0, test=True):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    splits = [("train", n_train)] + ([("t10k", n_test)] if test else [])
    for prefix, n in splits:
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), rng.integers(0, 256, (n, 28, 28)))
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), np.arange(n) % 10)
    return folder


def test_idx_round_trip_and_pipeline_shapes(tmp_path):
    folder = write_mnist_folder(str(tmp_path / "mnist"))
    splits = data.load_dataset("mnist", data_dir=folder, batch_size=16)
    assert (splits.info.num_train, splits.info.num_val, splits.info.num_test) == (100, 20, 40)
    x, y = next(iter(splits.train))
    assert x.shape == (16, 32, 32, 1) and x.dtype == tf.float32 and y.shape == (16,)
    assert float(tf.reduce_min(x)) >= -1.0 and float(tf.reduce_max(x)) <= 1.0
    # Zero padding of 28x28 images: the border is black (-1).
    assert float(tf.reduce_max(x[:, :2])) == -1.0
    # Training batches drop the remainder; evaluation keeps every image.
    assert sum(int(b[0].shape[0]) for b in splits.train) == 96
    assert sum(int(b[0].shape[0]) for b in splits.test) == 40


def test_folder_without_test_files_gives_train_and_validation_only(tmp_path):
    folder = write_mnist_folder(str(tmp_path / "f"), test=False)
    splits = data.load_dataset("fashion_mnist", data_dir=folder, batch_size=8)
    assert splits.test is None and splits.info.num_test == 0 and "test" not in splits.arrays


def test_validation_split_is_fixed_and_disjoint(tmp_path):
    folder = write_mnist_folder(str(tmp_path / "m"), n_train=60)
    a = data.load_dataset("mnist", data_dir=folder, batch_size=8).arrays
    b = data.load_dataset("mnist", data_dir=folder, batch_size=8, seed=5).arrays
    np.testing.assert_array_equal(a["val"][0], b["val"][0])
    train_rows = {r.tobytes() for r in a["train"][0]}
    assert not any(r.tobytes() in train_rows for r in a["val"][0])


def test_truncated_idx_file_is_reported(tmp_path):
    path = str(tmp_path / "x-idx3-ubyte.gz")
    write_idx(path, np.zeros((10, 28, 28)))
    raw = gzip.decompress(open(path, "rb").read())
    with gzip.open(path, "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(data.DataError, match="truncated"):
        data.read_idx(path)


def test_wrong_magic_and_not_gzip_are_reported(tmp_path):
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x56\x78" + b"\x00" * 20)
    with pytest.raises(data.DataError, match="not an IDX file"):
        data.read_idx(str(bad))
    notgz = tmp_path / "x-idx3-ubyte.gz"
    notgz.write_bytes(b"hello, not gzip")
    with pytest.raises(data.DataError, match="gzip"):
        data.read_idx(str(notgz))


def test_official_name_with_other_content_warns(tmp_path):
    folder = write_mnist_folder(str(tmp_path / "m"), n_train=30, test=False)
    with pytest.warns(UserWarning, match="differs from the official mnist file"):
        data.load_raw_folder("mnist", folder)


def test_kmnist_npz_reader(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 20)):
        np.savez_compressed(tmp_path / f"kmnist-{split}-imgs.npz", arr_0=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        np.savez_compressed(tmp_path / f"kmnist-{split}-labels.npz", arr_0=np.arange(n) % 10)
    splits = data.load_dataset("kmnist", data_dir=str(tmp_path), batch_size=10)
    assert (splits.info.num_train, splits.info.num_val, splits.info.num_test) == (50, 10, 20)
    assert next(iter(splits.train))[0].shape == (10, 32, 32, 1)


def test_svhn_mat_reader_maps_label_10_to_0(tmp_path):
    import scipy.io

    rng = np.random.default_rng(0)
    for split, n in (("train", 50), ("test", 10)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(n, 1)  # SVHN labels 1..10, 10 meaning digit 0
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
    images, labels = data.read_svhn_mat(str(tmp_path / "test_32x32.mat"))
    assert images.shape == (10, 32, 32, 3) and labels.min() == 0 and labels.max() == 9
    assert labels[9] == 0  # stored as 10
    splits = data.load_dataset("svhn", data_dir=str(tmp_path), batch_size=5)
    assert (splits.info.num_train, splits.info.num_val, splits.info.num_test) == (45, 5, 10)
    assert next(iter(splits.train))[0].shape == (5, 32, 32, 3)


def test_mnist_sample_ships_with_the_package():
    splits = data.load_dataset("mnist_sample", batch_size=64)
    assert (splits.info.num_train, splits.info.num_val, splits.info.num_test) == (9000, 1000, 10000)
    # Official test labels start 7 2 1 0 4.
    assert list(splits.arrays["test"][1][:5]) == [7, 2, 1, 0, 4]
    assert np.bincount(splits.arrays["test"][1]).tolist()[:3] == [980, 1135, 1032]


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("svhn", (32, 32, 3)), ("kmnist", (28, 28, 1))])
def test_tfds_path_with_mock_data(name, shape, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(data, "_network_available", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=60):
        splits = data.load_dataset(name, batch_size=10)
    assert splits.info.image_shape == shape and splits.info.source == "tensorflow-datasets"
    assert splits.info.num_train + splits.info.num_val == 60
    x, y = next(iter(splits.train))
    assert x.shape == (10, 32, 32, shape[-1])


def test_no_network_names_the_offline_options(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "_network_available", lambda *a, **k: False)
    with pytest.raises(data.DataError, match="--data-dir.*mnist_sample"):
        data.load_dataset("svhn", tfds_data_dir=str(tmp_path))


def test_unknown_dataset_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="Choose one of: mnist, kmnist"):
        data.load_dataset("cifar10")
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_dataset("mnist", data_dir=str(tmp_path / "nope"))
    with pytest.raises(data.DataError, match="No training files"):
        data.load_dataset("mnist", data_dir=str(tmp_path))


def test_train_pipeline_resumes_with_the_same_batches():
    x = np.repeat(np.arange(20, dtype=np.uint8), 28 * 28).reshape(20, 28, 28, 1)
    y = np.arange(20)
    full = [b[1].numpy().tolist() for b in data.train_pipeline(x, y, 5, seed=3).take(12)]
    resumed = [b[1].numpy().tolist() for b in data.train_pipeline(x, y, 5, seed=3, start_epoch=1).take(8)]
    assert full[4:] == resumed
    # Each epoch is a permutation of all images, and epochs differ.
    assert sorted(sum(full[:4], [])) == list(range(20)) and full[:4] != full[4:8]


def test_train_pipeline_resumes_mid_pass_and_never_straddles_passes():
    # 22 images, batch 5: 4 batches per pass, 2 images left out of each pass.
    x = np.repeat(np.arange(22, dtype=np.uint8), 28 * 28).reshape(22, 28, 28, 1)
    y = np.arange(22)
    full = [b[1].numpy().tolist() for b in data.train_pipeline(x, y, 5, seed=3).take(12)]
    for p in range(3):
        one_pass = sum(full[4 * p: 4 * p + 4], [])
        assert len(set(one_pass)) == 20  # no image twice within a pass
    # --steps-per-epoch 3: epoch 2 starts at step 6, in the middle of the second pass.
    resumed = [b[1].numpy().tolist() for b in data.train_pipeline(x, y, 5, seed=3, start_step=6).take(6)]
    assert resumed == full[6:12]
    assert [b[1].numpy().tolist() for b in data.train_pipeline(x, y, 5, seed=3, start_epoch=2).take(2)] == full[8:10]

"""Data: raw-file readers on files written here in the official formats, tfds (mocked), splits, errors."""

import gzip
import io
import os
import pickle
import struct
import tarfile
import warnings

import numpy as np
import pytest
import tensorflow as tf

from amr_keras import data, sources


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
    raw = gzip.decompress((tmp_path / "x-idx3-ubyte.gz").read_bytes())
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


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("svhn", (32, 32, 3)), ("kmnist", (28, 28, 1)),
                                         ("cifar10", (32, 32, 3))])
def test_tfds_path_with_mock_data(name, shape, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(sources, "network_available", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=60):
        splits = data.load_dataset(name, batch_size=10)
    assert splits.info.image_shape == shape and splits.info.source == "tensorflow-datasets"
    assert splits.info.num_train + splits.info.num_val == 60
    x, y = next(iter(splits.train))
    assert x.shape == (10, 32, 32, shape[-1]) and y.shape == (10,)


def test_no_network_names_the_offline_options(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "network_available", lambda *a, **k: False)
    with pytest.raises(data.DataError, match="--data-dir.*mnist_sample"):
        data.load_dataset("svhn", tfds_data_dir=str(tmp_path))


def test_unknown_dataset_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="Choose one of: mnist, kmnist"):
        data.load_dataset("cifar100")
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
    assert sorted(np.concatenate(full[:4]).tolist()) == list(range(20)) and full[:4] != full[4:8]


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


# --------------------------------------------------------------------------- CIFAR-10
class Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler writing bytes and str as Python 2 strings (BINSTRING), like the official CIFAR-10 files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        obj = obj.encode("latin1") if isinstance(obj, str) else obj
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = dispatch[str] = save_py2_string


def cifar_pickle(obj):
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # The official files were written by numpy 1.x, whose arrays refer to numpy.core.
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def cifar_batch(n, first_label=0, seed=0):
    """A batch in the official layout: N x 3072 uint8 rows (1024 R, 1024 G, 1024 B) and a list of labels."""
    x = np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)
    return {b"batch_label": b"testing batch", b"labels": [(first_label + i) % 10 for i in range(n)],
            b"data": x, b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


# Test image 0 holds one non-zero value, 201, at row 5, column 7, blue channel: 2 * 1024 + 5 * 32 + 7.
KNOWN_PIXEL = (5, 7, 2)


def cifar_members(n=4, n_test=3, **overrides):
    """{member name: bytes} of a small official-format CIFAR-10; ``overrides`` replace batches (None drops one)."""
    batches = {f"data_batch_{i}": cifar_batch(n, first_label=i, seed=i) for i in range(1, 6)}
    batches["test_batch"] = test = cifar_batch(n_test, first_label=3, seed=9)
    test[b"data"][0] = 0
    test[b"data"][0, 2 * 1024 + 5 * 32 + 7] = 201
    members = {name: cifar_pickle(b) for name, b in batches.items()}
    members["batches.meta"] = cifar_pickle({b"label_names": [b"airplane", b"automobile"]})
    for name, raw in overrides.items():
        members.pop(name) if raw is None else members.__setitem__(name, raw)
    return members


def write_cifar_archive(folder, members):
    path = os.path.join(folder, data.CIFAR10_ARCHIVE)
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"{data.CIFAR10_FOLDER}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def write_cifar_folder(folder, members):
    os.makedirs(folder, exist_ok=True)
    for name, raw in members.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(raw)
    return folder


def test_cifar10_archive_is_read_without_extracting(tmp_path):
    write_cifar_archive(str(tmp_path), cifar_members())
    with pytest.warns(UserWarning, match="differs from the official cifar10 file"):
        splits = data.load_dataset("cifar10", data_dir=str(tmp_path), batch_size=4)
    info = splits.info
    # 5 batches of 4 = 20 training images: 10% (2) for validation.
    assert (info.num_train, info.num_val, info.num_test, info.image_shape) == (18, 2, 3, (32, 32, 3))
    assert os.listdir(tmp_path) == [data.CIFAR10_ARCHIVE]
    test_x, test_y = splits.arrays["test"]
    assert test_x.shape == (3, 32, 32, 3) and test_x.dtype == np.uint8
    assert test_x[0][KNOWN_PIXEL] == 201 and int(test_x[0].sum()) == 201
    assert test_y.tolist() == [3, 4, 5]
    labels = np.concatenate([splits.arrays["train"][1], splits.arrays["val"][1]])
    assert sorted(labels.tolist()) == sorted((i + j) % 10 for i in range(1, 6) for j in range(4))
    x, y = next(iter(splits.train))
    assert x.shape == (4, 32, 32, 3) and y.shape == (4,) and float(tf.reduce_min(x)) >= -1.0


def test_cifar10_extracted_folder_direct_or_as_subfolder(tmp_path):
    folder = write_cifar_folder(str(tmp_path / data.CIFAR10_FOLDER), cifar_members())
    direct = data.load_dataset("cifar10", data_dir=folder, batch_size=4).arrays
    parent = data.load_dataset("cifar10", data_dir=str(tmp_path), batch_size=4).arrays
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(direct[split][0], parent[split][0])
    # Training images keep the official order, data_batch_1 first; pixels map (row, col, channel) as documented.
    train_x, train_y = data.read_cifar10(folder)["train"]
    rows = cifar_batch(4, first_label=1, seed=1)[b"data"]
    assert train_x.shape == (20, 32, 32, 3) and train_y[:4].tolist() == [1, 2, 3, 4]
    assert train_x[1, 5, 7, 2] == rows[1, 2 * 1024 + 5 * 32 + 7] and train_x[1, 31, 0, 0] == rows[1, 31 * 32]


def test_cifar10_corrupt_or_truncated_archive(tmp_path):
    path = write_cifar_archive(str(tmp_path), cifar_members())
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.warns(UserWarning), pytest.raises(data.DataError, match="truncated"):
        data.load_dataset("cifar10", data_dir=str(tmp_path))
    with open(path, "wb") as f:
        f.write(b"not a tar.gz file")
    with pytest.warns(UserWarning), pytest.raises(data.DataError, match="not a readable tar.gz archive"):
        data.load_dataset("cifar10", data_dir=str(tmp_path))


def test_cifar10_missing_batch_is_named(tmp_path):
    folder = write_cifar_folder(str(tmp_path / "f"), cifar_members(data_batch_3=None))
    with pytest.raises(data.DataError, match="has no data_batch_3: CIFAR-10 needs"):
        data.load_dataset("cifar10", data_dir=folder)
    write_cifar_archive(str(tmp_path), cifar_members(test_batch=None))
    with pytest.warns(UserWarning), pytest.raises(data.DataError, match="cifar-10-python.tar.gz has no test_batch"):
        data.load_dataset("cifar10", data_dir=str(tmp_path))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(data.DataError, match="No training files for cifar10.*cifar-10-python.tar.gz.*data_batch_1"):
        data.load_dataset("cifar10", data_dir=str(tmp_path / "empty"))


def _bad_batch(**changes):
    batch = cifar_batch(4)
    batch.update(changes)
    return cifar_pickle(batch)


@pytest.mark.parametrize("raw, message", [
    (_bad_batch(data=np.zeros((4, 1024), np.uint8)), r"N x 3072 uint8 array .* got shape \(4, 1024\)"),
    (_bad_batch(labels=[0, 1, 2]), "should be 4 integers, one per image"),
    (_bad_batch(labels=[0, 1, 2, 10]), "labels should be 0-9, found 0 to 10"),
    (cifar_pickle([1, 2, 3]), "not an official CIFAR-10 batch: expected a dict"),
    (cifar_pickle(cifar_batch(4))[:-200], "data_batch_2 is truncated or corrupt"),
])
def test_cifar10_bad_batch_contents(tmp_path, raw, message):
    folder = write_cifar_folder(str(tmp_path), cifar_members(data_batch_2=raw))
    with pytest.raises(data.DataError, match=message):
        data.load_dataset("cifar10", data_dir=folder)


class RunsACommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("layout", ["archive", "folder"])
def test_cifar10_malicious_pickle_is_refused_without_running(tmp_path, layout):
    marker = tmp_path / "pwned"
    raw = cifar_pickle({b"labels": [0], b"data": RunsACommand(f"touch {marker}")})
    members = cifar_members(data_batch_1=raw)
    folder = str(tmp_path / "data")
    os.makedirs(folder)
    (write_cifar_archive if layout == "archive" else write_cifar_folder)(folder, members)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the test archive is not the official file
        with pytest.raises(data.DataError, match=r"data_batch_1 is not an official CIFAR-10 batch: it asks for \w+\.system"):
            data.load_dataset("cifar10", data_dir=folder)
    assert not marker.exists()
    pickle.loads(raw)  # the same bytes do run the command with an ordinary unpickler
    assert marker.exists()


# --------------------------------------------------------------------------- training subset (Table 2)
def test_subset_train_is_stratified_exact_and_keeps_order():
    labels = np.repeat([0, 1, 2], [50, 30, 20])[np.random.default_rng(0).permutation(100)]
    images = np.arange(100)  # each "image" is its index
    x, y = data.subset_train(images, labels, 11, seed=3)
    # Shares 5.5, 3.3, 2.2 round down to 5, 3, 2; the remaining image goes to the largest remainder (class 0).
    assert np.bincount(y).tolist() == [6, 3, 2]
    assert np.all(np.diff(x) > 0) and np.array_equal(labels[x], y)
    # Deterministic in the seed alone, whatever numpy's global state.
    np.random.seed(1)
    again = data.subset_train(images, labels, 11, seed=3)[0]
    np.random.seed(2)
    assert np.array_equal(again, data.subset_train(images, labels, 11, seed=3)[0]) and np.array_equal(again, x)
    assert not np.array_equal(x, data.subset_train(images, labels, 11, seed=4)[0])
    # The whole split is a valid subset, in its original order.
    assert np.array_equal(data.subset_train(images, labels, 100)[0], images)


def test_subset_smaller_than_the_number_of_classes_gives_one_image_per_drawn_class():
    labels = np.arange(100) % 10
    picks = [tuple(data.subset_train(labels, labels, 3, seed=s)[1]) for s in range(20)]
    assert all(len(set(p)) == 3 for p in picks)
    assert len({c for p in picks for c in p}) == 10  # ties are broken by the seed, not always classes 0-2


def test_train_size_draws_the_same_subset_for_every_training_seed(tmp_path):
    folder = write_mnist_folder(str(tmp_path / "m"))  # 100 train / 20 validation / 40 test
    full = data.load_dataset("mnist", data_dir=folder, batch_size=8)
    a = data.load_dataset("mnist", data_dir=folder, batch_size=8, seed=0, train_size=30)
    b = data.load_dataset("mnist", data_dir=folder, batch_size=8, seed=7, train_size=30)
    other = data.load_dataset("mnist", data_dir=folder, batch_size=8, train_size=30, subset_seed=99)
    assert full.info.train_size is None and full.info.num_train == 100
    assert (a.info.train_size, a.info.num_train, a.info.num_val, a.info.num_test) == (30, 30, 20, 40)
    np.testing.assert_array_equal(a.arrays["train"][0], b.arrays["train"][0])
    assert not np.array_equal(a.arrays["train"][0], other.arrays["train"][0])
    for split in ("val", "test"):
        np.testing.assert_array_equal(a.arrays[split][0], full.arrays[split][0])
    full_rows = {r.tobytes() for r in full.arrays["train"][0]}
    assert all(r.tobytes() in full_rows for r in a.arrays["train"][0])
    share = 30 * np.bincount(full.arrays["train"][1], minlength=10) / 100
    assert np.all(np.abs(np.bincount(a.arrays["train"][1], minlength=10) - share) < 1)
    assert sum(int(batch[0].shape[0]) for batch in a.train) == 24  # 3 full batches of 8


@pytest.mark.parametrize("kwargs, message", [
    ({"train_size": 101}, "train_size 101 is larger than the training split, which has 100 images"),
    ({"train_size": 5}, r"train_size 5 is smaller than one batch \(8 images"),
    ({"train_size": 0}, "train_size must be a positive integer"),
    ({"train_size": 2.5}, "train_size must be a positive integer"),
    ({"train_size": "30"}, "train_size must be a positive integer"),
    ({"train_size": True}, "train_size must be a positive integer"),
    ({"subset_seed": 3}, "subset_seed 3 is only used with train_size"),
])
def test_train_size_errors(tmp_path, kwargs, message):
    folder = write_mnist_folder(str(tmp_path / "m"), test=False)
    with pytest.raises(data.DataError, match=message):
        data.load_dataset("mnist", data_dir=folder, batch_size=8, **kwargs)

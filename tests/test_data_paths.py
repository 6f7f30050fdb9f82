"""Raw files in, the same pixels and labels out: every raw-file reader through ``amr_keras.data.load_dataset``.

Each file is written here in its official format with images that only the file can hold (random noise, one
pattern per image) and labels drawn at random, so an image read from the wrong place, transposed, re-rendered or
paired with another image's label is caught. Every image that ``load_dataset`` returns (training, validation and
test) must be one of the file's, unchanged, with the file's label for it, and together they must be all of them;
the evaluation pipelines must serve them padded and scaled as ``amr_keras.data.preprocess`` documents.
"""

import io
import tarfile
import warnings

import numpy as np
import pytest
from test_data import cifar_pickle, write_idx

from amr_keras import data, dsprites

N_TRAIN, N_TEST = 60, 20


def noise(shape, seed, high=256):
    """uint8 noise: no two images alike (and none that the dSprites renderer could draw)."""
    return np.random.default_rng(seed).integers(0, high, shape, dtype=np.uint8)


def random_labels(n, seed, classes=10):
    return np.random.default_rng(seed + 100).integers(0, classes, n)


def assert_same_examples(splits, images, labels, names):
    """The images of ``splits.arrays[name]`` for ``name`` in ``names`` are those of ``images``, each once and
    unchanged, with the label ``labels`` gives it."""
    index = {image.tobytes(): i for i, image in enumerate(images)}
    assert len(index) == len(images)
    seen = []
    for name in names:
        x, y = splits.arrays[name]
        assert x.dtype == np.uint8 and x.shape[1:] == images.shape[1:]
        for image, label in zip(x, y):
            i = index.get(image.tobytes())
            assert i is not None, f"{name}: an image that is none of the file's"
            assert label == labels[i], f"{name}: image {i} of the file has label {labels[i]}, read as {label}"
            seen.append(i)
    assert sorted(seen) == list(range(len(images)))


def model_input(images):
    """``preprocess`` by hand: 28x28 zero-padded to 32x32; every image scaled from [0, 255] to [-1, 1]."""
    x = np.asarray(images, np.float32)
    if x.shape[1:3] == (28, 28):
        x = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    return x / 127.5 - 1.0


def assert_pipelines_serve(splits):
    """The validation and test pipelines (not shuffled) serve the arrays' images, preprocessed, with their labels."""
    for name, pipeline in (("val", splits.val), ("test", splits.test)):
        x = np.concatenate([batch[0].numpy() for batch in pipeline])
        y = np.concatenate([batch[1].numpy() for batch in pipeline])
        images, labels = splits.arrays[name]
        np.testing.assert_allclose(x, model_input(images), atol=1e-6)
        np.testing.assert_array_equal(y, labels)


def load(name, folder, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # files written here are not the official ones (checksum warning)
        return data.load_dataset(name, data_dir=str(folder), batch_size=8, **kw)


# --------------------------------------------------------------------------- MNIST-like IDX, KMNIST npz, SVHN, CIFAR
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "kmnist"])
def test_idx_files_come_through_unchanged(name, tmp_path):
    files = {"train": (noise((N_TRAIN, 28, 28), 1), random_labels(N_TRAIN, 1)),
             "t10k": (noise((N_TEST, 28, 28), 2), random_labels(N_TEST, 2))}
    for prefix, (x, y) in files.items():
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", y)
    splits = load(name, tmp_path)
    (x_train, y_train), (x_test, y_test) = files["train"], files["t10k"]
    assert_same_examples(splits, x_train[..., None], y_train, ("train", "val"))
    # The test split keeps the file's order.
    np.testing.assert_array_equal(splits.arrays["test"][0][..., 0], x_test)
    np.testing.assert_array_equal(splits.arrays["test"][1], y_test)
    assert_pipelines_serve(splits)


def test_kmnist_npz_files_come_through_unchanged(tmp_path):
    files = {"train": (noise((N_TRAIN, 28, 28), 3), random_labels(N_TRAIN, 3)),
             "test": (noise((N_TEST, 28, 28), 4), random_labels(N_TEST, 4))}
    for split, (x, y) in files.items():
        np.savez_compressed(tmp_path / f"kmnist-{split}-imgs.npz", arr_0=x)
        np.savez_compressed(tmp_path / f"kmnist-{split}-labels.npz", arr_0=y)
    splits = load("kmnist", tmp_path)
    assert_same_examples(splits, files["train"][0][..., None], files["train"][1], ("train", "val"))
    assert_same_examples(splits, files["test"][0][..., None], files["test"][1], ("test",))
    assert_pipelines_serve(splits)


def test_svhn_mat_files_come_through_unchanged(tmp_path):
    import scipy.io

    files = {"train": (noise((N_TRAIN, 32, 32, 3), 5), random_labels(N_TRAIN, 5)),
             "test": (noise((N_TEST, 32, 32, 3), 6), random_labels(N_TEST, 6))}
    for split, (x, y) in files.items():
        # The official layout: X is (32, 32, 3, N), y is (N, 1) with digit 0 stored as 10.
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat",
                         {"X": np.transpose(x, (1, 2, 3, 0)), "y": np.where(y == 0, 10, y).reshape(-1, 1)})
    splits = load("svhn", tmp_path)
    assert_same_examples(splits, files["train"][0], files["train"][1], ("train", "val"))
    assert_same_examples(splits, files["test"][0], files["test"][1], ("test",))
    assert_pipelines_serve(splits)


def test_cifar10_archive_comes_through_unchanged(tmp_path):
    """The python archive: 5 training batches and a test batch of N x 3072 rows (1024 R, 1024 G, 1024 B)."""
    images = noise((6, 8, 32, 32, 3), 7)
    labels = random_labels(48, 7).reshape(6, 8)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    with tarfile.open(tmp_path / data.CIFAR10_ARCHIVE, "w:gz") as tar:
        for name, x, y in zip(names, images, labels):
            rows = np.transpose(x, (0, 3, 1, 2)).reshape(len(x), 3072)
            raw = cifar_pickle({b"batch_label": name.encode(), b"labels": y.tolist(), b"data": rows})
            info = tarfile.TarInfo(f"{data.CIFAR10_FOLDER}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    splits = load("cifar10", tmp_path)
    assert_same_examples(splits, images[:5].reshape(40, 32, 32, 3), labels[:5].reshape(40), ("train", "val"))
    assert_same_examples(splits, images[5], labels[5], ("test",))
    assert_pipelines_serve(splits)


# --------------------------------------------------------------------------- dSprites, the official .npz
@pytest.fixture
def official_npz(tmp_path):
    """A partial grid in the official format (colour column first; images 0/1) whose images are random 0/1 noise:
    ``(folder, {grid index: (image, classes)})``."""
    index = np.sort(np.random.default_rng(8).choice(dsprites.NUM_IMAGES, 280, replace=False))
    classes = dsprites.classes_of(index)
    imgs = noise((len(index), 64, 64), 8, high=2)
    latents = np.concatenate([np.zeros((len(index), 1), np.int64), classes], axis=1)
    values = np.concatenate([np.ones((len(index), 1)), dsprites.factor_values(classes)], axis=1)
    np.savez_compressed(tmp_path / dsprites.NPZ_NAME, imgs=imgs, latents_classes=latents, latents_values=values)
    return tmp_path, imgs, classes


def test_official_dsprites_pixels_and_shape_labels_come_through_unchanged(official_npz):
    folder, imgs, classes = official_npz
    # The renderer draws none of these images.
    assert not any(np.array_equal(r, i) for r, i in zip(dsprites.render(classes), imgs))
    images = (imgs * 255).astype(np.uint8)[..., None]
    shape = classes[:, 0]
    arrays, source = dsprites.load_arrays("dsprites", data_dir=str(folder))
    assert "only 280 of the 737,280" in source
    by_image = {image.tobytes(): i for i, image in enumerate(images)}
    seen = []
    groups, codes = arrays.pop("attributes")
    assert groups.names == ("shape", "scale", "x", "y")
    for name, (x, y) in arrays.items():
        for image, label, code in zip(x, y, codes[name]):
            i = by_image.get(image.tobytes())
            assert i is not None, f"{name}: an image that is none of the file's"
            assert label == shape[i], f"{name}: image of cell {classes[i]} labelled {label}, its shape is {shape[i]}"
            # Its attributes are its own cell's coarse factors: shape, scale, x and y in halves.
            cell = classes[i]
            assert code.tolist() == [cell[0], cell[1] // 3, cell[3] // 16, cell[4] // 16], name
            seen.append(i)
    assert sorted(seen) == list(range(len(images)))
    # Through load_dataset: the same images and labels, served at 64x64 in {-1, 1}.
    splits = load("dsprites", folder)
    assert_same_examples(splits, images, shape, ("train", "val", "test"))
    assert_pipelines_serve(splits)
    assert splits.info.image_shape == (64, 64, 1)

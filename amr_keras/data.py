"""Datasets -> ``tf.data`` pipelines of ``(image, label)`` at 32x32, scaled to [-1, 1].

Sources, in the order they are tried:

1. ``data_dir``: a folder with the official raw files (no network needed):
   MNIST / Fashion-MNIST / KMNIST as IDX (``train-images-idx3-ubyte.gz`` ...),
   KMNIST also as ``kmnist-{train,test}-{imgs,labels}.npz``, SVHN as
   ``{train,test}_32x32.mat``, CIFAR-10 as ``cifar-10-python.tar.gz`` (read
   without extracting) or its extracted ``cifar-10-batches-py/`` (the folder
   itself or a subfolder). A folder without test files gives train and
   validation only (CIFAR-10 needs all six batches).
2. ``mnist_sample``: real MNIST images shipped inside the package (first
   10,000 training images + the official 10,000 test images).
3. tensorflow-datasets (``mnist``, ``kmnist``, ``svhn_cropped``,
   ``fashion_mnist``, ``cifar10``), which downloads once into its data dir.

Validation data is carved out of the training split with a fixed seed:

| dataset | train / validation | test |
|---|---|---|
| mnist, kmnist, fashion_mnist | 50,000 / 10,000 of the official 60,000 training images | official 10,000 |
| svhn | 90% / 10% of the official 73,257 training images (no ``extra``) | official 26,032 |
| cifar10 | 45,000 / 5,000 of the official 50,000 training images | official 10,000 |
| mnist_sample | 9,000 / 1,000 of the first 10,000 training images | official 10,000 |
| dsprites, dsprites_procedural | 60,000 / 5,000 cells of the factor grid | 5,000 other cells |

dSprites (``amr_keras.dsprites``; 64x64, kept at that size for ``--arch burgess``): ``dsprites`` reads the
official ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` from ``data_dir`` (or tfds), ``dsprites_procedural``
renders the same factor grid in code (a re-rendering, not the official pixels). Their class label, for the
linear probe and the post-hoc evaluation, is the shape factor (0 square, 1 ellipse, 2 heart).

For a raw folder with another number of training images, MNIST-like datasets
keep 1/6 for validation, SVHN and CIFAR-10 10%.

``load_dataset(..., train_size=N)`` trains on a fixed, class-stratified subset
of N images of the training part (the paper's Table 2); validation and test
stay whole. See ``subset_train``.
"""

import dataclasses
import glob
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import warnings
import zlib

import numpy as np
import tensorflow as tf

from amr_keras import dsprites, sources
from amr_keras.networks import IMAGE_SIZE
from amr_keras.registry import Registry
from amr_keras.sources import OFFLINE_HELP, SPLIT_SEED, DataError  # noqa: F401  (public here as before)

DSPRITES_SIZE = 64
# Default seed of the training subset (``train_size``): fixed, so runs with different
# training seeds train on the same images; distinct from SPLIT_SEED so the two draws
# are not the same random stream.
SUBSET_SEED = SPLIT_SEED + 1
SAMPLE_DIR = os.path.join(os.path.dirname(__file__), "sample_data", "mnist")

# md5 of the official files (as listed by their publishers and torchvision).
OFFICIAL_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "kmnist": {
        "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
    },
    "svhn": {
        "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
        "test_32x32.mat": "eb5a983be6a315427106f1b0b7a7e4d5",
    },
    "cifar10": {
        "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    },
}

CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


@dataclasses.dataclass
class DatasetInfo:
    """What a loaded dataset is: its name, sizes and where it came from."""

    name: str
    source: str
    image_shape: tuple
    num_classes: int
    num_train: int  # the subset size when train_size is set
    num_val: int
    num_test: int  # 0 when there is no test split
    train_size: int = None  # None when the whole training part is used

    @property
    def colors(self):
        return self.image_shape[-1]


@dataclasses.dataclass
class Splits:
    """Train / validation / test pipelines (``test`` is None without a test split) and their info."""

    train: tf.data.Dataset
    val: tf.data.Dataset
    test: tf.data.Dataset
    info: DatasetInfo
    arrays: dict = dataclasses.field(repr=False, default_factory=dict)


# --------------------------------------------------------------------------- raw readers
def _open(path):
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path} is not a valid gzip file ({e}); download it again.") from e
    return raw


def read_idx(path):
    """Read an IDX file (optionally gzipped) into a uint8 array, checking magic number and size.

    Args:
        path: ``*-idx3-ubyte[.gz]`` (images, N x rows x cols) or ``*-idx1-ubyte[.gz]`` (labels).

    Returns:
        ``np.ndarray`` of dtype uint8.
    """
    raw = _open(path)
    if len(raw) < 8:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, not even an IDX header.")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or ndim not in (1, 3):
        raise DataError(
            f"{path} is not an IDX file of unsigned bytes (magic {raw[:4].hex()}, expected 00000801 or 00000803)."
        )
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(raw) - offset != expected:
        raise DataError(
            f"{path} is truncated or corrupt: header says shape {shape} ({expected} bytes), "
            f"file holds {len(raw) - offset}. Download it again."
        )
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(shape)


def read_npz(path):
    """Read the single array of a KMNIST ``.npz`` file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return f[f.files[0]]
    except (OSError, ValueError, zlib.error, KeyError, IndexError) as e:
        raise DataError(f"{path} is not a readable .npz file ({e}); download it again.") from e


def read_svhn_mat(path):
    """Read an SVHN ``*_32x32.mat`` file into (uint8 images N x 32 x 32 x 3, int labels 0-9)."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
        x, y = mat["X"], mat["y"]
    except Exception as e:  # scipy raises several types for damaged files
        raise DataError(f"{path} is not a readable SVHN .mat file ({e}); download it again.") from e
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise DataError(f"{path}: expected X of shape (32, 32, 3, N) and y of N labels, got {x.shape}, {y.shape}.")
    labels = y.reshape(-1).astype(np.int64)
    labels[labels == 10] = 0  # SVHN stores digit 0 as label 10
    return np.ascontiguousarray(np.transpose(x, (3, 0, 1, 2))), labels


# The only globals an official CIFAR-10 batch refers to: numpy's array reconstruction
# (written as numpy.core by numpy 1.x, numpy._core by numpy 2). ``_reconstruct`` is taken
# from numpy's own pickling, so it is the right function under either numpy.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_CIFAR10_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _Cifar10Unpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays and nothing else, so a pickle cannot run code."""

    def __init__(self, raw, where):
        super().__init__(io.BytesIO(raw), encoding="bytes")
        self.where = where

    def find_class(self, module, name):
        if (module, name) not in _CIFAR10_GLOBALS:
            raise DataError(
                f"{self.where} is not an official CIFAR-10 batch: it asks for {module}.{name}, which the official "
                f"files never do, so it was not loaded. Download {CIFAR10_ARCHIVE} again."
            )
        return _CIFAR10_GLOBALS[(module, name)]


def _describe(value):
    return f"shape {value.shape}, dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__


def read_cifar10_batch(raw, where):
    """Decode one CIFAR-10 python batch (a pickle) into uint8 images and int labels.

    Args:
        raw: the bytes of ``data_batch_1`` ... ``data_batch_5`` or ``test_batch``.
        where: the file (or ``archive:member``) they came from, for error messages.

    Returns:
        ``(images, labels)``: uint8 N x 32 x 32 x 3 and int64 N, labels 0-9.
    """
    try:
        batch = _Cifar10Unpickler(raw, where).load()
    except DataError:
        raise
    except Exception as e:  # a damaged pickle raises many types
        raise DataError(f"{where} is truncated or corrupt ({type(e).__name__}: {e}); "
                        f"download {CIFAR10_ARCHIVE} again.") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        got = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{where} is not an official CIFAR-10 batch: expected a dict with b'data' and b'labels', "
                        f"got {got}.")
    x, y = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise DataError(f"{where}: b'data' should be an N x 3072 uint8 array (per image 1024 red, 1024 green, "
                        f"1024 blue values), got {_describe(x)}.")
    if y.ndim != 1 or len(y) != len(x) or (y.size and not np.issubdtype(y.dtype, np.integer)):
        raise DataError(f"{where}: b'labels' should be {len(x)} integers, one per image, got {_describe(y)}.")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{where}: labels should be 0-9, found {int(y.min())} to {int(y.max())}.")
    # Each row is channel-major: 1024 red values (32x32, row-major), then green, then blue.
    images = np.ascontiguousarray(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, y.astype(np.int64)


def _read_cifar10_archive(path, names):
    """Decode the batches ``names`` found in a tar.gz, member by member, without extracting it."""
    found = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                name = os.path.basename(member.name)
                if member.isfile() and name in names and name not in found:
                    found[name] = read_cifar10_batch(tar.extractfile(member).read(), f"{path}:{member.name}")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a readable tar.gz archive or is truncated ({type(e).__name__}: {e}); "
                        "download it again.") from e
    return found


def read_cifar10(path):
    """Read the official CIFAR-10 python version: its archive or the extracted folder.

    Args:
        path: ``cifar-10-python.tar.gz`` (its members are read directly, nothing is
            extracted to disk) or the extracted ``cifar-10-batches-py`` folder.

    Returns:
        ``{"train": (images, labels), "test": (images, labels)}``: the five training
        batches in order (50,000 images in the official files) and ``test_batch``
        (10,000); uint8 images N x 32 x 32 x 3, int64 labels 0-9.
    """
    names = CIFAR10_BATCHES["train"] + CIFAR10_BATCHES["test"]
    if os.path.isfile(path):
        _verify_checksum("cifar10", path)
        found = _read_cifar10_archive(path, names)
    else:
        found = {name: read_cifar10_batch(_open(p), p)
                 for name in names if os.path.isfile(p := os.path.join(path, name))}
    missing = [name for name in names if name not in found]
    if missing:
        raise DataError(f"{path} has no {', '.join(missing)}: CIFAR-10 needs data_batch_1 ... data_batch_5 and "
                        f"test_batch. Download {CIFAR10_ARCHIVE} again (a truncated download also loses batches).")
    return {split: (np.concatenate([found[n][0] for n in batch_names]),
                    np.concatenate([found[n][1] for n in batch_names]))
            for split, batch_names in CIFAR10_BATCHES.items()}


def _find_cifar10(folder):
    """Where CIFAR-10 is in ``folder``: extracted batches (in it or its cifar-10-batches-py/), else the archive."""
    names = CIFAR10_BATCHES["train"] + CIFAR10_BATCHES["test"]
    for candidate in (folder, os.path.join(folder, CIFAR10_FOLDER)):
        if any(os.path.isfile(os.path.join(candidate, name)) for name in names):
            return candidate
    archive = os.path.join(folder, CIFAR10_ARCHIVE)
    return archive if os.path.isfile(archive) else None


def _md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify_checksum(name, path):
    """Warn when a file with an official name is not byte-identical to the official download.

    Repacked copies (e.g. re-gzipped by a distribution) differ in md5 but hold
    the same images; the structural checks of the readers (magic number,
    header, size) decide whether the content is usable.
    """
    expected = OFFICIAL_MD5.get(name, {}).get(os.path.basename(path))
    if expected is not None and _md5(path) != expected:
        warnings.warn(
            f"{path} differs from the official {name} file (md5 is not {expected}); reading it anyway "
            "since its header and size are checked. If results look wrong, download the official file.",
            stacklevel=3,
        )


def _find(folder, patterns):
    for pattern in patterns:
        hits = sorted(glob.glob(os.path.join(folder, pattern)))
        if hits:
            return hits[0]
    return None


def _read_pair(name, folder, split):
    """(images, labels) of ``split`` ("train" or "test") from a raw folder, or None when absent."""
    if name == "svhn":
        path = _find(folder, [f"{split}_32x32.mat"])
        if path is None:
            return None
        _verify_checksum(name, path)
        return read_svhn_mat(path)
    prefix = "train" if split == "train" else "t10k"
    img = _find(folder, [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-images-idx3-ubyte",
                         f"{prefix}-images*-idx3-ubyte.gz", f"{prefix}-images*-idx3-ubyte"])
    if img is not None:
        stem = os.path.basename(img).replace("images", "labels").replace("idx3", "idx1")
        lab = os.path.join(folder, stem)
        if not os.path.exists(lab):
            raise DataError(f"Found {img} but not its labels {lab}.")
        _verify_checksum(name, img)
        _verify_checksum(name, lab)
        x, y = read_idx(img), read_idx(lab)
    elif name == "kmnist" and _find(folder, [f"kmnist-{split}-imgs.npz"]):
        x = read_npz(os.path.join(folder, f"kmnist-{split}-imgs.npz"))
        y = read_npz(os.path.join(folder, f"kmnist-{split}-labels.npz"))
    else:
        return None
    if x.ndim != 3 or x.shape[1:] != (28, 28) or x.shape[0] != y.shape[0]:
        raise DataError(f"{folder}: expected N x 28 x 28 images and N labels for {name}, got {x.shape} and {y.shape}.")
    return x[..., None], y.astype(np.int64)


def load_raw_folder(name, folder):
    """Read the official raw files of ``name`` from ``folder``: dict of (images, labels) per split."""
    if not os.path.isdir(folder):
        raise DataError(f"--data-dir {folder!r} does not exist or is not a folder.")
    if name == "cifar10":
        source = _find_cifar10(folder)
        out = {} if source is None else read_cifar10(source)
    else:
        pairs = {split: _read_pair(name, folder, split) for split in ("train", "test")}
        out = {split: pair for split, pair in pairs.items() if pair is not None}
    if "train" not in out:
        expected = {
            "svhn": "train_32x32.mat",
            "cifar10": f"{CIFAR10_ARCHIVE}, or its extracted {CIFAR10_FOLDER}/ (data_batch_1 ... data_batch_5, "
                       "test_batch) as a subfolder or as the folder itself",
            "kmnist": ("train-images-idx3-ubyte.gz + train-labels-idx1-ubyte.gz or kmnist-train-imgs.npz + "
                       "kmnist-train-labels.npz"),
        }.get(name, "train-images-idx3-ubyte.gz + train-labels-idx1-ubyte.gz")
        raise DataError(f"No training files for {name} in {folder}: expected {expected}.")
    return out


# --------------------------------------------------------------------------- tfds
def load_tfds(name, tfds_data_dir=None):
    """Load a whole dataset with tensorflow-datasets as numpy arrays per split."""
    import tensorflow_datasets as tfds

    tfds_name = dataset_spec(name).tfds_name
    builder = tfds.builder(tfds_name, data_dir=tfds_data_dir)
    prepared = tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json"))
    if not prepared and not sources.network_available():
        raise DataError(
            f"tensorflow-datasets cannot download {tfds_name!r}: no network, and it is not prepared in "
            f"{builder.data_dir}. " + OFFLINE_HELP
        )
    out = {}
    for split in ("train", "test"):
        try:
            ds = tfds.load(tfds_name, split=split, as_supervised=True, data_dir=tfds_data_dir)
            chunks = list(tfds.as_numpy(ds.batch(8192)))
        except Exception as e:  # download and preparation errors come in many types
            raise DataError(f"tensorflow-datasets failed to load {tfds_name!r} ({type(e).__name__}: {e}). "
                            + OFFLINE_HELP) from e
        if not chunks:
            continue
        out[split] = (np.concatenate([c[0] for c in chunks]).astype(np.uint8),
                      np.concatenate([c[1] for c in chunks]).astype(np.int64))
    return out


# --------------------------------------------------------------------------- pipelines
def preprocess(images):
    """uint8 (or float in [0, 255]) images of any supported size -> float32 32x32 in [-1, 1].

    28x28 images are zero-padded by 2 pixels on each side (background stays
    black); 64x64 images (dSprites, for the ``burgess`` networks) keep their
    size; other sizes are resized.
    """
    x = tf.cast(images, tf.float32)
    h, w = x.shape[-3], x.shape[-2]
    if (h, w) == (28, 28):
        x = tf.pad(x, [[0, 0], [2, 2], [2, 2], [0, 0]])
    elif (h, w) not in ((IMAGE_SIZE, IMAGE_SIZE), (DSPRITES_SIZE, DSPRITES_SIZE)):
        x = tf.image.resize(x, (IMAGE_SIZE, IMAGE_SIZE))
    return x / 127.5 - 1.0


def make_pipeline(images, labels, batch_size, shuffle, drop_remainder, seed=0):
    """Batched, prefetched ``tf.data`` pipeline from uint8 arrays.

    Preprocessing runs once per batch (vectorised), after batching.
    """
    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(lambda x, y: (preprocess(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def train_pipeline(images, labels, batch_size, seed=0, start_epoch=0, start_step=None):
    """Endless training pipeline: pass ``p`` over the images is a shuffle seeded by ``(seed, p)``.

    Every pass is ``len(images) // batch_size`` full batches (its remainder is
    dropped), so batches never straddle two passes. A run resumed at a step
    sees exactly the batches an uninterrupted run would have seen there.

    Args:
        images, labels: the training arrays (uint8 images).
        batch_size: images per batch.
        seed: shuffling seed.
        start_epoch: first pass, when Keras epochs are whole passes
            (``steps_per_epoch = len(images) // batch_size``).
        start_step: first step when epochs are not passes (``--steps-per-epoch``):
            ``initial_epoch * steps_per_epoch``; overrides ``start_epoch``.
    """
    images = tf.constant(images)
    labels = tf.constant(labels.astype(np.int32))
    n = int(images.shape[0])
    per_pass = n // batch_size
    if per_pass < 1:
        raise DataError(f"batch_size {batch_size} is larger than the {n} training images: lower --batch-size.")
    skip = 0
    if start_step is not None:
        start_epoch, skip = divmod(int(start_step), per_pass)

    def one_pass(p):
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=tf.stack([tf.cast(seed, tf.int64), p]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=True)

    ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(one_pass).skip(skip)
    ds = ds.map(lambda idx: (preprocess(tf.gather(images, idx)), tf.gather(labels, idx)),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def split_train_val(images, labels, val_fraction, seed=SPLIT_SEED):
    """Carve a validation set out of a training split with a fixed permutation."""
    n = len(images)
    n_val = round(n * val_fraction)
    if n_val < 1 or n_val >= n:
        raise DataError(f"Cannot carve a validation set ({val_fraction:.0%}) out of {n} training images.")
    perm = np.random.default_rng(seed).permutation(n)
    val, train = perm[:n_val], perm[n_val:]
    return (images[train], labels[train]), (images[val], labels[val])


def subset_train(images, labels, size, seed=SUBSET_SEED):
    """Draw a fixed training subset of ``size`` images, stratified by class (the paper's Table 2).

    Each class gets ``size * (its share of the images)``, rounded by largest
    remainder so the counts add up to exactly ``size``; the images of each class
    are drawn without replacement. The draw depends only on ``seed`` (its own
    generator, not numpy's global state), and the chosen images keep their
    original order (the indices are sorted). With ``size`` below the number of
    classes, every share rounds down and the ``size`` units of remainder go to
    the classes with the largest remainders (ties, e.g. balanced classes, broken
    at random by ``seed``): ``size`` classes get one image, the others none.

    Args:
        images: training images, shape (N, ...).
        labels: their integer labels, N.
        size: number of images to keep, 1 to N.
        seed: seed of the draw; ``SUBSET_SEED`` (fixed) by default.

    Returns:
        ``(images, labels)`` of the subset.

    Example:
        >>> x, y = subset_train(np.zeros((100, 2)), np.arange(100) % 10, 20)
        >>> np.bincount(y).tolist()
        [2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    """
    n = len(labels)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise DataError(f"train_size must be a positive integer (a number of images), got {size!r}.")
    size = int(size)
    if size > n:
        raise DataError(f"train_size {size} is larger than the training split, which has {n} images "
                        f"(after carving out validation): choose at most {n}.")
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    # Largest remainder in exact integer arithmetic: quota = floor(size * count / n) + 1 for
    # the classes with the largest remainders, ties broken by a seeded permutation.
    quota, remainder = np.divmod(size * counts, n)
    order = np.lexsort((rng.permutation(len(classes)), -remainder))
    quota[order[: size - int(quota.sum())]] += 1
    chosen = [rng.permutation(np.flatnonzero(inverse == c))[:q] for c, q in enumerate(quota)]
    index = np.sort(np.concatenate(chosen))
    return images[index], labels[index]


# --------------------------------------------------------------------------- the registry
@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One dataset the package can train on: everything the scripts, the pipelines and the export need to know.

    Adding a dataset is one ``register_dataset(DatasetSpec(...))`` call (``docs/contributing.md``).

    Attributes:
        name: the ``--dataset`` value.
        source_shape: (height, width, channels) of its images as stored; the export's endpoints take this size.
        val_fraction: the part of the training split carved out (with ``SPLIT_SEED``) for validation.
        load: ``load(data_dir, tfds_data_dir) -> ({"train": (images, labels), "test": ...}, source)``: uint8
            images N x H x W x C, int labels, and a line saying where they came from (``test`` may be absent).
        preset: the preset (``amr_keras.config.PRESETS``) a run gets when none is named.
        arch: the network family (``amr_keras.networks.ARCHS``) a run gets when none is named.
        tfds_name: its tensorflow-datasets builder, if any.
        factors: labelled by generative factors (dSprites): the FactorVAE metric applies.
        summary: one line for the docs and ``--help``.
    """

    name: str
    source_shape: tuple
    val_fraction: float
    load: object
    preset: str = "fast"
    arch: str = "acai"
    tfds_name: str = None
    factors: bool = False
    summary: str = ""


_REGISTRY = Registry("dataset")


def register_dataset(spec, replace=False):
    """Make ``spec`` a dataset of every script and of ``load_dataset``; returns it.

    Raises:
        ValueError: a dataset of that name exists (pass ``replace=True`` to replace it), or a malformed entry.
    """
    if len(spec.source_shape) != 3 or not 0 < spec.val_fraction < 1 or not callable(spec.load):
        raise ValueError(f"dataset {spec.name!r}: source_shape must be (height, width, channels), val_fraction in "
                         f"(0, 1) and load callable; got {spec.source_shape}, {spec.val_fraction}, {spec.load!r}.")
    return _REGISTRY.register(spec, replace)


def dataset_names():
    """The registered datasets, built-in ones first."""
    return _REGISTRY.names()


def dataset_spec(name):
    """The ``DatasetSpec`` of ``name``; ``ValueError`` listing the known ones for an unknown name."""
    return _REGISTRY.spec(name)


def check_dataset(name):
    """Raise ``ValueError`` for an unknown dataset name, listing the known ones."""
    return dataset_spec(name).name


def _official(name):
    """Loader of a dataset published as raw files: the files in ``data_dir``, else tensorflow-datasets."""
    def load(data_dir, tfds_data_dir):
        if data_dir is not None:
            return load_raw_folder(name, data_dir), f"raw files in {data_dir}"
        return load_tfds(name, tfds_data_dir), "tensorflow-datasets"
    return load


def _load_sample(data_dir, tfds_data_dir):
    if data_dir is not None:
        raise DataError("mnist_sample ships inside the package: drop --data-dir, or use --dataset mnist with it.")
    return load_raw_folder("mnist", SAMPLE_DIR), "embedded MNIST sample (first 10k train + official test)"


def _dsprites(name):
    def load(data_dir, tfds_data_dir):
        if name == "dsprites_procedural" and data_dir is not None:
            raise DataError("dsprites_procedural is rendered in code: drop --data-dir, or use --dataset dsprites "
                            f"with a folder holding {dsprites.NPZ_NAME}.")
        return dsprites.load_arrays(name, data_dir, tfds_data_dir)
    return load


_MNIST_LIKE = dict(source_shape=(28, 28, 1), val_fraction=1 / 6)
_COLOUR = dict(source_shape=(32, 32, 3), val_fraction=0.1)
# dSprites: 64x64 binary sprites labelled by their shape factor (amr_keras.dsprites), kept at that size; 5,000
# validation cells of the 65,000 drawn for training and validation.
_DSPRITES = dict(source_shape=(DSPRITES_SIZE, DSPRITES_SIZE, 1), val_fraction=1 / 13, preset="dsprites",
                 arch="burgess", factors=True)
for _spec in (
    DatasetSpec("mnist", **_MNIST_LIKE, load=_official("mnist"), preset="mnist_full", tfds_name="mnist",
                summary="MNIST digits, official split"),
    DatasetSpec("kmnist", **_MNIST_LIKE, load=_official("kmnist"), tfds_name="kmnist",
                summary="Kuzushiji-MNIST, official split"),
    DatasetSpec("fashion_mnist", **_MNIST_LIKE, load=_official("fashion_mnist"), tfds_name="fashion_mnist",
                summary="Fashion-MNIST, official split"),
    DatasetSpec("svhn", **_COLOUR, load=_official("svhn"), tfds_name="svhn_cropped",
                summary="SVHN cropped digits (no extra split)"),
    DatasetSpec("cifar10", **_COLOUR, load=_official("cifar10"), tfds_name="cifar10", summary="CIFAR-10"),
    DatasetSpec("mnist_sample", source_shape=(28, 28, 1), val_fraction=0.1, load=_load_sample,
                summary="10,000 MNIST training images shipped in the package + the official test set"),
    DatasetSpec("dsprites", **_DSPRITES, load=_dsprites("dsprites"), tfds_name="dsprites",
                summary="the official dSprites file; label: the shape factor"),
    DatasetSpec("dsprites_procedural", **_DSPRITES, load=_dsprites("dsprites_procedural"),
                summary="dSprites' factor grid rendered in code (not the official pixels); label: the shape factor"),
):
    register_dataset(_spec)

# The built-in datasets, and views of their specs under the names the package used before the registry (use
# dataset_spec and dataset_names in new code: they also see datasets registered later).
DATASETS = dataset_names()
DSPRITES_DATASETS = tuple(name for name in DATASETS if _REGISTRY[name].factors)
TFDS_NAMES = {name: spec.tfds_name for name, spec in _REGISTRY.items() if spec.tfds_name}
SOURCE_SHAPES = {name: spec.source_shape for name, spec in _REGISTRY.items()}
VAL_FRACTION = {name: spec.val_fraction for name, spec in _REGISTRY.items()}


def load_arrays(name, data_dir=None, tfds_data_dir=None):
    """Raw uint8 arrays of ``name`` per split plus a description of the source."""
    return dataset_spec(name).load(data_dir, tfds_data_dir)


def load_dataset(name, data_dir=None, batch_size=64, seed=0, tfds_data_dir=None, eval_batch_size=None,
                 train_size=None, subset_seed=None):
    """Load ``name`` as train / validation / test ``tf.data`` pipelines.

    Args:
        name: a registered dataset (``dataset_names()``).
        data_dir: folder of official raw files (offline); None uses tfds (or the embedded sample).
        batch_size: training batch size (training batches drop the remainder,
            so every step sees a full batch; validation and test keep every image).
        seed: shuffling seed of the training pipeline.
        tfds_data_dir: where tensorflow-datasets stores its data (its default when None).
        eval_batch_size: batch size of validation/test (default: ``batch_size``).
        train_size: train on a fixed, class-stratified subset of this many images
            of the training part (see ``subset_train``), drawn after the
            validation images are carved out; validation and test stay whole.
            None uses the whole training part.
        subset_seed: seed of that subset. None (default) uses the fixed
            ``SUBSET_SEED``, so runs with different ``seed`` train on the same
            images; pass a value to draw another subset. Only with ``train_size``.

    Returns:
        ``Splits`` with ``train``, ``val``, ``test`` (None without a test split) and ``info``
        (``info.num_train`` is the subset size and ``info.train_size`` is set when
        ``train_size`` is given).

    Example:
        >>> splits = load_dataset("mnist_sample", batch_size=64)
        >>> splits.info.num_train, splits.info.num_val, splits.info.num_test
        (9000, 1000, 10000)
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if subset_seed is not None and train_size is None:
        raise DataError(f"subset_seed {subset_seed!r} is only used with train_size: set train_size or drop it.")
    arrays, source = load_arrays(name, data_dir, tfds_data_dir)
    (x_tr, y_tr), (x_val, y_val) = split_train_val(*arrays["train"], dataset_spec(name).val_fraction)
    if train_size is not None:
        x_tr, y_tr = subset_train(x_tr, y_tr, train_size, SUBSET_SEED if subset_seed is None else subset_seed)
        train_size = len(x_tr)
        if train_size < batch_size:
            raise DataError(f"train_size {train_size} is smaller than one batch ({batch_size} images, and training "
                            f"drops incomplete batches): use a train_size of at least {batch_size} or lower "
                            "--batch-size.")
    if len(x_tr) < batch_size:
        raise DataError(f"batch_size {batch_size} is larger than the {len(x_tr)} training images: lower --batch-size.")
    test = arrays.get("test")
    eval_bs = eval_batch_size or batch_size
    classes = int(max(y_tr.max(), y_val.max()) + 1)
    info = DatasetInfo(
        name=name, source=source, image_shape=tuple(int(s) for s in x_tr.shape[1:]),
        num_classes=max(classes, 10), num_train=len(x_tr), num_val=len(x_val),
        num_test=0 if test is None else len(test[0]), train_size=train_size,
    )
    return Splits(
        train=make_pipeline(x_tr, y_tr, batch_size, shuffle=True, drop_remainder=True, seed=seed),
        val=make_pipeline(x_val, y_val, eval_bs, shuffle=False, drop_remainder=False),
        test=None if test is None else make_pipeline(*test, eval_bs, shuffle=False, drop_remainder=False),
        info=info,
        arrays={"train": (x_tr, y_tr), "val": (x_val, y_val), **({"test": test} if test is not None else {})},
    )


def synthetic_dataset(num=256, batch_size=32, colors=1, size=28, num_classes=10, seed=0):
    """Tiny random ``(image, label)`` pipeline for tests and benchmarks (images in [-1, 1])."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (num, size, size, colors), dtype=np.uint8)
    y = rng.integers(0, num_classes, num)
    return make_pipeline(x, y, batch_size, shuffle=False, drop_remainder=True)

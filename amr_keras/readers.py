"""Readers of the datasets' official files (IDX, KMNIST's npz, SVHN's .mat, CIFAR-10's pickles) and of
tensorflow-datasets: each returns uint8 images N x H x W x C and int labels per split.

``amr_keras.data`` builds the pipelines on them (its public names include these readers, as before); a file that
is not in the official format raises ``DataError`` with one line saying what is wrong with it.
"""

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

from amr_keras import sources
from amr_keras.sources import OFFLINE_HELP, DataError

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
def load_tfds(tfds_name, tfds_data_dir=None):
    """Load a whole dataset with tensorflow-datasets (by its name there, e.g. ``svhn_cropped``) as numpy arrays
    per split."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

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

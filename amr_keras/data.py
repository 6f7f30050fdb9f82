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
import os

import numpy as np
import tensorflow as tf

from amr_keras import celeba, dsprites
from amr_keras import images as image_folder
from amr_keras.attributes import AttributeGroups, class_group
from amr_keras.images import ImageFiles, decode_file
from amr_keras.networks import IMAGE_SIZE, input_size
from amr_keras.readers import (CIFAR10_ARCHIVE, CIFAR10_BATCHES, CIFAR10_FOLDER, OFFICIAL_MD5,  # noqa: F401
                                load_raw_folder, load_tfds, read_cifar10, read_cifar10_batch, read_idx, read_npz,
                                read_svhn_mat)
from amr_keras.registry import Registry
from amr_keras.sources import OFFLINE_HELP, SPLIT_SEED, DataError  # noqa: F401  (public here as before)

DSPRITES_SIZE = 64
# Default seed of the training subset (``train_size``): fixed, so runs with different
# training seeds train on the same images; distinct from SPLIT_SEED so the two draws
# are not the same random stream.
SUBSET_SEED = SPLIT_SEED + 1
SAMPLE_DIR = os.path.join(os.path.dirname(__file__), "sample_data", "mnist")
# The readers of the official files live in amr_keras.readers; their public names are importable from here.

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
    class_names: tuple = None  # the names of labels 0, 1, ... where the source has them (an image folder's)
    attributes: AttributeGroups = None  # the attribute groups of Splits.attributes (amr_keras.attributes)
    labelled: bool = True  # False: every label is 0 (a folder of images without class subfolders)

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
    # {split: int64 N x G}: each image's value of each attribute group (info.attributes), in arrays' order.
    attributes: dict = dataclasses.field(repr=False, default_factory=dict)


# --------------------------------------------------------------------------- pipelines
def preprocess(images):
    """uint8 (or float in [0, 255]) images of any supported size -> float32 network input in [-1, 1].

    28x28 images are zero-padded by 2 pixels on each side to 32x32 (background
    stays black); square images of a size the networks take (32, 64 for dSprites
    and 64x64 image folders, 128: ``networks.IMAGE_SIZES``) keep their size;
    other sizes are resized to 32x32.
    """
    x = tf.cast(images, tf.float32)
    h, w = x.shape[-3], x.shape[-2]
    if (h, w) == (28, 28):
        x = tf.pad(x, [[0, 0], [2, 2], [2, 2], [0, 0]])
    elif h != w or input_size(h) != h:
        x = tf.image.resize(x, (IMAGE_SIZE, IMAGE_SIZE))
    return x / 127.5 - 1.0


def make_pipeline(images, labels, batch_size, shuffle, drop_remainder, seed=0, attributes=None):
    """Batched, prefetched ``tf.data`` pipeline from uint8 arrays: ``(images, labels)`` batches, or ``(images,
    labels, attributes)`` with ``attributes`` (int codes N x G, ``amr_keras.attributes``).

    Preprocessing runs once per batch (vectorised), after batching.
    """
    extra = () if attributes is None else (np.asarray(attributes, np.int64),)
    files = isinstance(images, ImageFiles)  # read from the files as the pipeline goes
    ds = tf.data.Dataset.from_tensor_slices((images.paths if files else images, labels.astype(np.int32), *extra))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if files:
        ds = ds.map(lambda path, *rest: (decode_file(path, images.size, images.channels), *rest),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(lambda x, *rest: (preprocess(x), *rest), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def train_pipeline(images, labels, batch_size, seed=0, start_epoch=0, start_step=None, attributes=None):
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
        attributes: int codes N x G of the images (``amr_keras.attributes``): batches are then ``(images, labels,
            attributes)``.
    """
    files = images if isinstance(images, ImageFiles) else None
    extra = () if attributes is None else (tf.constant(np.asarray(attributes, np.int64)),)
    n = len(images)
    images = tf.constant(files.paths if files else images)
    labels = tf.constant(labels.astype(np.int32))
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
    if files:  # the same batches, each image read from its file (in parallel) as the batch is made
        ds = ds.unbatch().map(lambda i: (decode_file(images[i], files.size, files.channels), labels[i],
                                         *(a[i] for a in extra)),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size, drop_remainder=True).map(lambda x, *rest: (preprocess(x), *rest),
                                                           num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda idx: (preprocess(tf.gather(images, idx)), tf.gather(labels, idx),
                                 *(tf.gather(a, idx) for a in extra)),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def split_train_val(images, labels, val_fraction, seed=SPLIT_SEED, return_index=False):
    """Carve a validation set out of a training split with a fixed permutation (``return_index``: also the
    indices ``(train, val)`` of the two parts)."""
    n = len(images)
    n_val = round(n * val_fraction)
    if n_val < 1 or n_val >= n:
        raise DataError(f"Cannot carve a validation set ({val_fraction:.0%}) out of {n} training images.")
    perm = np.random.default_rng(seed).permutation(n)
    val, train = perm[:n_val], perm[n_val:]
    parts = (images[train], labels[train]), (images[val], labels[val])
    return (*parts, (train, val)) if return_index else parts


def subset_train(images, labels, size, seed=SUBSET_SEED, return_index=False):
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
    return (images[index], labels[index], index) if return_index else (images[index], labels[index])


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
            images N x H x W x C, int labels, and a line saying where they came from (``test`` may be absent;
            a ``val`` split, when given, is used as it is instead of one carved out of ``train``; a
            ``"class_names"`` entry, when given, names the labels 0, 1, ... and sets the number of classes;
            ``"labelled": False`` says the labels are all 0 and mean nothing; an
            ``"attributes"`` entry, ``(AttributeGroups, {split: int codes N x G})``, gives the images'
            attributes, which are otherwise the class as one group).
        preset: the preset (``amr_keras.config.PRESETS``) a run gets when none is named.
        arch: the network family (``amr_keras.networks.ARCHS``) a run gets when none is named.
        tfds_name: its tensorflow-datasets builder, if any.
        factors: labelled by generative factors (dSprites): the FactorVAE metric applies.
        summary: one line for the docs and ``--help``.
        options: keyword options its ``load`` takes besides the two folders (``load_dataset`` passes them on
            when set; e.g. ``skip_bad_images`` for ``images``).
        min_classes: the probe's and the export's classes are at least this many, however few the labels seen
            (10 for the built-in sets, whose subsets may miss a class); ``images`` has exactly its folder's.
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
    options: tuple = ()
    min_classes: int = 10


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
        return load_tfds(dataset_spec(name).tfds_name, tfds_data_dir), "tensorflow-datasets"
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
    DatasetSpec("images", source_shape=(image_folder.IMAGE_SIZE, image_folder.IMAGE_SIZE, image_folder.CHANNELS),
                val_fraction=image_folder.VAL_SHARE, load=image_folder.load_image_folder,
                options=("skip_bad_images", "image_size", "channels", "cache", "attributes"), min_classes=2,
                summary="your own images: --data-dir DIR with a subfolder per class (amr_keras.images)"),
    DatasetSpec("celeb_a", source_shape=(celeba.IMAGE_SIZE, celeba.IMAGE_SIZE, 3), val_fraction=0.1,
                load=celeba.load_celeba, tfds_name=celeba.TFDS_NAME, options=("image_size",), min_classes=2,
                summary="CelebA faces from tensorflow-datasets, 64x64, unlabelled, its 40 attributes as groups"),
):
    register_dataset(_spec)

# The built-in datasets, and views of their specs under the names the package used before the registry (use
# dataset_spec and dataset_names in new code: they also see datasets registered later).
DATASETS = dataset_names()
DSPRITES_DATASETS = tuple(name for name in DATASETS if _REGISTRY[name].factors)
TFDS_NAMES = {name: spec.tfds_name for name, spec in _REGISTRY.items() if spec.tfds_name}
SOURCE_SHAPES = {name: spec.source_shape for name, spec in _REGISTRY.items()}
VAL_FRACTION = {name: spec.val_fraction for name, spec in _REGISTRY.items()}


def load_arrays(name, data_dir=None, tfds_data_dir=None, **options):
    """Raw uint8 arrays of ``name`` per split plus a description of the source.

    Raises:
        DataError: an option set (not None or False) that the dataset's ``load`` does not take.
    """
    spec = dataset_spec(name)
    options = {key: value for key, value in options.items() if value is not None}
    refused = sorted(set(options) - set(spec.options))
    if refused:
        flags = ", ".join("--" + key.replace("_", "-") for key in refused)
        raise DataError(f"{flags} does not apply to --dataset {name} (it reads a folder of image files: "
                        "--dataset images).")
    return spec.load(data_dir, tfds_data_dir, **options)


def load_dataset(name, data_dir=None, batch_size=64, seed=0, tfds_data_dir=None, eval_batch_size=None,
                 train_size=None, subset_seed=None, skip_bad_images=False, image_size=None, channels=None,
                 cache=None, attributes=None, with_attributes=False):
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
        skip_bad_images: ``images`` only: leave out the files that cannot be decoded (counted in the source
            line) instead of stopping with an error naming the first.
        image_size, channels: ``images`` only: side (``networks.IMAGE_SIZES``; None: 32) and channels (3 or 1;
            None: 3) the images are decoded to.
        cache: ``images`` only: True holds the decoded images in memory, False reads them from their files every
            epoch (``images.ImageFiles``), None decides by their size (``images.CACHE_LIMIT``).
        attributes: ``images`` only: the table of the images' attributes (None: the folder's own, if any).
        with_attributes: the pipelines yield ``(images, labels, attributes)`` batches (class-conditional mixing).

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
    arrays, source = load_arrays(name, data_dir, tfds_data_dir, skip_bad_images=skip_bad_images or None,
                                 image_size=image_size, channels=channels, cache=cache, attributes=attributes)
    class_names = arrays.pop("class_names", None)
    labelled = arrays.pop("labelled", True)
    groups, codes = arrays.pop("attributes", (None, None))
    if groups is None and not labelled:  # no attribute at all (an unlabelled folder without a table)
        codes = {split: np.zeros((len(y), 0), np.int64) for split, (_, y) in arrays.items()}
    elif groups is None:  # the class as one attribute group
        names = class_names or [str(c) for c in range(int(max(y.max() for _, y in arrays.values())) + 1)]
        groups = class_group(names)
        codes = {split: np.asarray(y, np.int64).reshape(-1, 1) for split, (_, y) in arrays.items()}
    if "val" in arrays:  # a source with a validation split of its own (an image folder's val/)
        (x_tr, y_tr), (x_val, y_val) = arrays["train"], arrays["val"]
        a_tr, a_val = codes["train"], codes["val"]
    else:
        (x_tr, y_tr), (x_val, y_val), (train, val) = split_train_val(
            *arrays["train"], dataset_spec(name).val_fraction, return_index=True)
        a_tr, a_val = codes["train"][train], codes["train"][val]
    if train_size is not None:
        x_tr, y_tr, index = subset_train(x_tr, y_tr, train_size, SUBSET_SEED if subset_seed is None else subset_seed,
                                         return_index=True)
        a_tr = a_tr[index]
        train_size = len(x_tr)
        if train_size < batch_size:
            raise DataError(f"train_size {train_size} is smaller than one batch ({batch_size} images, and training "
                            f"drops incomplete batches): use a train_size of at least {batch_size} or lower "
                            "--batch-size.")
    if len(x_tr) < batch_size:
        raise DataError(f"batch_size {batch_size} is larger than the {len(x_tr)} training images: lower --batch-size.")
    test = arrays.get("test")
    eval_bs = eval_batch_size or batch_size
    classes = len(class_names) if class_names else int(max(y_tr.max(), y_val.max()) + 1)
    info = DatasetInfo(
        name=name, source=source, image_shape=tuple(int(s) for s in x_tr.shape[1:]),
        num_classes=max(classes, dataset_spec(name).min_classes), num_train=len(x_tr), num_val=len(x_val),
        num_test=0 if test is None else len(test[0]), train_size=train_size,
        class_names=None if class_names is None else tuple(class_names), attributes=groups, labelled=labelled,
    )
    def attrs(codes):
        return codes if with_attributes else None

    return Splits(
        train=make_pipeline(x_tr, y_tr, batch_size, shuffle=True, drop_remainder=True, seed=seed,
                            attributes=attrs(a_tr)),
        val=make_pipeline(x_val, y_val, eval_bs, shuffle=False, drop_remainder=False, attributes=attrs(a_val)),
        test=None if test is None else make_pipeline(*test, eval_bs, shuffle=False, drop_remainder=False,
                                                     attributes=attrs(codes["test"])),
        info=info,
        arrays={"train": (x_tr, y_tr), "val": (x_val, y_val), **({"test": test} if test is not None else {})},
        attributes={"train": a_tr, "val": a_val, **({"test": codes["test"]} if test is not None else {})},
    )


def synthetic_dataset(num=256, batch_size=32, colors=1, size=28, num_classes=10, seed=0):
    """Tiny random ``(image, label)`` pipeline for tests and benchmarks (images in [-1, 1])."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (num, size, size, colors), dtype=np.uint8)
    y = rng.integers(0, num_classes, num)
    return make_pipeline(x, y, batch_size, shuffle=False, drop_remainder=True)

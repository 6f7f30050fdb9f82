"""A folder of your own images as a dataset (``--dataset images --data-dir DIR``).

Layouts, in the habit of ``keras.utils.image_dataset_from_directory``:

- ``DIR/CLASS/*.png``: one subfolder per class, its name the label (classes in sorted order); the images are
  split into training, validation and test by a fixed, seeded draw stratified by class (``VAL_SHARE`` and
  ``TEST_SHARE`` of each class, at least one image each where a class has three or more);
- ``DIR/*.png``: images without class subfolders, unlabelled (every label 0; the loader says ``"labelled":
  False``), split the same way; ``DIR/train/*.png`` and the like too;
- ``DIR/train/CLASS/...``, ``DIR/val/CLASS/...``, ``DIR/test/CLASS/...``: the splits as given (``val`` and
  ``test`` may be left out: validation is then drawn from ``train`` as above, and there is no test split).

Files ending in .png, .jpg, .jpeg, .bmp or .gif (any case) are read, grey, RGB or RGBA, at any size: each is
decoded in parallel by ``tf.data``, made RGB (grey repeated, alpha dropped; with ``channels=1`` then grey by the
luma weights of ``tf.image.rgb_to_grayscale``), centre-cropped to a square (the aspect ratio is kept, the longer
side loses its edges) and resized to ``image_size`` (32, 64 or 128; area-averaged). Every file is decoded once
before training (a bad file is named before the first step); the decoded images are then held in memory as
uint8 when they take at most ``CACHE_LIMIT`` bytes (or with ``cache=True``), and otherwise (or with
``cache=False``) read from their files again each time they are used (``ImageFiles``: ``tf.data`` decodes them
in parallel as the batches are made, the same batches as held images give). The first pass prints how many
images each class has. Every problem gets one ``DataError`` line: a missing or empty folder, a folder with one
class, images beside class subfolders, a class of ``val``/``test`` that ``train`` does not have, and a file that
cannot be decoded (named, with how many others failed; with ``skip_bad_images`` such files are left out and
counted instead).
"""

import os

import numpy as np

from amr_keras.sources import SPLIT_SEED, DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
IMAGE_SIZE = 32  # the default size (--image-size: 32, 64 or 128)
CHANNELS = 3
SPLIT_FOLDERS = ("train", "val", "test")
VAL_SHARE = 0.1
TEST_SHARE = 0.1
# Attribute tables found in the folder when none is named (amr_keras.attributes): a CSV, or CelebA's own file.
ATTRIBUTE_FILES = ("attributes.csv", "list_attr_celeba.txt")
# Decoded images up to this many bytes are held in memory (load_image_folder's cache=None); above, read from disk.
CACHE_LIMIT = 2**30


def _mib(nbytes):
    return f"{nbytes / 2**20:.1f} MiB" if nbytes < 2**30 else f"{nbytes / 2**30:.3g} GiB"


def _is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _images_in(folder):
    """Image files directly in ``folder`` (sorted), and the subfolders holding images anywhere below them."""
    files, classes = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file() and _is_image(entry.name):
            files.append(entry.path)
        elif entry.is_dir() and not entry.name.startswith("."):
            classes.append(entry.name)
    return files, classes


def _class_files(folder):
    """Every image below ``folder`` (its subfolders searched too), sorted."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, n) for n in sorted(names) if _is_image(n)]
    return found


def scan_labelled(folder, class_names=None):
    """``(paths, labels, class_names)`` of a folder of class subfolders; of a folder of images alone (no
    subfolder): ``(paths, zeros, None)``, unlabelled.

    Args:
        folder: holds one subfolder per class, or the images themselves.
        class_names: the classes of the training split (for ``val`` and ``test``); ``None``: this folder's (an
            unlabelled ``train`` gives ``()`` for the other splits, which must be unlabelled too).

    Raises:
        DataError: images beside the class subfolders, no class with images, one class only (for the training
            split), or a class that the training split does not have.
    """
    loose, subfolders = _images_in(folder)
    if loose and subfolders:
        raise DataError(f"{folder} holds images ({os.path.basename(loose[0])}, ...) beside class subfolders: move "
                        "them into a class subfolder, or out of the folder (a folder of images alone is unlabelled)")
    if loose:
        if class_names:
            raise DataError(f"{folder} holds images without class subfolders, but train/ has classes: give "
                            f"{os.path.basename(folder)}/ the same class subfolders.")
        return loose, np.zeros(len(loose), np.int64), None
    per_class = {name: _class_files(os.path.join(folder, name)) for name in subfolders}
    per_class = {name: files for name, files in per_class.items() if files}
    if not per_class:
        raise DataError(f"{folder} has no images ({', '.join(IMAGE_EXTENSIONS)}) in class subfolders "
                        "(DIR/CLASS/IMAGE).")
    if class_names is None:
        if len(per_class) == 1:
            raise DataError(f"{folder} has one class ({next(iter(per_class))}): the probe and the evaluation need "
                            "two or more class subfolders.")
        class_names = sorted(per_class)
    unknown = sorted(set(per_class) - set(class_names))
    if unknown:
        raise DataError(f"{folder} has classes that train/ does not have: {', '.join(unknown)}.")
    paths = [p for name in class_names for p in per_class.get(name, [])]
    labels = [i for i, name in enumerate(class_names) for _ in per_class.get(name, [])]
    return paths, np.asarray(labels, np.int64), class_names


def stratified_split(labels, seed=SPLIT_SEED, val_share=VAL_SHARE, test_share=TEST_SHARE):
    """Indices ``(train, val, test)`` of a split stratified by class: each class gives ``val_share`` and
    ``test_share`` of its images (rounded, at least one each when it has three or more), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    parts = ([], [], [])
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n = len(members)
        n_val = max(1, round(val_share * n)) if n >= 3 else 0
        n_test = max(1, round(test_share * n)) if n >= 3 else 0
        parts[1].append(members[:n_val])
        parts[2].append(members[n_val:n_val + n_test])
        parts[0].append(members[n_val + n_test:])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)


def decode_file(path, size=IMAGE_SIZE, channels=CHANNELS):
    """One image file -> uint8 ``size x size x channels`` tensor (TensorFlow ops, for ``tf.data``'s ``map``):
    decoded as RGB, made grey when ``channels`` is 1, centre-cropped to a square and area-resized."""
    import tensorflow as tf

    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    if channels == 1:
        image = tf.image.rgb_to_grayscale(image)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.minimum(height, width)
    image = tf.image.crop_to_bounding_box(image, (height - side) // 2, (width - side) // 2, side, side)
    image = tf.image.resize(image, (size, size), method="area", antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return tf.ensure_shape(image, (size, size, channels))


def _bad_files_error(paths, decoded):
    bad = [paths[i] for i in np.flatnonzero(~decoded)]
    others = f" (and {len(bad) - 1} other file{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
    return DataError(f"cannot decode {bad[0]}{others}: not an image of a supported format "
                     f"({', '.join(IMAGE_EXTENSIONS)}); remove or replace it.")


def decode_images(paths, size=IMAGE_SIZE, channels=CHANNELS, skip_bad=False, keep=True):
    """uint8 images ``len(paths) x size x size x channels``, decoded in parallel, centre-cropped and resized.

    Args:
        paths: image files.
        size: height and width of the result.
        channels: 3 (RGB) or 1 (grey).
        skip_bad: return ``(images, decoded)`` instead of raising for files that cannot be decoded: ``decoded`` a
            boolean mask over ``paths``, the images of the files it marks False left black.
        keep: False: decode every file once to check it, keep no pixels, and return ``decoded`` alone (memory
            of one batch whatever the number of files).

    Raises:
        DataError: a file that cannot be decoded (named, with the count of the others that failed), unless
            ``skip_bad``.
    """
    import tensorflow as tf

    def load(index, path):
        return index, decode_file(path, size, channels)

    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), np.asarray(paths, dtype=str)))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors().batch(256)
    images = np.zeros((len(paths) if keep else 0, size, size, channels), np.uint8)
    seen = np.zeros(len(paths), bool)
    for index, batch in ds.as_numpy_iterator():
        seen[index] = True
        if keep:
            images[index] = batch
    if not skip_bad and not seen.all():
        raise _bad_files_error(paths, seen)
    if not keep:
        return seen
    return (images, seen) if skip_bad else images


class ImageFiles:
    """Images read from their files when used: a uint8 array ``N x size x size x channels`` that is never held
    in memory whole.

    It has what the package uses of an array: ``len``, ``shape``, ``dtype`` and ``ndim``; indexing by a slice, an
    index array or a mask gives another ``ImageFiles`` (nothing is read); ``np.asarray`` reads its images (keep
    that to small selections, e.g. the pairs of a figure). ``amr_keras.data``'s pipelines read the files in
    parallel with ``tf.data`` as they go, and ``batches`` does for code that loops over them.

    Args:
        paths: the image files, in order.
        size, channels: what each file is decoded to (see ``decode_file``).
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, paths, size=IMAGE_SIZE, channels=CHANNELS):
        self.paths = np.asarray(paths, dtype=str)
        self.size, self.channels = int(size), int(channels)

    @property
    def shape(self):
        return (len(self.paths), self.size, self.size, self.channels)

    @property
    def nbytes(self):
        return int(np.prod(self.shape))

    def __len__(self):
        return len(self.paths)

    def __repr__(self):
        return f"ImageFiles({len(self)} files, {self.size}x{self.size}x{self.channels})"

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return np.asarray(self[[int(index)]])[0]
        return ImageFiles(self.paths[index], self.size, self.channels)

    def __array__(self, dtype=None, copy=None):
        images = decode_images(list(self.paths), self.size, self.channels)
        return images if dtype is None else images.astype(dtype)

    def dataset(self):
        """``tf.data.Dataset`` of the decoded images (uint8, in order, read in parallel)."""
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices(self.paths).map(
            lambda path: decode_file(path, self.size, self.channels), num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True)

    def batches(self, batch_size):
        """The images as uint8 numpy batches of ``batch_size`` (the last may be smaller), read ahead."""
        import tensorflow as tf

        return self.dataset().batch(int(batch_size)).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def _value_order(values):
    """Distinct values of an attribute column, numbers in numeric order (``-1`` before ``1``), else sorted."""
    distinct = sorted(set(values))
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return distinct


def read_attribute_table(path):
    """``(column names, {file name: [values]})`` of an attribute table.

    Two layouts: a CSV whose header names the file column and then each attribute (``file,smiling,hat``), and
    CelebA's ``list_attr_celeba.txt`` (a line with the number of images, a line of attribute names, then one
    line per image: its file name and a value per attribute, separated by spaces).

    Raises:
        DataError: an empty table, a row with another number of values than the header's names, an empty value,
            a file named twice.
    """
    import csv

    with open(path, newline="", encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"{path} is empty: give a header (file, then one name per attribute) and a row per image.")
    if lines[0].strip().isdigit():  # CelebA's layout
        names, rows, first = lines[1].split(), [line.split() for line in lines[2:]], 3
    else:
        table = list(csv.reader(lines))
        names, rows, first = [n.strip() for n in table[0][1:]], table[1:], 2
    if not names:
        raise DataError(f"{path} names no attribute: its header is the file column, then one name per attribute.")
    out = {}
    for number, row in enumerate(rows, first):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(names) + 1 or any(not cell.strip() for cell in row):
            empty = " with an empty one" if len(row) == len(names) + 1 else ""
            raise DataError(f"{path}:{number}: expected a file name and {len(names)} values "
                            f"({', '.join(names)}), got {len(row)} field(s){empty}.")
        key = row[0].strip()
        if key in out:
            raise DataError(f"{path}:{number}: {key} has a row already.")
        out[key] = [cell.strip() for cell in row[1:]]
    if not out:
        raise DataError(f"{path} has a header but no row.")
    return names, out


def attributes_of_files(path, data_dir, files):
    """``(AttributeGroups, int64 codes N x G)`` of ``files`` (paths below ``data_dir``) from the table at ``path``.

    A file's row is found by its path relative to ``data_dir`` (``cats/1.png``; ``train/cats/1.png`` in a
    split layout), else relative to its split folder, else by its name alone when no other file has that name.
    Each column becomes a group whose values are the column's distinct values (numbers in numeric order).

    Raises:
        DataError: images without a row (how many, and the first), a column with one value.
    """
    from amr_keras.attributes import AttributeGroups

    names, rows = read_attribute_table(path)
    base_counts = {}
    for file in files:
        base_counts[os.path.basename(file)] = base_counts.get(os.path.basename(file), 0) + 1
    found, missing = [], []
    for file in files:
        rel = os.path.relpath(file, data_dir).replace(os.sep, "/")
        keys = [rel, rel.partition("/")[2] if rel.split("/")[0] in SPLIT_FOLDERS else None,
                os.path.basename(file) if base_counts[os.path.basename(file)] == 1 else None]
        row = next((rows[k] for k in keys if k is not None and k in rows), None)
        if row is None:
            missing.append(rel)
        found.append(row)
    if missing:
        raise DataError(f"{path} has no row for {len(missing)} of the {len(files)} images (the first: {missing[0]}): "
                        "add a row per image (its path below the folder, or its name), or remove those images.")
    columns = list(zip(*found))
    values = [_value_order(column) for column in columns]
    for name, column_values in zip(names, values):
        if len(column_values) < 2:
            raise DataError(f"{path}: attribute {name!r} has one value ({column_values[0]}) for every image: "
                            "drop the column.")
    groups = AttributeGroups.of(**{name: tuple(v) for name, v in zip(names, values)})
    index = [{value: i for i, value in enumerate(v)} for v in values]
    codes = np.array([[index[g][row[g]] for g in range(len(names))] for row in found], np.int64)
    return groups, codes.reshape(len(files), len(names))


def find_attribute_table(data_dir):
    """The attribute table in ``data_dir`` (``ATTRIBUTE_FILES``, the first found), or None."""
    for name in ATTRIBUTE_FILES:
        if os.path.isfile(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    return None


def load_image_folder(data_dir, tfds_data_dir=None, image_size=None, channels=None, verbose=True,
                      skip_bad_images=False, cache=None, attributes=None):
    """The ``load`` of the ``images`` dataset: ``({"train", "val", "test"}: (uint8 images, labels), "class_names":
    [...]}, source)``.

    ``val`` and ``test`` are present when the folder has them or when the split is drawn (see the module's
    docstring); the source line names the folder, the layout, the classes and the split.

    Args:
        data_dir: the folder.
        tfds_data_dir: unused (the signature of every dataset's ``load``).
        image_size: height and width of the images (None: ``IMAGE_SIZE``).
        channels: 3 (RGB) or 1 (grey; colour images averaged by ``tf.image``'s luma weights); None: 3.
        verbose: print the count of images per class.
        skip_bad_images: leave out the files that cannot be decoded, count them and name the first (the source
            line says how many), instead of stopping at the first.
        cache: True: the decoded images are held in memory (uint8 arrays); False: they are read from their files
            every time they are used (``ImageFiles``: memory of a few batches, whatever the folder's size); None
            (default): held when they take at most ``CACHE_LIMIT`` bytes, read from the files otherwise. Every
            file is decoded once before training either way, so a bad file is named before the first step.
        attributes: a table of the images' attributes (``read_attribute_table``); None: ``DIR/attributes.csv``
            or ``DIR/list_attr_celeba.txt`` when there is one. Without a table the class is the one attribute.

    Raises:
        DataError: no ``--data-dir``, or a layout or file problem (one line saying which).
    """
    size, channels = image_size or IMAGE_SIZE, channels or CHANNELS
    if data_dir is None:
        raise DataError("--dataset images reads your own images: give their folder with --data-dir DIR "
                        "(DIR/CLASS/IMAGE, or DIR/train/CLASS/IMAGE with val/ and test/ beside it).")
    if not os.path.isdir(data_dir):
        raise DataError(f"--data-dir {data_dir!r} does not exist or is not a folder.")
    given = [name for name in SPLIT_FOLDERS if os.path.isdir(os.path.join(data_dir, name))]
    if given and "train" not in given:
        raise DataError(f"{data_dir} has {'/ and '.join(given)}/ but no train/: add train/ (its class subfolders "
                        "name the classes).")
    if given:
        paths, labels, classes = scan_labelled(os.path.join(data_dir, "train"))
        splits = {"train": (paths, labels)}
        for name in ("val", "test"):
            if name in given:
                split_paths, split_labels, _ = scan_labelled(os.path.join(data_dir, name),
                                                             () if classes is None else classes)
                splits[name] = (split_paths, split_labels)
        layout = "train/" + "".join(f", {name}/" for name in ("val", "test") if name in given) + " as given"
        if "val" not in splits:
            layout += f"; validation drawn from train/ ({VAL_SHARE:.0%} of each class, seed {SPLIT_SEED})"
            train, val, _ = stratified_split(labels, val_share=VAL_SHARE, test_share=0.0)
            splits["train"], splits["val"] = (([paths[i] for i in train], labels[train]),
                                              ([paths[i] for i in val], labels[val]))
    else:
        paths, labels, classes = scan_labelled(data_dir)
        train, val, test = stratified_split(labels)
        splits = {name: ([paths[i] for i in idx], labels[idx]) for name, idx in
                  (("train", train), ("val", val), ("test", test))}
        layout = (f"{'class subfolders, split by class' if classes else 'split'} with seed {SPLIT_SEED}: "
                  f"{1 - VAL_SHARE - TEST_SHARE:.0%} train, {VAL_SHARE:.0%} validation, {TEST_SHARE:.0%} test")
    labelled = classes is not None
    counts = np.bincount(np.concatenate([lab for _, lab in splits.values()]), minlength=len(classes or [0]))
    if verbose:
        print(f"images: {int(counts.sum())} in {data_dir} ({layout}); " + (
            "per class: " + ", ".join(f"{name} {int(n)}" for name, n in zip(classes, counts)) if labelled else
            "no class subfolders: unlabelled (the online probe and the post-hoc evaluation are skipped; "
            "reconstruction, mixing, interpolations and the export go on)"), flush=True)
    # One pass over every file (a bad file is named once, with the count of the others), then the splits.
    every_path = [p for split_paths, _ in splits.values() for p in split_paths]
    bounds = np.cumsum([len(split_paths) for split_paths, _ in splits.values()])[:-1]
    if attributes is not None and not os.path.isfile(attributes):
        raise DataError(f"--attributes {attributes!r} does not exist or is not a file.")
    table = attributes or find_attribute_table(data_dir)
    groups = codes = None
    if table:
        groups, codes = attributes_of_files(table, data_dir, every_path)
        if verbose:
            print(f"images: attributes from {table}: {groups.describe()}", flush=True)
    decoded_bytes = len(every_path) * size * size * channels
    in_memory = cache if cache is not None else decoded_bytes <= CACHE_LIMIT
    if in_memory:
        full, decoded = decode_images(every_path, size, channels, skip_bad=True)
    else:
        decoded = decode_images(every_path, size, channels, skip_bad=True, keep=False)
        full = ImageFiles(every_path, size, channels)
    skipped = ""
    bad = [p for p, ok in zip(every_path, decoded) if not ok]
    if bad and not skip_bad_images:
        raise _bad_files_error(every_path, decoded)
    if bad:
        files = f"{len(bad)} file{'s' if len(bad) > 1 else ''} that cannot be decoded"
        skipped = f"; {files} skipped, the first {bad[0]}"
        if verbose:
            print(f"images: skipped {files} (--skip-bad-images), the first {bad[0]}", flush=True)
    if verbose:
        why = ("--cache" if cache else "--no-cache") if cache is not None else (
            f"{'within' if in_memory else 'over'} the {_mib(CACHE_LIMIT)} held by default")
        print(f"images: {_mib(decoded_bytes)} decoded, " + ("held in memory" if in_memory else
              "read from the files every epoch") + f" ({why})", flush=True)
    parts = [full[a:b] for a, b in zip([0, *bounds], [*bounds, len(every_path)])]
    arrays = {name: (x[ok], y[ok]) for (name, (_, y)), x, ok
              in zip(splits.items(), parts, np.split(decoded, bounds))}
    kept = {name: ok for name, ok in zip(splits, np.split(decoded, bounds)) if ok.any()}
    arrays = {name: pair for name, pair in arrays.items() if name in kept}
    if "train" not in arrays:
        raise DataError(f"{data_dir}: no training image could be decoded; check the files.")
    source = f"image folder {data_dir} ({layout}; " + (f"classes: {', '.join(classes)}" if labelled else
                                                        "unlabelled") + skipped
    extra = {"class_names": list(classes)} if labelled else {"labelled": False}
    if table:
        source += f"; attributes from {table}: {groups.describe()}"
        extra["attributes"] = (groups, {name: part[kept[name]] for name, part
                                        in zip(splits, np.split(codes, bounds)) if name in kept})
    return {**arrays, **extra}, source + ")"

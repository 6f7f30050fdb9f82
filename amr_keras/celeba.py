"""CelebA through tensorflow-datasets (``--dataset celeb_a``): aligned faces, centre-cropped to a square and
resized (64x64 by default, ``--image-size``), with their 40 binary attributes as 40 attribute groups (no, yes).

The images have no class label: the run is unlabelled (no online probe scores, no post-hoc evaluation; see
``amr_keras.images``), and the attributes are what class-conditional mixing (``--cls``) works with. The splits
are tensorflow-datasets' (CelebA's official train, validation and test partitions). The decoded images are held
in memory: 12 KB each at 64x64, 2.4 GB for the 202,599 images.

Offline, tensorflow-datasets cannot download it; the same data trains through the image-folder route: CelebA's
``img_align_celeba/`` folder as ``--dataset images --data-dir img_align_celeba --attributes list_attr_celeba.txt
--image-size 64`` (the attribute file is read as it is).
"""

import os

import numpy as np

from amr_keras import sources
from amr_keras.sources import DataError

TFDS_NAME = "celeb_a"
IMAGE_SIZE = 64
SPLITS = {"train": "train", "val": "validation", "test": "test"}
FOLDER_ARGS = "--dataset images --data-dir DIR/img_align_celeba --attributes DIR/list_attr_celeba.txt --image-size 64"
FOLDER_ROUTE = f"offline, train on CelebA's own files instead: {FOLDER_ARGS}"


def _square(images, size):
    import tensorflow as tf

    side = min(int(images.shape[1]), int(images.shape[2]))
    top, left = (int(images.shape[1]) - side) // 2, (int(images.shape[2]) - side) // 2
    x = tf.image.resize(images[:, top:top + side, left:left + side], (size, size), method="area", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)


def load_celeba(data_dir=None, tfds_data_dir=None, image_size=None, verbose=True):
    """The ``load`` of ``celeb_a``: ``({"train", "val", "test": (uint8 images, zero labels), "labelled": False,
    "attributes": (groups, {split: codes})}, source)``.

    Raises:
        DataError: ``--data-dir`` given (the folder route is ``--dataset images``), or tensorflow-datasets cannot
            give the data (offline and not prepared): the line names the folder route.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from amr_keras.attributes import AttributeGroups

    if data_dir is not None:
        raise DataError(f"--dataset celeb_a reads tensorflow-datasets; for CelebA's own files use {FOLDER_ARGS}.")
    size = image_size or IMAGE_SIZE
    builder = tfds.builder(TFDS_NAME, data_dir=tfds_data_dir)
    prepared = tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json"))
    if not prepared and not sources.network_available():
        raise DataError(f"tensorflow-datasets cannot download {TFDS_NAME!r}: no network, and it is not prepared in "
                        f"{builder.data_dir}; {FOLDER_ROUTE}.")
    names, out, codes = None, {}, {}
    for split, tfds_split in SPLITS.items():
        try:
            ds = tfds.load(TFDS_NAME, split=tfds_split, data_dir=tfds_data_dir)
            images, rows = [], []
            for batch in ds.batch(1024):
                names = names or sorted(batch["attributes"])
                images.append(_square(batch["image"], size).numpy())
                rows.append(np.stack([np.asarray(batch["attributes"][n]).astype(np.int64) for n in names], axis=1))
        except Exception as e:  # download and preparation errors come in many types
            raise DataError(f"tensorflow-datasets failed to load {TFDS_NAME!r} ({type(e).__name__}: {e}); "
                            f"{FOLDER_ROUTE}.") from e
        if images:
            out[split] = (np.concatenate(images), np.zeros(sum(len(i) for i in images), np.int64))
            codes[split] = np.concatenate(rows)
        if verbose:
            print(f"celeb_a: {split} {len(out.get(split, ((),))[0])} images", flush=True)
    groups = AttributeGroups.of(**{name: ("no", "yes") for name in names})
    source = f"tensorflow-datasets celeb_a ({size}x{size} centre crops; {len(names)} attributes; unlabelled)"
    return {**out, "labelled": False, "attributes": (groups, codes)}, source

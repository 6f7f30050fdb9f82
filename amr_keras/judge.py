"""A judge the model cannot fool: an attribute classifier trained on real images only, and the measurement of
class-conditional mixes with it.

The attribute head of a class-conditional AMR (``amr_keras.classmix``) is trained with the model, which is
trained to satisfy it; its verdict on the mixes is a training signal, not a measurement. The judge is a separate
small CNN trained by the evaluation code on the dataset's real training images (one softmax per attribute group),
never on anything the model made, and its accuracy on the real test images is reported beside every score.

``judge_mixes`` then asks for mixes, as the training does (each image paired with a partner, each group taken
from one or the other with probability 1/2), decodes them, and reports, over the pairs whose two images differ
in a group, the share of such groups that the judge finds as asked (per group and overall), and the share of
mixes with every group as asked. Mixes of groups the two images share say nothing of the mixer and are left out
of the per-group shares.

Baselines measured by the same function: ``copy_a`` (the reconstruction of ``a``: carries exactly the groups
asked of ``a``, about half), ``bernoulli`` (a random 0/1 mask per feature map, the unconditional mixer), and the
trained mixer of the model (``informed`` or ``official``).
"""

import dataclasses
import hashlib
import json
import os

import numpy as np

from amr_keras.attributes import AttributeGroups

CACHE_ENV = "AMR_KERAS_CACHE"
JUDGE_EPOCHS = 3
BASELINES = ("copy_a", "bernoulli", "mixer")


def cache_dir():
    """Where judges are kept: ``$AMR_KERAS_CACHE/judges``, else ``~/.cache/amr_keras/judges``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "amr_keras")
    return os.path.join(root, "judges")


def build_judge(image_shape, groups, width=32):
    """The judge's CNN: four stride-2 convolutions (``width`` to ``4 * width`` filters, ReLU), a dense layer of
    128 and the groups' logits side by side. Its input: images in [-1, 1] at the networks' size."""
    import keras
    from keras import layers

    inputs = keras.Input(tuple(image_shape), name="image")
    x = inputs
    for i, filters in enumerate((width, 2 * width, 4 * width, 4 * width)):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu", name=f"conv{i}")(x)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(128, activation="relu", name="dense")(x)
    logits = layers.Dense(groups.width, name="logits")(x)
    return keras.Model(inputs, logits, name="judge")


def predict_codes(judge, images, groups, batch_size=256):
    """The judge's most probable value of each group: int ``(N, groups)`` for images in [-1, 1]."""
    logits = np.concatenate([np.asarray(judge(images[i:i + batch_size], training=False))
                             for i in range(0, len(images), batch_size)])
    out, offset = [], 0
    for size in groups.sizes:
        out.append(np.argmax(logits[:, offset:offset + size], axis=1))
        offset += size
    return np.stack(out, axis=1)


@dataclasses.dataclass
class Judge:
    """A trained judge, its groups, and its accuracy per group on the real test images."""

    model: object
    groups: AttributeGroups
    test_accuracy: dict

    def codes(self, images):
        return predict_codes(self.model, images, self.groups)


def _model_inputs(images):
    from amr_keras.data import preprocess

    return np.asarray(preprocess(np.asarray(images)))


def train_judge(splits, epochs=JUDGE_EPOCHS, batch_size=128, seed=0, verbose=True):
    """Train a judge on ``splits``' real training images and their attributes; score it on the test images
    (validation when there is no test split).

    Args:
        splits: ``amr_keras.data.Splits`` with ``info.attributes``.
    """
    import keras
    import tensorflow as tf

    from amr_keras.classmix import group_cross_entropy

    groups = splits.info.attributes
    keras.utils.set_random_seed(seed)
    x = _model_inputs(splits.arrays["train"][0])
    judge = build_judge(x.shape[1:], groups)
    optimizer = keras.optimizers.Adam(1e-3)
    codes = tf.constant(splits.attributes["train"])

    @tf.function
    def step(images, target):
        with tf.GradientTape() as tape:
            loss = group_cross_entropy(judge(images, training=True), target, groups.sizes)
        optimizer.apply_gradients(zip(tape.gradient(loss, judge.trainable_variables), judge.trainable_variables))
        return loss

    rng = np.random.default_rng(seed)
    batch_size = min(batch_size, len(x))
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            loss = step(tf.constant(x[idx]), tf.gather(codes, idx))
        if verbose:
            print(f"judge: epoch {epoch + 1}/{epochs}, loss {float(loss):.4f}", flush=True)
    split = "test" if "test" in splits.arrays else "val"
    predicted = predict_codes(judge, _model_inputs(splits.arrays[split][0]), groups)
    truth = splits.attributes[split]
    accuracy = {name: float(np.mean(predicted[:, g] == truth[:, g])) for g, name in enumerate(groups.names)}
    return Judge(judge, groups, accuracy)


def _cache_name(dataset, image_shape, groups, epochs):
    key = json.dumps([dataset, list(image_shape), groups.to_json(), epochs], sort_keys=True)
    return f"judge-{dataset}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def load_or_train_judge(dataset, splits, folder=None, epochs=JUDGE_EPOCHS, seed=0, verbose=True):
    """The judge of ``dataset``: from ``folder`` (default ``cache_dir()``) when it was trained before with these
    groups, image shape and epochs, else trained now and kept there."""
    import keras

    folder = folder or cache_dir()
    name = _cache_name(dataset, splits.info.image_shape, splits.info.attributes, epochs)
    model_path, info_path = os.path.join(folder, name + ".keras"), os.path.join(folder, name + ".json")
    if os.path.exists(model_path) and os.path.exists(info_path):
        with open(info_path) as f:
            info = json.load(f)
        return Judge(keras.saving.load_model(model_path), splits.info.attributes, info["test_accuracy"])
    judge = train_judge(splits, epochs=epochs, seed=seed, verbose=verbose)
    os.makedirs(folder, exist_ok=True)
    judge.model.save(model_path + ".tmp.keras")
    os.replace(model_path + ".tmp.keras", model_path)
    with open(info_path + ".tmp", "w") as f:
        json.dump({"dataset": dataset, "test_accuracy": judge.test_accuracy, "epochs": epochs}, f, indent=2)
    os.replace(info_path + ".tmp", info_path)
    return judge


def draw_pairs(attributes, pairs, seed=0):
    """``(a, b, take)``: ``pairs`` index pairs of distinct images and, per pair and group, 1 where the group is
    asked of ``a`` (Bernoulli(1/2)), 0 of ``b``."""
    rng = np.random.default_rng(seed)
    n = len(attributes)
    a = rng.integers(0, n, pairs)
    b = (a + rng.integers(1, n, pairs)) % n
    take = (rng.random((pairs, attributes.shape[1])) < 0.5).astype(np.float32)
    return a, b, take


def judge_mixes(judge, mix_fn, images, attributes, pairs=1000, seed=0, batch_size=256):
    """Score mixes by the judge.

    Args:
        judge: a ``Judge``.
        mix_fn: ``mix_fn(x_a, x_b, attrs_a, attrs_b, take) -> images in [-1, 1]``: the mixes of a batch (network
            inputs ``x`` in [-1, 1]; ``take`` float ``(batch, groups)``, 1 where the group comes from ``a``).
        images: uint8 images; ``attributes``: their int codes ``(N, groups)``.

    Returns:
        dict: ``carried`` (share of groups found as asked, over pairs that differ in the group), ``carried_<group>``
        per group, ``all_right`` (share of mixes with every group as asked, over every pair), ``pairs``.
    """
    a, b, take = draw_pairs(attributes, pairs, seed)
    asked = np.where(take > 0, attributes[a], attributes[b])
    found = []
    for start in range(0, pairs, batch_size):
        sl = slice(start, start + batch_size)
        xa, xb = _model_inputs(np.asarray(images[a[sl]])), _model_inputs(np.asarray(images[b[sl]]))
        mixed = np.asarray(mix_fn(xa, xb, attributes[a[sl]], attributes[b[sl]], take[sl]))
        found.append(judge.codes(np.clip(mixed, -1.0, 1.0)))
    found = np.concatenate(found)
    right = found == asked
    differ = attributes[a] != attributes[b]
    out = {"pairs": int(pairs), "all_right": float(right.all(axis=1).mean()),
           "carried": float(right[differ].mean()) if differ.any() else None}
    for g, name in enumerate(judge.groups.names):
        out[f"carried_{name}"] = float(right[differ[:, g], g].mean()) if differ[:, g].any() else None
    return out


def mix_functions(model, seed=0):
    """The mixes to compare, as ``judge_mixes``' ``mix_fn``: ``copy_a``, ``bernoulli`` (a random mask per feature
    map, p = 1/2), and ``mixer`` (the model's class mixer, when it has one)."""
    import tensorflow as tf

    from amr_keras.classmix import ClassMixer, apply_mask, one_hot_groups

    rng = np.random.default_rng(seed)

    def decode(code):
        return model._image(model.decode(code))

    def copy_a(xa, xb, attrs_a, attrs_b, take):
        return decode(model.encode(xa))

    def bernoulli(xa, xb, attrs_a, attrs_b, take):
        ca, cb = model.encode(xa), model.encode(xb)
        mask = tf.constant((rng.random((len(xa), int(ca.shape[-1]))) < 0.5).astype(np.float32))
        return decode(apply_mask(mask, ca, cb))

    fns = {"copy_a": copy_a, "bernoulli": bernoulli}
    if getattr(model, "cls_weight", 0) > 0:
        sizes = model.attribute_groups.sizes

        def mixer(xa, xb, attrs_a, attrs_b, take):
            oa, ob = one_hot_groups(attrs_a, sizes), one_hot_groups(attrs_b, sizes)
            asked = np.where(take > 0, attrs_a, attrs_b)
            mask = model.class_mixer(ClassMixer.inputs(model.class_mixer_kind, tf.constant(take), oa, ob,
                                                       one_hot_groups(asked, sizes)))
            return decode(apply_mask(mask, model.encode(xa), model.encode(xb)))

        fns["mixer"] = mixer
    return fns

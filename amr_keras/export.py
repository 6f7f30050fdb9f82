"""Export a trained AMR model as a standalone TensorFlow SavedModel with image-space endpoints.

Clients of the export need neither Keras nor this package: ``tf.saved_model.load``
gives an object with six endpoints (seven with the post-hoc classifier), all on
float32 images in [0, 1] at the dataset's own size (``source_shape``, e.g.
28x28x1 for MNIST, 32x32x3 for SVHN):

| endpoint | inputs | output |
|---|---|---|
| ``encode`` | ``images (B, H, W, C)`` | codes ``(B, 4, 4, 2)`` (the model's code shape) |
| ``decode`` | ``codes (B, *code_shape)`` | images ``(B, H, W, C)`` in [0, 1] |
| ``reconstruct`` | ``images`` | ``decode(encode(images))`` |
| ``mix`` | ``images_a, images_b, weight (B, K)`` | decoded ``weight * f(a) + (1 - weight) * f(b)``, per code channel |
| ``mix_alpha`` | ``images_a, images_b, alpha (B,)`` | decoded ``alpha * f(a) + (1 - alpha) * f(b)`` (mixup, acai) |
| ``classify`` | ``images`` | online linear-probe class probabilities ``(B, num_classes)`` |
| ``classify_linear`` | ``images`` | post-hoc logistic-regression class probabilities ``(B, num_classes)`` |

Two heads classify the same frozen codes. ``classify`` is the linear probe
trained with the autoencoder (the paper's protocol); ``classify_linear`` (when
present) is the logistic regression of ``amr_keras.evaluate.linear_evaluation``
fitted afterwards on the codes of the training split (standardisation, weights
and bias stored as float32 variables, see ``LinearHead``); it scores higher
(e.g. 93.9% against 92.6% test on the MNIST sample): serve it for accuracy, and
``classify`` to follow the paper. ``metadata.json`` says under ``"heads"``
which head each endpoint uses and its accuracy. ``add_linear_head`` adds
``classify_linear`` to an existing export.

``K`` is the number of code channels (``code_shape[-1]``). ``mix`` with a 0/1
``weight`` is the Bernoulli (per-feature-map) mixer; ``mix`` with a mixup weight
``a`` repeated ``K`` times equals ``mix_alpha`` with ``alpha = a``. Both follow
``amr_keras.mixers.mix_pair``.

Inside every endpoint, images are scaled to [0, 255] and go through
``amr_keras.data.preprocess`` (28x28 is zero-padded to 32x32, other sizes are
resized, values go to [-1, 1]); decoded images come back clipped to [0, 1] at the
source size (the 2-pixel pad is cropped off, or the image is resized back).
``to_model_input`` and ``from_model_output`` do these two conversions for the
export, for ``Endpoints`` (the same methods on an eager model) and for the
figures in ``amr_keras.plots``.

Wrong inputs fail at the call. The batch dimension is free; everything else is
fixed by each endpoint's signature. A loaded endpoint called with a batch of
the wrong size (e.g. 32x32x1 on a 28x28x1 export), the wrong rank, or a
``tf.Tensor`` of another dtype raises ``TypeError``, whose first line names
what was received and what was expected::

    TypeError: Binding inputs to tf.function failed due to `Can not cast
    TensorSpec(shape=(1, 32, 32, 1), dtype=tf.float32, name='images') to
    TensorSpec(shape=(None, 28, 28, 1), dtype=tf.float32, name='images')`. Received args: ...

NumPy arrays are converted to float32 first, so a float64 array works, and a
uint8 array would pass as values in [0, 255]: every endpoint therefore checks
that images lie in [0, 1] and otherwise raises
``tf.errors.InvalidArgumentError: ... Images must be float32 in [0, 1]
(divide uint8 images by 255); got min and max ...``. ``metadata.json`` lists
each endpoint's inputs (``"inputs"``).

Example:
    >>> export_model(model, "runs/mnist/export", source_shape=(28, 28, 1), metadata={"dataset": "mnist"})
    >>> m = tf.saved_model.load("runs/mnist/export")       # or load_export(...)
    >>> x = np.zeros((2, 28, 28, 1), "float32")
    >>> m.mix_alpha(x, x, np.full((2,), 0.5, "float32")).shape
    TensorShape([2, 28, 28, 1])
"""

import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

import amr_keras.bvae  # noqa: F401  (registers BVAE for load_model)
import amr_keras.model  # noqa: F401  (registers AMR for load_model)
from amr_keras.data import dataset_names, dataset_spec, preprocess
from amr_keras.mixers import mix_pair
from amr_keras.networks import IMAGE_SIZE

ENDPOINTS = ("encode", "decode", "reconstruct", "mix", "mix_alpha", "classify")
LINEAR_ENDPOINT = "classify_linear"  # exported when a post-hoc classifier is given
# Exported for a model trained with class-conditional mixing (cls > 0; amr_keras.classmix).
CLASS_MIX_ENDPOINTS = ("attributes", "mix_attributes")
METADATA_FILE = "metadata.json"
# data.preprocess zero-pads exactly this source size by PAD pixels on each side.
PADDED_SOURCE = (28, 28)
PAD = (IMAGE_SIZE - PADDED_SOURCE[0]) // 2
# Input images may exceed [0, 1] by rounding error only.
RANGE_TOLERANCE = 1e-3
# Model settings copied from the model's config into metadata.json.
CONFIG_KEYS = ("num_classes", "mixer", "k", "lamb", "beta", "recon", "update_g_every", "seed", "acai_gamma",
               "acai_weight", "probe", "recon_gan", "beta_kl")


def to_model_input(images):
    """Images in [0, 1] at the source size -> the model's input (32x32, [-1, 1]).

    Args:
        images: float ``(batch, H, W, C)`` tensor or array in [0, 1].

    Returns:
        float32 ``(batch, 32, 32, C)`` tensor in [-1, 1] (as ``data.preprocess``).

    Raises:
        tf.errors.InvalidArgumentError: values outside [0, 1] (e.g. uint8 images
            in [0, 255], which a loaded endpoint silently converts to float32).
    """
    x = tf.cast(images, tf.float32)
    lo, hi = tf.reduce_min(x), tf.reduce_max(x)
    tf.debugging.Assert(
        tf.logical_and(lo >= -RANGE_TOLERANCE, hi <= 1.0 + RANGE_TOLERANCE),
        ["Images must be float32 in [0, 1] (divide uint8 images by 255); got min and max", lo, hi],
    )
    return preprocess(x * 255.0)


def from_model_output(images, source_shape):
    """Decoder output (32x32, 64x64 for ``--arch burgess``; about [-1, 1]) -> images in [0, 1] at ``source_shape``.

    Undoes ``to_model_input``: crops the 2-pixel pad of 28x28 sources, resizes
    other sizes back (bilinear).

    Args:
        images: ``(batch, 32, 32, C)`` decoder output.
        source_shape: ``(H, W, C)`` of the dataset's images.

    Returns:
        float32 ``(batch, H, W, C)`` tensor in [0, 1].
    """
    x = (tf.cast(images, tf.float32) + 1.0) / 2.0
    h, w = int(source_shape[0]), int(source_shape[1])
    if (h, w) == PADDED_SOURCE:
        x = x[:, PAD : PAD + h, PAD : PAD + w, :]
    elif (h, w) != tuple(x.shape[1:3]):  # 32x32 networks, or 64x64 ones (dSprites) at their own size
        x = tf.image.resize(x, (h, w))
    return tf.clip_by_value(x, 0.0, 1.0)


def check_source_shape(model, source_shape):
    """Validate ``source_shape`` against the model's encoder; return it as a tuple of ints."""
    shape = tuple(int(s) for s in source_shape)
    colors = model.encoder.input_shape[-1]
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"source_shape must be (height, width, channels), e.g. (28, 28, 1); got {source_shape!r}.")
    if shape[-1] != colors:
        raise ValueError(
            f"source_shape {shape} has {shape[-1]} channel(s) but the model's encoder takes {colors}: "
            "pass the shape of the dataset the model was trained on."
        )
    return shape


class LinearHead(tf.Module):
    """A fitted post-hoc classifier as float32 TensorFlow variables, applied to codes.

    ``probabilities = softmax(((flatten(codes) - mean) / scale) @ kernel + bias)``:
    the ``predict_proba`` of the scikit-learn pipeline (``StandardScaler`` +
    multinomial ``LogisticRegression``) returned by
    ``amr_keras.evaluate.linear_evaluation``.

    Args:
        mean, scale: ``(D,)`` standardisation of the flattened codes.
        kernel: ``(D, num_classes)`` weights; ``bias``: ``(num_classes,)``.

    Example:
        >>> head = LinearHead.from_classifier(linear_evaluation(...)["classifier"], num_classes=10)
        >>> head(codes).shape
        TensorShape([B, 10])
    """

    def __init__(self, mean, scale, kernel, bias, name="linear_head"):
        super().__init__(name=name)
        self.mean, self.scale, self.kernel, self.bias = (
            tf.Variable(np.asarray(v, np.float32), trainable=False, name=n)
            for v, n in ((mean, "mean"), (scale, "scale"), (kernel, "kernel"), (bias, "bias"))
        )

    @classmethod
    def from_classifier(cls, classifier, num_classes):
        """The head of a fitted ``Pipeline(StandardScaler, LogisticRegression)`` with labels in ``0 .. num_classes-1``.

        Classes absent from the training codes get probability 0 (as in
        ``predict_proba``, which has no column for them); a two-class fit (one
        logit ``z`` for its second class) becomes the softmax of ``(0, z)``.
        """
        scaler, logistic = classifier[0], classifier[-1]
        seen = np.asarray(logistic.classes_)
        if seen.min() < 0 or seen.max() >= num_classes:
            raise ValueError(f"The post-hoc classifier knows classes {seen.tolist()}, the model 0 to "
                             f"{num_classes - 1}.")
        coef, intercept = logistic.coef_, logistic.intercept_
        if len(seen) == 2:
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        kernel = np.zeros((coef.shape[1], num_classes))
        bias = np.full(num_classes, -1e4)  # exp(-1e4 - max) is 0 in float32
        kernel[:, seen], bias[seen] = coef.T, intercept
        return cls(scaler.mean_, scaler.scale_, kernel, bias)

    def __call__(self, codes):
        x = tf.reshape(tf.cast(codes, tf.float32), (tf.shape(codes)[0], -1))
        return tf.nn.softmax(tf.matmul((x - self.mean) / self.scale, self.kernel) + self.bias)


class Endpoints:
    """The export's endpoints as methods of an eager model: images in [0, 1] at ``source_shape``.

    ``export_model`` exports these very methods; ``amr_keras.plots`` draws
    figures from either this object or a loaded export.

    Args:
        model: an ``amr_keras.model.AMR`` (its own methods take 32x32 images in [-1, 1]).
        source_shape: ``(H, W, C)`` of the dataset's images.
        linear_head: optional ``LinearHead``; adds the ``classify_linear`` endpoint.

    Example:
        >>> ep = Endpoints(model, (28, 28, 1))
        >>> ep.reconstruct(np.zeros((4, 28, 28, 1), "float32")).shape
        TensorShape([4, 28, 28, 1])
    """

    def __init__(self, model, source_shape, linear_head=None, classify=True):
        self.model = model
        self.source_shape = check_source_shape(model, source_shape)
        self.code_shape = tuple(int(s) for s in model.encoder.output_shape[1:])
        self.num_classes = int(model.num_classes)
        self.linear_head = linear_head
        self.groups = getattr(model, "attribute_groups", None) if getattr(model, "cls_weight", 0) > 0 else None
        self.names = (tuple(n for n in ENDPOINTS if classify or n != "classify")
                      + ((LINEAR_ENDPOINT,) if linear_head is not None else ())
                      + (CLASS_MIX_ENDPOINTS if self.groups is not None else ()))
        # The networks each traced once, as functions the endpoints call (an export traces every endpoint; each
        # would otherwise trace the encoder or the decoder anew: three times as long to write).
        side, colors = int(model.encoder.input_shape[1]), int(model.encoder.input_shape[-1])
        self._encoder = tf.function(model.encode, input_signature=[
            tf.TensorSpec((None, side, side, colors), tf.float32)], autograph=False)
        self._decoder = tf.function(model.decode, input_signature=[
            tf.TensorSpec((None, *self.code_shape), tf.float32)], autograph=False)

    def _out(self, images):
        return from_model_output(images, self.source_shape)

    def encode(self, images):
        """Codes ``(batch, *code_shape)`` of images in [0, 1]."""
        return tf.cast(self._encoder(to_model_input(images)), tf.float32)

    def decode(self, codes):
        """Images in [0, 1] at the source size from codes."""
        return self._out(self._decoder(tf.cast(codes, tf.float32)))

    def reconstruct(self, images):
        """``decode(encode(images))``."""
        return self.decode(self.encode(images))

    def mix(self, images_a, images_b, weight):
        """Decode ``weight * f(a) + (1 - weight) * f(b)`` with one weight per code channel: ``(batch, K)``."""
        return self.decode(mix_pair(self.encode(images_a), self.encode(images_b), weight))

    def mix_alpha(self, images_a, images_b, alpha):
        """Decode the mixup ``alpha * f(a) + (1 - alpha) * f(b)`` with ``alpha`` of shape ``(batch,)``."""
        return self.decode(mix_pair(self.encode(images_a), self.encode(images_b), alpha))

    def classify(self, images):
        """Linear-probe class probabilities ``(batch, num_classes)``; rows sum to 1."""
        return tf.cast(self.model.classify(to_model_input(images)), tf.float32)

    def classify_linear(self, images):
        """Post-hoc classifier probabilities ``(batch, num_classes)`` of the codes; rows sum to 1."""
        return self.linear_head(self.encode(images))

    def attributes(self, images):
        """The attribute head's probabilities ``(batch, sum of the groups' sizes)``: one softmax per group, side
        by side in the order of metadata's ``attribute_groups`` (models trained with ``--cls``)."""
        logits = self.model.attribute_logits(to_model_input(images))
        parts, offset = [], 0
        for size in self.groups.sizes:
            parts.append(tf.nn.softmax(logits[:, offset:offset + size]))
            offset += size
        return tf.concat(parts, axis=-1)

    def mix_attributes(self, images_a, images_b, take_from_a):
        """Decode the class-conditional mix of ``a`` and ``b``: ``take_from_a`` ``(batch, groups)`` says, group by
        group, whether the attribute comes from ``a`` (1) or ``b`` (0). The images' own attributes, which the
        mixer reads, are the attribute head's most probable values."""
        from amr_keras.classmix import ClassMixer, apply_mask, one_hot_groups

        xa, xb = to_model_input(images_a), to_model_input(images_b)
        own = [self._attribute_codes(x) for x in (xa, xb)]
        take = tf.cast(take_from_a, tf.float32)
        asked = tf.where(take > 0.5, own[0], own[1])
        sizes = self.groups.sizes
        mask = self.model.class_mixer(ClassMixer.inputs(self.model.class_mixer_kind, take,
                                                        one_hot_groups(own[0], sizes), one_hot_groups(own[1], sizes),
                                                        one_hot_groups(asked, sizes)))
        return self.decode(apply_mask(mask, self._encoder(xa), self._encoder(xb)))

    def _attribute_codes(self, model_input):
        logits, codes, offset = self.model.attribute_logits(model_input), [], 0
        for size in self.groups.sizes:
            codes.append(tf.argmax(logits[:, offset:offset + size], axis=-1))
            offset += size
        return tf.stack(codes, axis=1)

    def input_signatures(self):
        """``{endpoint: [tf.TensorSpec, ...]}``: the fixed inputs of each endpoint (batch dimension free)."""
        image = tf.TensorSpec((None, *self.source_shape), tf.float32, name="images")
        codes = tf.TensorSpec((None, *self.code_shape), tf.float32, name="codes")
        a = tf.TensorSpec((None, *self.source_shape), tf.float32, name="images_a")
        b = tf.TensorSpec((None, *self.source_shape), tf.float32, name="images_b")
        return {
            "encode": [image],
            "decode": [codes],
            "reconstruct": [image],
            "mix": [a, b, tf.TensorSpec((None, self.code_shape[-1]), tf.float32, name="weight")],
            "mix_alpha": [a, b, tf.TensorSpec((None,), tf.float32, name="alpha")],
            "classify": [image],
            LINEAR_ENDPOINT: [image],
            **({"attributes": [image], "mix_attributes": [a, b, tf.TensorSpec(
                (None, len(self.groups)), tf.float32, name="take_from_a")]} if self.groups is not None else {}),
        }


def _spec_json(spec):
    return {"name": spec.name, "shape": [None if s is None else int(s) for s in spec.shape], "dtype": spec.dtype.name}


def _heads(meta, has_linear):
    """The ``"heads"`` entry of metadata.json: which classifier each endpoint serves, and its accuracy."""
    meta = {**meta.get("run_results", {}), **meta}  # export_run keeps the run's scores under run_results
    heads = {"classify": {
        "head": "online linear probe (trained with the autoencoder; the paper's protocol)",
        "probe": meta.get("probe"),  # whiten or batchnorm (amr_keras.probe); None: exported before the setting
        "val_accuracy": meta.get("best_val_probe_accuracy"),
        "test_accuracy": meta.get("test_probe_accuracy"),
    }}
    if has_linear:
        heads[LINEAR_ENDPOINT] = {
            "head": "post-hoc logistic regression on frozen codes",
            "C": meta.get("linear_eval_C"),
            "l2": meta.get("linear_eval_l2"),
            "val_accuracy": meta.get("linear_eval_val_accuracy"),
            "test_accuracy": meta.get("linear_eval_test_accuracy"),
        }
    else:
        heads[LINEAR_ENDPOINT] = {
            "head": None,
            "note": "not in this export (no post-hoc classifier was fitted, e.g. --no-linear-eval); add it with "
                    "scripts/export.py RUN_DIR --linear-head or amr_keras.export.add_linear_head",
        }
    return heads


def _write_metadata(path, meta):
    with open(os.path.join(path, METADATA_FILE), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)


def export_model(model, path, source_shape, metadata=None, linear_head=None):
    """Write ``model`` as a SavedModel with the endpoints of ``ENDPOINTS`` plus ``metadata.json``.

    Args:
        model: an ``amr_keras.model.AMR``.
        path: output folder (created; an existing SavedModel there is overwritten).
        source_shape: ``(H, W, C)`` of the images clients send (the dataset's own size).
        metadata: optional JSON-serialisable dict stored in ``path/metadata.json``
            (e.g. dataset name, scores). The keys written by the export
            (``image_shape``, ``code_shape``, ``num_classes``, ``endpoints``,
            ``inputs``, ``heads``, the model settings ``mixer``, ``k``, ``lamb``, ``acai_gamma``, ...)
            take precedence over the same keys in ``metadata``. ``heads`` reports
            the accuracies found in it (``best_val_probe_accuracy``,
            ``test_probe_accuracy``, ``linear_eval_*``).
        linear_head: optional fitted post-hoc classifier (the ``classifier`` of
            ``amr_keras.evaluate.linear_evaluation``, fitted on this model's
            codes); exported as ``classify_linear``. Without it the export has
            no ``classify_linear`` and ``heads`` says so.

    Returns:
        ``path`` as a string.

    Example:
        >>> export_model(model, "export", (28, 28, 1), {"dataset": "mnist"})
        >>> load_metadata("export")["code_shape"]
        [4, 4, 2]
    """
    path = os.fspath(path)
    head = None if linear_head is None else LinearHead.from_classifier(linear_head, int(model.num_classes))
    # A model trained without labels (an unlabelled image folder) has no classifier to serve.
    endpoints = Endpoints(model, source_shape, head, classify=(metadata or {}).get("labelled", True))
    signatures = endpoints.input_signatures()
    archive = keras.export.ExportArchive()
    archive.track(model)
    if head is not None:
        archive.track(head)
    for name in endpoints.names:
        archive.add_endpoint(name, getattr(endpoints, name), input_signature=signatures[name])
    archive.write_out(path, verbose=False)

    config = model.get_config()
    meta = dict(metadata or {})
    meta.update({key: config[key] for key in CONFIG_KEYS if key in config})
    meta.update(
        image_shape=list(endpoints.source_shape),
        code_shape=list(endpoints.code_shape),
        code_channels=int(endpoints.code_shape[-1]),
        num_classes=endpoints.num_classes,
        value_range=[0.0, 1.0],
        endpoints=list(endpoints.names),
        inputs={name: [_spec_json(s) for s in signatures[name]] for name in endpoints.names},
        heads=_heads(meta, head is not None) if meta.get("labelled", True) else {
            "classify": {"head": None, "note": "trained without labels: no classifier"}},
        **({"attribute_groups": endpoints.groups.to_json(), "class_mixer": model.class_mixer_kind}
           if endpoints.groups is not None else {}),
        tensorflow_version=tf.__version__,
        keras_version=keras.__version__,
    )
    _write_metadata(path, meta)
    return path


def _check_export_dir(path):
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        what = "does not exist" if not os.path.exists(path) else "holds no saved_model.pb"
        raise FileNotFoundError(
            f"{path!r} is not a SavedModel folder: it {what}. Pass the folder written by "
            "export_model / scripts/export.py (by default RUN_DIR/export)."
        )
    return path


def load_export(path):
    """Load an export with ``tf.saved_model.load``; clear error when ``path`` is not a SavedModel.

    Returns:
        The loaded object; its endpoints are ``.encode``, ``.decode``, ``.reconstruct``,
        ``.mix``, ``.mix_alpha``, ``.classify`` and, when exported, ``.classify_linear``.
    """
    return tf.saved_model.load(_check_export_dir(path))


def load_metadata(path):
    """The ``metadata.json`` dict of an export folder."""
    meta_path = os.path.join(_check_export_dir(path), METADATA_FILE)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{meta_path} is missing: this SavedModel was not written by amr_keras.export.")
    with open(meta_path) as f:
        return json.load(f)


def export_run(run_dir, out=None, linear_head=False, dataset=None, data_dir=None, seed=0):
    """Export a training run folder's best model to ``run_dir/export`` (or ``out``).

    The run folder must hold ``best.keras`` (the whole AMR saved with
    ``model.save``) and ``results.json`` with ``"dataset"`` and, optionally,
    ``"image_shape"`` (e.g. ``[28, 28, 1]``; taken from the dataset's known
    size when absent). The whole ``results.json`` is kept in the export's
    metadata under ``"run_results"``.

    Args:
        run_dir: the training run folder.
        out: output folder (default ``run_dir/export``).
        linear_head: also export ``classify_linear``, the post-hoc classifier,
            fitted here on the codes of ``best.keras`` (this loads the dataset;
            its scores go to the metadata).
        dataset: dataset to fit it on (default: the run's ``"dataset"``).
        data_dir: its folder of raw files (default: the run's ``data_dir`` in ``config.json``).
        seed: passed to ``amr_keras.evaluate.linear_evaluation``.

    Returns:
        The export folder as a string.
    """
    run_dir = os.fspath(run_dir)
    model_path = os.path.join(run_dir, "best.keras")
    results_path = os.path.join(run_dir, "results.json")
    for needed in (model_path, results_path):
        if not os.path.isfile(needed):
            raise FileNotFoundError(
                f"{needed} is missing: export_run needs a finished training run folder "
                "with best.keras and results.json."
            )
    with open(results_path) as f:
        results = json.load(f)
    run_dataset = results.get("dataset")
    shape = results.get("image_shape") or (dataset_spec(run_dataset).source_shape
                                            if run_dataset in dataset_names() else None)
    if shape is None:
        raise ValueError(
            f"{results_path} gives neither 'image_shape' nor a known 'dataset' "
            f"(got dataset={run_dataset!r}; known: {', '.join(dataset_names())})."
        )
    model = keras.saving.load_model(model_path, compile=False)
    out = os.fspath(out) if out is not None else os.path.join(run_dir, "export")
    metadata = {"dataset": run_dataset, "run_dir": os.path.abspath(run_dir), "run_results": results}
    classifier = None
    if linear_head:
        from amr_keras.evaluate import evaluate_saved

        config_path = os.path.join(run_dir, "config.json")
        if data_dir is None and os.path.isfile(config_path):
            with open(config_path) as f:
                data_dir = json.load(f).get("data_dir")
        dataset = dataset or run_dataset
        scores, classifier = evaluate_saved(model_path, dataset, data_dir=data_dir, seed=seed, return_classifier=True)
        metadata.update(scores, linear_eval_dataset=dataset)
    return export_model(model, out, shape, metadata, linear_head=classifier)


def add_linear_head(export_dir, dataset=None, data_dir=None, out=None, seed=0):
    """Add ``classify_linear`` to an existing export, keeping its other endpoints unchanged.

    Loads the SavedModel (no ``.keras`` file needed), fits the post-hoc
    classifier on the codes of its ``encode`` endpoint
    (``amr_keras.evaluate.evaluate_saved``: logistic regression with L2 picked
    on validation, and k-NN), and writes the loaded object again with the new
    endpoint and signature: every other endpoint and signature is the restored
    function itself, with the same input specs. ``metadata.json`` gains the
    endpoint, its inputs, ``heads`` and the new scores. Applied again, it
    replaces the head.

    Args:
        export_dir: SavedModel folder written by ``export_model``.
        dataset: dataset to fit on (default: the metadata's ``"dataset"``).
        data_dir: its folder of raw files, as in ``amr_keras.data.load_dataset``.
        out: output folder (default: ``export_dir``, replaced once the new export is written).
        seed: passed to ``amr_keras.evaluate.linear_evaluation``.

    Returns:
        The output folder as a string.

    Example:
        >>> add_linear_head("saved_models/fashion_mnist_mixup", "fashion_mnist", data_dir="data/fashion_mnist")
    """
    from amr_keras.evaluate import evaluate_saved

    export_dir = _check_export_dir(export_dir)
    meta = load_metadata(export_dir)
    dataset = dataset or meta.get("dataset")
    # A model trained on a subset (--train-size) gets a head fitted on the same labelled images.
    train_size = meta.get("train_size") if dataset == meta.get("dataset") else None
    scores, classifier = evaluate_saved(export_dir, dataset, data_dir=data_dir, seed=seed, return_classifier=True,
                                        train_size=train_size)
    head = LinearHead.from_classifier(classifier, int(meta["num_classes"]))
    loaded = load_export(export_dir)
    loaded.linear_head = head
    loaded.classify_linear = tf.function(lambda images: head(loaded.encode(images)),
                                         input_signature=loaded.encode.input_signature)
    signatures = dict(loaded.signatures)
    signatures[LINEAR_ENDPOINT] = loaded.classify_linear.get_concrete_function()

    out = os.fspath(out) if out is not None else export_dir
    tmp = out.rstrip(os.sep) + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(loaded, tmp, signatures=signatures)
    names = [n for n in meta["endpoints"] if n != LINEAR_ENDPOINT] + [LINEAR_ENDPOINT]
    meta.update(scores, linear_eval_dataset=dataset, endpoints=names,
                inputs={**meta["inputs"], LINEAR_ENDPOINT: meta["inputs"]["encode"]})
    meta["heads"] = _heads(meta, True)
    _write_metadata(tmp, meta)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out

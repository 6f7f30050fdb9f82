"""Export a trained AMR model as a standalone TensorFlow SavedModel with image-space endpoints.

Clients of the export need neither Keras nor this package: ``tf.saved_model.load``
gives an object with six endpoints, all on float32 images in [0, 1] at the
dataset's own size (``source_shape``, e.g. 28x28x1 for MNIST, 32x32x3 for SVHN):

| endpoint | inputs | output |
|---|---|---|
| ``encode`` | ``images (B, H, W, C)`` | codes ``(B, 4, 4, 2)`` (the model's code shape) |
| ``decode`` | ``codes (B, *code_shape)`` | images ``(B, H, W, C)`` in [0, 1] |
| ``reconstruct`` | ``images`` | ``decode(encode(images))`` |
| ``mix`` | ``images_a, images_b, weight (B, K)`` | decoded ``weight * f(a) + (1 - weight) * f(b)``, per code channel |
| ``mix_alpha`` | ``images_a, images_b, alpha (B,)`` | decoded ``alpha * f(a) + (1 - alpha) * f(b)`` (mixup, acai) |
| ``classify`` | ``images`` | linear-probe class probabilities ``(B, num_classes)`` |

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

import keras
import tensorflow as tf

import amr_keras.model  # noqa: F401  (registers AMR for load_model)
from amr_keras.data import DATASETS, SOURCE_SHAPES, preprocess
from amr_keras.mixers import mix_pair
from amr_keras.networks import IMAGE_SIZE

ENDPOINTS = ("encode", "decode", "reconstruct", "mix", "mix_alpha", "classify")
METADATA_FILE = "metadata.json"
# data.preprocess zero-pads exactly this source size by PAD pixels on each side.
PADDED_SOURCE = (28, 28)
PAD = (IMAGE_SIZE - PADDED_SOURCE[0]) // 2
# Input images may exceed [0, 1] by rounding error only.
RANGE_TOLERANCE = 1e-3
# Model settings copied from the model's config into metadata.json.
CONFIG_KEYS = ("num_classes", "mixer", "k", "lamb", "beta", "recon", "update_g_every", "seed", "acai_gamma",
               "acai_weight")


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
    """Decoder output (32x32, about [-1, 1]) -> images clipped to [0, 1] at ``source_shape``.

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
    elif (h, w) != (IMAGE_SIZE, IMAGE_SIZE):
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


class Endpoints:
    """The export's endpoints as methods of an eager model: images in [0, 1] at ``source_shape``.

    ``export_model`` exports these very methods; ``amr_keras.plots`` draws
    figures from either this object or a loaded export.

    Args:
        model: an ``amr_keras.model.AMR`` (its own methods take 32x32 images in [-1, 1]).
        source_shape: ``(H, W, C)`` of the dataset's images.

    Example:
        >>> ep = Endpoints(model, (28, 28, 1))
        >>> ep.reconstruct(np.zeros((4, 28, 28, 1), "float32")).shape
        TensorShape([4, 28, 28, 1])
    """

    def __init__(self, model, source_shape):
        self.model = model
        self.source_shape = check_source_shape(model, source_shape)
        self.code_shape = tuple(int(s) for s in model.encoder.output_shape[1:])
        self.num_classes = int(model.num_classes)

    def _out(self, images):
        return from_model_output(images, self.source_shape)

    def encode(self, images):
        """Codes ``(batch, *code_shape)`` of images in [0, 1]."""
        return tf.cast(self.model.encode(to_model_input(images)), tf.float32)

    def decode(self, codes):
        """Images in [0, 1] at the source size from codes."""
        return self._out(self.model.decode(codes))

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
        }


def _spec_json(spec):
    return {"name": spec.name, "shape": [None if s is None else int(s) for s in spec.shape], "dtype": spec.dtype.name}


def export_model(model, path, source_shape, metadata=None):
    """Write ``model`` as a SavedModel with the endpoints of ``ENDPOINTS`` plus ``metadata.json``.

    Args:
        model: an ``amr_keras.model.AMR``.
        path: output folder (created; an existing SavedModel there is overwritten).
        source_shape: ``(H, W, C)`` of the images clients send (the dataset's own size).
        metadata: optional JSON-serialisable dict stored in ``path/metadata.json``
            (e.g. dataset name, scores). The keys written by the export
            (``image_shape``, ``code_shape``, ``num_classes``, ``endpoints``,
            ``inputs``, the model settings ``mixer``, ``k``, ``lamb``, ``acai_gamma``, ...)
            take precedence over the same keys in ``metadata``.

    Returns:
        ``path`` as a string.

    Example:
        >>> export_model(model, "export", (28, 28, 1), {"dataset": "mnist"})
        >>> load_metadata("export")["code_shape"]
        [4, 4, 2]
    """
    path = os.fspath(path)
    endpoints = Endpoints(model, source_shape)
    signatures = endpoints.input_signatures()
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name in ENDPOINTS:
        archive.add_endpoint(name, getattr(endpoints, name), input_signature=signatures[name])
    archive.write_out(path, verbose=False)

    config = model.get_config()
    meta = dict(metadata or {})
    meta.update({key: config[key] for key in CONFIG_KEYS if key in config})
    meta.update(
        image_shape=list(endpoints.source_shape),
        code_shape=list(endpoints.code_shape),
        num_classes=endpoints.num_classes,
        value_range=[0.0, 1.0],
        endpoints=list(ENDPOINTS),
        inputs={name: [_spec_json(s) for s in specs] for name, specs in signatures.items()},
        tensorflow_version=tf.__version__,
        keras_version=keras.__version__,
    )
    with open(os.path.join(path, METADATA_FILE), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
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
        ``.mix``, ``.mix_alpha``, ``.classify``.
    """
    return tf.saved_model.load(_check_export_dir(path))


def load_metadata(path):
    """The ``metadata.json`` dict of an export folder."""
    meta_path = os.path.join(_check_export_dir(path), METADATA_FILE)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{meta_path} is missing: this SavedModel was not written by amr_keras.export.")
    with open(meta_path) as f:
        return json.load(f)


def export_run(run_dir, out=None):
    """Export a training run folder's best model to ``run_dir/export`` (or ``out``).

    The run folder must hold ``best.keras`` (the whole AMR saved with
    ``model.save``) and ``results.json`` with ``"dataset"`` and, optionally,
    ``"image_shape"`` (e.g. ``[28, 28, 1]``; taken from the dataset's known
    size when absent). The whole ``results.json`` is kept in the export's
    metadata under ``"run_results"``.

    Args:
        run_dir: the training run folder.
        out: output folder (default ``run_dir/export``).

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
    dataset = results.get("dataset")
    shape = results.get("image_shape") or SOURCE_SHAPES.get(dataset)
    if shape is None:
        raise ValueError(
            f"{results_path} gives neither 'image_shape' nor a known 'dataset' "
            f"(got dataset={dataset!r}; known: {', '.join(DATASETS)})."
        )
    model = keras.saving.load_model(model_path, compile=False)
    out = os.fspath(out) if out is not None else os.path.join(run_dir, "export")
    metadata = {"dataset": dataset, "run_dir": os.path.abspath(run_dir), "run_results": results}
    return export_model(model, out, shape, metadata)

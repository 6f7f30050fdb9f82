"""Encoder, decoder and discriminator of AMR (ACAI-style convolutional networks).

The layout follows the reference implementation of Beckham et al. (2019), which
reuses the ACAI architecture (Berthelot et al., 2018): a 32x32 image goes through
a 1x1 convolution (zero padded to 34x34), ``scales`` blocks of two
[conv3x3 -> InstanceNorm -> LeakyReLU] followed by 2x2 average pooling
(34 -> 17 -> 8 -> 4), one more conv stage, and a 3x3 convolution down to
``code_channels`` feature maps: the code is 4x4x2 = 32 values by default. The
decoder mirrors it with nearest-neighbour upsampling and a linear output. The
discriminator is the encoder without normalisation, with spectral norm on its
3x3 convolutions; its output map is averaged to one logit per image.

64x64 and 128x128 images (``image_size``) get one more block per doubling (4 and 5 blocks: 66 -> 33 -> 16 -> 8
-> 4, 130 -> ... -> 4), so the code stays 4x4xC; a block's width doubles per scale up to ``MAX_WIDTH`` times
``depth`` (16 x 16 = 256 channels by default).

Reference:
    C. Beckham, S. Honari, V. Verma, A. Lamb, F. Ghadiri, R. D. Hjelm,
    Y. Bengio, C. Pal. On Adversarial Mixup Resynthesis. NeurIPS 2019.
    D. Berthelot, C. Raffel, A. Roy, I. Goodfellow. Understanding and Improving
    Interpolation in Autoencoders via an Adversarial Regularizer. ICLR 2019.
"""

import math

import keras
import tensorflow as tf
from keras import layers

IMAGE_SIZE = 32
# Input sizes of the acai networks, and the downsampling blocks each takes to reach a 4x4 code.
IMAGE_SIZES = (32, 64, 128)
SCALES = {32: 3, 64: 4, 128: 5}
MAX_WIDTH = 16  # widest block: depth * MAX_WIDTH channels
# Network families: "acai" (the 32x32 networks above, a 4x4xC code) and "burgess" (64x64 dSprites, a flat code).
ARCHS = ("acai", "burgess")
BURGESS_SIZE = 64
BURGESS_CODE = 10  # values of the flat code
BURGESS_HIDDEN = 256  # width of the dense layers


@keras.saving.register_keras_serializable(package="amr_keras")
class MeanLogit(layers.Layer):
    """Average a (batch, H, W, C) map over positions and channels (any rank: every non-batch axis) to one value."""

    def call(self, inputs):
        # Every axis but the batch: (B, H, W, C) maps, or the (B, 1) output of a dense head.
        return keras.ops.mean(inputs, axis=tuple(range(1, len(inputs.shape))))

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)


@keras.saving.register_keras_serializable(package="amr_keras")
class LeakyReLU(layers.Layer):
    """LeakyReLU whose gradient is computed from its output instead of its input.

    For a slope in (0, 1), ``y = leaky_relu(x)`` is positive exactly where ``x``
    is, so ``dy/dx = 1 if y > 0 else slope`` can be read off ``y``. Keras' own
    layer runs TensorFlow's ``LeakyReluGrad``, which reads the activation's
    *input*. In the discriminator that input is a convolution's ``BiasAdd``,
    which grappler's remapper fuses with the convolution and the activation
    into one oneDNN kernel; the AMR step differentiates the discriminator twice
    (for its own loss, and for the autoencoder's through its input), and the
    second ``LeakyReluGrad`` then points at the fused-away ``BiasAdd``: the
    remapper fails ("remapper failed: ... fanout ... LeakyReluGrad_1 exist for
    missing node ... BiasAdd") and skips its fusions for the whole step. Reading
    the output instead leaves nothing to rewire, so the fusions apply
    (``results/bench_cpu_2core.jsonl``).

    Args:
        negative_slope: slope for negative inputs, in (0, 1).
    """

    def __init__(self, negative_slope=0.2, **kwargs):
        super().__init__(**kwargs)
        if not 0 < negative_slope < 1:
            raise ValueError(f"negative_slope must be in (0, 1), got {negative_slope!r}.")
        self.negative_slope = float(negative_slope)

    def call(self, inputs):
        slope = self.negative_slope

        @keras.ops.custom_gradient
        def leaky_relu(x):
            y = keras.ops.leaky_relu(x, slope)

            def grad(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                # TensorFlow's LeakyReluGrad passes the upstream gradient where its ``features`` are positive and
                # scales it by ``alpha`` elsewhere; ``y`` has the sign of ``x``, so it can stand in for ``x``. One
                # fused kernel instead of a comparison, a select and a product (under bfloat16 these elementwise
                # passes cost about a sixth of the step).
                return tf.raw_ops.LeakyReluGrad(gradients=upstream, features=y, alpha=slope)

            return y, grad

        return leaky_relu(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


def _check(colors, depth, scales, code_channels, image_size):
    """Validate the settings; return ``scales`` (``SCALES[image_size]`` when None)."""
    if colors not in (1, 3):
        raise ValueError(f"colors must be 1 (grey) or 3 (RGB), got {colors}.")
    for name, value in (("depth", depth), ("scales", 1 if scales is None else scales),
                        ("code_channels", code_channels)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"The acai networks take images of {', '.join(map(str, IMAGE_SIZES))} pixels a side, got "
                         f"{image_size!r}.")
    return SCALES[image_size] if scales is None else scales


def input_size(height):
    """Side of the network input for source images ``height`` pixels high: 28 is padded to 32, the sizes of
    ``IMAGE_SIZES`` stay, any other is resized to ``IMAGE_SIZE``."""
    if height == 28:
        return IMAGE_SIZE
    return height if height in IMAGE_SIZES else IMAGE_SIZE


def _width(depth, scale):
    return depth * min(2**scale, MAX_WIDTH)


def code_size(scales, image_size=IMAGE_SIZE):
    """Spatial size of the code map: the padded input (size + 2) halved ``scales`` times."""
    size = image_size + 2
    for _ in range(scales):
        size //= 2
    return size


def _init():
    # Scaled normal as in the reference (std = 1 / sqrt((1 + 0.2^2) * fan_in)).
    return keras.initializers.VarianceScaling(
        scale=1.0 / (1.0 + 0.2**2), mode="fan_in", distribution="untruncated_normal"
    )


def _conv(filters, kernel, name, spectral=False):
    conv = layers.Conv2D(filters, kernel, padding="same", kernel_initializer=_init(), name=name)
    if spectral:
        return layers.SpectralNormalization(conv, power_iterations=1, name=f"{name}_sn")
    return conv


def _stage(x, filters, name, norm, spectral, slope):
    """conv3x3 -> [InstanceNorm] -> LeakyReLU."""
    x = _conv(filters, 3, name, spectral)(x)
    if norm:
        # groups=-1 gives one group per channel: instance normalisation.
        x = layers.GroupNormalization(groups=-1, epsilon=1e-5, name=f"{name}_in")(x)
    return LeakyReLU(negative_slope=slope, name=f"{name}_act")(x)


def _encoder_body(inputs, depth, scales, out_channels, norm, spectral, slope):
    x = layers.ZeroPadding2D(1, name="pad")(inputs)
    x = _conv(depth, 1, "stem")(x)
    for s in range(scales):
        width = _width(depth, s)
        x = _stage(x, width, f"s{s}_a", norm, spectral, slope)
        x = _stage(x, width, f"s{s}_b", norm, spectral, slope)
        x = layers.AveragePooling2D(2, name=f"s{s}_pool")(x)
    x = _stage(x, _width(depth, scales), "top", norm, spectral, slope)
    return _conv(out_channels, 3, "out", spectral)(x)


def build_encoder(colors=1, depth=16, scales=None, code_channels=2, slope=0.2, image_size=IMAGE_SIZE):
    """Build the encoder ``f``: image in [-1, 1] -> code map.

    Args:
        colors: 1 for grey images, 3 for RGB.
        depth: channels of the first scale; scale ``s`` has ``depth * 2**s``.
        scales: number of downsampling blocks (None: ``SCALES[image_size]``, a 4x4 code; 3 from 32x32).
        code_channels: feature maps of the code (2 gives 4x4x2 = 32 values).
        slope: negative slope of the LeakyReLU activations.
        image_size: input height and width (``IMAGE_SIZES``).

    Returns:
        A functional ``keras.Model`` named ``encoder``.

    Example:
        >>> enc = build_encoder()
        >>> enc.output_shape
        (None, 4, 4, 2)
    """
    scales = _check(colors, depth, scales, code_channels, image_size)
    inputs = keras.Input((image_size, image_size, colors), name="image")
    code = _encoder_body(inputs, depth, scales, code_channels, True, False, slope)
    return keras.Model(inputs, code, name="encoder")


def build_decoder(colors=1, depth=16, scales=None, code_channels=2, slope=0.2, image_size=IMAGE_SIZE):
    """Build the decoder ``g``: code map -> image (linear output, trained towards [-1, 1]).

    The code map is upsampled ``scales`` times; when that does not give
    ``image_size`` exactly (4 * 2**3 = 32 here, so it does), the result is resized.

    Args:
        colors: 1 or 3 output channels.
        depth: channels of the finest scale (mirrors the encoder).
        scales: number of upsampling blocks (None: ``SCALES[image_size]``).
        code_channels: feature maps of the code.
        slope: negative slope of the LeakyReLU activations.
        image_size: output height and width.

    Returns:
        A functional ``keras.Model`` named ``decoder``.
    """
    scales = _check(colors, depth, scales, code_channels, image_size)
    side = code_size(scales, image_size)
    inputs = keras.Input((side, side, code_channels), name="code")
    x = inputs
    for s in reversed(range(scales)):
        width = _width(depth, s)
        x = _stage(x, width, f"s{s}_a", True, False, slope)
        x = _stage(x, width, f"s{s}_b", True, False, slope)
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"s{s}_up")(x)
    if side * 2**scales != image_size:
        x = layers.Resizing(image_size, image_size, interpolation="nearest", name="fit")(x)
    x = _stage(x, depth, "top", True, False, slope)
    outputs = _conv(colors, 3, "out")(x)
    return keras.Model(inputs, outputs, name="decoder")


def build_discriminator(colors=1, depth=16, scales=None, code_channels=2, slope=0.2, image_size=IMAGE_SIZE):
    """Build the discriminator ``D``: image -> one logit per image (real vs. generated).

    Same body as the encoder without normalisation and with spectral norm on
    the 3x3 convolutions; the output map is averaged to a single logit (the
    reference averages and applies a sigmoid; the loss here takes logits,
    which is the same function computed stably).

    Args:
        colors: 1 or 3 input channels.
        depth: channels of the first scale.
        scales: number of downsampling blocks.
        code_channels: channels of the output map before averaging.
        slope: negative slope of the LeakyReLU activations.
        image_size: input height and width (``IMAGE_SIZES``).

    Returns:
        A functional ``keras.Model`` named ``discriminator`` with output shape ``(None,)``.
    """
    scales = _check(colors, depth, scales, code_channels, image_size)
    inputs = keras.Input((image_size, image_size, colors), name="image")
    x = _encoder_body(inputs, depth, scales, code_channels, False, True, slope)
    # float32 average: under a mixed policy one logit is the mean of 32 bfloat16/float16 values.
    logit = MeanLogit(name="logit", dtype="float32")(x)
    return keras.Model(inputs, logit, name="discriminator")


def build_networks(colors=1, depth=16, scales=None, code_channels=2, slope=0.2, image_size=IMAGE_SIZE):
    """Build ``(encoder, decoder, discriminator)`` with matching settings."""
    kw = dict(colors=colors, depth=depth, scales=scales, code_channels=code_channels, slope=slope,
              image_size=image_size)
    return build_encoder(**kw), build_decoder(**kw), build_discriminator(**kw)


def code_dim(encoder):
    """Number of values in the code of ``encoder`` (e.g. 32 for 4x4x2)."""
    return int(math.prod(encoder.output_shape[1:]))


# --------------------------------------------------------------------------- burgess (dSprites, 64x64)
def _check_burgess(colors, filters, code, image_size):
    if colors not in (1, 3):
        raise ValueError(f"colors must be 1 (grey) or 3 (RGB), got {colors}.")
    for name, value in (("filters", filters), ("code", code)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if image_size != BURGESS_SIZE:
        raise ValueError(f"The burgess networks take {BURGESS_SIZE}x{BURGESS_SIZE} images (dSprites), got "
                         f"{image_size}; use --arch acai for 32x32 datasets.")


def _burgess_trunk(x, filters, spectral, slope, prefix=""):
    """4 x [conv 4x4 stride 2] (64 -> 4), flatten, 2 x dense 256: the encoder's body, and the discriminator's."""

    def wrap(layer):
        return layers.SpectralNormalization(layer, power_iterations=1, name=f"{layer.name}_sn") if spectral else layer

    def act(name):
        return LeakyReLU(slope, name=name) if spectral else layers.ReLU(name=name)

    for i in range(4):
        x = wrap(layers.Conv2D(filters, 4, strides=2, padding="same", name=f"{prefix}conv{i}"))(x)
        x = act(f"{prefix}conv{i}_act")(x)
    x = layers.Flatten(name=f"{prefix}flat")(x)
    for i in range(2):
        x = wrap(layers.Dense(BURGESS_HIDDEN, name=f"{prefix}dense{i}"))(x)
        x = act(f"{prefix}dense{i}_act")(x)
    return x, wrap


def build_burgess_encoder(colors=1, filters=32, code=BURGESS_CODE, heads=1, image_size=BURGESS_SIZE):
    """The encoder of Burgess et al. (2018) for 64x64 images: image in [-1, 1] -> flat code.

    4 x [conv 4x4 stride 2, ``filters`` filters, ReLU] (64 -> 4), flatten (4*4*filters), 2 x [dense 256, ReLU],
    then a dense layer to ``code`` values per head.

    Args:
        colors: 1 or 3 input channels.
        filters: filters of every convolution (32 in the paper).
        code: values of the code (10 in the paper).
        heads: 1: the code; 2: the mean and the log-variance of a VAE's posterior (two outputs).
        image_size: input height and width (must be 64).

    Returns:
        A functional ``keras.Model`` named ``encoder`` with output ``(None, code)`` (``heads=2``: two of them).

    Example:
        >>> build_burgess_encoder().output_shape
        (None, 10)
    """
    _check_burgess(colors, filters, code, image_size)
    inputs = keras.Input((image_size, image_size, colors), name="image")
    x, _ = _burgess_trunk(inputs, filters, False, 0.0)
    names = ("code",) if heads == 1 else ("mean", "log_var")
    outputs = [layers.Dense(code, name=name)(x) for name in names]
    return keras.Model(inputs, outputs[0] if heads == 1 else outputs, name="encoder")


def build_burgess_decoder(colors=1, filters=32, code=BURGESS_CODE, image_size=BURGESS_SIZE):
    """The decoder of Burgess et al. (2018): flat code -> 64x64 image (linear output: logits with ``recon="bce"``).

    2 x [dense 256, ReLU], dense to 4*4*``filters`` (ReLU), then 4 transposed convolutions 4x4 stride 2
    (ReLU; the last to ``colors`` channels, linear): 4 -> 64.

    Returns:
        A functional ``keras.Model`` named ``decoder``.
    """
    _check_burgess(colors, filters, code, image_size)
    inputs = keras.Input((code,), name="code")
    x = inputs
    for i in range(2):
        x = layers.Dense(BURGESS_HIDDEN, activation="relu", name=f"dense{i}")(x)
    x = layers.Dense(4 * 4 * filters, activation="relu", name="dense_map")(x)
    x = layers.Reshape((4, 4, filters), name="map")(x)
    for i in range(3):
        x = layers.Conv2DTranspose(filters, 4, strides=2, padding="same", activation="relu", name=f"up{i}")(x)
    outputs = layers.Conv2DTranspose(colors, 4, strides=2, padding="same", name="out")(x)
    return keras.Model(inputs, outputs, name="decoder")


def build_burgess_discriminator(colors=1, filters=32, slope=0.2, image_size=BURGESS_SIZE):
    """The image discriminator of the official dSprites code: the encoder's trunk with spectral norm -> one logit.

    4 x [conv 4x4 stride 2, LeakyReLU], flatten, 2 x [dense 256, LeakyReLU], dense 1; spectral norm on every
    layer.

    Returns:
        A functional ``keras.Model`` named ``discriminator`` with output shape ``(None,)``.
    """
    _check_burgess(colors, filters, 1, image_size)
    inputs = keras.Input((image_size, image_size, colors), name="image")
    x, wrap = _burgess_trunk(inputs, filters, True, slope)
    x = wrap(layers.Dense(1, name="out"))(x)
    logit = MeanLogit(name="logit", dtype="float32")(x)
    return keras.Model(inputs, logit, name="discriminator")


def build_arch(arch="acai", colors=1, depth=16, code_channels=2, slope=0.2, image_size=None):
    """``(encoder, decoder, discriminator)`` of a network family (``ARCHS``).

    ``acai``: ``build_networks`` at ``image_size`` (None: 32). ``burgess``: the 64x64 networks above with
    ``depth`` filters per convolution and a flat code of ``BURGESS_CODE`` values (``code_channels`` does not
    apply; ``image_size`` must be None or 64).
    """
    if arch == "acai":
        return build_networks(colors=colors, depth=depth, code_channels=code_channels, slope=slope,
                              image_size=image_size or IMAGE_SIZE)
    if arch == "burgess":
        size = image_size or BURGESS_SIZE
        return (build_burgess_encoder(colors, depth, image_size=size),
                build_burgess_decoder(colors, depth, image_size=size),
                build_burgess_discriminator(colors, depth, slope, image_size=size))
    raise ValueError(f"Unknown arch {arch!r}. Choose one of: {', '.join(ARCHS)}.")

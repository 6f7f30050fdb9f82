"""Numeric precision of training: float32, mixed float16, mixed bfloat16, or ``auto``.

Under a mixed policy the networks compute in 16 bits while their variables,
the losses, the probe (its standardisation and its Dense layer) and the metrics
stay float32. ``mixed_float16`` needs loss scaling (``AMR.compile`` wraps the
optimizers in ``keras.optimizers.LossScaleOptimizer``); ``mixed_bfloat16`` has
float32's exponent range and needs none.

``auto`` picks ``mixed_bfloat16`` where the hardware computes bfloat16 natively
and ``float32`` elsewhere:

- NVIDIA GPUs of compute capability 8.0 or more (A100, H100, RTX 30xx and later);
- CPUs with AMX-BF16 or AVX512-BF16 (Intel Xeon from Cooper Lake / Sapphire
  Rapids on, AMD EPYC from Zen 4 on), where oneDNN runs bfloat16 convolutions
  on those units.

Elsewhere bfloat16 is emulated and slower than float32, so ``auto`` leaves it off.
It also leaves it off when ``ONEDNN_MAX_CPU_ISA`` (or its older spelling
``DNNL_MAX_CPU_ISA``) caps oneDNN below its bfloat16 kernels (e.g. ``AVX2``,
``AVX512_CORE``): the units are there, but oneDNN will not use them.

Example:
    >>> resolve_precision("auto")          # on a CPU with AMX-BF16
    'mixed_bfloat16'
    >>> with precision_scope("mixed_bfloat16"):
    ...     model = build_model(cfg, 1, 10, steps)
"""

import contextlib

import keras

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# /proc/cpuinfo flags of the CPU units that compute bfloat16 natively.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# Flags worth recording beside a speed figure.
REPORTED_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
# Environment variables that cap the instruction sets oneDNN (TensorFlow's and
# PyTorch's) and PyTorch's own kernels may use; recorded beside speed figures.
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
# ONEDNN_MAX_CPU_ISA values below oneDNN's bfloat16 kernels (AVX512_CORE_BF16 and up).
ISA_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def cpu_info(path="/proc/cpuinfo"):
    """Model name and relevant feature flags of this machine's CPU.

    Returns:
        ``{"model": str or None, "flags": {flag: bool}}`` for the flags of
        ``REPORTED_CPU_FLAGS``; flags are all False where ``path`` cannot be read
        (e.g. not Linux).
    """
    model, flags = None, set()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": {flag: flag in flags for flag in REPORTED_CPU_FLAGS}}


def isa_caps(environ=None):
    """The instruction-set caps set in the environment (``ISA_CAP_VARIABLES``).

    E.g. ``{"ONEDNN_MAX_CPU_ISA": "AVX2"}``.
    """
    import os

    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in ISA_CAP_VARIABLES if environ.get(name)}


def _gpu_compute_capabilities():
    import tensorflow as tf

    caps = []
    for gpu in tf.config.list_physical_devices("GPU"):
        cap = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if cap:
            caps.append(tuple(cap))
    return caps


def native_bfloat16(cpuinfo_path="/proc/cpuinfo", environ=None):
    """Whether this machine computes bfloat16 natively, and why.

    When GPUs are visible they decide (training runs there): every GPU needs
    compute capability >= 8.0. Without GPUs the CPU decides: it needs one of
    ``BF16_CPU_FLAGS``, and oneDNN must not be capped below them by
    ``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA`` (read from ``environ``,
    default ``os.environ``).

    Returns:
        ``(bool, reason)``, e.g. ``(True, "CPU with amx_bf16")``.
    """
    caps = _gpu_compute_capabilities()
    if caps:
        ok = all(cap >= (8, 0) for cap in caps)
        listed = ", ".join(f"{a}.{b}" for a, b in caps)
        return ok, f"GPU compute capability {listed} ({'>=' if ok else '<'} 8.0)"
    flags = cpu_info(cpuinfo_path)["flags"]
    found = [flag for flag in BF16_CPU_FLAGS if flags.get(flag)]
    if found:
        caps = isa_caps(environ)
        for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
            if caps.get(name, "").strip().upper() in ISA_CAPS_WITHOUT_BF16:
                return False, f"CPU with {', '.join(found)}, but {name}={caps[name]} keeps oneDNN off them"
        return True, f"CPU with {', '.join(found)}"
    return False, f"CPU without {' or '.join(BF16_CPU_FLAGS)}"


def check_precision(name):
    """Raise ``ValueError`` naming the accepted values when ``name`` is not one of ``PRECISIONS``."""
    if name not in PRECISIONS:
        raise ValueError(f"Unknown precision {name!r}. Choose one of: {', '.join(PRECISIONS)}.")
    return name


def resolve_precision(name, cpuinfo_path="/proc/cpuinfo"):
    """The concrete policy name for ``name`` (``auto`` decided by ``native_bfloat16``)."""
    check_precision(name)
    if name != "auto":
        return name
    return "mixed_bfloat16" if native_bfloat16(cpuinfo_path)[0] else "float32"


@contextlib.contextmanager
def op_determinism_restored():
    """Leave TensorFlow's process-wide op determinism as it was found, whatever the code inside turns on.

    ``tf.config.experimental.enable_op_determinism`` lasts for the whole process and, while on, makes Keras drop
    ``jit_compile=True`` (XLA has no deterministic kernels). A deterministic run followed by another one in the same
    process (a grid, a search, a user's script) would otherwise inherit it.
    """
    from tensorflow.python.framework import config as tf_config  # the switch off is not in the public API

    before = tf_config.is_op_determinism_enabled()
    try:
        yield
    finally:
        if tf_config.is_op_determinism_enabled() != before:
            (tf_config.enable_op_determinism if before else tf_config.disable_op_determinism)()


@contextlib.contextmanager
def precision_scope(name):
    """Set Keras' global dtype policy to ``name`` (resolved if ``auto``) and restore the previous one after.

    Models built (or loaded from ``.keras``) inside the scope compute in that
    precision; the policy is stored in each layer's config, so a model loaded
    later keeps the precision it was saved with.
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(resolve_precision(name))
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def compute_dtype(model):
    """The compute dtype of ``model``'s encoder (e.g. ``"bfloat16"`` under ``mixed_bfloat16``)."""
    return model.encoder.layers[-1].compute_dtype


"""Adversarial Mixup Resynthesis (Beckham et al., NeurIPS 2019) in Keras 3 on TensorFlow.

Importing the package registers its Keras classes, so ``keras.saving.load_model``
can open AMR ``.keras`` files afterwards.

It also turns on TensorFlow's oneDNN CPU kernels (``TF_ENABLE_ONEDNN_OPTS=1``)
unless the variable is already set: TensorFlow leaves them off on CPUs without
AVX-512, where its default convolution gradients make the AMR train step about
1.8x slower (``results/bench_cpu_2core.jsonl``). The variable is read when
TensorFlow is imported, so import ``amr_keras`` first, or set it yourself.
"""

import os
import re
import sys
import tempfile
import warnings

_TF_IMPORTED_FIRST = "tensorflow" in sys.modules
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# TensorFlow's C++ start-up notices: "I0000 00:00:1795798492.017434    2492 port.cc:153] oneDNN custom ...".
_LOG_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def _nvidia_driver_present():
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def filter_startup_log(text, nvidia_driver=None, info=True):
    """What of TensorFlow's start-up output is worth showing: each notice once, no false alarms.

    Two of TensorFlow's libraries print the same start-up notices (oneDNN, CUDA
    drivers), each after absl's "All log messages before absl::InitializeLog()"
    preamble; and on a machine without an NVIDIA driver the CUDA platform logs
    ``failed call to cuInit`` at error level although nothing is wrong. This
    keeps every other line, and each notice once.

    Args:
        text: what TensorFlow wrote to stderr while it was imported.
        nvidia_driver: whether an NVIDIA driver is installed (default: look for it).
            With a driver, a failing ``cuInit`` is a real problem and is kept.
        info: keep the information notices (``I...`` lines: oneDNN on, no CUDA driver); warnings and errors are
            always kept.

    Returns:
        The lines to show, joined with newlines (empty when nothing is left).
    """
    if nvidia_driver is None:
        nvidia_driver = _nvidia_driver_present()
    kept, seen, dropping = [], set(), False
    for line in text.splitlines():
        if not line.strip() or line.strip() == _ABSL_PREAMBLE:
            continue
        if _LOG_PREFIX.match(line):
            dropping = not info and line.startswith("I")
        if dropping:  # an information notice and its continuation lines
            continue
        if not nvidia_driver and "failed call to cuInit" in line:
            continue
        message = _LOG_PREFIX.sub("", line)
        if message in seen:
            continue
        seen.add(message)
        kept.append(line)
    return "\n".join(kept)


def _notices_wanted(argv=None, environ=None):
    """Whether TensorFlow's start-up information notices are shown: ``AMR_KERAS_TF_NOTICES=1``, or a command line
    that asks for ``--verbose 2`` (the scripts' most talkative setting). Otherwise ``--help`` and a run's output
    start with the program's own lines."""
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    if environ.get("AMR_KERAS_TF_NOTICES") in ("0", "1"):
        return environ["AMR_KERAS_TF_NOTICES"] == "1"
    return "--verbose=2" in argv or any(a == "--verbose" and b == "2" for a, b in zip(argv, argv[1:]))


def _import_tensorflow_quietly():
    """Import TensorFlow (and probe its devices) with its start-up output passed through ``filter_startup_log``.

    The C++ notices are written to file descriptor 2 while the libraries load,
    before ``TF_CPP_MIN_LOG_LEVEL`` applies, so they are caught there. Information
    notices are shown only when ``_notices_wanted``; set ``AMR_KERAS_RAW_TF_LOG=1``
    to see TensorFlow's output unfiltered.
    """
    if os.environ.get("AMR_KERAS_RAW_TF_LOG") == "1":
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to filter
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # the CUDA platform starts (or fails) here
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError, AttributeError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            shown = filter_startup_log(captured.read().decode("utf-8", errors="replace"), info=_notices_wanted())
            if shown:
                print(shown, file=sys.stderr, flush=True)


if not _TF_IMPORTED_FIRST:
    _import_tensorflow_quietly()

from amr_keras import mixers, networks  # noqa: E402,F401
from amr_keras.bvae import BVAE  # noqa: E402,F401  (registered, so that load_model finds it)
from amr_keras.model import AMR  # noqa: E402,F401

__version__ = "0.1.0"


def onednn_enabled():
    """Whether TensorFlow runs its CPU ops with oneDNN in this process (None if it cannot tell)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # pragma: no cover - private module moved
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def _warn_if_onednn_off():
    import tensorflow as tf

    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "1" and onednn_enabled() is False \
            and not tf.config.list_physical_devices("GPU"):
        warnings.warn(
            "TensorFlow was imported before amr_keras, so its oneDNN CPU kernels stay off and training on a CPU "
            "runs up to 1.8x slower. Import amr_keras before tensorflow or keras, or set TF_ENABLE_ONEDNN_OPTS=1 "
            "in the environment.",
            RuntimeWarning,
            stacklevel=3,
        )


if _TF_IMPORTED_FIRST:
    _warn_if_onednn_off()

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
import sys
import warnings

_TF_IMPORTED_FIRST = "tensorflow" in sys.modules
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from amr_keras import mixers, networks  # noqa: E402,F401
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

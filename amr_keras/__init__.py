"""Adversarial Mixup Resynthesis (Beckham et al., NeurIPS 2019) in Keras 3 on TensorFlow.

Importing the package registers its Keras classes, so ``keras.saving.load_model``
can open AMR ``.keras`` files afterwards.
"""

from amr_keras import mixers, networks  # noqa: F401
from amr_keras.model import AMR  # noqa: F401

__version__ = "0.1.0"

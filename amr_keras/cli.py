"""Deprecated: the settings, presets, validation and command-line parser moved to ``amr_keras.config``.

``amr_keras.cli`` keeps every name it had for one release and warns when imported; import from
``amr_keras.config`` instead.
"""

import warnings

from amr_keras.config import *  # noqa: F401,F403
from amr_keras.config import _FAST, _HelpFormatter, _validate_arch_and_model  # noqa: F401

warnings.warn("amr_keras.cli moved to amr_keras.config; import from there (this path goes in the next release).",
              DeprecationWarning, stacklevel=2)

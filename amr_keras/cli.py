"""Deprecated: the settings, presets and validation moved to ``amr_keras.config``, the command-line parser to
``amr_keras.parser``.

``amr_keras.cli`` keeps every name it had for one release and warns when imported; import from
``amr_keras.config`` and ``amr_keras.parser`` instead.
"""

import warnings

from amr_keras.config import *  # noqa: F401,F403
from amr_keras.config import _FAST, _validate_arch_and_model  # noqa: F401
from amr_keras.parser import *  # noqa: F401,F403
from amr_keras.parser import _HelpFormatter  # noqa: F401

warnings.warn("amr_keras.cli moved to amr_keras.config (the settings) and amr_keras.parser (the command-line "
              "parser); import from there (this path goes in the next release).", DeprecationWarning, stacklevel=2)

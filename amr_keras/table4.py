"""Deprecated: Table 4 moved to ``amr_keras.tables.table4``.

``amr_keras.table4`` keeps every name it had for one release and warns when imported; import from
``amr_keras.tables.table4`` instead.
"""

import warnings

from amr_keras.tables.table4 import *  # noqa: F401,F403
from amr_keras.tables.table4 import _cell, _gap_text, _official_cell, _split, _values  # noqa: F401

warnings.warn("amr_keras.table4 moved to amr_keras.tables.table4; import from there (this path goes in the next "
              "release).", DeprecationWarning, stacklevel=2)

"""Deprecated: the tables moved to the package ``amr_keras.tables`` (``registry``, ``planning``, ``ledger``,
``stats``, ``accuracy``, ``table4``).

``amr_keras.reproduce`` keeps every name it had for one release and warns when imported; import from
``amr_keras.tables`` (or ``amr_keras.tables.accuracy`` for Tables 1, 2, 3 and the lamb sweep) instead.
"""

import warnings

from amr_keras.runfolder import write_text_atomically as _write_text  # noqa: F401
from amr_keras.tables.accuracy import *  # noqa: F401,F403
from amr_keras.tables.accuracy import _gap, _gap_lines, _machines, _online_key, _recipe, _recipe_text, _split  # noqa: F401
from amr_keras.tables.ledger import *  # noqa: F401,F403
from amr_keras.tables.planning import *  # noqa: F401,F403
from amr_keras.tables.planning import _recorded  # noqa: F401
from amr_keras.tables.stats import *  # noqa: F401,F403

warnings.warn("amr_keras.reproduce moved to amr_keras.tables; import from there (this path goes in the next "
              "release).", DeprecationWarning, stacklevel=2)

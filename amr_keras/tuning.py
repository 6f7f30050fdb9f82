"""Deprecated: the search moved to ``amr_keras.search`` (``space``, ``run``, ``distributed``).

``amr_keras.tuning`` keeps every name it had for one release and warns when imported; import from
``amr_keras.search`` instead.
"""

import warnings

from amr_keras.search.distributed import *  # noqa: F401,F403
from amr_keras.search.distributed import (_check_chief_settings, _Chief, _published_settings,  # noqa: F401
                                         _serve_as_chief, _serve_until_over, _start_oracle_server, _train_as_worker)
from amr_keras.search.run import *  # noqa: F401,F403
from amr_keras.search.run import _report_after_every_trial  # noqa: F401
from amr_keras.search.space import *  # noqa: F401,F403
from amr_keras.search.space import (_cell, _check_search_settings, _failed_in_a_row, _in_start_order,  # noqa: F401
                                    _last_line, _search_result, _setting_diffs, _too_many_failures, _tuner_name,
                                    _write_json)

warnings.warn("amr_keras.tuning moved to amr_keras.search; import from there (this path goes in the next release).",
              DeprecationWarning, stacklevel=2)

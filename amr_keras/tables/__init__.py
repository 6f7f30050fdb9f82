"""Tables of runs: plan them, train the missing ones (resuming interrupted ones), tabulate the finished ones.

Modules: ``registry`` (``TableEntry``, ``register_table``: what ``scripts/reproduce.py --table NAME`` builds),
``planning`` (planned runs, resuming, training seed by seed), ``ledger`` (``OUT/finished_runs.jsonl``),
``stats`` (mean, spread and the paired 95% interval of a comparison), ``accuracy`` (Tables 1, 2, 3, the lamb
sweep and the grid) and ``table4`` (disentanglement on dSprites). Importing the package registers every table;
the public names of ``registry``, ``planning``, ``ledger`` and ``stats`` are importable from here.

Example, the command line's path through a table:
    >>> from amr_keras import tables
    >>> plan = tables.plan_table(tables.TableRequest("1", data_dirs={"mnist": "/data/mnist"}))
    >>> tables.train_missing(plan.runs, on_finished=lambda: plan.write(plan.runs, "results", plan.stem, "..."))
"""

from amr_keras.tables.ledger import (LEDGER_NAME, LEDGER_RESULT_KEYS, LEDGER_SETTING_KEYS, RUN_RECORD_KEYS,
                                     ledger_entry, ledger_result_keys, load_ledger, record_finished)
from amr_keras.tables.planning import (RECIPE_TAGS, PlannedRun, check_runs, collect, describe_plan, estimated_seconds,
                                       find_recorded, parse_rows, recipe_tag, selected, train_missing, training_order)
from amr_keras.tables.registry import (RECIPE_FIELDS, TableEntry, TablePlan, TableRequest, plan_table, register_table,
                                       table_entry, table_names)
from amr_keras.tables.stats import format_percent, gap_verdict, mean_std, paired_ci95

__all__ = ["LEDGER_NAME", "LEDGER_RESULT_KEYS", "LEDGER_SETTING_KEYS", "RECIPE_FIELDS", "RECIPE_TAGS",
           "RUN_RECORD_KEYS", "PlannedRun", "TableEntry", "TablePlan", "TableRequest", "check_runs", "collect",
           "describe_plan", "estimated_seconds", "find_recorded", "format_percent", "gap_verdict", "ledger_entry",
           "ledger_result_keys", "load_ledger", "mean_std", "paired_ci95", "parse_rows", "plan_table", "recipe_tag",
           "record_finished", "register_table", "selected", "table_entry", "table_names", "train_missing",
           "training_order"]

# Registered on import, in this order: 1, lamb, 2, 3, grid, then 4.
from amr_keras.tables import accuracy, table4  # noqa: E402,F401  isort: skip

"""Hyper-parameter search over AMR with KerasTuner: the hypermodel, the search and its reports.

Modules: ``space`` (the hypermodel, the tuners, the reports), ``run`` (``search``), ``distributed`` (the chief,
its workers and the oracle server). Their public names are importable from here.

``scripts/tune.py`` is a thin wrapper over :func:`search`. A search folder holds:

- ``amr_search/``: KerasTuner's project (oracle state, one ``trial_*`` folder per trial with its
  best-epoch weights); a search run again with the same folder continues from it;
- ``search.json``: the settings of the search (a rerun must use the same ones);
- ``logs/``: TensorBoard logs, one folder per trial (HParams dashboard);
- ``best_hyperparameters.json``: a flat object of ``Config`` fields, for ``scripts/fit.py --config``;
- ``trials.md``: every trial ranked by its score (the objective);
- ``trial_workers.json`` (distributed search): which workers were handed each trial, in order;
- ``workers/`` (``scripts/tune.py --workers N``): the log of each worker process and ``workers.json``
  (their ids, pids and logs).

A search runs in one process, or distributed with KerasTuner's own mode (see :func:`search` and
``docs/distributed_search.md``): a chief process serves the oracle over gRPC and writes the reports;
worker processes ask it for trials, train them and write only their trial folders (and TensorBoard logs).

Two objectives: ``probe`` scores a trial by the best validation accuracy of its online probe over
its epochs; ``posthoc`` by the validation accuracy of a logistic regression fitted on the frozen
codes at the trial's end (``amr_keras.evaluate.linear_evaluation``; L2 picked on validation), which
measures the codes themselves and does not depend on how fast the probe follows a moving code.
"""

from amr_keras.search.distributed import (ENV_ORACLE_IP, ENV_ORACLE_PORT, ENV_TUNER_ID, SETTINGS_HP,
                                         TRIAL_WORKERS_FILE, WORKERS_FOLDER, Cluster, LocalWorkers,
                                         cluster_from_env, limit_cpu_threads, local_gpus)
from amr_keras.search.run import search
from amr_keras.search.space import (CODE_CHANNELS_CHOICES, K_RANGE, LAMB_RANGE, LR_RANGE, OBJECTIVES, PROJECT_NAME,
                                    RANGES, SEARCHABLE, TUNERS, UPDATE_G_EVERY_RANGE, AMRHyperModel, SearchError,
                                    best_config, make_tuner, objective, parse_ranges, parse_search_space,
                                    ranked_trials, trials_table, tuner_seed, write_reports)

__all__ = ["AMRHyperModel", "CODE_CHANNELS_CHOICES", "Cluster", "ENV_ORACLE_IP", "ENV_ORACLE_PORT", "ENV_TUNER_ID",
           "K_RANGE", "LAMB_RANGE", "LR_RANGE", "LocalWorkers", "OBJECTIVES", "PROJECT_NAME", "RANGES", "SEARCHABLE",
           "SETTINGS_HP", "SearchError", "TRIAL_WORKERS_FILE", "TUNERS", "UPDATE_G_EVERY_RANGE", "WORKERS_FOLDER",
           "best_config", "cluster_from_env", "limit_cpu_threads", "local_gpus", "make_tuner", "objective",
           "parse_ranges", "parse_search_space", "ranked_trials", "search", "trials_table", "tuner_seed",
           "write_reports"]

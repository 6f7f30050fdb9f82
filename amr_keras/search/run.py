"""``search``: one search in one process, or the chief or a worker of a distributed one
(``amr_keras.search.distributed``)."""

import contextlib
import dataclasses
import os
import sys

import keras

from amr_keras.callbacks import NonFiniteLossGuard
from amr_keras.config import ConfigError, data_options, resolve
from amr_keras.data import load_dataset, train_pipeline
from amr_keras.precision import op_determinism_restored, resolve_precision
from amr_keras.runfolder import FolderLock
from amr_keras.search.distributed import _check_chief_settings, _serve_as_chief, _train_as_worker, cluster_from_env
from amr_keras.search import space
from amr_keras.search.space import (
    OBJECTIVES,
    SEARCH_KEYS,
    TUNERS,
    AMRHyperModel,
    _check_search_settings,
    _failed_in_a_row,
    _search_result,
    _too_many_failures,
    _write_json,
    make_tuner,
    parse_ranges,
    parse_search_space,
    write_reports,
)
from amr_keras.stopping import StopSignals, signal_name


# --objective name -> the metric a trial is scored by (higher is better).
def _report_after_every_trial(kt_tuner, hypermodel, out):
    """Rewrite ``trials.md`` and ``best_hyperparameters.json`` as each trial ends, so that a search killed
    part-way (a job scheduler's SIGTERM, a machine going away) still reports the trials it finished."""
    trial_end = kt_tuner.on_trial_end

    def on_trial_end(trial):
        trial_end(trial)
        write_reports(kt_tuner, hypermodel, out)

    kt_tuner.on_trial_end = on_trial_end


def search(cfg, tuner="random", max_trials=10, search_space=(), verbose=None, objective="probe", ranges=None,
           cluster=None):
    """Search hyper-parameters of AMR on ``cfg.dataset``, continuing the search found in ``cfg.out``.

    Each trial trains ``cfg.epochs`` epochs (Hyperband: up to that many) on the training split and
    is scored on validation (``objective``: its online probe's best accuracy, or a post-hoc logistic
    regression on its final codes); the test split is not used.

    Distributed (``cluster``, by default read from KerasTuner's environment variables, see ``cluster_from_env``):
    every process runs this same call. The chief serves the oracle, writes the reports as each trial ends and
    trains nothing; it returns when the search is over. A worker asks the chief for trials, trains them,
    writes only their trial folders and TensorBoard logs, and is refused if its settings differ from the
    chief's.

    Args:
        cfg: base ``Config``; ``cfg.out`` is the search folder (required).
        tuner: ``"random"``, ``"bayesian"`` or ``"hyperband"``.
        max_trials: most trials in all, finished ones of an earlier run included (a worker's is not used).
        search_space: optional names of ``SEARCHABLE`` to search besides lamb and lr.
        verbose: Keras and KerasTuner progress output (default: bar on a terminal).
        objective: ``"probe"`` or ``"posthoc"`` (see the module's docstring).
        ranges: ``{name: (low, high) or "low:high"}`` narrowing lamb, lr or beta (see ``parse_ranges``).
        cluster: a ``Cluster`` (this process's role in a distributed search), or None for the environment's.

    Returns:
        dict with ``best_trial``, ``objective`` (the metric's name), ``best_score``, ``best_config`` (as written to
        ``best_hyperparameters.json``), ``best_values`` (the searched values only),
        ``trials`` and ``completed`` (counts), ``role`` (``"single"`` or ``"chief"``) and ``out``; a worker returns
        ``role="worker"``, its ``tuner_id``, the ids of the trials it ``trained`` and ``out``.

    Raises:
        ConfigError: bad settings, ``cfg.out`` holds a search made with other settings, or (worker) the chief's
            search has other settings.
        SearchError: no trial completed, too many trials failed in a row, or every local worker exited early.
    """
    cluster = cluster_from_env() if cluster is None else cluster
    role = cluster.role if cluster else "single"
    if cfg.out is None:
        raise ConfigError("A search needs an output folder: pass --out DIR (rerun with the same DIR to continue).")
    if tuner not in TUNERS:
        raise ConfigError(f"Unknown tuner {tuner!r}. Choose one of: {', '.join(TUNERS)}.")
    if not isinstance(max_trials, int) or isinstance(max_trials, bool) or max_trials < 1:
        raise ConfigError(f"max_trials must be an integer >= 1, got {max_trials!r}.")
    search_space = parse_search_space(search_space)
    if objective not in OBJECTIVES:
        raise ConfigError(f"Unknown objective {objective!r}. Choose one of: {', '.join(OBJECTIVES)}.")
    ranges = parse_ranges(ranges)
    if cfg.data_dir is not None:
        cfg = dataclasses.replace(cfg, data_dir=os.path.abspath(cfg.data_dir))
    cfg = resolve(cfg)
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision))
    out = cfg.out
    settings = dict(tuner=tuner, search_space=list(search_space), max_trials=max_trials, objective=objective,
                    ranges={k: list(v) for k, v in ranges.items()},
                    **{k: getattr(cfg, k) for k in SEARCH_KEYS if k not in ("tuner", "search_space", "objective",
                                                                            "ranges")})
    # The search folder belongs to a single-process search or to the chief, who own it (lock it) for the whole
    # search; a worker writes only the trial folders it is handed.
    owns_folder = role != "worker"
    lock = FolderLock(out, what="search folder").acquire() if owns_folder else None
    # Ctrl-C and SIGTERM stop a search in one process, or a worker, with one line (RunStopped) and whole reports;
    # the trial in progress is trained afresh when the search continues (a worker's goes back to the chief). The
    # chief has its own handling (scripts/tune.py): it stops its workers first.
    signals = StopSignals(lambda signum: (
        f"stopped ({signal_name(signum)}): the search in {out} keeps every finished trial; run the same command "
        "again to continue (the trial in progress is trained afresh)"))
    stack = contextlib.ExitStack()
    if role != "chief":
        stack.enter_context(signals.installed())
    stack.enter_context(op_determinism_restored())
    if cfg.deterministic:  # every trial then repeats bit for bit (fit.py --deterministic)
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    try:
        if owns_folder:
            _check_search_settings(out, settings)

        splits = load_dataset(cfg.dataset, data_dir=cfg.data_dir, batch_size=cfg.batch_size, seed=cfg.seed,
                              tfds_data_dir=cfg.tfds_data_dir, eval_batch_size=max(cfg.batch_size, 256),
                              train_size=cfg.train_size, **data_options(cfg))
        info = splits.info
        steps = cfg.steps_per_epoch or info.num_train // cfg.batch_size
        hypermodel = AMRHyperModel(cfg, info.colors, info.num_classes, steps, search_space=search_space,
                                   ranges=ranges, objective=objective, posthoc_arrays=splits.arrays)
        os.makedirs(out, exist_ok=True)
        if owns_folder:
            _write_json(os.path.join(out, "search.json"), settings)
        kt_tuner = make_tuner(tuner, hypermodel, out, max_trials, seed=cfg.seed)
        if role == "chief":
            return _serve_as_chief(kt_tuner, hypermodel, settings, cluster, out)
        if role == "worker":
            _check_chief_settings(kt_tuner.oracle, settings, cluster)
        # Every trial sees the same batches in the same order (epoch e is a shuffle seeded by (seed, e)).
        train_ds = train_pipeline(*splits.arrays["train"], cfg.batch_size, seed=cfg.seed)
        callbacks = [NonFiniteLossGuard(), keras.callbacks.TensorBoard(os.path.join(out, "logs"))]
        verbose = verbose if verbose is not None else (1 if sys.stdout.isatty() else 2)
        fit_kwargs = dict(steps_per_epoch=steps, epochs=cfg.epochs, validation_data=splits.val, callbacks=callbacks,
                          verbose=verbose, shuffle=False)
        if role == "worker":
            return _train_as_worker(kt_tuner, cluster, out, train_ds, **fit_kwargs)
        _report_after_every_trial(kt_tuner, hypermodel, out)
        try:
            kt_tuner.search(train_ds, **fit_kwargs)
        except RuntimeError as e:
            # KerasTuner stops the search with a bare RuntimeError after too many failed trials in a row.
            if _failed_in_a_row(kt_tuner.oracle) < space.MAX_CONSECUTIVE_FAILED_TRIALS:
                raise
            raise _too_many_failures(kt_tuner.oracle, e, out) from e
        finally:
            best, best_settings = write_reports(kt_tuner, hypermodel, out)
        return _search_result(kt_tuner.oracle, best, best_settings, out, role)
    finally:
        stack.close()
        if lock is not None:
            lock.release()

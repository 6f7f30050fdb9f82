"""Hyper-parameter search over AMR with KerasTuner: the hypermodel, the search and its reports.

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

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time

import keras
import keras_tuner

from amr_keras.callbacks import NonFiniteLossError, NonFiniteLossGuard
from amr_keras.cli import RUN_KEYS, ConfigError, resolve, validate
from amr_keras.data import load_dataset, train_pipeline
from amr_keras.evaluate import encode_arrays, linear_evaluation
from amr_keras.mixers import K_WAY_MIXERS, MIXERS
from amr_keras.model import ACAI_GAMMA, ACAI_WEIGHT
from amr_keras.precision import op_determinism_restored, precision_scope, resolve_precision
from amr_keras.runfolder import FolderLock, write_json_atomically
from amr_keras.stopping import StopSignals, signal_name
from amr_keras.train import build_model

# --objective name -> the metric a trial is scored by (higher is better).
OBJECTIVES = {"probe": "val_probe_accuracy", "posthoc": "val_posthoc_accuracy"}
TUNERS = ("random", "bayesian", "hyperband")
# Always searched: lamb and lr (the discriminator uses the same rate). Optional ones:
SEARCHABLE = ("mixer", "k", "update_g_every", "code_channels", "beta")
LAMB_RANGE = (1.0, 1000.0)
LR_RANGE = (1e-5, 1e-2)
BETA_RANGE = (0.0, 1.0)  # weight of the consistency loss, linear scale
# Default ranges of the float hyper-parameters, and whether each is drawn on a log scale.
RANGES = {"lamb": LAMB_RANGE, "lr": LR_RANGE, "beta": BETA_RANGE}
LOG_SCALE = {"lamb": True, "lr": True, "beta": False}
K_RANGE = (2, 3)
UPDATE_G_EVERY_RANGE = (1, 5)
CODE_CHANNELS_CHOICES = (2, 4, 8, 16)  # codes of 32, 64, 128 and 256 values
PROJECT_NAME = "amr_search"
# A high learning rate may make a trial diverge (it is then marked FAILED); a setup
# that is broken fails every trial, and the search stops after this many in a row.
MAX_CONSECUTIVE_FAILED_TRIALS = 5
# A trial whose process crashed or was killed (not a diverging one: that one fails at once) is trained
# once more, by KerasTuner's retry queue, before it is marked FAILED.
MAX_RETRIES_PER_TRIAL = 1
# Settings of a search that a rerun in the same folder must keep (max_trials and the data folder may change).
SEARCH_KEYS = ("tuner", "search_space", "objective", "ranges", "dataset", "train_size", "preset", "mixer", "k",
               "beta", "probe", "depth", "code_channels", "batch_size", "epochs", "steps_per_epoch", "seed",
               "precision")
# What a search.json written before a key existed meant by its absence.
LEGACY_SEARCH_VALUES = {"precision": "float32", "train_size": None, "code_channels": 2, "steps_per_epoch": None,
                        "objective": "probe", "ranges": {k: list(v) for k, v in RANGES.items()}, "mixer": "mixup",
                        "k": 2, "beta": 0.0, "probe": "batchnorm"}


class SearchError(RuntimeError):
    """A search that could not give a result (e.g. every trial failed); the message says why."""


def objective(name="probe"):
    """The tuner objective of ``--objective name`` (see ``OBJECTIVES``), to maximise."""
    if name not in OBJECTIVES:
        raise ConfigError(f"Unknown objective {name!r}. Choose one of: {', '.join(OBJECTIVES)}.")
    return keras_tuner.Objective(OBJECTIVES[name], direction="max")


def parse_ranges(ranges=None):
    """Search ranges of the float hyper-parameters: the defaults of ``RANGES`` with ``ranges`` over them.

    Args:
        ranges: ``{name: (low, high)}`` or ``{name: "low:high"}`` for names of ``RANGES``; ``low == high``
            fixes the value. Log-scale ones (lamb, lr) need ``low > 0``.

    Returns:
        ``{name: (low, high)}`` for every name of ``RANGES``, as floats.

    Example:
        >>> parse_ranges({"lamb": "3:30"})["lamb"]
        (3.0, 30.0)
    """
    out = dict(RANGES)
    for name, value in (ranges or {}).items():
        if name not in RANGES:
            raise ConfigError(f"No search range for {name!r}: ranges exist for {', '.join(RANGES)}.")
        if isinstance(value, str):
            parts = value.split(":")
            try:
                if len(parts) != 2:
                    raise ValueError
                value = (float(parts[0]), float(parts[1]))
            except ValueError:
                raise ConfigError(f"The {name} range must be LOW:HIGH, e.g. --{name.replace('_', '-')}-range "
                                  f"{RANGES[name][0]:g}:{RANGES[name][1]:g}; got {value!r}.") from None
        low, high = (float(v) for v in value)
        if not (low <= high) or low != low or high == float("inf"):
            raise ConfigError(f"The {name} range needs finite LOW <= HIGH, got {low:g}:{high:g}.")
        if LOG_SCALE[name] and not low > 0:
            raise ConfigError(f"{name} is searched on a log scale, so its range must be above 0, got {low:g}:{high:g}.")
        if name == "beta" and low < 0:
            raise ConfigError(f"beta (consistency weight) must be >= 0, got the range {low:g}:{high:g}.")
        out[name] = (low, high)
    return out


def parse_search_space(search_space):
    """Optional hyper-parameters to search, from a comma-separated string or a sequence of names.

    Returns:
        A tuple of names of ``SEARCHABLE``, in that order.

    Example:
        >>> parse_search_space("k,mixer")
        ('mixer', 'k')
    """
    if search_space is None:
        return ()
    names = search_space.split(",") if isinstance(search_space, str) else list(search_space)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in SEARCHABLE]
    if unknown:
        raise ConfigError(
            f"Cannot search {', '.join(map(repr, unknown))}. Searchable besides lamb and lr: "
            f"{', '.join(SEARCHABLE)} (e.g. --search mixer,k)."
        )
    return tuple(n for n in SEARCHABLE if n in names)


class AMRHyperModel(keras_tuner.HyperModel):
    """AMR models for KerasTuner: a base ``Config`` with some settings drawn from ``hp``.

    Always searched: ``lamb`` (log scale, 1 to 1000) and ``lr`` (log scale, 1e-5 to 1e-2; the
    discriminator uses the same rate). Optionally (``search_space``): ``mixer`` (mixup, bernoulli,
    acai, none), ``k`` (2 to 3, only for the k-way mixers mixup and bernoulli; acai always mixes
    pairs), ``update_g_every`` (1 to 5), ``code_channels`` (2, 4, 8 or 16: codes of 32 to 256
    values) and ``beta`` (linear, 0 to 1). ``ranges`` narrows lamb, lr and beta. Every other setting comes from
    the base config (ACAI's ``acai_gamma`` and ``acai_weight`` too, in the trials that draw acai: the others keep their
    defaults); the cosine schedule spans ``cfg.epochs`` epochs.

    Every model starts from the same weights (``cfg.seed``), so that trials differ only by their
    hyper-parameters.

    Args:
        cfg: base ``Config`` (resolved here: preset values fill unset fields).
        colors: image channels of the dataset.
        num_classes: classes of the linear probe.
        steps_per_epoch: training steps per epoch (sets the length of the learning-rate schedule).
        search_space: optional names of ``SEARCHABLE`` (sequence or comma-separated string).
        ranges: ``{name: (low, high)}`` for lamb, lr, beta (see ``parse_ranges``).
        objective: ``"probe"`` or ``"posthoc"`` (see the module's docstring).
        posthoc_arrays: ``{"train": (x_uint8, y), "val": (x, y)}`` (e.g. ``load_dataset(...).arrays``
            without ``"test"``): the images the post-hoc objective encodes; needed for ``"posthoc"``.
        name: name of the hypermodel.

    Example:
        >>> hypermodel = AMRHyperModel(Config(dataset="mnist_sample"), 1, 10, 140, search_space="mixer")
        >>> tuner = keras_tuner.RandomSearch(hypermodel, objective=objective(), max_trials=10,
        ...                                  directory="runs/search", project_name="amr_search")
        >>> tuner.search(train_ds, steps_per_epoch=140, epochs=12, validation_data=val_ds)
    """

    def __init__(self, cfg, colors, num_classes, steps_per_epoch, search_space=(), ranges=None, objective="probe",
                 posthoc_arrays=None, name="amr"):
        super().__init__(name=name)
        self.cfg = resolve(cfg)
        self.colors = int(colors)
        self.num_classes = int(num_classes)
        self.steps_per_epoch = int(steps_per_epoch)
        self.search_space = parse_search_space(search_space)
        self.ranges = parse_ranges(ranges)
        if objective not in OBJECTIVES:
            raise ConfigError(f"Unknown objective {objective!r}. Choose one of: {', '.join(OBJECTIVES)}.")
        self.objective = objective
        if objective == "posthoc":
            if not posthoc_arrays or not {"train", "val"} <= set(posthoc_arrays):
                raise ConfigError("The posthoc objective needs the training and validation images "
                                  "(posthoc_arrays={'train': (x, y), 'val': (x, y)}).")
            # The test split is never read by a search.
            posthoc_arrays = {split: posthoc_arrays[split] for split in ("train", "val")}
        self.posthoc_arrays = posthoc_arrays
        if "k" in self.search_space:
            if "mixer" not in self.search_space and self.cfg.mixer not in K_WAY_MIXERS:
                raise ConfigError(
                    f"Searching k needs a mixer that mixes k codes ({', '.join(K_WAY_MIXERS)}): the base mixer "
                    f"is {self.cfg.mixer!r}. Search mixer too, or pick one of those."
                )
            # The largest k must fit in a batch.
            validate(dataclasses.replace(self.cfg, k=K_RANGE[1]))

    def sample(self, hp):
        """The settings drawn from ``hp``, as ``Config`` fields (declares them in ``hp`` if new)."""
        lamb = self._float(hp, "lamb")
        lr = self._float(hp, "lr")
        values = {"lamb": lamb, "lr": lr, "d_lr": lr}
        mixer = self.cfg.mixer
        if "mixer" in self.search_space:
            mixer = values["mixer"] = hp.Choice("mixer", list(MIXERS))
        if "k" in self.search_space:
            # k means nothing without mixing, and acai mixes pairs only: when the mixer is searched, k is
            # drawn only for the k-way mixers.
            scope = (hp.conditional_scope("mixer", list(K_WAY_MIXERS))
                     if "mixer" in self.search_space else contextlib.nullcontext())
            with scope:
                k = hp.Int("k", *K_RANGE)
            if k is not None and mixer in K_WAY_MIXERS:
                values["k"] = k
        if mixer == "acai":
            values["k"] = 2
        elif "mixer" in self.search_space:
            # Only acai takes these settings (other mixers refuse values other than the defaults).
            values.update(acai_gamma=ACAI_GAMMA, acai_weight=ACAI_WEIGHT)
        if "update_g_every" in self.search_space:
            values["update_g_every"] = hp.Int("update_g_every", *UPDATE_G_EVERY_RANGE)
        if "code_channels" in self.search_space:
            values["code_channels"] = hp.Choice("code_channels", list(CODE_CHANNELS_CHOICES))
        if "beta" in self.search_space:
            values["beta"] = self._float(hp, "beta")
        return values

    def _float(self, hp, name):
        low, high = self.ranges[name]
        if low == high:
            return hp.Fixed(name, low)
        return hp.Float(name, low, high, sampling="log" if LOG_SCALE[name] else "linear")

    def config(self, hp):
        """The base ``Config`` with the settings drawn from ``hp``."""
        return dataclasses.replace(self.cfg, **self.sample(hp))

    def build(self, hp):
        """A compiled AMR for the settings drawn from ``hp`` (see ``amr_keras.train.build_model``)."""
        cfg = self.config(hp)
        keras.utils.set_random_seed(cfg.seed)
        with precision_scope(cfg.precision):
            return build_model(cfg, self.colors, self.num_classes, self.steps_per_epoch)

    def fit(self, hp, model, *args, **kwargs):
        """``model.fit(*args, **kwargs)``, callbacks of the tuner included.

        A loss that becomes NaN or infinite (with ``NonFiniteLossGuard`` among the callbacks)
        fails the trial without retrying it: the same settings would diverge again.

        With the ``posthoc`` objective, the trial's result is a dict of ``val_posthoc_accuracy`` (the
        logistic regression on the codes of the last epoch's weights) and the probe's best
        ``val_probe_accuracy``.
        """
        try:
            history = model.fit(*args, **kwargs)
        except NonFiniteLossError as e:
            raise keras_tuner.errors.FailedTrialError(str(e)) from e
        if self.objective != "posthoc":
            return history
        return {OBJECTIVES["posthoc"]: self.posthoc_accuracy(model),
                OBJECTIVES["probe"]: max(history.history.get(OBJECTIVES["probe"], [float("nan")]))}

    def posthoc_accuracy(self, model):
        """Validation accuracy of a logistic regression fitted on ``model``'s frozen training codes."""
        codes = {split: encode_arrays(model.encode, x) for split, (x, _) in self.posthoc_arrays.items()}
        res = linear_evaluation(codes["train"], self.posthoc_arrays["train"][1], codes["val"],
                                self.posthoc_arrays["val"][1], seed=self.cfg.seed, num_classes=self.num_classes)
        return float(res["val_accuracy"])


# KerasTuner's oracles read seed 0 as "no seed" and draw a random one (``seed or random.randint(...)``),
# so a search at ``--seed 0``, the default, would draw other trials each time it is started.
ZERO_SEED_FOR_TUNER = 2**31 - 1


def tuner_seed(seed):
    """The seed handed to KerasTuner for ``seed``: ``seed`` itself, except 0, which goes as ``ZERO_SEED_FOR_TUNER``."""
    return ZERO_SEED_FOR_TUNER if seed == 0 else seed


def make_tuner(name, hypermodel, directory, max_trials, seed=0):
    """A KerasTuner tuner over ``hypermodel`` that continues the search found in ``directory``.

    Args:
        name: ``"random"``, ``"bayesian"`` or ``"hyperband"``.
        hypermodel: an ``AMRHyperModel``.
        directory: the search folder (the project is ``directory/amr_search``).
        max_trials: most trials in all. Hyperband runs brackets up to ``hypermodel.cfg.epochs``
            epochs and stops at ``max_trials`` trials (continued trials count).
        seed: seed of the tuner's draws; the same seed draws the same trials (``tuner_seed``).
    """
    common = dict(objective=objective(hypermodel.objective), seed=tuner_seed(seed), directory=directory,
                  project_name=PROJECT_NAME, overwrite=False,
                  max_consecutive_failed_trials=MAX_CONSECUTIVE_FAILED_TRIALS,
                  max_retries_per_trial=MAX_RETRIES_PER_TRIAL)
    if name == "random":
        return keras_tuner.RandomSearch(hypermodel, max_trials=max_trials, **common)
    if name == "bayesian":
        try:
            return keras_tuner.BayesianOptimization(hypermodel, max_trials=max_trials, **common)
        except ImportError as e:
            raise ConfigError(f"--tuner bayesian needs scikit-learn and scipy ({e}): pip install scikit-learn, "
                              "or use --tuner random or hyperband.") from e
    if name == "hyperband":
        tuner = keras_tuner.Hyperband(hypermodel, max_epochs=hypermodel.cfg.epochs, factor=3, **common)
        # Hyperband has no trial budget of its own; the oracle stops creating trials at max_trials.
        tuner.oracle.max_trials = max_trials
        return tuner
    raise ConfigError(f"Unknown tuner {name!r}. Choose one of: {', '.join(TUNERS)}.")


def best_config(hypermodel, trial):
    """Settings of ``trial`` as a flat dict of ``Config`` fields (what ``scripts/fit.py --config`` reads).

    It holds the settings that define a run (``amr_keras.cli.RUN_KEYS``) that are set, plus
    ``tfds_data_dir`` when given.
    """
    cfg = hypermodel.config(trial.hyperparameters.copy())
    keys = RUN_KEYS + ("tfds_data_dir",)
    return {k: getattr(cfg, k) for k in keys if getattr(cfg, k) is not None}


def _in_start_order(oracle):
    order = {trial_id: i for i, trial_id in enumerate(oracle.start_order)}
    return sorted(oracle.trials.values(), key=lambda t: (order.get(t.trial_id, len(order)), t.trial_id))


def ranked_trials(oracle):
    """Completed trials, best score first; ties go to the trial started first."""
    completed = [t for t in _in_start_order(oracle) if t.status == "COMPLETED" and t.score is not None]
    return sorted(completed, key=lambda t: t.score, reverse=True)  # stable: start order breaks ties


def trials_table(tuner, workers=None):
    """Markdown table of every trial, best score first (unscored trials last).

    The score column is ``best val_probe_accuracy`` (over the trial's epochs) with the probe objective;
    with the post-hoc one, ``val_posthoc_accuracy`` followed by the probe's ``best val_probe_accuracy``.
    ``workers`` (``{trial_id: [worker ids]}``, distributed search) adds a ``worker`` column: who trained it.
    """
    oracle = tuner.oracle
    metric = oracle.objective.name
    names = [hp.name for hp in oracle.get_space().space if not hp.name.startswith("tuner/")]
    hyperband = isinstance(tuner, keras_tuner.Hyperband)
    scored = ranked_trials(oracle)
    others = [t for t in _in_start_order(oracle) if t not in scored]
    # Hyperband trains the best trials of a round further, starting from the weights of an earlier trial.
    extra = ["epochs", "continues"] if hyperband else []
    posthoc = metric == OBJECTIVES["posthoc"]
    scores = [metric, f"best {OBJECTIVES['probe']}"] if posthoc else [f"best {metric}"]
    who = ["worker"] if workers else []
    header = ["rank", "trial"] + names + extra + scores + who + ["status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for rank, t in enumerate(scored + others, start=1):
        values = t.hyperparameters.values
        row = [str(rank) if t in scored else "-", t.trial_id] + [_cell(values.get(n)) for n in names]
        if hyperband:
            row += [_cell(values.get("tuner/epochs")), _cell(values.get("tuner/trial_id"))]
        row += [f"{t.score:.4f}" if t in scored else "-"]
        if posthoc:
            probe = t.metrics.get_best_value(OBJECTIVES["probe"]) if t.metrics.exists(OBJECTIVES["probe"]) else None
            row += [f"{probe:.4f}" if probe is not None and probe == probe else "-"]
        if workers:
            row += [",".join(workers.get(t.trial_id, ())) or "-"]
        row += [t.status]
        lines.append("| " + " | ".join(row) + " |")
        if t.status != "COMPLETED" and t.message:
            notes.append(f"- trial {t.trial_id}: {_last_line(t.message)}")
    title = f"# Hyper-parameter search ({_tuner_name(tuner)}), objective {metric} (max)"
    return "\n".join([title, ""] + lines + ([""] + notes if notes else [])) + "\n"


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _tuner_name(tuner):
    return {keras_tuner.Hyperband: "hyperband", keras_tuner.BayesianOptimization: "bayesian"}.get(type(tuner), "random")


def _check_search_settings(out, settings):
    """Refuse to continue the search of ``out`` if it was made with other settings."""
    path = os.path.join(out, "search.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = json.load(f)
    diffs = _setting_diffs({**LEGACY_SEARCH_VALUES, **saved}, settings, "search has", "now")
    if diffs:
        raise ConfigError(
            f"{out} holds a search made with other settings ({'; '.join(diffs)}). Continue it with the "
            "same settings (only --max-trials and the data folder may change), or start a new search "
            "with another --out."
        )


def _setting_diffs(saved, settings, saved_as, now_as):
    """``["key: <saved_as> <value>, <now_as> <value>"]`` for the ``SEARCH_KEYS`` that differ."""
    return [f"{k}: {saved_as} {saved.get(k)!r}, {now_as} {settings[k]!r}" for k in SEARCH_KEYS
            if saved.get(k) != settings[k]]


def _write_json(path, data):
    write_json_atomically(path, data, indent=2)


def write_reports(tuner, hypermodel, out, workers=None):
    """Write ``trials.md`` and, when a trial completed, ``best_hyperparameters.json``.

    ``workers``: ``{trial_id: [worker ids]}`` of a distributed search (see ``trials_table``).

    Returns:
        ``(best trial or None, its settings dict or None)``.
    """
    with open(os.path.join(out, "trials.md"), "w") as f:
        f.write(trials_table(tuner, workers))
    ranked = ranked_trials(tuner.oracle)
    if not ranked:
        return None, None
    settings = best_config(hypermodel, ranked[0])
    _write_json(os.path.join(out, "best_hyperparameters.json"), settings)
    return ranked[0], settings


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
                              train_size=cfg.train_size)
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
            if _failed_in_a_row(kt_tuner.oracle) < MAX_CONSECUTIVE_FAILED_TRIALS:
                raise
            raise _too_many_failures(kt_tuner.oracle, e, out) from e
        finally:
            best, best_settings = write_reports(kt_tuner, hypermodel, out)
        return _search_result(kt_tuner.oracle, best, best_settings, out, role)
    finally:
        stack.close()
        if lock is not None:
            lock.release()


def _search_result(oracle, best, best_settings, out, role):
    if best is None:
        raise SearchError(f"No trial completed; see {os.path.join(out, 'trials.md')} for why they failed.")
    trials = list(oracle.trials.values())
    return {
        "best_trial": best.trial_id,
        "objective": oracle.objective.name,
        "best_score": float(best.score),
        "best_config": best_settings,
        "best_values": {k: v for k, v in best.hyperparameters.values.items() if not k.startswith("tuner/")},
        "trials": len(trials),
        "completed": sum(t.status == "COMPLETED" for t in trials),
        "role": role,
        "out": out,
    }


def _too_many_failures(oracle, error, out):
    return SearchError(f"{_failed_in_a_row(oracle)} trials in a row failed, so the search stopped; the last one: "
                       f"{_last_line(str(error))} See {os.path.join(out, 'trials.md')}.")


# --- Distributed search: KerasTuner's chief oracle served over gRPC, workers set by environment variables ---

ENV_TUNER_ID = "KERASTUNER_TUNER_ID"
ENV_ORACLE_IP = "KERASTUNER_ORACLE_IP"
ENV_ORACLE_PORT = "KERASTUNER_ORACLE_PORT"
# The chief publishes the settings that shape a trial in the oracle's space, as a fixed value that no trial
# uses ("tuner/" names are KerasTuner's own and left out of the reports); a worker compares its own with it.
SETTINGS_HP = "tuner/amr_search_settings"
TRIAL_WORKERS_FILE = "trial_workers.json"
WORKERS_FOLDER = "workers"
# How often the chief checks whether the search is over and whether its local workers are alive.
CHIEF_POLL_S = 0.5
# After the last trial, how long the chief keeps serving for workers that have not yet heard that the
# search is over (a worker asks within moments of ending its trial; a dead one never asks).
CHIEF_GRACE_S = 30.0


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in a distributed search.

    Attributes:
        role: ``"chief"`` (serves the oracle) or ``"worker"`` (trains trials).
        tuner_id: KerasTuner's id of this process (the chief's contains ``chief``).
        ip: where the chief serves the oracle (a worker connects there).
        port: its port; 0 lets a chief pick a free one (for its own ``workers``).
        workers: ``LocalWorkers`` that the chief starts once it serves, and watches; None on a cluster.
    """

    role: str
    tuner_id: str
    ip: str
    port: int
    workers: object = None


def cluster_from_env(environ=None):
    """The ``Cluster`` set by KerasTuner's environment variables, or None (a single-process search).

    ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT`` name where the chief serves the oracle;
    ``KERASTUNER_TUNER_ID`` is ``chief`` on the chief and a distinct id (``worker0``, ``worker1``, ...) on
    each worker.

    Example:
        >>> cluster_from_env({"KERASTUNER_TUNER_ID": "worker1", "KERASTUNER_ORACLE_IP": "10.0.0.5",
        ...                   "KERASTUNER_ORACLE_PORT": "8000"}).role
        'worker'
    """
    env = os.environ if environ is None else environ
    names = (ENV_TUNER_ID, ENV_ORACLE_IP, ENV_ORACLE_PORT)
    if ENV_ORACLE_IP not in env and ENV_ORACLE_PORT not in env:
        return None
    missing = [name for name in names if not env.get(name)]
    if missing:
        raise ConfigError(f"A distributed search needs {', '.join(names)} set on every process, but "
                          f"{', '.join(missing)} is not: set {ENV_TUNER_ID}=chief on the chief and worker0, "
                          "worker1, ... on the workers, or unset them all for a search in one process.")
    try:
        port = int(env[ENV_ORACLE_PORT])
    except ValueError:
        raise ConfigError(f"{ENV_ORACLE_PORT} must be a port number, got {env[ENV_ORACLE_PORT]!r}.") from None
    tuner_id = env[ENV_TUNER_ID]
    return Cluster("chief" if "chief" in tuner_id else "worker", tuner_id, env[ENV_ORACLE_IP], port)


def _published_settings(settings):
    return json.dumps({k: settings[k] for k in SEARCH_KEYS}, sort_keys=True)


def _check_chief_settings(oracle, settings, cluster):
    """Refuse to work for a chief whose search has other settings (asks the chief; waits for it to start)."""
    where = f"{cluster.ip}:{cluster.port}"
    published = next((hp.value for hp in oracle.get_space().space if hp.name == SETTINGS_HP), None)
    if published is None:
        raise ConfigError(f"The oracle at {where} does not publish the settings of an amr_keras search: start the "
                          f"chief with scripts/tune.py and {ENV_TUNER_ID}=chief.")
    diffs = _setting_diffs(json.loads(published), settings, "chief has", "this worker")
    if diffs:
        raise ConfigError(
            f"The chief at {where} runs a search with other settings ({'; '.join(diffs)}). Start every worker "
            "with the chief's options (only --out, --data-dir, --tfds-data-dir, --max-trials, --threads and "
            "--verbose may differ)."
        )


def _train_as_worker(kt_tuner, cluster, out, *fit_args, **fit_kwargs):
    trained = []
    trial_end = kt_tuner.on_trial_end

    def on_trial_end(trial):
        trained.append(trial.trial_id)
        trial_end(trial)

    kt_tuner.on_trial_end = on_trial_end
    kt_tuner.search(*fit_args, **fit_kwargs)
    return {"role": "worker", "tuner_id": cluster.tuner_id, "trained": trained, "out": out}


class _Chief:
    """The oracle of a distributed search as its chief serves it.

    Wraps the oracle's ``create_trial`` and ``end_trial`` (which KerasTuner's gRPC servicer calls for the
    workers) to record which worker is handed each trial (``trial_workers.json``), rewrite the reports and
    print a line as each trial ends, and stop handing out trials after too many failures in a row.
    """

    def __init__(self, kt_tuner, hypermodel, out):
        self.tuner, self.oracle, self.hypermodel, self.out = kt_tuner, kt_tuner.oracle, hypermodel, out
        self.lock = threading.RLock()  # the servicer's thread and the chief's loop both end trials
        self.error = None
        self.ledger = os.path.join(out, TRIAL_WORKERS_FILE)
        self.workers = {}
        if os.path.exists(self.ledger):
            with open(self.ledger) as f:
                self.workers = json.load(f)
        self._create_trial, self._end_trial = self.oracle.create_trial, self.oracle.end_trial
        self.oracle.create_trial, self.oracle.end_trial = self.create_trial, self.end_trial

    def create_trial(self, tuner_id):
        with self.lock:
            if self.error is not None:
                self.oracle.tuner_ids.discard(tuner_id)
                return keras_tuner.engine.trial.Trial(self.oracle.get_space(), status="STOPPED")
            trial = self._create_trial(tuner_id)
            if trial.status == "RUNNING":
                self.workers.setdefault(trial.trial_id, []).append(tuner_id)
                _write_json(self.ledger, self.workers)
            return trial

    def end_trial(self, trial):
        with self.lock:
            oracle = self.oracle
            worker = next((w for w, t in oracle.ongoing_trials.items() if t.trial_id == trial.trial_id), None)
            # A result for a trial that a restarted chief queued again: it is not trained a second time.
            if trial.trial_id in oracle._retry_queue:
                oracle._retry_queue.remove(trial.trial_id)
            try:
                self._end_trial(trial)
            except RuntimeError as e:
                # KerasTuner's stop after too many failed trials in a row (raised before it saved the trial).
                if _failed_in_a_row(oracle) < MAX_CONSECUTIVE_FAILED_TRIALS:
                    raise
                self.error = _too_many_failures(oracle, e, self.out)
                oracle._save_trial(oracle.trials[trial.trial_id])
                oracle.save()
                if worker is not None:
                    oracle.ongoing_trials.pop(worker, None)
            write_reports(self.tuner, self.hypermodel, self.out, self.workers)
            print(self.progress_line(oracle.trials[trial.trial_id], worker), flush=True)

    def worker_lost(self, tuner_id, code):
        """End the trial of a worker that exited while training it, as KerasTuner ends a crashed trial:
        INVALID, queued to be trained again while retries are left (``MAX_RETRIES_PER_TRIAL``), else FAILED."""
        with self.lock:
            self.oracle.tuner_ids.discard(tuner_id)
            trial = self.oracle.ongoing_trials.get(tuner_id)
            if trial is None:
                return
            trial.status = "INVALID"
            trial.message = f"worker {tuner_id} exited with code {code} during the trial"
            self.end_trial(trial)

    def progress_line(self, trial, worker):
        if trial.status == "COMPLETED" and trial.score is not None:
            what = f"COMPLETED, {self.oracle.objective.name} {trial.score:.4f}"
        elif trial.trial_id in self.oracle._retry_queue:
            what = f"{trial.status}, to be trained again: {_last_line(trial.message)}"
        else:
            what = f"{trial.status}: {_last_line(trial.message)}"
        ended = len(self.oracle.end_order)
        worker = worker or "a lost worker"
        return f"trial {trial.trial_id} on {worker}: {what} ({ended} of {self.oracle.max_trials} ended)"


def _start_oracle_server(oracle, ip, port):
    """Serve ``oracle`` over gRPC at ``ip:port`` (0: a free port) with KerasTuner's servicer.

    Returns:
        ``(server, servicer, port)``.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer

    # One thread, as KerasTuner's own chief: requests are answered one at a time.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(f"{ip}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise ConfigError(f"Cannot serve the oracle at {ip}:{port} (address not of this machine, or port in use): "
                          f"set {ENV_ORACLE_IP} to this machine's address and {ENV_ORACLE_PORT} to a free port.")
    server.start()
    return server, servicer, bound


def _serve_as_chief(kt_tuner, hypermodel, settings, cluster, out):
    """Serve the search's oracle until it is over, then return the result as a single-process search does.

    KerasTuner's own chief (``oracle_chief.start_server``) waits, once the search is over, until every
    worker it ever saw has asked for a trial again; a worker that died never does, so it would wait forever.
    This chief serves with KerasTuner's servicer and waits at most ``CHIEF_GRACE_S`` for them; with local
    workers it also ends the trial of a worker that exited while training it (``_Chief.worker_lost``).
    """
    oracle = kt_tuner.oracle
    oracle.verbose = 0  # the chief prints one line per ended trial instead
    space = oracle.get_space()
    space.Fixed(SETTINGS_HP, _published_settings(settings))
    oracle.update_space(space)
    kt_tuner.save()
    chief = _Chief(kt_tuner, hypermodel, out)
    server, servicer, port = _start_oracle_server(oracle, cluster.ip, cluster.port)
    pool = cluster.workers
    print(f"chief: serving the oracle of {out} at {cluster.ip}:{port} ({len(oracle.trials)} of {oracle.max_trials} "
          "trials started before)", flush=True)
    try:
        if pool is not None:
            pool.start(cluster.ip, port)
            print(f"chief: started {pool.count} workers; their logs are in {pool.folder}", flush=True)
        _serve_until_over(chief, servicer, pool)
    finally:
        server.stop(grace=1)
        if pool is not None:
            pool.stop()
        best, best_settings = write_reports(kt_tuner, hypermodel, out, chief.workers)
    if chief.error is not None:
        raise chief.error
    return _search_result(oracle, best, best_settings, out, "chief")


def _serve_until_over(chief, servicer, pool, poll=CHIEF_POLL_S, grace=CHIEF_GRACE_S):
    over_since = None
    while True:
        time.sleep(poll)
        if pool is not None:
            for tuner_id, code in pool.exited():
                if code != 0:
                    print(f"chief: worker {tuner_id} exited with code {code}", flush=True)
                    chief.worker_lost(tuner_id, code)
        with chief.lock:
            over = (servicer.stop_triggered or chief.error is not None) and not chief.oracle.ongoing_trials
            waiting = bool(chief.oracle.tuner_ids)
        if pool is not None:
            if not pool.running():
                if over:
                    return
                raise SearchError(f"Every worker exited before the search ended ({pool.describe()}).")
            continue
        if over:
            over_since = over_since or time.monotonic()
            if not waiting or time.monotonic() - over_since > grace:
                return


class LocalWorkers:
    """Worker processes of a distributed search on this machine, started by its chief (``tune.py --workers N``).

    Worker ``i`` runs ``command`` with ``KERASTUNER_TUNER_ID=worker<i>`` and the chief's address, its output in
    ``folder/worker<i>.log``; ``folder/workers.json`` lists their ids, pids, logs, threads and GPUs.

    Args:
        command: the command line of a worker (e.g. ``[python, scripts/tune.py, <the chief's options>]``).
        count: number of workers.
        folder: where their logs go.
        threads: CPU threads of each worker (appended as ``--threads``; also ``OMP_NUM_THREADS``), or None.
        gpus: GPU ids handed out one per worker in turn (``CUDA_VISIBLE_DEVICES``); empty: none.
    """

    def __init__(self, command, count, folder, threads=None, gpus=()):
        self.command, self.count, self.folder = list(command), int(count), folder
        self.threads, self.gpus = threads, list(gpus)
        self.procs = {}
        self._reported = set()

    def start(self, ip, port):
        """Start the workers, telling them the chief is at ``ip:port``."""
        os.makedirs(self.folder, exist_ok=True)
        listing = {}
        for i in range(self.count):
            tuner_id = f"worker{i}"
            env = {**os.environ, ENV_TUNER_ID: tuner_id, ENV_ORACLE_IP: ip, ENV_ORACLE_PORT: str(port)}
            command = list(self.command)
            if self.threads:
                command += ["--threads", str(self.threads)]
                env["OMP_NUM_THREADS"] = str(self.threads)
            gpu = self.gpus[i % len(self.gpus)] if self.gpus else None
            env["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else env.get("CUDA_VISIBLE_DEVICES", "")
            log_path = os.path.join(self.folder, f"{tuner_id}.log")
            with open(log_path, "w") as log:
                proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            self.procs[tuner_id] = proc
            listing[tuner_id] = {"pid": proc.pid, "log": log_path, "threads": self.threads, "gpu": gpu}
        _write_json(os.path.join(self.folder, "workers.json"), listing)

    def exited(self):
        """``[(tuner_id, exit code)]`` of the workers that exited since the last call."""
        ended = [(tuner_id, proc.poll()) for tuner_id, proc in self.procs.items()
                 if tuner_id not in self._reported and proc.poll() is not None]
        self._reported.update(tuner_id for tuner_id, _ in ended)
        return ended

    def running(self):
        return any(proc.poll() is None for proc in self.procs.values())

    def describe(self):
        """Exit codes, and the last ``error:`` line of the workers' logs, for a message."""
        codes = ", ".join(f"{tuner_id}: {proc.poll()}" for tuner_id, proc in self.procs.items())
        errors = []
        for tuner_id in self.procs:
            with open(os.path.join(self.folder, f"{tuner_id}.log"), errors="replace") as f:
                errors += [line.strip() for line in f if line.startswith("error:")]
        said = f"; {errors[-1]}" if errors else ""
        return f"exit codes {codes}; logs in {self.folder}{said}"

    def stop(self, timeout=10.0):
        """Stop the workers still running (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def local_gpus():
    """GPU ids to hand to local workers, one each (``CUDA_VISIBLE_DEVICES`` values); hides them from this process.

    The chief trains nothing, so it keeps no GPU memory. Call before TensorFlow runs any op.
    """
    import tensorflow as tf

    found = tf.config.list_physical_devices("GPU")
    if not found:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(len(found))]
    tf.config.set_visible_devices([], "GPU")
    return ids[: len(found)]


def limit_cpu_threads(threads):
    """Run this process's TensorFlow ops on ``threads`` CPU threads (inter-op: up to 2 ops at once).

    Workers sharing a machine each get a share of its cores. Call before TensorFlow runs any op.
    """
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(int(threads))
    tf.config.threading.set_inter_op_parallelism_threads(min(2, int(threads)))


def _failed_in_a_row(oracle):
    count = 0
    for trial_id in reversed(oracle.end_order):
        if oracle.trials[trial_id].status != "FAILED":
            break
        count += 1
    return count


def _last_line(text):
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""

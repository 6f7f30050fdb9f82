"""The search space and its reports: the hypermodel, the tuners, the ranked trials and ``best_hyperparameters.json``."""

import contextlib
import dataclasses
import json
import os

import keras
import keras_tuner

from amr_keras.callbacks import NonFiniteLossError
from amr_keras.config import RUN_KEYS, ConfigError, resolve, validate
from amr_keras.evaluate import encode_arrays, linear_evaluation
from amr_keras.mixers import K_WAY_MIXERS, MIXERS
from amr_keras.model import ACAI_GAMMA, ACAI_WEIGHT
from amr_keras.precision import precision_scope
from amr_keras.runfolder import write_json_atomically
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

    It holds the settings that define a run (``amr_keras.config.RUN_KEYS``) that are set, plus
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

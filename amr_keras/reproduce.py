"""Tables of runs: plan them, train the missing ones (resuming interrupted ones), tabulate the finished ones.

A table is datasets x rows (mixer, k) x lamb values x seeds. Every run is
trained by :func:`amr_keras.train.run`, the code of ``scripts/fit.py``, with
one recipe: the same ``Config`` fields except mixer, k, lamb and seed.
``scripts/reproduce.py`` is the command line over this module.

Runs live in folders named from their settings (``default_run_name`` plus the
recipe fields that depart from the preset, e.g. ``mnist-acai-k2-lamb10-mnist_full-s0``
or ``mnist-none-k2-lamb10-mnist_full-e2-s0``), so every table that needs a run
finds the same folder: a finished run (``results.json``) is read, not trained
again; a started one (``config.json``, usually with a checkpoint) resumes from
its last finished epoch; the tables are rewritten after every finished run.

Run folders are large and stay out of version control, so every finished run
is also recorded, settings and scores, in the tables' folder
(``OUT/finished_runs.jsonl``, one JSON line per run, ``LEDGER_NAME``). A run
recorded there with this table's settings counts as finished even where its
folder is gone (a fresh clone, another machine): the grid continues where it
stopped, and its tables keep every run.

Example:
    >>> spec = TABLES["1"]
    >>> runs = plan_runs(spec, seeds=[0, 1, 2], data_dirs={"mnist": "/data/mnist"}, runs_dir="runs",
    ...                  ledger=load_ledger("results"))
    >>> check_runs(runs)
    >>> train_missing(runs, on_finished=lambda: write_tables(spec, runs, "results", "table1_mnist", "..."))
"""

import collections
import dataclasses
import json
import math
import os
import statistics
import sys
import time

from amr_keras.callbacks import checkpoint_epochs
from amr_keras.config import (PRESETS, RUN_KEYS, Config, ConfigError, default_run_name, resolve, settings_diff,
                           upgrade_run_settings)
from amr_keras.model import RECON_GAN_OPTIONAL_MIXERS
from amr_keras.runfolder import FolderLock, FolderLockError, append_line, write_text_atomically

# Table 1 of the reproduction report (online probe, test accuracy %, 32-value code, k=2): mixup and Bernoulli
# only; it has no numbers for the AE + GAN baseline, ACAI or k=3.
REPORT = {
    "mnist": {("mixup", 2): "94.38", ("bernoulli", 2): "94.66"},
    "kmnist": {("mixup", 2): "67.92", ("bernoulli", 2): "65.64"},
    "svhn": {("mixup", 2): "21.58 ± 0.98", ("bernoulli", 2): "21.55 ± 0.23"},
}

# Names of the rows in the paper's words; the other rows are named by their mixer.
ROW_NAMES = {("none", 2): "none (AE + GAN)", ("mixup", 3): "mixup (triplet)", ("bernoulli", 3): "bernoulli (triplet)"}

# Rows of the generic grid (scripts/reproduce.py without --table) and the settings its --mixers also takes.
GRID_ROWS = (("none", 2), ("mixup", 2), ("bernoulli", 2), ("mixup", 3))
GRID_CHOICES = GRID_ROWS + (("acai", 2),)

# Training steps of every Table 2 run: 2,500 steps of 16 images (40,000 images, 4 validations), for 1,000
# training images as for 20,000.
TABLE2_STEPS = 2500

# Recipe fields a table may override, and the tag that names an override in run folders and table files
# (precision and probe: their value alone, e.g. "-float32", "-whiten"). Run folders name the probe through
# default_run_name instead, so that a run has one name whichever table plans it.
RECIPE_TAGS = {"lr": "lr", "d_lr": "dlr", "beta": "beta", "epochs": "e", "batch_size": "b", "depth": "d",
               "recon_gan": "norecgan", "precision": "", "probe": ""}
# A table with recon_gan False drops the term in the rows of RECON_GAN_OPTIONAL_MIXERS only; its other rows
# (none: AE + GAN; acai: its critic) keep it, and their runs are those of the table without.

# Fields of results.json kept for each run in the table's JSON.
RUN_RECORD_KEYS = ("seed", "epochs", "best_epoch", "best_val_probe_accuracy", "test_probe_accuracy",
                   "linear_eval_val_accuracy", "linear_eval_test_accuracy", "knn_val_accuracy", "knn_test_accuracy",
                   "train_seconds", "images_per_second", "precision", "cpu_model")

# The record of finished runs in a tables' folder, and the results.json fields it keeps per run.
LEDGER_NAME = "finished_runs.jsonl"
LEDGER_RESULT_KEYS = RUN_RECORD_KEYS + ("dataset", "mixer", "k", "lamb", "train_size", "code_channels", "num_train",
                                        "num_val", "num_test", "compute_dtype", "linear_eval_l2",
                                        "linear_eval_converged", "command")
# Settings a recorded run is checked against: those of RUN_KEYS that do not name a place on one machine.
LEDGER_SETTING_KEYS = tuple(key for key in RUN_KEYS if key != "data_dir")

# Recipe fields written beside a table (the run-defining settings that are not the table's axes).
RECIPE_KEYS = ("preset", "lamb", "lr", "d_lr", "probe_lr", "probe", "schedule", "batch_size", "epochs",
               "steps_per_epoch",
               "update_g_every", "depth", "code_channels", "slope", "recon", "beta", "acai_gamma", "acai_weight",
               "recon_gan", "precision")


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """Which runs a table holds and what it is called.

    Attributes:
        name: ``"1"``, ``"lamb"`` or ``"grid"`` (datasets and rows given on the command line).
        title: heading of the Markdown file.
        datasets: dataset names.
        rows: ``(mixer, k)`` settings in table order.
        preset: preset of the recipe.
        lambs: lamb values; ``None``: the preset's one.
        stem: file name without extension (``OUT/STEM.md`` and ``OUT/STEM.json``).
        gaps: ``(((mixer, k), (mixer, k)), ...)``: also tabulate each first row minus its second
            (paired by seed).
        train_sizes: training subsets (``--train-size``); ``None`` is the whole training split.
        code_channels: feature maps of the 4x4 code of every run.
        budget_steps: training steps of every run whatever its training set's size (split into the
            preset's epochs with ``--steps-per-epoch``); ``None``: the preset's epochs of whole passes.
        probe: the online probe of every run (``amr_keras.probe.PROBES``).
        figure: also draw ``OUT/STEM.png``, accuracy against the training set's size.
    """

    name: str
    title: str
    datasets: tuple
    rows: tuple
    preset: str
    lambs: tuple = None
    stem: str = "table1"
    gaps: tuple = ()
    train_sizes: tuple = (None,)
    code_channels: int = 2
    budget_steps: int = None
    figure: bool = False
    probe: str = Config.probe


# The committed tables were trained with the batch-normalised probe, the only one then: they keep it, so that
# their finished runs still count and new runs of them compare with the old. --probe whiten gives each table a
# variant with the whitening probe (its files tagged "-whiten").
PINNED_PROBE = "batchnorm"
# Tables 2 and 3 were trained when the `mnist_full` preset had lamb 10; they keep it, for the same reason
# (--lamb 5 gives each a variant tagged "-lamb5"). Table 1 follows the preset (lamb 5; --lamb 10 is the
# variant "table1_mnist-lamb10").
PINNED_LAMBS = (10.0,)

TABLES = {
    "1": TableSpec(
        "1", "Table 1 of the paper on the official MNIST split: linear-probe accuracy (%), 32-value code",
        ("mnist",), (("none", 2), ("acai", 2), ("mixup", 2), ("bernoulli", 2), ("mixup", 3)), "mnist_full",
        probe=PINNED_PROBE, stem="table1_mnist",
        # The verdict the table exists for: does mixing beat the no-mixing baseline, and ACAI?
        gaps=((("mixup", 2), ("none", 2)), (("bernoulli", 2), ("none", 2)), (("mixup", 3), ("none", 2)),
              (("acai", 2), ("none", 2)), (("mixup", 2), ("acai", 2)), (("bernoulli", 2), ("acai", 2)))),
    "lamb": TableSpec(
        "lamb", "Reconstruction weight lamb on the official MNIST split: mixup against the AE + GAN baseline (%)",
        ("mnist",), (("none", 2), ("mixup", 2)), "mnist_full", lambs=(2.0, 5.0, 10.0, 30.0, 100.0),
        probe=PINNED_PROBE, stem="lamb_sweep_mnist",
        gaps=((("mixup", 2), ("none", 2)),)),
    # The paper's Table 2 trains on SVHN subsets; here on MNIST and Fashion-MNIST (offline), and on SVHN with
    # --datasets svhn. Every run trains for the same number of steps, so a small subset is seen many times.
    "2": TableSpec(
        "2", "Table 2 of the paper, fewer training images: linear-probe accuracy (%), 32-value code",
        ("mnist", "fashion_mnist"), (("none", 2), ("acai", 2), ("mixup", 2), ("bernoulli", 2)), "mnist_full",
        probe=PINNED_PROBE, lambs=PINNED_LAMBS, stem="table2", train_sizes=(1000, 5000, 10000, 20000),
        budget_steps=TABLE2_STEPS,
        gaps=((("mixup", 2), ("none", 2)), (("bernoulli", 2), ("none", 2)), (("acai", 2), ("none", 2))),
        figure=True),
    # The paper's Table 3: 256-value codes (4x4x16); CIFAR-10 and SVHN need their data (tfds or --data-dir).
    "3": TableSpec(
        "3", "Table 3 of the paper, 256-value codes (4x4x16): linear-probe accuracy (%)",
        ("mnist", "fashion_mnist", "cifar10", "svhn"), (("none", 2), ("mixup", 2), ("bernoulli", 2)), "mnist_full",
        probe=PINNED_PROBE, lambs=PINNED_LAMBS, stem="table3", code_channels=16,
        gaps=((("mixup", 2), ("none", 2)), (("bernoulli", 2), ("none", 2)))),
}


def table_spec(name, datasets=None):
    """The named table ``name`` (a key of ``TABLES``), or ``ConfigError`` listing the known ones.

    Args:
        name: a key of ``TABLES``.
        datasets: replace the table's datasets (e.g. ``["svhn"]`` for the paper's own Table 2 grid); the
            table file then carries their names (``table2-svhn``).
    """
    if name not in TABLES:
        known = "; ".join(f"{key} ({spec.title.split(':')[0]})" for key, spec in TABLES.items())
        raise ConfigError(f"Unknown table {name!r}. Choose one of: {known}.")
    spec = TABLES[name]
    if datasets and tuple(datasets) != spec.datasets:
        spec = dataclasses.replace(spec, datasets=tuple(datasets), stem=f"{spec.stem}-{'_'.join(datasets)}")
    return spec


def grid_spec(datasets, rows, preset):
    """The table of a grid given on the command line (written as ``table1.md``, as before named tables)."""
    return TableSpec("grid", f"Table 1 grid: linear-probe accuracy (%), 32-value code, preset `{preset}`",
                     tuple(datasets), tuple(rows), preset)


def parse_rows(items, allowed, flag="--mixers"):
    """``["mixup:3", "acai"]`` -> ``[("mixup", 3), ("acai", 2)]`` (MIXER alone means k=2).

    Raises:
        ConfigError: an item that is not one of ``allowed``; the message lists them.
    """
    names = {f"{m}:{k}": (m, k) for m, k in allowed}
    names.update({m: (m, 2) for m, k in allowed if k == 2})
    for item in items:
        if item not in names:
            raise ConfigError(f"{flag} takes settings among {' '.join(f'{m}:{k}' for m, k in allowed)}, "
                              f"got {item!r}.")
    return [names[item] for item in items]


def table_lambs(spec, preset=None, lambs=None):
    """The lamb values of a table: ``lambs`` if given, else the spec's, else the preset's one."""
    if lambs:
        return tuple(float(v) for v in lambs)
    return spec.lambs or (PRESETS[preset or spec.preset]["lamb"],)


def recipe_tag(preset, recipe, probe=Config.probe):
    """Tag of the recipe fields in ``recipe`` that depart from ``preset``, e.g. ``"-lr0.0005-e2-float32"``.

    Args:
        preset: a key of ``PRESETS``.
        recipe: overrides among ``RECIPE_TAGS`` (``None`` values mean "the preset's").
        probe: the probe ``recipe`` departs from (a table's own).
    """
    defaults = {**PRESETS[preset], "beta": Config.beta, "precision": Config.precision, "probe": probe,
                "recon_gan": Config.recon_gan}
    unknown = sorted(set(recipe) - set(RECIPE_TAGS))
    if unknown:
        raise ConfigError(f"A table's recipe overrides only {', '.join(RECIPE_TAGS)}; got {', '.join(unknown)}.")
    parts = []
    for key, tag in RECIPE_TAGS.items():
        value = recipe.get(key)
        if value is not None and value != defaults[key]:
            if isinstance(value, bool):
                parts.append(f"-{tag}")  # recon_gan False: "-norecgan"
            else:
                parts.append(f"-{tag}{value:g}" if isinstance(value, float) else f"-{tag}{value}")
    return "".join(parts)


def table_stem(spec, preset=None, lambs=None, recipe=None):
    """File name of a table: the spec's stem, tagged with what departs from its own recipe.

    ``table_stem(TABLES["1"])`` is ``"table1_mnist"``; with ``lambs=[30]`` and
    ``recipe={"epochs": 2}`` it is ``"table1_mnist-lamb30-e2"``, so a variant never
    overwrites the table of the default recipe.
    """
    preset = preset or spec.preset
    stem = spec.stem if preset == spec.preset else f"{spec.stem}-{preset}"
    lambs = table_lambs(spec, preset, lambs)
    if lambs != table_lambs(spec, preset):
        stem += "-lamb" + "_".join(f"{v:g}" for v in lambs)
    return stem + recipe_tag(preset, recipe or {}, probe=spec.probe)


def load_ledger(out_dir):
    """The finished runs recorded in ``OUT/finished_runs.jsonl``: ``{run name: entry}``, the last line of a
    name winning; ``{}`` without the file. A record that a run of other settings superseded under the same name
    stays reachable by its settings (``find_recorded``) under the key ``NAME@lineN``, so the tables made from it
    can still be rebuilt.

    An entry is ``{"run": NAME, "settings": {...}, "results": {...}}`` (``ledger_entry``).

    Raises:
        ConfigError: a line that is not a JSON object with those three fields (it names the line).
    """
    path = os.path.join(out_dir, LEDGER_NAME)
    if not os.path.exists(path):
        return {}
    entries, line_of = {}, {}
    with open(path) as f:
        lines = f.readlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines) and not line.endswith("\n"):
                break  # torn by a kill while it was appended: the run is recorded again when it is next seen
            raise ConfigError(f"{path}, line {number}, is not valid JSON ({e.msg}). Mend or delete that line "
                              "(the run it recorded is then trained again).") from None
        if not isinstance(entry, dict) or not {"run", "settings", "results"} <= set(entry):
            raise ConfigError(f"{path}, line {number}, is not a finished-run record "
                              "(a JSON object with run, settings and results). Mend or delete that line.")
        previous = entries.get(entry["run"])
        if previous is not None and previous["settings"] != entry["settings"]:
            entries[f"{entry['run']}@line{line_of[entry['run']]}"] = previous
        entries[entry["run"]], line_of[entry["run"]] = entry, number
    return entries


def ledger_entry(name, settings, results):
    """The record of one finished run: its folder name, its settings (``LEDGER_SETTING_KEYS`` of its
    ``config.json``) and the fields of its ``results.json`` that tables use (``LEDGER_RESULT_KEYS``)."""
    return {"run": name, "settings": {key: settings.get(key) for key in LEDGER_SETTING_KEYS},
            "results": {key: results[key] for key in LEDGER_RESULT_KEYS if key in results}}


def record_finished(runs, out_dir):
    """Append to ``OUT/finished_runs.jsonl`` every run of ``runs`` finished on disk and not recorded as it is.

    Returns:
        The names of the runs appended.
    """
    ledger = load_ledger(out_dir)
    lines, names = [], []
    for run in runs:
        path = os.path.join(run.folder, "results.json")
        if not os.path.exists(path):
            continue
        config_path = os.path.join(run.folder, "config.json")
        if os.path.exists(config_path):
            with open(config_path) as f:
                settings = json.load(f)
        else:
            settings = dataclasses.asdict(run.cfg)
        entry = ledger_entry(run.name, settings, run.results())
        if ledger.get(run.name) != entry:
            lines.append(json.dumps(entry, ensure_ascii=False) + "\n")
            names.append(run.name)
    if lines:
        os.makedirs(out_dir, exist_ok=True)
        append_line(os.path.join(out_dir, LEDGER_NAME), "".join(lines))
    return names


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One run of a table: its row, its resolved Config (``cfg.out`` is its folder) and, when the ledger
    records it as finished with the same settings, that record."""

    row: tuple  # (dataset, mixer, k, lamb, train_size)
    cfg: Config
    recorded: dict = None

    @property
    def folder(self):
        return self.cfg.out

    @property
    def name(self):
        return os.path.basename(self.folder)

    def state(self):
        """``"done"`` (``results.json``, or recorded in the ledger), ``"started"`` (``config.json``: it resumes)
        or ``"pending"``."""
        if os.path.exists(os.path.join(self.folder, "results.json")) or self.recorded is not None:
            return "done"
        if os.path.exists(os.path.join(self.folder, "config.json")):
            return "started"
        return "pending"

    def epochs_done(self):
        """Epochs of its last checkpoint (0 without one)."""
        return checkpoint_epochs(os.path.join(self.folder, "checkpoint"))

    def results(self):
        """Its ``results.json``, else the results its ledger record kept."""
        path = os.path.join(self.folder, "results.json")
        if os.path.exists(path) or self.recorded is None:
            with open(path) as f:
                return json.load(f)
        return dict(self.recorded["results"])


def _recorded(cfg, entry):
    """``entry`` if it records a run of ``cfg``'s settings (precision ``auto`` accepts what it picked), else None."""
    if entry is None:
        return None
    ignore = ("data_dir",) + (("precision",) if cfg.precision == "auto" else ())
    return entry if not settings_diff(cfg, upgrade_run_settings(entry["settings"]), ignore=ignore) else None


def find_recorded(cfg, ledger):
    """The ledger's record of a run of ``cfg``'s settings: the one under its folder's name, else the last one
    of the same settings under another name (a run recorded before its name changed), else None."""
    if not ledger:
        return None
    entry = _recorded(cfg, ledger.get(os.path.basename(cfg.out)))
    if entry is not None:
        return entry
    for other in reversed(list(ledger.values())):
        if _recorded(cfg, other) is not None:
            return other
    return None


def plan_runs(spec, seeds, data_dirs, runs_dir, preset=None, lambs=None, recipe=None, verbose=2, ledger=None):
    """Every run of ``spec``: datasets x training sizes x rows x lambs x seeds, in table order.

    Args:
        spec: a ``TableSpec``.
        seeds: seeds of every row.
        data_dirs: ``{dataset: folder}`` of raw files; datasets absent use tensorflow-datasets.
        runs_dir: folder of the run folders.
        preset: the recipe's preset (default: the spec's).
        lambs: lamb values (default: the spec's, else the preset's).
        recipe: overrides of ``RECIPE_TAGS`` fields, the same for every run.
        verbose: Keras progress output of the runs.
        ledger: ``load_ledger(OUT)``: runs recorded there with the same settings count as finished.

    Returns:
        A list of ``PlannedRun``.

    Raises:
        ConfigError: a setting out of range (e.g. ``lr`` 0) or a data folder that does not exist.
    """
    preset = preset or spec.preset
    recipe = {k: v for k, v in (recipe or {}).items() if v is not None}
    # The probe is named by default_run_name; resolve() checks its value, recipe_tag the other overrides.
    probe = recipe.pop("probe", spec.probe)
    # recon_gan too (as "-norecgan" after the mixer), and only in the rows that have the term to drop.
    recon_gan = recipe.pop("recon_gan", Config.recon_gan)
    tag = recipe_tag(preset, recipe)
    steps_per_epoch = None
    if spec.budget_steps is not None:
        epochs = recipe.get("epochs") or PRESETS[preset]["epochs"]
        steps_per_epoch = max(1, spec.budget_steps // epochs)
        tag += f"-spe{steps_per_epoch}"
    runs = []
    for dataset in spec.datasets:
        for train_size in spec.train_sizes:
            for mixer, k in spec.rows:
                for lamb in table_lambs(spec, preset, lambs):
                    for seed in seeds:
                        cfg = Config(dataset=dataset, data_dir=data_dirs.get(dataset), preset=preset, mixer=mixer,
                                     k=k, lamb=lamb, seed=seed, export=False, verbose=verbose,
                                     train_size=train_size, code_channels=spec.code_channels,
                                     steps_per_epoch=steps_per_epoch, probe=probe,
                                     recon_gan=recon_gan or mixer not in RECON_GAN_OPTIONAL_MIXERS, **recipe)
                        cfg = resolve(dataclasses.replace(cfg, out=os.path.join(runs_dir,
                                                                                default_run_name(cfg, tag))))
                        entry = find_recorded(cfg, ledger)
                        runs.append(PlannedRun((dataset, mixer, k, lamb, train_size), cfg, entry))
    return runs


def check_runs(runs):
    """Check that the folders already on disk hold runs of the planned settings.

    A folder left by another recipe under the same name (e.g. ``scripts/fit.py
    --preset mnist_full --epochs 2`` writes ``mnist-mixup-k2-lamb10-mnist_full-s0``)
    must not be tabulated or resumed as this table's run.

    Raises:
        ConfigError: naming the folder and the settings that differ.
    """
    for run in runs:
        path = os.path.join(run.folder, "config.json")
        if run.state() == "pending" or not os.path.exists(path):
            continue
        with open(path) as f:
            saved = upgrade_run_settings(json.load(f))
        # "auto" is decided per machine; a run keeps the precision it started with.
        diffs = settings_diff(run.cfg, saved, ignore=("precision",) if run.cfg.precision == "auto" else ())
        if diffs:
            raise ConfigError(
                f"{run.folder} holds a run with other settings than this table's ({'; '.join(diffs)}). "
                "Move that folder away, or give the table another --runs folder."
            )


def selected(run, rows=None, train_sizes=None, lambs=None):
    """Whether ``run`` is among the ``(mixer, k)`` settings ``rows``, the training sizes ``train_sizes`` and the
    lamb values ``lambs`` (``None``: all of them)."""
    return ((rows is None or run.row[1:3] in rows) and (train_sizes is None or run.row[4] in train_sizes)
            and (lambs is None or run.row[3] in lambs))


def training_order(runs):
    """``runs`` seed by seed, then lamb by lamb, within each dataset and training size (rows in table order).

    A grid stopped part-way then holds every row of its first seeds (and, in
    the lamb sweep, both rows at its first lambs), so the rows' paired gaps can
    be read from it, rather than every seed of its first rows.
    """
    first = {}
    for i, run in enumerate(runs):
        first.setdefault((run.row[0], run.row[4]), i)
    return sorted(runs, key=lambda run: (first[(run.row[0], run.row[4])], run.cfg.seed, run.cfg.lamb))


def estimated_seconds(run, runs):
    """Wall time ``run`` should still take, from the finished runs of ``runs``: the median duration (training,
    post-hoc evaluation, FactorVAE) of those of its row and dataset, else of all of them, scaled by the share of
    epochs left; ``None`` when no run has finished."""
    def duration(r):
        res = r.results()
        return sum(res.get(key) or 0.0 for key in ("train_seconds", "linear_eval_seconds", "factorvae_seconds"))

    done = [r for r in runs if r.state() == "done"]
    same = [r for r in done if r.row[:3] == run.row[:3]] or done
    if not same:
        return None
    left = 1.0 - min(run.epochs_done(), run.cfg.epochs) / run.cfg.epochs if run.state() == "started" else 1.0
    return statistics.median(duration(r) for r in same) * left


def train_missing(runs, rows=None, argv=None, on_finished=None, train_sizes=None, lambs=None, stop_by=None):
    """Train the runs that are not done (seed by seed, see ``training_order``), resuming started ones; datasets
    that cannot be loaded are skipped.

    Args:
        runs: ``PlannedRun`` list.
        rows: ``(mixer, k)`` settings to train (default: all); the other runs are left as they are.
        train_sizes: training-set sizes to train (default: all); the other runs are left as they are.
        lambs: lamb values to train (default: all); the other runs are left as they are.
        argv: the command line, recorded in each run's ``results.json``.
        on_finished: called after every finished run (e.g. to rewrite the tables).
        stop_by: a ``time.time()`` by which training must end: a run whose ``estimated_seconds`` would not fit
            before it does not start (a shorter one may).

    Returns:
        ``(unavailable, failed)``: ``{dataset: reason}`` of datasets that could not be loaded, and the
        ``PlannedRun`` s whose loss became NaN or infinite.

    Raises:
        ConfigError: from ``train.run`` (e.g. a checkpoint that cannot be read).
        amr_keras.stopping.RunStopped: SIGINT or SIGTERM stopped the run in progress (after its checkpoint; the
            ledger holds every finished run).
    """
    from amr_keras import train  # TensorFlow: imported only when something trains
    from amr_keras.callbacks import NonFiniteLossError
    from amr_keras.data import DataError

    todo = training_order([r for r in runs if selected(r, rows, train_sizes, lambs) and r.state() != "done"])
    unavailable, failed = {}, []
    for i, run in enumerate(todo, 1):
        if run.cfg.dataset in unavailable:
            continue
        lock = FolderLock(run.folder)
        try:
            lock.acquire()
        except FolderLockError as e:
            # Another process (e.g. a second reproduce.py on the same grid) is training it.
            print(f"[{i}/{len(todo)}] {run.name}: skipped, {e.holder_text()} is training it", flush=True)
            continue
        try:
            state = run.state()  # read again under the lock: another process may have finished it meanwhile
            if state == "done":
                continue
            resume = state == "started"
            if stop_by is not None:
                estimate = estimated_seconds(run, runs)
                if estimate is not None and time.time() + estimate > stop_by:
                    print(f"[{i}/{len(todo)}] {run.name}: not started, it would take about {estimate / 60:.0f} "
                          f"minutes and {max(0.0, stop_by - time.time()) / 60:.0f} are left (--stop-after)",
                          flush=True)
                    continue
            print(f"[{i}/{len(todo)}] {run.name}" + (f" (resuming after epoch {run.epochs_done()})" if resume else ""),
                  flush=True)
            train.run(dataclasses.replace(run.cfg, resume=resume), argv=argv,
                      resume_hint="run the same command again to continue (finished runs are kept)")
        except DataError as e:
            unavailable[run.cfg.dataset] = ("not available offline" if "cannot download" in str(e)
                                            else f"data error: {e}")
            print(f"{run.cfg.dataset}: {unavailable[run.cfg.dataset]}", file=sys.stderr)
            continue
        except NonFiniteLossError as e:
            print(f"error: {run.name}: {e}", file=sys.stderr)
            failed.append(run)
            continue
        finally:
            lock.release()
        if on_finished is not None:
            on_finished()
    return unavailable, failed


def mean_std(values):
    """``(mean, sample standard deviation, n)`` of the values that are not ``None``; std is ``None`` for n < 2."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


def format_percent(values):
    """Fractions as a percentage: ``"92.00 ± 2.00"`` (mean ± sample std), one value alone, ``"–"`` for none."""
    mean, std, n = mean_std(values)
    if not n:
        return "–"
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def collect(runs):
    """``{(dataset, mixer, k, lamb, train_size): (results of finished runs, seeds asked)}`` in table order."""
    rows = collections.OrderedDict()
    for run in runs:
        results, asked = rows.get(run.row, ([], 0))
        if run.state() == "done":
            results = results + [dict(run.results(), run=run.name)]
        rows[run.row] = (results, asked + 1)
    return rows


def _split(results):
    """``"test"``, or ``"val"`` for runs of a dataset without a test split."""
    return "test" if results and results[0].get("test_probe_accuracy") is not None else "val"


def _online_key(split):
    return "test_probe_accuracy" if split == "test" else "best_val_probe_accuracy"


# (JSON key, column name, results.json key for a split) of the three accuracies a table reports.
METRICS = (("online_probe", "online probe", _online_key),
           ("linear_eval", "post-hoc linear", lambda split: f"linear_eval_{split}_accuracy"),
           ("knn", "k-NN", lambda split: f"knn_{split}_accuracy"))


def gaps(spec, rows):
    """Per pair of ``spec.gaps``, dataset, training size and lamb: first row minus second, paired by seed, in points.

    Args:
        spec: a ``TableSpec`` (without ``gaps`` the result is empty).
        rows: ``collect(runs)``.

    Returns:
        A list of dicts: ``rows`` (``"mixup-k2 minus none-k2"``), ``dataset``, ``train_size``, ``lamb``,
        ``seeds`` (those finished in both rows), and per metric of ``METRICS``
        ``{"mean", "std", "per_seed", "ci95", "verdict"}``: ``ci95`` is the 95% confidence interval of the
        mean paired difference (``paired_ci95``) and ``verdict`` what it says (``gap_verdict``), the one
        criterion the tables use (``None`` with fewer than 2 seeds).
    """
    out = []
    for (a_mixer, a_k), (b_mixer, b_k) in spec.gaps:
        for (dataset, mixer, k, lamb, train_size), (a_results, _) in rows.items():
            if (mixer, k) != (a_mixer, a_k):
                continue
            b_results = rows.get((dataset, b_mixer, b_k, lamb, train_size), ([], 0))[0]
            out.append(_gap(f"{a_mixer}-k{a_k} minus {b_mixer}-k{b_k}", dataset, train_size, lamb,
                            a_results, b_results))
    return out


def paired_ci95(diffs):
    """95% confidence interval ``[low, high]`` of the mean of paired differences (Student's t, n - 1 degrees of
    freedom); ``None`` with fewer than 2 differences. With 3 seeds the half-width is 2.48 standard deviations."""
    if len(diffs) < 2:
        return None
    from scipy import stats

    mean, std, n = mean_std(diffs)
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    return [mean - half, mean + half]


def gap_verdict(ci95):
    """What a gap's 95% interval says: ``"ahead"`` (the first row leads) only when it lies above 0, ``"behind"``
    when it lies below 0, ``"open"`` when it holds 0 (the sign is not settled); ``None`` without an interval."""
    if ci95 is None:
        return None
    low, high = ci95
    return "ahead" if low > 0 else "behind" if high < 0 else "open"


def _gap(label, dataset, train_size, lamb, a_results, b_results):
    a_by_seed, b_by_seed = {r["seed"]: r for r in a_results}, {r["seed"]: r for r in b_results}
    seeds = sorted(set(a_by_seed) & set(b_by_seed))
    entry = {"rows": label, "dataset": dataset, "train_size": train_size, "lamb": lamb, "seeds": seeds}
    split = _split(a_results)
    for name, _, key_of in METRICS:
        key = key_of(split)
        a = [a_by_seed[s].get(key) for s in seeds]
        b = [b_by_seed[s].get(key) for s in seeds]
        diffs = [100 * (x - y) for x, y in zip(a, b) if x is not None and y is not None]
        mean, std, _ = mean_std(diffs)
        ci95 = paired_ci95(diffs)
        entry[name] = {"mean": mean, "std": std, "per_seed": diffs, "ci95": ci95, "verdict": gap_verdict(ci95)}
    return entry


def _recipe(runs):
    cfg = runs[0].cfg
    recipe = {key: getattr(cfg, key) for key in RECIPE_KEYS if getattr(cfg, key) is not None}
    lambs = sorted({run.row[3] for run in runs})
    if len(lambs) > 1:
        recipe["lamb"] = lambs
    if not all(run.cfg.recon_gan for run in runs):
        recipe["recon_gan"] = f"False({','.join(RECON_GAN_OPTIONAL_MIXERS)};none,acai:True)"
    return recipe


def _recipe_text(recipe):
    def text(value):
        if isinstance(value, list):
            return ",".join(text(v) for v in value)
        return f"{value:g}" if isinstance(value, float) else str(value)

    return " ".join(f"{key}={text(value)}" for key, value in recipe.items())


def _machines(rows):
    counts = collections.Counter((r.get("cpu_model") or "CPU not recorded", r.get("precision") or "?")
                                 for results, _ in rows.values() for r in results)
    return [f"{n} on {cpu} ({precision})" for (cpu, precision), n in counts.items()]


def write_tables(spec, runs, out_dir, stem, command, unavailable=None):
    """Write ``OUT/STEM.md`` and ``OUT/STEM.json`` from the finished runs (on disk or in the ledger), after
    recording those on disk in ``OUT/finished_runs.jsonl``.

    Every row of the table is written, with the seeds finished so far ("2 of 3"
    while one is missing), so a partial table can be committed.

    Args:
        spec: the ``TableSpec``.
        runs: its ``PlannedRun`` list (from ``plan_runs``).
        out_dir: folder of the two files.
        stem: file name without extension (``table_stem``).
        command: the command that makes the whole table, written beside it.
        unavailable: ``{dataset: reason}`` from ``train_missing``.

    Returns:
        The paths of the Markdown and JSON files.
    """
    unavailable = unavailable or {}
    record_finished(runs, out_dir)
    rows = collect(runs)
    recipe = _recipe(runs)
    seeds = sorted({run.cfg.seed for run in runs})
    num_train = next((r["num_train"] for results, _ in rows.values() for r in results if r.get("num_train")), None)
    by_size = any(run.row[4] is not None for run in runs)
    if recipe.get("steps_per_epoch"):
        steps = recipe["epochs"] * recipe["steps_per_epoch"]
        budget = (f"{steps:,} training steps of {recipe['batch_size']} images = {steps * recipe['batch_size']:,} "
                  f"images per run whatever its training set's size ({recipe['epochs']} validations)")
    elif num_train and not by_size:
        budget = (f"{recipe['epochs']} epochs of {num_train:,} training images = {recipe['epochs'] * num_train:,} "
                  "images per run")
    else:
        budget = f"{recipe['epochs']} epochs per run"
    size_head, size_rule = ("| N (train) ", "|---") if by_size else ("", "")
    lines = [
        f"# {spec.title}",
        "",
        f"Command: `{command}`",
        "",
        f"Recipe, the same for every run (rows differ only in mixer and k, and in lamb where it is a list): "
        f"`{_recipe_text(recipe)}`; {budget}; seeds {', '.join(map(str, seeds))}.",
        "",
        f"| dataset {size_head}| mixer | k | lamb | seeds | online probe (test) | post-hoc linear (test) | k-NN (test) "
        "| best val (online) | report (online, test) | minutes / run |",
        f"|---{size_rule}|---|---|---|---|---|---|---|---|---|---|",
    ]
    records = []
    for (dataset, mixer, k, lamb, train_size), (results, asked) in rows.items():
        size_cell = (f" {'all' if train_size is None else f'{train_size:,}'} |") if by_size else ""
        report = "–"
        if train_size is None and spec.code_channels == 2:
            report = REPORT.get("mnist" if dataset == "mnist_sample" else dataset, {}).get((mixer, k), "–")
        name = ROW_NAMES.get((mixer, k), mixer)
        seeds_text = f"{len(results)}" if len(results) == asked else f"{len(results)} of {asked}"
        status = ("done" if len(results) == asked else f"{len(results)} of {asked} seeds done") if results else (
            unavailable.get(dataset, "not run"))
        record = {"dataset": dataset, "mixer": mixer, "k": k, "lamb": lamb, "train_size": train_size,
                  "code_channels": spec.code_channels, "report": report, "seeds_asked": asked,
                  "seeds_done": len(results), "status": status}
        if not results:
            lines.append(f"| {dataset} |{size_cell} {name} | {k} | {lamb:g} | 0 of {asked} | {status} | | | "
                         f"| {report} | |")
            records.append(record)
            continue
        split = _split(results)

        def col(key, split=split, results=results):
            text = format_percent([r.get(key) for r in results])
            return text if split == "test" else f"{text} (val)"

        minutes = statistics.mean(r["train_seconds"] for r in results) / 60
        lines.append(
            f"| {dataset} |{size_cell} {name} | {k} | {lamb:g} | {seeds_text} | {col(_online_key(split))} "
            f"| {col(f'linear_eval_{split}_accuracy')} | {col(f'knn_{split}_accuracy')} "
            f"| {format_percent([r['best_val_probe_accuracy'] for r in results])} | {report} | {minutes:.1f} |"
        )
        record["runs"] = [{"run": r["run"], **{key: r.get(key) for key in RUN_RECORD_KEYS}} for r in results]
        records.append(record)
    lines += [
        "",
        "Online probe: the linear probe trained during training, test accuracy at the epoch of best validation "
        "accuracy (the paper's protocol). Post-hoc: logistic regression fitted to convergence on the frozen codes of "
        "the same weights (L2 picked on validation). k-NN: 10 nearest neighbours, cosine. Mean ± sample standard "
        "deviation over the finished seeds (one seed: its value); seeds \"2 of 3\": a row still missing runs. "
        "Report: the reproduction report's Table 1 (50,000 training images, far longer training); it has numbers "
        "for mixup and Bernoulli only. Minutes / run: training only, mean over seeds. "
        "Datasets without a test split show validation accuracy (val)."
        + (" N (train): a fixed, class-stratified subset of the training split, the same for every seed; "
           "validation and test are the whole splits." if by_size else ""),
    ]
    machines = _machines(rows)
    if machines:
        lines += ["", f"Runs by machine (CPU model, precision): {'; '.join(machines)}. Speeds depend on both."]
    gap_entries = gaps(spec, rows)
    if gap_entries:
        lines += _gap_lines(spec, gap_entries)
    os.makedirs(out_dir, exist_ok=True)
    md_path, json_path = os.path.join(out_dir, f"{stem}.md"), os.path.join(out_dir, f"{stem}.json")
    if spec.figure and any(r.get("runs") for r in records):
        from amr_keras.plots import accuracy_vs_train_size

        png = os.path.join(out_dir, f"{stem}.png")
        accuracy_vs_train_size(records, png, title=spec.title.split(":")[0])
        lines += ["", f"Figure: `{os.path.basename(png)}` (post-hoc linear and online probe accuracy against N)."]
    _write_text(md_path, "\n".join(lines) + "\n")
    data = {"table": spec.name, "title": spec.title, "command": command, "preset": recipe["preset"],
            "recipe": recipe, "seeds": seeds, "rows": records}
    if gap_entries:
        data["gaps"] = gap_entries
    _write_text(json_path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return md_path, json_path


def _gap_lines(spec, entries):
    by_size = any(entry["train_size"] is not None for entry in entries)
    lines = [
        "",
        "## Gaps between rows, points, paired by seed",
        "",
        "| rows | dataset | " + ("N (train) | " if by_size else "") + "lamb | seeds | "
        + " | ".join(label for _, label, _ in METRICS) + " |",
        "|---|---|" + ("---|" if by_size else "") + "---|---|---|---|---|",
    ]
    for entry in entries:
        cells = []
        for name, _, _ in METRICS:
            gap = entry[name]
            text = "–" if gap["mean"] is None else f"{gap['mean']:+.2f}"
            if gap["std"] is not None:
                text += f" ± {gap['std']:.2f}"
            if gap["ci95"] is not None:
                low, high = gap["ci95"]
                text += f" (CI {low:+.2f} to {high:+.2f}: {gap['verdict']})"
            cells.append(text)
        size = entry["train_size"]
        size_cell = (f"{'all' if size is None else f'{size:,}'} | ") if by_size else ""
        lines.append(f"| {entry['rows']} | {entry['dataset']} | {size_cell}{entry['lamb']:g} | {len(entry['seeds'])} "
                     f"| {' | '.join(cells)} |")
    lines += [
        "",
        "Mean ± sample standard deviation over seeds of the per-seed difference. CI: 95% confidence interval of "
        "the mean per-seed difference (Student's t, needs 2 seeds or more), the one criterion: \"ahead\" when it "
        "lies above 0 (the first row leads), \"behind\" when it lies below 0, \"open\" when it holds 0 (the "
        "sign of the gap is not settled). Test accuracy where the dataset has a test split, else validation.",
    ]
    return lines


def describe_plan(runs, rows=None, train_sizes=None, lambs=None):
    """A summary line, then one line per run: done, resume (with its finished epochs), pending.

    Args:
        runs: ``PlannedRun`` list.
        rows: ``(mixer, k)`` settings selected for training; runs of other rows that are not done are
            marked "(not selected)".
        train_sizes: training-set sizes selected for training; runs of other sizes that are not done are
            marked "(not selected)".
        lambs: lamb values selected for training; runs at other lambs that are not done are marked
            "(not selected)".
    """
    lines, counts = [], collections.Counter()
    for run in runs:
        state = run.state()
        label = {"done": "done", "started": "to resume", "pending": "pending"}[state]
        if state == "started":
            text = f"resume   {run.name} ({run.epochs_done()} of {run.cfg.epochs} epochs done)"
        else:
            text = f"{state:<8} {run.name}"
        if state == "done" and not os.path.exists(os.path.join(run.folder, "results.json")):
            text += f" (recorded in {LEDGER_NAME})"
        if state != "done" and not selected(run, rows, train_sizes, lambs):
            label, text = "not selected", text + " (not selected)"
        counts[label] += 1
        lines.append("  " + text)
    order = ("done", "to resume", "pending", "not selected")
    summary = ", ".join(f"{counts[label]} {label}" for label in order if counts[label])
    return [f"{len(runs)} runs: {summary}"] + lines


def _write_text(path, text):
    write_text_atomically(path, text)  # replaced whole: a reader never sees half a table

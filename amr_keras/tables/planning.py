"""Runs of a table: plan them, check the folders on disk, train the missing ones (resuming started ones).

A planned run is a ``PlannedRun``: its row, its resolved ``Config`` (``cfg.out`` is its folder) and, when the
ledger records it with the same settings, that record. Runs live in folders named from their settings
(``default_run_name`` plus the recipe fields that depart from the preset, e.g.
``mnist-acai-k2-lamb10-mnist_full-s0``), so every table that needs a run finds the same folder: a finished run
(``results.json``) is read, not trained again; a started one (``config.json``, usually with a checkpoint) resumes
from its last finished epoch. Every run is trained by :func:`amr_keras.train.run`, the code of
``scripts/fit.py``.
"""

import collections
import dataclasses
import json
import os
import statistics
import sys
import time

from amr_keras.callbacks import checkpoint_epochs
from amr_keras.config import PRESETS, Config, ConfigError, settings_diff, upgrade_run_settings
from amr_keras.runfolder import FolderLock, FolderLockError
from amr_keras.tables.ledger import LEDGER_NAME

# Recipe fields a table may override, and the tag that names an override in run folders and table files
# (precision and probe: their value alone, e.g. "-float32", "-whiten"). Run folders name the probe through
# default_run_name instead, so that a run has one name whichever table plans it.
RECIPE_TAGS = {"lr": "lr", "d_lr": "dlr", "beta": "beta", "epochs": "e", "batch_size": "b", "depth": "d",
               "recon_gan": "norecgan", "precision": "", "probe": ""}


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


def collect(runs):
    """``{(dataset, mixer, k, lamb, train_size): (results of finished runs, seeds asked)}`` in table order."""
    rows = collections.OrderedDict()
    for run in runs:
        results, asked = rows.get(run.row, ([], 0))
        if run.state() == "done":
            results = results + [dict(run.results(), run=run.name)]
        rows[run.row] = (results, asked + 1)
    return rows


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

"""The table registry: what ``scripts/reproduce.py --table NAME`` can build, one entry per table.

A table is a ``TableEntry``: its name, a one-line summary, the request fields it takes, and a ``plan`` function
that turns a ``TableRequest`` (what the command line asked) into a ``TablePlan`` (its runs, its file name and
how to write it). Everything else, the ledger, resuming, ``--only``, ``--dry-run``, ``--stop-after`` and
training seed by seed, is the same for every table (``amr_keras.tables.planning``).
"""

import dataclasses
from collections.abc import Callable

from amr_keras.config import ConfigError
from amr_keras.registry import Registry
from amr_keras.tables.ledger import load_ledger
from amr_keras.tables.planning import check_runs

# Recipe fields a request may set for every run of a table (given flags only; absent: the table's own).
RECIPE_FIELDS = ("preset", "lamb", "lr", "d_lr", "beta", "epochs", "batch_size", "depth", "precision", "probe",
                 "recon_gan")
# Flags of scripts/reproduce.py for the request fields, for messages.
FLAGS = {"only_sizes": "--only-sizes", "only_lambs": "--only-lambs", "recon_gan": "--no-recon-gan",
         **{key: "--" + key.replace("_", "-") for key in RECIPE_FIELDS if key != "recon_gan"}}


@dataclasses.dataclass(frozen=True)
class TableRequest:
    """What is asked of a table (``scripts/reproduce.py``'s flags).

    Attributes:
        name: the table (``table_names()``); ``"grid"`` is the grid of ``datasets`` x ``only`` rows.
        out: folder of the table files and of the ledger.
        runs_dir: folder of the run folders (``None``: the table's default).
        data_dirs: ``{dataset: folder}`` of raw files.
        datasets: replace the table's datasets (``None``: its own).
        seeds: the seeds of every row (``None``: the table's own).
        only: ``"MIXER[:K]"`` rows to train (the grid: its rows); ``None``: every row.
        only_sizes: training-set sizes to train; ``None``: all.
        only_lambs: lamb values to train; ``None``: all.
        recipe: ``{field: value}`` of ``RECIPE_FIELDS`` given, for every run.
        quick: a smoke run (one seed, a short recipe).
        deterministic: TensorFlow's deterministic ops (no run's name changes).
    """

    name: str = "grid"
    out: str = "results"
    runs_dir: str = None
    data_dirs: dict = dataclasses.field(default_factory=dict)
    datasets: tuple = None
    seeds: tuple = None
    only: tuple = None
    only_sizes: tuple = None
    only_lambs: tuple = None
    recipe: dict = dataclasses.field(default_factory=dict)
    quick: bool = False
    deterministic: bool = False


@dataclasses.dataclass(frozen=True)
class TablePlan:
    """The runs of one table and how to write it.

    Attributes:
        runs: ``PlannedRun`` list, in table order.
        stem: file name without extension (``OUT/STEM.md``, ``OUT/STEM.json``).
        runs_dir: folder of the run folders.
        write: ``write(runs, out_dir, stem, command, unavailable) -> (md_path, json_path)``: records the runs
            finished on disk in the ledger and writes the table; called after every finished run and at the end.
        rows: ``(mixer, k)`` rows selected for training (``None``: all).
        train_sizes: training-set sizes selected (``None``: all).
        lambs: lamb values selected (``None``: all).
        finish: ``finish(runs, out_dir, stem) -> [str]``: what is drawn once training ends (figures), before
            the last ``write``: the paths written, or a note saying why none was; ``None``: nothing.
        seeds_in_command: whether the command written beside the table names the seeds (a table whose rows
            have seeds of their own leaves them out unless asked).
    """

    runs: list
    stem: str
    runs_dir: str
    write: Callable
    rows: list = None
    train_sizes: set = None
    lambs: set = None
    finish: Callable = None
    seeds_in_command: bool = True


@dataclasses.dataclass(frozen=True)
class TableEntry:
    """One table of the registry.

    Attributes:
        name: what ``--table`` takes.
        summary: one line for ``--help`` and the docs.
        plan: ``plan(request, ledger) -> TablePlan``; ``ledger`` is ``load_ledger(request.out)``.
        takes: the request fields among ``RECIPE_FIELDS``, ``only_sizes`` and ``only_lambs`` that it uses; any
            other one given is refused with a message naming what it takes.
    """

    name: str
    summary: str
    plan: Callable
    takes: tuple = RECIPE_FIELDS + ("only_sizes", "only_lambs")


_TABLES = Registry("table", unknown_error=ConfigError, describe=lambda name, entry: f"{name} ({entry.summary})",
                   separator="; ")


def register_table(entry, replace=False):
    """Add ``entry`` (a ``TableEntry``) to the registry: ``scripts/reproduce.py --table NAME`` then builds it.

    Raises:
        ValueError: a table of that name is registered (unless ``replace``), ``plan`` is not callable, or
            ``takes`` names an unknown field.
    """
    if not isinstance(entry, TableEntry) or not callable(entry.plan):
        raise ValueError("register_table takes a TableEntry whose plan is a callable.")
    unknown = sorted(set(entry.takes) - set(FLAGS))
    if unknown:
        raise ValueError(f"TableEntry.takes names unknown fields: {', '.join(unknown)}.")
    return _TABLES.register(entry, replace)


def table_names():
    """Names of the registered tables, in registration order."""
    return _TABLES.names()


def table_entry(name):
    """The registered ``TableEntry`` called ``name``.

    Raises:
        ConfigError: no table of that name; the message lists them with their summaries.
    """
    return _TABLES.spec(name)


def plan_table(request):
    """The ``TablePlan`` of ``request``: the table's own plan, with ``deterministic`` applied and the run folders
    on disk checked against the planned settings (``check_runs``).

    Raises:
        ConfigError: an unknown table, a flag the table does not take, a setting out of range, or a run folder
            holding other settings.
    """
    entry = table_entry(request.name)
    given = [key for key in RECIPE_FIELDS if request.recipe.get(key) is not None]
    given += [key for key in ("only_sizes", "only_lambs") if getattr(request, key)]
    refused = [FLAGS[key] for key in given if key not in entry.takes]
    if refused:
        takes = ", ".join(FLAGS[key] for key in entry.takes) or "no recipe flag"
        raise ConfigError(f"--table {entry.name} does not take {', '.join(refused)} (it takes {takes}).")
    plan = entry.plan(request, load_ledger(request.out))
    if request.deterministic:
        runs = [dataclasses.replace(r, cfg=dataclasses.replace(r.cfg, deterministic=True)) for r in plan.runs]
        plan = dataclasses.replace(plan, runs=runs)
    check_runs(plan.runs)
    return plan

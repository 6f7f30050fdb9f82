"""The accuracy tables: Tables 1, 2 and 3 of the paper, the lamb sweep and the grid of the command line.

A table is datasets x rows (mixer, k) x lamb values x training-set sizes x seeds, every run trained with one
recipe (the same ``Config`` fields except mixer, k, lamb and seed) and scored by its online probe, the post-hoc
linear evaluation and k-NN. ``TABLES`` holds the named ones; each is registered (``amr_keras.tables.registry``)
under its name, and the grid of ``scripts/reproduce.py`` without ``--table`` as ``grid``.

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
import os
import statistics

from amr_keras.config import PRESETS, Config, ConfigError, default_run_name, resolve
from amr_keras.model import RECON_GAN_OPTIONAL_MIXERS
from amr_keras.runfolder import write_text_atomically
from amr_keras.tables.ledger import RUN_RECORD_KEYS, load_ledger, record_finished  # noqa: F401 (load_ledger: example)
from amr_keras.tables.planning import (PlannedRun, check_runs, collect, find_recorded, parse_rows,  # noqa: F401
                                       recipe_tag, train_missing)
from amr_keras.tables.registry import RECIPE_FIELDS, TableEntry, TablePlan, register_table
from amr_keras.tables.stats import format_percent, gap_verdict, mean_std, paired_ci95

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


def table_lambs(spec, preset=None, lambs=None):
    """The lamb values of a table: ``lambs`` if given, else the spec's, else the preset's one."""
    if lambs:
        return tuple(float(v) for v in lambs)
    return spec.lambs or (PRESETS[preset or spec.preset]["lamb"],)


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
    write_text_atomically(md_path, "\n".join(lines) + "\n")
    data = {"table": spec.name, "title": spec.title, "command": command, "preset": recipe["preset"],
            "recipe": recipe, "seeds": seeds, "rows": records}
    if gap_entries:
        data["gaps"] = gap_entries
    write_text_atomically(json_path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
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


# --------------------------------------------------------------------------- the registered tables
# Datasets of the grid without --datasets, its smoke run, and the steps of a fixed-budget table's smoke run.
GRID_DATASETS = ("mnist_sample", "mnist", "kmnist", "svhn", "fashion_mnist")
QUICK_BUDGET_STEPS = 40
DEFAULT_SEEDS = 3
# The request's recipe fields that plan_runs takes as overrides (preset and lamb are axes of their own).
_OVERRIDES = ("lr", "d_lr", "beta", "epochs", "batch_size", "depth", "precision", "probe", "recon_gan")


def parse_sizes(values, spec):
    """``--only-sizes`` values, checked against the training-set sizes of ``spec``."""
    known = [n for n in spec.train_sizes if n is not None]
    unknown = [n for n in values if n not in known]
    if unknown:
        sizes = " ".join(map(str, known)) if known else "none (it trains on whole training splits)"
        raise ConfigError(f"--only-sizes takes training-set sizes of table {spec.name}: {sizes}; "
                          f"got {' '.join(map(str, unknown))}.")
    return set(values)


def parse_lambs(values, lambs):
    """``--only-lambs`` values, checked against the table's lamb values ``lambs``."""
    unknown = [v for v in values if v not in lambs]
    if unknown:
        raise ConfigError(f"--only-lambs takes lamb values of this table: {' '.join(f'{v:g}' for v in lambs)}; "
                          f"got {' '.join(f'{v:g}' for v in unknown)} (--lamb sets the table's values).")
    return set(values)


def _plan(spec, request, ledger, runs_dir, rows=None, sizes=None):
    recipe = {key: request.recipe.get(key) for key in _OVERRIDES}
    seeds = list(request.seeds) if request.seeds is not None else list(range(DEFAULT_SEEDS))
    if request.quick:
        seeds, recipe = [0], {**recipe, "epochs": recipe["epochs"] or 1, "depth": recipe["depth"] or 4}
    preset, lamb = request.recipe.get("preset"), request.recipe.get("lamb")
    runs = plan_runs(spec, seeds, request.data_dirs, runs_dir, preset=preset, lambs=lamb, recipe=recipe,
                     ledger=ledger)
    lambs = parse_lambs(request.only_lambs, table_lambs(spec, preset, lamb)) if request.only_lambs else None
    return TablePlan(runs, table_stem(spec, preset, lamb, recipe), runs_dir,
                     write=lambda *args: write_tables(spec, *args), rows=rows, train_sizes=sizes, lambs=lambs)


def plan_named(request, ledger):
    """The ``TablePlan`` of a table of ``TABLES`` (run folders in ``runs/`` unless ``request.runs_dir``)."""
    spec = table_spec(request.name, request.datasets)
    if request.quick and spec.budget_steps:
        spec = dataclasses.replace(spec, budget_steps=min(spec.budget_steps, QUICK_BUDGET_STEPS))
    rows = parse_rows(request.only, spec.rows, flag="--only") if request.only else None
    sizes = parse_sizes(request.only_sizes, spec) if request.only_sizes else None
    return _plan(spec, request, ledger, request.runs_dir or "runs", rows, sizes)


def plan_grid(request, ledger):
    """The ``TablePlan`` of the grid: ``request.datasets`` (default ``GRID_DATASETS``; ``mnist_sample`` for a
    smoke run) x the rows ``request.only`` (default ``GRID_ROWS``), preset ``fast`` unless asked, written as
    ``OUT/table1.md``, run folders in ``OUT/runs``."""
    datasets = ["mnist_sample"] if request.quick else (request.datasets or GRID_DATASETS)
    grid = parse_rows(request.only or [f"{m}:{k}" for m, k in GRID_ROWS], GRID_CHOICES)
    spec = grid_spec(datasets, grid, request.recipe.get("preset") or "fast")
    return _plan(spec, request, ledger, request.runs_dir or os.path.join(request.out, "runs"))


for _name, _spec in TABLES.items():
    register_table(TableEntry(_name, _spec.title.split(":")[0], plan_named))
register_table(TableEntry("grid", "the grid of --datasets x --mixers, preset fast", plan_grid,
                          takes=RECIPE_FIELDS + ("only_lambs",)))

"""The paper's Table 4: disentanglement on dSprites (FactorVAE score), AMR's mixers against a beta-VAE.

Rows, as the official ``exps/dsprite/``: ``baseline_lamb1`` (no mixing: AE + GAN), ``mixup_lamb1``,
``mixupfm2_lamb1`` (Bernoulli), ``gan3f_lamb1`` (mixup, k=3), ``gan3fm_lamb1`` (Bernoulli, k=3), and the beta-VAE
baselines ``bvae_beta100`` and ``bvae_beta110``. Every run has one recipe, the ``dsprites`` preset (burgess
networks, lamb 1, bce summed over pixels, batch 64; 6 epochs of the 60,000 training images: 360,000 images seen),
and its final model is scored by the FactorVAE metric and by the official AMR code's function
(``amr_keras.disentanglement``: 800 votes, 800 held-out votes, L = 800), besides the linear accuracies of the
other tables (label: the shape factor). The beta-VAE rows take the official KL weight (the KL averaged over the
code values) and Adam's beta_1 0.9 of the official VAE scripts; one more row, a beta-VAE at Higgins et al.'s
beta 4 with the KL summed, anchors the numbers to the disentanglement literature. None and mixup, the paper's
question, get 5 seeds, the other rows 3 (``ROW_SEEDS``).

The table reuses the machinery of ``amr_keras.tables``: run folders named from their settings, a finished run
recorded in ``OUT/finished_runs.jsonl``, started runs resumed, the grid trained seed by seed, ``--only`` rows
(``bvae:100`` names a beta-VAE row, ``bvae_sum:4`` the anchor) and ``--dry-run``; it is registered as table
``4``, so ``scripts/reproduce.py --table 4`` is its command line. It writes ``OUT/table4.md``,
``OUT/table4.json`` and the traversal figure ``OUT/table4_traversals.png`` (variants of the recipe carry its
tags, e.g. ``table4-e1-d4-spe5``).
"""

import dataclasses
import json
import os
import statistics

from amr_keras.config import AMR_BETA1, BVAE_BETA1, Config, ConfigError, default_run_name, resolve
from amr_keras.runfolder import write_text_atomically
from amr_keras.tables.ledger import record_finished
from amr_keras.tables.planning import PlannedRun, collect, find_recorded, parse_rows, recipe_tag
from amr_keras.tables.registry import TableEntry, TablePlan, register_table
from amr_keras.tables.stats import gap_verdict, mean_std, paired_ci95

PRESET = "dsprites"
DATASETS = ("dsprites_procedural",)
# (mixer or "bvae", k or beta_kl), the official experiment each row repeats, and its name here.
ROWS = (
    (("none", 2), "baseline_lamb1", "none (AE + GAN)"),
    (("mixup", 2), "mixup_lamb1", "mixup"),
    (("bernoulli", 2), "mixupfm2_lamb1", "bernoulli"),
    (("mixup", 3), "gan3f_lamb1", "mixup (k=3)"),
    (("bernoulli", 3), "gan3fm_lamb1", "bernoulli (k=3)"),
    (("bvae", 100), "bvae_beta100", "beta-VAE, beta 100"),
    (("bvae", 110), "bvae_beta110", "beta-VAE, beta 110"),
    # Not in the paper: a sanity anchor from the disentanglement literature (Higgins et al.'s beta 4, the KL
    # summed over the code values), to hold our data and metric against published beta-VAE scores.
    (("bvae_sum", 4), "– (anchor: Higgins et al.)", "beta-VAE, beta 4 (KL summed)"),
)
ROW_KEYS = tuple(key for key, _, _ in ROWS)
OFFICIAL = {key: name for key, name, _ in ROWS}
NAMES = {key: name for key, _, name in ROWS}
# Each mixing row and each beta-VAE against the AE without mixing (paired by seed).
GAPS = tuple((key, ("none", 2)) for key in ROW_KEYS if key != ("none", 2))
DEFAULT_SEEDS = 3
# Seeds of rows that get more than DEFAULT_SEEDS: the paper's question is mixup against no mixing.
ROW_SEEDS = {("none", 2): 5, ("mixup", 2): 5}
STEM = "table4"
QUICK_STEPS = 5  # --quick: steps per epoch of a smoke run
QUICK_FACTORVAE = dict(factorvae_votes=20, factorvae_eval_votes=20, factorvae_samples=40)


def figure_name(stem=STEM):
    """The traversal figure of table ``stem``: ``table4_traversals.png``."""
    return f"{stem}_traversals.png"
# Recipe fields the command line may override for every run (tagged in run folders and file names).
RECIPE_FIELDS = ("epochs", "batch_size", "depth", "lr", "precision")


def row_settings(key):
    """Config fields of a row: ``{"mixer", "k"}`` or ``{"model": "bvae", "beta_kl"}``."""
    name, value = key
    if name in ("bvae", "bvae_sum"):
        return {"model": "bvae", "beta_kl": float(value), "kl_reduction": "sum" if name == "bvae_sum" else "mean"}
    return {"mixer": name, "k": int(value)}


def default_seeds(key):
    """Seeds of row ``key`` when none are asked: ``ROW_SEEDS``, else ``DEFAULT_SEEDS``."""
    return list(range(ROW_SEEDS.get(key, DEFAULT_SEEDS)))


def plan(seeds, data_dirs, runs_dir, datasets=DATASETS, rows=ROW_KEYS, recipe=None, steps_per_epoch=None,
         factorvae=None, verbose=2, ledger=None):
    """Every run of Table 4: datasets x rows x seeds, as ``reproduce.PlannedRun`` (row ``(dataset, mixer or
    "bvae", k or beta, lamb, None)``).

    Args:
        seeds: seeds of every row (``None``: ``default_seeds`` of each).
        data_dirs: ``{dataset: folder}`` (``dsprites``: the folder of the official ``.npz``).
        runs_dir: folder of the run folders.
        datasets: ``dsprites_procedural`` (default) and/or ``dsprites``.
        rows: row keys (``ROW_KEYS`` by default).
        recipe: overrides of ``RECIPE_FIELDS`` for every run.
        steps_per_epoch: training steps per epoch (``None``: a pass over the training images); tagged.
        factorvae: overrides of the metric's settings (``{"factorvae_samples": 50, ...}``), for smoke runs.
        verbose: Keras progress output.
        ledger: ``reproduce.load_ledger(OUT)``.
    """
    recipe = {k: v for k, v in (recipe or {}).items() if v is not None}
    unknown = sorted(set(recipe) - set(RECIPE_FIELDS))
    if unknown:
        raise ConfigError(f"Table 4's recipe overrides only {', '.join(RECIPE_FIELDS)}; got {', '.join(unknown)}.")
    tag = recipe_tag(PRESET, recipe) + (f"-spe{steps_per_epoch}" if steps_per_epoch else "")
    runs = []
    for dataset in datasets:
        for key in rows:
            for seed in (default_seeds(key) if seeds is None else seeds):
                cfg = resolve(Config(dataset=dataset, data_dir=data_dirs.get(dataset), preset=PRESET, seed=seed,
                                     export=False, verbose=verbose, steps_per_epoch=steps_per_epoch,
                                     **row_settings(key), **recipe, **(factorvae or {})))
                cfg = dataclasses.replace(cfg, out=os.path.join(runs_dir, default_run_name(cfg, tag)))
                runs.append(PlannedRun((dataset, key[0], key[1], cfg.lamb, None), cfg, find_recorded(cfg, ledger)))
    return runs


def _values(results, key):
    return [r.get(key) for r in results]


def _cell(values, scale=1.0, digits=3):
    mean, std, n = mean_std(values)
    if not n:
        return "–"
    return f"{scale * mean:.{digits}f}" if std is None else f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def _official_cell(key):
    name = OFFICIAL[key]
    return f"`{name}`" if name.endswith("_lamb1") or name.startswith("bvae_") else name


def _split(results):
    return "test" if results and results[0].get("test_probe_accuracy") is not None else "val"


def gaps(rows):
    """Each row of ``GAPS`` minus the AE without mixing, paired by seed: FactorVAE score (points of 0-1) and
    post-hoc linear accuracy of the shape (points, %), with the 95% interval of the mean per-seed difference."""
    out = []
    for a_key, b_key in GAPS:
        for (dataset, name, value, _, _), (a_results, _) in rows.items():
            if (name, value) != a_key:
                continue
            b_results = next((res for (d, n, v, _, _), (res, _) in rows.items() if d == dataset and (n, v) == b_key),
                             [])
            a_by_seed, b_by_seed = {r["seed"]: r for r in a_results}, {r["seed"]: r for r in b_results}
            seeds = sorted(set(a_by_seed) & set(b_by_seed))
            entry = {"rows": f"{NAMES[a_key]} minus {NAMES[b_key]}", "dataset": dataset, "seeds": seeds}
            for metric, key, scale in (("factorvae", "factorvae_score", 1.0),
                                       ("linear_eval", f"linear_eval_{_split(a_results)}_accuracy", 100.0)):
                diffs = [scale * (a_by_seed[s][key] - b_by_seed[s][key]) for s in seeds
                         if a_by_seed[s].get(key) is not None and b_by_seed[s].get(key) is not None]
                mean, std, _ = mean_std(diffs)
                ci95 = paired_ci95(diffs)
                entry[metric] = {"mean": mean, "std": std, "per_seed": diffs, "ci95": ci95,
                                 "verdict": gap_verdict(ci95)}
            out.append(entry)
    return out


def _gap_text(gap, digits):
    if gap["mean"] is None:
        return "–"
    text = f"{gap['mean']:+.{digits}f}"
    if gap["std"] is not None:
        low, high = gap["ci95"]
        text += f" ± {gap['std']:.{digits}f} (CI {low:+.{digits}f} to {high:+.{digits}f}: {gap['verdict']})"
    return text


def write_table(runs, out_dir, command, unavailable=None, stem=STEM):
    """Write ``OUT/STEM.md`` and ``OUT/STEM.json`` from the finished runs (after recording them in the ledger).

    Returns:
        The paths of the two files.
    """
    unavailable = unavailable or {}
    record_finished(runs, out_dir)
    rows = collect(runs)
    cfg = runs[0].cfg
    seeds = sorted({run.cfg.seed for run in runs})
    steps = cfg.steps_per_epoch
    images = None
    done = [r for results, _ in rows.values() for r in results]
    if done:
        per_epoch = (cfg.steps_per_epoch * cfg.batch_size) if cfg.steps_per_epoch else done[0]["num_train"]
        images = cfg.epochs * per_epoch
    budget = (f"{cfg.epochs} epochs" + (f" of {cfg.steps_per_epoch} steps" if steps else " of the training images")
              + (f" = {images:,} images seen per run" if images else ""))
    fv = (f"FactorVAE metric: {cfg.factorvae_votes} votes, {cfg.factorvae_eval_votes} held-out votes, "
          f"L = {cfg.factorvae_samples} images per vote, standard deviations over 10,000 images")
    scored = ("the final model" if cfg.score_epoch == "last"
              else "the model of the epoch of best validation probe accuracy")
    lines = [
        "# Table 4 of the paper: disentanglement on dSprites (FactorVAE score), AMR's mixers against beta-VAE",
        "",
        f"Command: `{command}`",
        "",
        f"Recipe, the same for every run: preset `{PRESET}` (`--arch burgess`, lamb {cfg.lamb:g}, recon {cfg.recon}, "
        f"lr {cfg.lr:g}, batch {cfg.batch_size}, depth {cfg.depth}, precision {cfg.precision}); {budget}; "
        f"seeds {', '.join(map(str, seeds))}. {fv}.",
        "",
        "| dataset | row | paper's setting (official exps/dsprite/) | seeds | FactorVAE score | official function "
        "(paper's scale, max 0.8) | code values kept | post-hoc linear, shape (%) | online probe, shape (%) "
        "| minutes / run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    records = []
    for (dataset, name, value, lamb, _), (results, asked) in rows.items():
        key = (name, value)
        record = {"dataset": dataset, "row": NAMES[key], "official": OFFICIAL[key], "setting": row_settings(key),
                  "lamb": lamb, "seeds_asked": asked, "seeds_done": len(results)}
        seeds_text = f"{len(results)}" if len(results) == asked else f"{len(results)} of {asked}"
        if not results:
            status = unavailable.get(dataset, "not run")
            lines.append(f"| {dataset} | {NAMES[key]} | {_official_cell(key)} | 0 of {asked} | {status} | | | | | |")
            records.append({**record, "status": status})
            continue
        split = _split(results)
        online = "test_probe_accuracy" if split == "test" else "best_val_probe_accuracy"
        minutes = statistics.mean(r["train_seconds"] for r in results) / 60
        lines.append(f"| {dataset} | {NAMES[key]} | {_official_cell(key)} | {seeds_text} "
                     f"| {_cell(_values(results, 'factorvae_score'))} "
                     f"| {_cell(_values(results, 'factorvae_official_score'))} "
                     f"| {_cell(_values(results, 'factorvae_active_dims'), digits=1)} "
                     f"| {_cell(_values(results, f'linear_eval_{split}_accuracy'), 100, 2)} "
                     f"| {_cell(_values(results, online), 100, 2)} | {minutes:.1f} |")
        for metric in ("factorvae_score", "factorvae_official_score"):
            record[metric] = dict(zip(("mean", "std", "n"), mean_std(_values(results, metric))))
        record["runs"] = [{key_: r.get(key_) for key_ in (
            "run", "seed", "best_epoch", "factorvae_score", "factorvae_train_score", "factorvae_per_factor",
            "factorvae_assignment", "factorvae_active_dims", "factorvae_official_score",
            "factorvae_official_per_factor",
            f"linear_eval_{split}_accuracy", online, "train_seconds", "images_per_second", "factorvae_seconds",
            "precision", "cpu_model")} for r in results]
        records.append({**record, "status": "done" if len(results) == asked else f"{len(results)} of {asked} seeds"})
    lines += [
        "",
        "FactorVAE score (Kim & Mnih): accuracy (0 to 1; chance 0.2) of the majority-vote classifier from the code "
        "value of least variance to the factor held fixed, on held-out votes, code values with a standard deviation "
        f"below {cfg.factorvae_prune:g}{' times the largest' if cfg.factorvae_prune_relative else ''} pruned; "
        "mean ± sample standard deviation over the finished seeds. Official function: the official AMR "
        "code's dsprite_disentanglement_fv on the same votes, quirks included (no pruning, each factor mapped to its "
        "most common code value, the last factor never counted: a perfect code scores 0.8), the scale of the paper's "
        f"Table 4. Every score is taken on {scored}. The label of the linear accuracies is the shape factor "
        "(square, ellipse, heart; chance 1/3); test split of 5,000 grid cells. A beta-VAE is scored on its posterior "
        "mean.",
    ]
    if any(dataset == "dsprites_procedural" for dataset, *_ in rows):
        lines += ["", "dsprites_procedural is the dSprites factor grid rendered in code (amr_keras.dsprites), "
                      "calibrated on 320 frames of real dSprites pixels (intersection over union 0.997 on average, "
                      "0.957 at worst): a re-rendering, not the official pixels; its numbers are not numbers on "
                      "dSprites."]
    gap_entries = gaps(rows)
    if gap_entries:
        lines += ["", "## Each row minus the AE without mixing, paired by seed", "",
                  "| rows | dataset | seeds | FactorVAE score | post-hoc linear, shape (points) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {g['rows']} | {g['dataset']} | {len(g['seeds'])} | {_gap_text(g['factorvae'], 3)} "
                  f"| {_gap_text(g['linear_eval'], 2)} |" for g in gap_entries]
        lines += ["", "Mean ± sample standard deviation of the per-seed difference; CI: 95% confidence interval of "
                      "its mean (Student's t): ahead when it lies above 0, behind when it lies below 0, open when it "
                      "holds 0 (the sign is not settled)."]
    if os.path.isfile(os.path.join(out_dir, figure_name(stem))):
        lines += ["", f"Figure: `{figure_name(stem)}`: for each row (its first finished seed), every code value "
                      "swept from -2 to +2 standard deviations around the code of one image."]
    os.makedirs(out_dir, exist_ok=True)
    md_path, json_path = os.path.join(out_dir, f"{stem}.md"), os.path.join(out_dir, f"{stem}.json")
    write_text_atomically(md_path, "\n".join(lines) + "\n")
    data = {"table": "4", "command": command, "preset": PRESET, "recipe": {
        key: getattr(cfg, key) for key in ("arch", "lamb", "recon", "lr", "d_lr", "probe_lr", "schedule", "batch_size",
                                           "epochs", "steps_per_epoch", "update_g_every", "depth", "precision",
                                           "score_epoch", "data_version", "factorvae_votes", "factorvae_eval_votes",
                                           "factorvae_samples", "factorvae_prune", "factorvae_prune_relative")},
        "adam_beta1": {"amr": AMR_BETA1, "bvae": BVAE_BETA1},
        "images_per_run": images, "seeds": seeds, "rows": records, "gaps": gap_entries}
    write_text_atomically(json_path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return md_path, json_path


def draw_traversals(runs, out_dir, stem=STEM, steps=7, span=2.0):
    """``OUT/STEM_traversals.png``: per row, the first finished run whose folder holds ``best.keras``.

    Returns:
        The figure's path, or ``None`` when no row has a model on disk (e.g. runs known from the ledger only).
    """
    import keras

    import amr_keras.bvae  # noqa: F401  (registers BVAE)
    from amr_keras.plots import traversal_figure

    models, seen = [], set()
    for run in runs:
        key = run.row[1:3]
        path = os.path.join(run.folder, "checkpoint", "last.keras") if run.cfg.score_epoch == "last" else \
            os.path.join(run.folder, "best.keras")
        # A run still training (or stopped) has a best.keras too, of an epoch that may not be its last: skip it.
        if key in seen or run.state() != "done" or not os.path.isfile(path):
            continue
        seen.add(key)
        models.append((f"{NAMES[key]} (s{run.cfg.seed})", keras.saving.load_model(path, compile=False)))
    if not models:
        return None
    path = os.path.join(out_dir, figure_name(stem))
    traversal_figure(models, path, steps=steps, span=span)
    return path


def table_stem(datasets, recipe, steps_per_epoch=None):
    """File name of the table: ``table4``, tagged with datasets other than the default and the recipe's
    departures from the preset (``table4-dsprites``, ``table4-e1-d4-spe5``)."""
    stem = STEM if tuple(datasets) == DATASETS else f"{STEM}-{'_'.join(datasets)}"
    recipe = {k: v for k, v in recipe.items() if v is not None}
    return stem + recipe_tag(PRESET, recipe) + (f"-spe{steps_per_epoch}" if steps_per_epoch else "")


def plan_request(request, ledger):
    """The ``TablePlan`` of Table 4 for a ``TableRequest`` (``scripts/reproduce.py --table 4``): the rows'
    own seeds unless ``request.seeds``; ``quick``: one seed, ``QUICK_STEPS`` steps per epoch, a small metric."""
    recipe = {key: request.recipe.get(key) for key in RECIPE_FIELDS}
    seeds = list(request.seeds) if request.seeds is not None else None  # None: each row's (ROW_SEEDS)
    steps, factorvae = None, None
    if request.quick:
        seeds, steps, factorvae = [0], QUICK_STEPS, QUICK_FACTORVAE
        recipe = {**recipe, "epochs": recipe["epochs"] or 1, "depth": recipe["depth"] or 4}
    datasets = tuple(request.datasets or DATASETS)
    rows = parse_rows(request.only, ROW_KEYS, flag="--only") if request.only else None
    runs_dir = request.runs_dir or "runs"
    runs = plan(seeds, request.data_dirs, runs_dir, datasets=datasets, recipe=recipe, steps_per_epoch=steps,
                factorvae=factorvae, ledger=ledger)

    def write(runs, out_dir, stem, command, unavailable=None):
        return write_table(runs, out_dir, command, unavailable, stem=stem)

    def finish(runs, out_dir, stem):
        figure = draw_traversals(runs, out_dir, stem=stem)
        return [figure] if figure else ["no model on disk for the traversal figure"]

    return TablePlan(runs, table_stem(datasets, recipe, steps), runs_dir, write=write, rows=rows, finish=finish,
                     seeds_in_command=request.seeds is not None)


register_table(TableEntry("4", "Table 4 of the paper, disentanglement on dSprites", plan_request,
                          takes=RECIPE_FIELDS))

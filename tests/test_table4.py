"""Table 4 (dSprites, FactorVAE): its plan, its table and gaps from known scores, its traversal figure."""

import dataclasses
import json
import os

import numpy as np
import pytest

from amr_keras import networks
from amr_keras.tables import table4
from test_reproduce import load_script, read

SCORES = {("none", 2): 0.40, ("mixup", 2): 0.50, ("bernoulli", 2): 0.55, ("mixup", 3): 0.45,
          ("bernoulli", 3): 0.41, ("bvae", 100): 0.70, ("bvae", 110): 0.72, ("bvae_sum", 4): 0.66}


def _key(cfg):
    if cfg.model == "bvae":
        return ("bvae_sum" if cfg.kl_reduction == "sum" else "bvae", int(cfg.beta_kl))
    return (cfg.mixer, cfg.k)


class FakeTrain:
    """Stands in for ``amr_keras.train.run``: seed s scores SCORES + 0.01 * s (std 0.007 over seeds 0, 1)."""

    def __init__(self):
        self.calls = []

    def __call__(self, cfg, argv=None, resume_hint=None):
        self.calls.append(cfg)
        os.makedirs(cfg.out, exist_ok=True)
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(cfg), f)
        score = SCORES[_key(cfg)] + 0.01 * cfg.seed
        results = {"dataset": cfg.dataset, "mixer": cfg.mixer, "k": cfg.k, "lamb": cfg.lamb, "seed": cfg.seed,
                   "model": cfg.model, "beta_kl": cfg.beta_kl, "num_train": 60000, "epochs": cfg.epochs,
                   "best_epoch": cfg.epochs, "best_val_probe_accuracy": 0.5, "test_probe_accuracy": 0.5 + cfg.seed / 10,
                   "linear_eval_val_accuracy": 0.6, "linear_eval_test_accuracy": 0.6, "train_seconds": 900.0,
                   "images_per_second": 200.0, "precision": "float32", "cpu_model": "Test CPU",
                   "factorvae_score": score, "factorvae_train_score": score, "factorvae_assignment": ["x"] * 10,
                   "factorvae_official_score": 0.8 - score / 10, "factorvae_active_dims": 10 - cfg.seed}
        with open(os.path.join(cfg.out, "results.json"), "w") as f:
            json.dump(results, f)
        return results


@pytest.fixture
def dirs(tmp_path):
    return {"out": str(tmp_path / "results"), "runs": str(tmp_path / "runs")}


def args(dirs, *extra):
    return ["--table", "4", "--out", dirs["out"], "--runs", dirs["runs"], *extra]


def test_plan_has_the_papers_seven_rows_and_the_anchor_with_one_recipe(dirs):
    runs = table4.plan([0, 1], {}, dirs["runs"])
    assert len(runs) == 16
    assert [r.row[1:3] for r in runs[::2]] == list(table4.ROW_KEYS)
    names = {r.name for r in runs}
    assert "dsprites_procedural-bernoulli-k3-lamb1-dsprites-s1" in names
    assert "dsprites_procedural-bvae-beta110-dsprites-s0" in names
    assert "dsprites_procedural-bvae-beta4-klsum-dsprites-s1" in names
    cfgs = [r.cfg for r in runs]
    assert {(c.preset, c.arch, c.recon, c.lamb, c.epochs, c.batch_size, c.score_epoch) for c in cfgs} == {
        ("dsprites", "burgess", "bce", 1.0, 6, 64, "last")}
    assert {c.model for c in cfgs if c.beta_kl} == {"bvae"} and {c.mixer for c in cfgs if c.beta_kl} == {"none"}
    # The paper's betas with the official KL (averaged over the code) and Adam beta_1; the anchor sums the KL.
    assert {(c.beta_kl, c.kl_reduction, c.adam_beta1) for c in cfgs if c.beta_kl} == {
        (100.0, "mean", 0.9), (110.0, "mean", 0.9), (4.0, "sum", 0.9)}
    assert {c.adam_beta1 for c in cfgs if not c.beta_kl} == {0.5}


def test_default_seeds_are_five_for_none_and_mixup_and_three_for_the_rest(dirs):
    runs = table4.plan(None, {}, dirs["runs"])
    seeds = {}
    for run in runs:
        seeds.setdefault(run.row[1:3], []).append(run.cfg.seed)
    assert seeds[("none", 2)] == seeds[("mixup", 2)] == [0, 1, 2, 3, 4]
    assert all(seeds[key] == [0, 1, 2] for key in table4.ROW_KEYS if key not in (("none", 2), ("mixup", 2)))
    assert len(runs) == 2 * 5 + 6 * 3


def test_dry_run_lists_the_runs_and_foreign_flags_are_refused(dirs, capsys):
    script = load_script()
    assert script.main(args(dirs, "--dry-run", "--only", "bvae:110")) == 0
    out = capsys.readouterr().out
    assert "28 runs: 3 pending, 25 not selected" in out
    assert "pending  dsprites_procedural-bvae-beta110-dsprites-s2\n" in out
    assert script.main(args(dirs, "--dry-run", "--quick")) == 0
    assert "8 runs" in capsys.readouterr().out
    assert script.main(args(dirs, "--lamb", "10")) == 2
    assert ("error: --table 4 does not take --lamb (it takes --epochs, --batch-size, --depth, --lr, --precision)"
            in capsys.readouterr().err)
    assert script.main(args(dirs, "--only", "bvae:4")) == 2
    assert "bvae:100" in capsys.readouterr().err


def test_table_md_and_json_hold_scores_gaps_and_the_papers_names(dirs, monkeypatch):
    fake = FakeTrain()
    monkeypatch.setattr("amr_keras.train.run", fake)
    script = load_script()
    assert script.main(args(dirs, "--seeds", "2")) == 0
    assert len(fake.calls) == 16
    # Seed by seed: every row of seed 0 first.
    assert [c.seed for c in fake.calls] == [0] * 8 + [1] * 8
    md = read(os.path.join(dirs["out"], "table4.md"))
    line = next(row for row in md.splitlines() if "`bvae_beta100`" in row)
    assert "| 2 | 0.705 ± 0.007 | 0.730 ± 0.001 | 9.5 ± 0.7 |" in line
    assert "beta-VAE, beta 4 (KL summed)" in md and "final model" in md
    assert "`mixupfm2_lamb1`" in md and "re-rendering, not the official pixels" in md
    assert "--table 4" in md and "--seeds 2" in md and "360,000 images seen per run" in md
    # Every seed of a row is the baseline plus the same amount: a gap with zero spread, clear of 0.
    gap = next(row for row in md.splitlines() if row.startswith("| mixup minus none"))
    assert "+0.100 ± 0.000 (CI +0.100 to +0.100: ahead)" in gap
    data = json.loads(read(os.path.join(dirs["out"], "table4.json")))
    assert data["recipe"]["factorvae_samples"] == 800 and data["images_per_run"] == 360000
    row = next(r for r in data["rows"] if r["official"] == "gan3fm_lamb1")
    assert row["factorvae_score"]["mean"] == pytest.approx(0.415) and row["seeds_done"] == 2
    assert len(data["gaps"]) == 7
    assert row["factorvae_official_score"]["mean"] == pytest.approx(0.8 - 0.0415)
    assert data["recipe"]["score_epoch"] == "last" and data["adam_beta1"] == {"amr": 0.5, "bvae": 0.9}
    mixup_gap = next(g for g in data["gaps"] if g["rows"].startswith("mixup minus"))
    assert mixup_gap["factorvae"]["verdict"] == "ahead"
    ledger = read(os.path.join(dirs["out"], "finished_runs.jsonl")).splitlines()
    assert len(ledger) == 16
    # Finished runs are read, not trained again.
    assert script.main(args(dirs, "--seeds", "2")) == 0 and len(fake.calls) == 16


def test_traversal_figure_sweeps_every_code_value(dirs, tmp_path):
    from amr_keras.bvae import BVAE
    from amr_keras.plots import code_traversals

    model = BVAE(networks.build_burgess_encoder(1, 4, heads=2), networks.build_burgess_decoder(1, 4),
                 num_classes=3, beta_kl=100.0)
    model.compile()
    image = np.zeros((64, 64, 1), np.uint8)
    grid = code_traversals(model, image, np.ones(10), steps=5)
    assert grid.shape == (10, 5, 64, 64, 1) and grid.min() >= 0 and grid.max() <= 1
    # The middle column is the image's own code; the ends move one value only.
    np.testing.assert_allclose(grid[:, 2], np.repeat(grid[:1, 2], 10, axis=0), atol=1e-6)
    assert np.abs(grid[:, 0] - grid[:, 4]).max() > 0
    runs = table4.plan([0], {}, dirs["runs"], rows=(("bvae", 100),))
    os.makedirs(runs[0].folder)
    # Table 4 scores the final model: the figure draws checkpoint/last.keras.
    os.makedirs(os.path.join(runs[0].folder, "checkpoint"))
    model.save(os.path.join(runs[0].folder, "checkpoint", "last.keras"))
    assert table4.draw_traversals(runs, dirs["out"]) is None  # still training: no results.json yet
    with open(os.path.join(runs[0].folder, "results.json"), "w") as f:
        f.write("{}")
    path = table4.draw_traversals(runs, dirs["out"])
    assert path.endswith("table4_traversals.png") and os.path.getsize(path) > 1000
    assert table4.draw_traversals(table4.plan([1], {}, dirs["runs"]), dirs["out"]) is None


@pytest.mark.slow
def test_quick_table4_trains_scores_and_draws(dirs, monkeypatch, capsys):
    from amr_keras import dsprites

    monkeypatch.setattr(dsprites, "SPLIT_SIZES", {"train": 256, "val": 32, "test": 32})
    script = load_script()
    assert script.main(args(dirs, "--quick", "--only", "none", "bvae:100", "--precision", "float32")) == 0
    stem = "table4-e1-d4-float32-spe5"
    md = read(os.path.join(dirs["out"], f"{stem}.md"))
    assert os.path.isfile(os.path.join(dirs["out"], f"{stem}_traversals.png"))
    line = next(row for row in md.splitlines() if "`bvae_beta100`" in row)
    assert "| 1 |" in line
    data = json.loads(read(os.path.join(dirs["out"], f"{stem}.json")))
    done = [r for r in data["rows"] if r["seeds_done"]]
    assert len(done) == 2 and all(0 <= r["factorvae_score"]["mean"] <= 1 for r in done)
    assert data["recipe"]["factorvae_votes"] == 20


def test_stop_after_starts_no_run_that_would_not_end_in_time(dirs, monkeypatch, capsys):
    fake = FakeTrain()  # every run records 900 s of training
    monkeypatch.setattr("amr_keras.train.run", fake)
    script = load_script()
    # Nothing finished yet: no estimate, so the first run starts; then 15 minutes per run do not fit in 10.
    assert script.main(args(dirs, "--seeds", "1", "--only", "none", "mixup", "--stop-after", "10")) == 0
    out = capsys.readouterr().out
    assert len(fake.calls) == 1
    assert "dsprites_procedural-mixup-k2-lamb1-dsprites-s0: not started, it would take about 15 minutes and 10 are " \
           "left (--stop-after)" in out
    # With time enough, the same command goes on where it stopped.
    assert script.main(args(dirs, "--seeds", "1", "--only", "none", "mixup", "--stop-after", "20")) == 0
    assert [c.mixer for c in fake.calls] == ["none", "mixup"]
    assert script.main(args(dirs, "--stop-after", "0")) == 2
    assert "--stop-after takes minutes > 0" in capsys.readouterr().err

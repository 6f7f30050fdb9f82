"""scripts/reproduce.py --table 1 / --table lamb: planning, skipping, resuming, tables; one tiny real run."""

import dataclasses
import importlib.util
import json
import os

import pytest

from amr_keras import tables
from amr_keras.tables import accuracy
from amr_keras.config import PRESETS, ConfigError, settings_diff
from amr_keras.data import VAL_FRACTION
from test_data import write_mnist_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE1_ROWS = [("none", 2), ("acai", 2), ("mixup", 2), ("bernoulli", 2), ("mixup", 3)]


def read(path):
    with open(path) as f:
        return f.read()


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce_script", os.path.join(ROOT, "scripts", "reproduce.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table1_accuracy(cfg):
    """Seeds 0, 1, 2 score base - 2, base, base + 2 points: mean = base, sample std = 2 points."""
    base = {("none", 2): 0.90, ("acai", 2): 0.91, ("mixup", 2): 0.92, ("bernoulli", 2): 0.93, ("mixup", 3): 0.94}
    return base[(cfg.mixer, cfg.k)] + 0.02 * (cfg.seed - 1)


class FakeTrain:
    """Stands in for ``amr_keras.train.run``: writes config.json and results.json with known accuracies."""

    def __init__(self, accuracy=table1_accuracy, table=None, interrupt=()):
        self.accuracy, self.table, self.interrupt = accuracy, table, set(interrupt)
        self.calls, self.tables_seen = [], []

    def __call__(self, cfg, argv=None, resume_hint=None):
        self.calls.append(cfg)
        if self.table is not None:
            self.tables_seen.append(read(self.table) if os.path.exists(self.table) else None)
        os.makedirs(cfg.out, exist_ok=True)
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(cfg), f)
        if os.path.basename(cfg.out) in self.interrupt:
            self.interrupt.discard(os.path.basename(cfg.out))
            raise KeyboardInterrupt("simulated stop after the first epoch")
        acc = self.accuracy(cfg)
        results = {"dataset": cfg.dataset, "mixer": cfg.mixer, "k": cfg.k, "lamb": cfg.lamb, "seed": cfg.seed,
                   "num_train": 50000, "epochs": cfg.epochs, "best_epoch": cfg.epochs,
                   "best_val_probe_accuracy": acc - 0.01, "test_probe_accuracy": acc,
                   "linear_eval_val_accuracy": acc, "linear_eval_test_accuracy": acc + 0.01,
                   "knn_val_accuracy": acc + 0.02, "knn_test_accuracy": acc + 0.03,
                   "train_seconds": 600.0, "images_per_second": 333.3, "precision": "float32",
                   "cpu_model": "Test CPU @ 2.0GHz"}
        with open(os.path.join(cfg.out, "results.json"), "w") as f:
            json.dump(results, f)
        return results


@pytest.fixture
def dirs(tmp_path):
    data = tmp_path / "mnist"
    data.mkdir()
    return {"data": str(data), "out": str(tmp_path / "results"), "runs": str(tmp_path / "runs")}


def table_args(dirs, *extra, table="1"):
    return ["--table", table, "--data-dir", f"mnist={dirs['data']}", "--out", dirs["out"], "--runs", dirs["runs"],
            *extra]


def md_row(md, mixer, k):
    """The table line of a row (the mixer column carries the row's name)."""
    lines = [line for line in md.splitlines()
             if line.startswith("| mnist |") and line.split(" | ")[1].split()[0] == mixer
             and line.split(" | ")[2] == str(k)]
    assert len(lines) == 1, md
    return lines[0]


def test_table1_plans_the_papers_five_rows_with_one_recipe(dirs):
    runs = accuracy.plan_runs(accuracy.TABLES["1"], [0, 1, 2], {"mnist": dirs["data"]}, dirs["runs"])
    assert [run.row[1:3] for run in runs[::3]] == TABLE1_ROWS
    assert len(runs) == 15 and {run.cfg.seed for run in runs} == {0, 1, 2}
    # One recipe: the Configs differ only in mixer, k, seed and their folder.
    recipes = {json.dumps({k: v for k, v in dataclasses.asdict(run.cfg).items()
                           if k not in ("mixer", "k", "seed", "out")}, sort_keys=True) for run in runs}
    assert len(recipes) == 1
    cfg = runs[3].cfg
    assert (cfg.dataset, cfg.data_dir, cfg.preset, cfg.lamb, cfg.epochs) == ("mnist", dirs["data"], "mnist_full", 5.0, 4)
    assert runs[3].folder == os.path.join(dirs["runs"], "mnist-acai-k2-lamb5-mnist_full-batchnorm-s0")


@pytest.mark.parametrize("mixer, k, seed", [("mixup", 2, 0), ("bernoulli", 2, 1), ("none", 2, 2), ("mixup", 3, 0)])
def test_plain_fit_on_mnist_trains_a_run_of_the_table1_row(dirs, mixer, k, seed):
    # `fit.py --dataset mnist --data-dir DIR --mixer M --k K --seed S --probe batchnorm`, no preset named:
    # the table's recipe (the table keeps the probe its runs were made with).
    from amr_keras.parser import config_from_args

    runs = accuracy.plan_runs(accuracy.TABLES["1"], [seed], {"mnist": dirs["data"]}, "runs")
    (planned,) = [run.cfg for run in runs if run.row[1:3] == (mixer, k)]
    argv = ["--dataset", "mnist", "--data-dir", dirs["data"], "--mixer", mixer, "--k", str(k), "--seed", str(seed)]
    cfg = config_from_args(argv + ["--probe", "batchnorm"])
    assert settings_diff(cfg, dataclasses.asdict(planned)) == []
    assert cfg.out == planned.out  # the same run folder under runs/
    # Without --probe: the same recipe with the default whitening probe, in a folder of its own.
    default = config_from_args(argv)
    assert settings_diff(default, dataclasses.asdict(planned)) == ["probe: run has 'batchnorm', now 'whiten'"]
    assert default.out == planned.out.replace("-batchnorm-", "-")


def test_mnist_full_preset_is_fast_with_lamb_5_within_200k_images():
    num_train = round(60000 * (1 - VAL_FRACTION["mnist"]))
    assert num_train == 50000
    assert PRESETS["mnist_full"]["epochs"] * num_train <= 200_000
    assert PRESETS["mnist_full"] == {**PRESETS["fast"], "lamb": 5.0, "epochs": 4}


def test_table1_follows_the_preset_lamb_while_tables_2_and_3_keep_lamb_10():
    # Tables 2 and 3 were trained at lamb 10: their committed runs must stay the default ones.
    assert accuracy.table_lambs(accuracy.TABLES["1"]) == (5.0,)
    assert accuracy.table_lambs(accuracy.TABLES["2"]) == accuracy.table_lambs(accuracy.TABLES["3"]) == (10.0,)
    assert accuracy.table_stem(accuracy.TABLES["1"]) == "table1_mnist"
    assert accuracy.table_stem(accuracy.TABLES["1"], lambs=[10]) == "table1_mnist-lamb10"
    assert accuracy.table_stem(accuracy.TABLES["2"]) == "table2"
    assert accuracy.table_stem(accuracy.TABLES["3"], lambs=[5]) == "table3-lamb5"


def test_recipe_overrides_name_the_run_folders_and_the_table(dirs):
    spec = accuracy.TABLES["1"]
    recipe = {"epochs": 2, "lr": 5e-4, "precision": "float32", "batch_size": 16}  # batch 16: the preset's
    runs = accuracy.plan_runs(spec, [0], {"mnist": dirs["data"]}, dirs["runs"], lambs=[30], recipe=recipe)
    assert os.path.basename(runs[2].folder) == "mnist-mixup-k2-lamb30-mnist_full-batchnorm-lr0.0005-e2-float32-s0"
    assert (runs[2].cfg.lamb, runs[2].cfg.epochs, runs[2].cfg.lr) == (30.0, 2, 5e-4)
    assert accuracy.table_stem(spec, lambs=[30], recipe=recipe) == "table1_mnist-lamb30-lr0.0005-e2-float32"
    assert accuracy.table_stem(spec, lambs=[5], recipe={"epochs": 4}) == "table1_mnist"
    assert accuracy.table_stem(accuracy.TABLES["lamb"]) == "lamb_sweep_mnist"
    # The committed tables keep the probe their runs were made with; the whitening probe is a variant.
    assert accuracy.TABLES["1"].probe == "batchnorm" and runs[2].cfg.probe == "batchnorm"
    assert accuracy.table_stem(spec, recipe={"probe": "whiten"}) == "table1_mnist-whiten"
    assert accuracy.table_stem(spec, recipe={"probe": "batchnorm"}) == "table1_mnist"


def test_discriminator_rate_and_consistency_weight_are_recipe_overrides(dirs):
    spec = accuracy.TABLES["1"]
    recipe = {"lr": 2.5e-3, "d_lr": 2.5e-3, "beta": 0.15}
    runs = accuracy.plan_runs(spec, [1], {"mnist": dirs["data"]}, dirs["runs"], lambs=[10], recipe=recipe)
    mixup = runs[2]
    assert os.path.basename(mixup.folder) == "mnist-mixup-k2-lamb10-mnist_full-batchnorm-lr0.0025-dlr0.0025-beta0.15-s1"
    assert (mixup.cfg.lr, mixup.cfg.d_lr, mixup.cfg.beta, mixup.cfg.lamb) == (2.5e-3, 2.5e-3, 0.15, 10.0)
    assert accuracy.table_stem(spec, lambs=[10], recipe=recipe) == "table1_mnist-lamb10-lr0.0025-dlr0.0025-beta0.15"
    # The preset's own values name nothing.
    assert accuracy.table_stem(spec, recipe={"d_lr": 1e-3, "beta": 0.0}) == "table1_mnist"
    with pytest.raises(ConfigError, match="beta"):
        accuracy.plan_runs(spec, [0], {"mnist": dirs["data"]}, dirs["runs"], recipe={"beta": -1.0})


def test_runs_train_once_and_the_table_is_rewritten_after_each(dirs, monkeypatch):
    md_path = os.path.join(dirs["out"], "table1_mnist.md")
    fake = FakeTrain(table=md_path)
    monkeypatch.setattr("amr_keras.train.run", fake)
    script = load_script()
    assert script.main(table_args(dirs, "--seeds", "2", "--only", "mixup:2")) == 0
    assert [(c.mixer, c.k, c.seed, c.resume) for c in fake.calls] == [("mixup", 2, 0, False), ("mixup", 2, 1, False)]
    # Before the second run the table already held the first one.
    assert fake.tables_seen[0] is None and "| 1 of 2 |" in md_row(fake.tables_seen[1], "mixup", 2)
    # Finished runs are read, not trained again; the other rows train now.
    assert script.main(table_args(dirs, "--seeds", "2")) == 0
    # Seed by seed: every row of seed 0 before seed 1, so a grid stopped part-way holds paired runs.
    assert [(c.mixer, c.k, c.seed) for c in fake.calls[2:]] == [
        ("none", 2, 0), ("acai", 2, 0), ("bernoulli", 2, 0), ("mixup", 3, 0),
        ("none", 2, 1), ("acai", 2, 1), ("bernoulli", 2, 1), ("mixup", 3, 1)]
    assert script.main(table_args(dirs, "--seeds", "2")) == 0
    assert len(fake.calls) == 10
    md = read(md_path)
    assert "`python scripts/reproduce.py --table 1 --data-dir" in md and "--seeds 2" in md and "--only" not in md


def test_a_started_run_resumes(dirs, monkeypatch):
    fake = FakeTrain(interrupt={"mnist-acai-k2-lamb5-mnist_full-batchnorm-s0"})
    monkeypatch.setattr("amr_keras.train.run", fake)
    script = load_script()
    with pytest.raises(KeyboardInterrupt):
        script.main(table_args(dirs, "--seeds", "1", "--only", "acai"))
    assert script.main(table_args(dirs, "--seeds", "1", "--only", "acai")) == 0
    assert [(c.mixer, c.resume) for c in fake.calls] == [("acai", False), ("acai", True)]


def test_no_recon_gan_changes_the_mixing_rows_and_shares_the_others(dirs):
    spec = accuracy.TABLES["1"]
    recipe = {"probe": "whiten", "recon_gan": False}
    runs = accuracy.plan_runs(spec, [0], {"mnist": dirs["data"]}, dirs["runs"], recipe=recipe)
    by_row = {run.row[1:3]: run for run in runs}
    for row in (("mixup", 2), ("bernoulli", 2), ("mixup", 3)):
        assert by_row[row].cfg.recon_gan is False
        assert f"-{row[0]}-norecgan-k{row[1]}-" in os.path.basename(by_row[row].folder)
    # none and acai have no term to drop: the same runs as the table without the flag.
    plain = {run.row[1:3]: run for run in accuracy.plan_runs(spec, [0], {"mnist": dirs["data"]}, dirs["runs"],
                                                              recipe={"probe": "whiten"})}
    for row in (("none", 2), ("acai", 2)):
        assert by_row[row].cfg.recon_gan is True and by_row[row].folder == plain[row].folder
    assert accuracy.table_stem(spec, recipe=recipe) == "table1_mnist-norecgan-whiten"
    assert accuracy.table_stem(spec, recipe={"recon_gan": True}) == "table1_mnist"


def test_table1_md_and_json_hold_means_stds_report_numbers_and_the_recipe(dirs, monkeypatch):
    monkeypatch.setattr("amr_keras.train.run", FakeTrain())
    script = load_script()
    assert script.main(table_args(dirs)) == 0
    md = read(os.path.join(dirs["out"], "table1_mnist.md"))
    mixup = md_row(md, "mixup", 2)
    # Seeds score 90, 92, 94 (%): mean 92.00, sample std 2.00; linear +1 point, k-NN +3 points, 10 minutes a run.
    assert "| 3 | 92.00 ± 2.00 | 93.00 ± 2.00 | 95.00 ± 2.00 | 91.00 ± 2.00 | 94.38 | 10.0 |" in mixup
    assert "| 93.00 ± 2.00 |" in md_row(md, "bernoulli", 2) and "| 94.66 |" in md_row(md, "bernoulli", 2)
    for mixer, k in (("none", 2), ("acai", 2), ("mixup", 3)):
        assert "| – |" in md_row(md, mixer, k)
    assert "triplet" in md_row(md, "mixup", 3)
    assert "preset=mnist_full lamb=5 lr=0.001" in md and "epochs=4" in md and "precision=auto" in md
    assert "4 epochs of 50,000 training images = 200,000 images per run" in md
    assert "15 on Test CPU @ 2.0GHz (float32)" in md
    # The verdict's gaps, paired by seed; every row's seed spread is 2 points.
    assert "| mixup-k2 minus none-k2 | mnist | 5 | 3 | +2.00 ± 0.00 (CI +2.00 to +2.00: ahead) |" in md
    assert "| bernoulli-k2 minus none-k2 | mnist | 5 | 3 | +3.00 ± 0.00 (CI +3.00 to +3.00: ahead) |" in md
    assert "| mixup-k3 minus none-k2 | mnist | 5 | 3 | +4.00 ± 0.00 (CI +4.00 to +4.00: ahead) |" in md
    assert "| acai-k2 minus none-k2 | mnist | 5 | 3 | +1.00 ± 0.00 (CI +1.00 to +1.00: ahead) |" in md
    assert "| mixup-k2 minus acai-k2 |" in md and "| bernoulli-k2 minus acai-k2 |" in md
    with open(os.path.join(dirs["out"], "table1_mnist.json")) as f:
        data = json.load(f)
    assert [(r["dataset"], r["mixer"], r["k"]) for r in data["rows"]] == [("mnist", m, k) for m, k in TABLE1_ROWS]
    assert data["recipe"]["lamb"] == 5.0 and data["recipe"]["preset"] == "mnist_full"
    run = data["rows"][2]["runs"][0]
    assert data["rows"][2]["report"] == "94.38" and run["seed"] == 0
    assert set(tables.RUN_RECORD_KEYS) <= set(run) and run["cpu_model"] == "Test CPU @ 2.0GHz"
    assert run["test_probe_accuracy"] == pytest.approx(0.90)


def test_a_row_missing_seeds_says_how_many_are_done(dirs, monkeypatch):
    monkeypatch.setattr("amr_keras.train.run", FakeTrain())
    script = load_script()
    assert script.main(table_args(dirs, "--seeds", "1", "--only", "bernoulli")) == 0
    assert script.main(table_args(dirs, "--seeds", "2", "--table-only")) == 0
    md = read(os.path.join(dirs["out"], "table1_mnist.md"))
    # Seed 0 alone: its value, no spread.
    assert "| 1 of 2 | 91.00 | 92.00 | 94.00 |" in md_row(md, "bernoulli", 2)
    assert "| 0 of 2 | not run |" in md_row(md, "mixup", 2)
    with open(os.path.join(dirs["out"], "table1_mnist.json")) as f:
        rows = json.load(f)["rows"]
    assert [(r["mixer"], r["seeds_done"], r["status"]) for r in rows][2:4] == [
        ("mixup", 0, "not run"), ("bernoulli", 1, "1 of 2 seeds done")]


def test_dry_run_lists_done_started_and_pending_runs_and_trains_nothing(dirs, monkeypatch, capsys):
    fake = FakeTrain(interrupt={"mnist-mixup-k3-lamb5-mnist_full-batchnorm-s0"})
    monkeypatch.setattr("amr_keras.train.run", fake)
    script = load_script()
    assert script.main(table_args(dirs, "--seeds", "1", "--only", "none")) == 0
    with pytest.raises(KeyboardInterrupt):
        script.main(table_args(dirs, "--seeds", "1", "--only", "mixup:3"))
    os.remove(os.path.join(dirs["out"], "table1_mnist.md"))
    capsys.readouterr()
    assert script.main(table_args(dirs, "--seeds", "1", "--only", "acai", "mixup:3", "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "5 runs: 1 done, 1 to resume, 1 pending, 2 not selected" in out
    assert "done     mnist-none-k2-lamb5-mnist_full-batchnorm-s0" in out
    assert "resume   mnist-mixup-k3-lamb5-mnist_full-batchnorm-s0 (0 of 4 epochs done)\n" in out
    assert "pending  mnist-acai-k2-lamb5-mnist_full-batchnorm-s0\n" in out
    assert "pending  mnist-mixup-k2-lamb5-mnist_full-batchnorm-s0 (not selected)" in out
    assert len(fake.calls) == 2 and not os.path.exists(os.path.join(dirs["out"], "table1_mnist.md"))


def test_a_folder_of_another_recipe_is_refused(dirs, monkeypatch, capsys):
    fake = FakeTrain()
    monkeypatch.setattr("amr_keras.train.run", fake)
    script = load_script()
    # The same folder name from a run with 2 epochs (e.g. fit.py --preset mnist_full --epochs 2 --out ...).
    assert script.main(table_args(dirs, "--seeds", "1", "--only", "none")) == 0
    path = os.path.join(dirs["runs"], "mnist-none-k2-lamb5-mnist_full-batchnorm-s0", "config.json")
    saved = json.loads(read(path))
    with open(path, "w") as f:
        json.dump({**saved, "epochs": 2}, f)
    assert script.main(table_args(dirs, "--seeds", "1")) == 2
    err = capsys.readouterr().err
    assert "mnist-none-k2-lamb5-mnist_full-batchnorm-s0 holds a run with other settings" in err
    assert "epochs: run has 2, now 4" in err and len(fake.calls) == 1


def dry_run(script, dirs, capsys, *args):
    """What ``reproduce.py --table 1 ... --dry-run`` prints."""
    capsys.readouterr()
    assert script.main(table_args(dirs, *args, "--dry-run")) == 0
    return capsys.readouterr().out


def test_finished_runs_are_recorded_and_count_where_their_folders_are_gone(dirs, monkeypatch, capsys):
    # A fresh clone has the tables' folder (results/) but none of the run folders (runs/ is not versioned).
    import shutil

    fake = FakeTrain()
    monkeypatch.setattr("amr_keras.train.run", fake)
    script = load_script()
    assert script.main(table_args(dirs, "--seeds", "2", "--only", "mixup:2", "none")) == 0
    md_before = read(os.path.join(dirs["out"], "table1_mnist.md"))
    ledger = tables.load_ledger(dirs["out"])
    assert sorted(ledger) == sorted(f"mnist-{m}-k2-lamb5-mnist_full-batchnorm-s{s}" for m in ("none", "mixup") for s in (0, 1))
    entry = ledger["mnist-mixup-k2-lamb5-mnist_full-batchnorm-s1"]
    assert entry["settings"]["lamb"] == 5.0 and entry["settings"]["seed"] == 1 and "data_dir" not in entry["settings"]
    assert entry["results"]["test_probe_accuracy"] == pytest.approx(0.92) and entry["results"]["num_train"] == 50000
    shutil.rmtree(dirs["runs"])
    out = dry_run(script, dirs, capsys, "--seeds", "2")
    assert "10 runs: 4 done, 6 pending" in out
    assert "done     mnist-mixup-k2-lamb5-mnist_full-batchnorm-s1 (recorded in finished_runs.jsonl)" in out
    # The recorded runs are not trained again, and the table keeps them.
    assert script.main(table_args(dirs, "--seeds", "2", "--only", "mixup:2", "none")) == 0
    assert len(fake.calls) == 4
    assert read(os.path.join(dirs["out"], "table1_mnist.md")) == md_before
    assert "| 2 | 91.00 ± 1.41 |" in md_row(md_before, "mixup", 2)  # seeds 0 and 1: 90 and 92
    # Recording again adds nothing: one line per run.
    with open(os.path.join(dirs["out"], tables.LEDGER_NAME)) as f:
        assert len(f.readlines()) == 4


def one_recorded_acai_run(dirs, monkeypatch):
    """Train (fake) Table 1's ACAI row, seed 0: ``(fake, script, ledger path, its ledger entry)``."""
    fake = FakeTrain()
    monkeypatch.setattr("amr_keras.train.run", fake)
    script = load_script()
    assert script.main(table_args(dirs, "--seeds", "1", "--only", "acai")) == 0
    path = os.path.join(dirs["out"], tables.LEDGER_NAME)
    return fake, script, path, json.loads(read(path))


def test_a_recorded_run_of_other_settings_is_trained_again_and_superseded(dirs, monkeypatch):
    fake, script, path, entry = one_recorded_acai_run(dirs, monkeypatch)
    entry["settings"]["epochs"] = 2  # recorded by a run of another recipe under the same name
    with open(path, "w") as f:
        f.write(json.dumps(entry) + "\n")
    import shutil

    shutil.rmtree(dirs["runs"])
    assert script.main(table_args(dirs, "--seeds", "1", "--only", "acai")) == 0
    assert [(c.mixer, c.epochs) for c in fake.calls] == [("acai", 4), ("acai", 4)]
    assert tables.load_ledger(dirs["out"])["mnist-acai-k2-lamb5-mnist_full-batchnorm-s0"]["settings"]["epochs"] == 4


def test_runs_recorded_before_the_probe_setting_count_for_the_tables_that_keep_their_probe(dirs, monkeypatch, capsys):
    # Ledgers written before the probe was a setting: no "probe" key, and folder names without "-batchnorm".
    import shutil

    fake, script, path, entry = one_recorded_acai_run(dirs, monkeypatch)
    assert entry["run"] == "mnist-acai-k2-lamb5-mnist_full-batchnorm-s0" and entry["settings"]["probe"] == "batchnorm"
    del entry["settings"]["probe"]
    entry["run"] = "mnist-acai-k2-lamb5-mnist_full-s0"
    with open(path, "w") as f:
        f.write(json.dumps(entry) + "\n")
    shutil.rmtree(dirs["runs"])
    out = dry_run(script, dirs, capsys, "--seeds", "1")
    assert "done     mnist-acai-k2-lamb5-mnist_full-batchnorm-s0 (recorded in finished_runs.jsonl)" in out
    assert "5 runs: 1 done, 4 pending" in out
    # The whitening probe is another recipe: its runs are not those, and its table has its own files.
    out = dry_run(script, dirs, capsys, "--seeds", "1", "--probe", "whiten")
    assert "table1_mnist-whiten.md" in out and "5 runs: 5 pending" in out
    assert "pending  mnist-acai-k2-lamb5-mnist_full-s0\n" in out
    assert script.main(table_args(dirs, "--seeds", "1", "--probe", "whiten", "--only", "acai")) == 0
    assert [(c.mixer, c.probe) for c in fake.calls] == [("acai", "batchnorm"), ("acai", "whiten")]
    whiten_md = read(os.path.join(dirs["out"], "table1_mnist-whiten.md"))
    assert "probe=whiten" in whiten_md
    # The table's command remakes this variant, not the batch-normalised table.
    command = next(line for line in whiten_md.splitlines() if line.startswith("Command: "))
    assert "--probe whiten" in command and "--only" not in command
    assert "probe=batchnorm" in read(os.path.join(dirs["out"], "table1_mnist.md"))
    # The whitening run superseded the old record under the shared name; the batch-normalised table still
    # finds that record by its settings, so a fresh clone rebuilds it without training.
    shutil.rmtree(dirs["runs"])
    ledger = tables.load_ledger(dirs["out"])
    assert ledger["mnist-acai-k2-lamb5-mnist_full-s0"]["settings"]["probe"] == "whiten"
    assert "probe" not in ledger["mnist-acai-k2-lamb5-mnist_full-s0@line1"]["settings"]
    out = dry_run(script, dirs, capsys, "--seeds", "1")
    assert "done     mnist-acai-k2-lamb5-mnist_full-batchnorm-s0 (recorded in finished_runs.jsonl)" in out
    out = dry_run(script, dirs, capsys, "--seeds", "1", "--probe", "whiten")
    assert "done     mnist-acai-k2-lamb5-mnist_full-s0 (recorded in finished_runs.jsonl)" in out


def test_a_damaged_ledger_line_is_named(dirs, capsys):
    os.makedirs(dirs["out"])
    with open(os.path.join(dirs["out"], tables.LEDGER_NAME), "w") as f:
        f.write('{"run": "a", "settings": {}, "results": {}}\n{"run": "b", "sett\n')
    assert load_script().main(table_args(dirs, "--dry-run")) == 2
    err = capsys.readouterr().err
    assert "finished_runs.jsonl, line 2, is not valid JSON" in err and "Mend or delete that line" in err
    with open(os.path.join(dirs["out"], tables.LEDGER_NAME), "w") as f:
        f.write('["not", "a", "record"]\n')
    assert load_script().main(table_args(dirs, "--dry-run")) == 2
    assert "line 1, is not a finished-run record" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--table", "9"], "Unknown table '9'. Choose one of: 1 (Table 1 of the paper"),
    (["--table", "1", "--only", "bernoulli:3"], "--only takes settings among none:2 acai:2 mixup:2 bernoulli:2 mixup:3"),
    (["--table", "1", "--seeds", "0"], "--seeds N needs a count N >= 1"),
    (["--table", "1", "--lr", "0"], "lr must be a number > 0"),
    (["--table", "2", "--only-sizes", "1000", "3000"],
     "--only-sizes takes training-set sizes of table 2: 1000 5000 10000 20000; got 3000"),
    (["--table", "1", "--only-sizes", "1000"], "--only-sizes takes training-set sizes of table 1: none"),
    (["--only-sizes", "1000"], "--table grid does not take --only-sizes (it takes --preset, --lamb"),
    (["--table", "lamb", "--only-lambs", "100", "50"], "--only-lambs takes lamb values of this table: 2 5 10 30 100; got 50"),
    (["--table", "1", "--lamb", "30", "--only-lambs", "10"], "--only-lambs takes lamb values of this table: 30; got 10"),
])
def test_bad_table_arguments_fail_with_one_line(args, message, tmp_path, capsys):
    assert load_script().main([*args, "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_lamb_sweep_reuses_table1_runs_and_reports_the_gap(dirs, monkeypatch):
    def scored(cfg):
        # lamb 5 (Table 1's): mixup - none = 2, 3, 4 points: interval above 0.
        # lamb 2, 10, 30 and 100: mixup - none = 0.5 points every seed: a degenerate interval above 0.
        none = 0.90 + 0.01 * cfg.seed
        if cfg.mixer == "none":
            return none
        return 0.92 + 0.02 * cfg.seed if cfg.lamb == 5 else none + 0.005

    fake = FakeTrain(scored)
    monkeypatch.setattr("amr_keras.train.run", fake)
    script = load_script()
    assert script.main(table_args(dirs, "--only", "none", "mixup:2")) == 0
    assert len(fake.calls) == 6
    assert script.main(table_args(dirs, table="lamb")) == 0
    assert len(fake.calls) == 6 + 24 and {c.lamb for c in fake.calls[6:]} == {2.0, 10.0, 30.0, 100.0}
    # Paired runs first: both rows at one lamb and seed before the next lamb.
    assert [(c.seed, c.lamb, c.mixer) for c in fake.calls[6:10]] == [
        (0, 2.0, "none"), (0, 2.0, "mixup"), (0, 10.0, "none"), (0, 10.0, "mixup")]
    md = read(os.path.join(dirs["out"], "lamb_sweep_mnist.md"))
    assert "| mixup-k2 minus none-k2 | mnist | 5 | 3 | +3.00 ± 1.00 (CI +0.52 to +5.48: ahead) |" in md
    assert "| mixup-k2 minus none-k2 | mnist | 100 | 3 | +0.50 ± 0.00 (CI +0.50 to +0.50: ahead) |" in md
    with open(os.path.join(dirs["out"], "lamb_sweep_mnist.json")) as f:
        gaps = json.load(f)["gaps"]
    assert [g["lamb"] for g in gaps] == [2.0, 5.0, 10.0, 30.0, 100.0]
    assert gaps[1]["online_probe"]["mean"] == pytest.approx(3.0)
    assert gaps[1]["online_probe"]["per_seed"] == pytest.approx([2.0, 3.0, 4.0])
    assert gaps[1]["online_probe"]["verdict"] == "ahead"
    # 3 seeds: mean 3, std 1, t(0.975, 2) = 4.303, so 3 +- 4.303 / sqrt(3).
    assert gaps[1]["online_probe"]["ci95"] == pytest.approx([3 - 2.4843, 3 + 2.4843], abs=1e-3)
    assert gaps[4]["knn"]["verdict"] == "ahead"  # +0.5 on every seed: a degenerate interval above 0


def test_a_gap_is_ahead_only_when_its_paired_interval_excludes_0():
    # Bernoulli minus none, online, seeds 0-2 of the whitening variant of Table 1: the mean gap (+0.38) is
    # larger than either row's seed spread (0.35, 0.37), yet its paired 95% interval holds 0.
    none = [{"seed": s, "test_probe_accuracy": v} for s, v in enumerate((0.9396, 0.9444, 0.9469))]
    bernoulli = [{"seed": s, "test_probe_accuracy": v} for s, v in enumerate((0.9512, 0.9443, 0.9467))]
    gap = accuracy._gap("bernoulli-k2 minus none-k2", "mnist", None, 5.0, bernoulli, none)
    online = gap["online_probe"]
    assert online["mean"] == pytest.approx(0.3767, abs=1e-3) and online["std"] == pytest.approx(0.6784, abs=1e-3)
    assert online["ci95"] == pytest.approx([-1.3085, 2.0618], abs=1e-3)
    assert online["verdict"] == "open"
    assert gap["knn"]["ci95"] is None and gap["knn"]["verdict"] is None  # no k-NN accuracies: no interval
    assert tables.gap_verdict([0.02, 0.96]) == "ahead"
    assert tables.gap_verdict([-2.0, -0.1]) == "behind"
    assert tables.gap_verdict([0.0, 0.0]) == "open" and tables.gap_verdict([-0.5, 0.0]) == "open"
    assert tables.gap_verdict(None) is None


def test_only_lambs_trains_the_chosen_lambs_and_tabulates_them_all(dirs, monkeypatch, capsys):
    fake = FakeTrain(lambda cfg: 0.9 + cfg.lamb / 10000)
    monkeypatch.setattr("amr_keras.train.run", fake)
    script = load_script()
    assert script.main(table_args(dirs, "--seeds", "2", "--only-lambs", "100", "30", table="lamb")) == 0
    # Seed by seed, then lamb by lamb, as without --only-lambs: seed 0's pairs before seed 1's.
    assert [(c.seed, c.lamb, c.mixer) for c in fake.calls] == [
        (0, 30.0, "none"), (0, 30.0, "mixup"), (0, 100.0, "none"), (0, 100.0, "mixup"),
        (1, 30.0, "none"), (1, 30.0, "mixup"), (1, 100.0, "none"), (1, 100.0, "mixup")]
    md = read(os.path.join(dirs["out"], "lamb_sweep_mnist.md"))
    assert "--only-lambs" not in md  # the table's command makes the whole table
    rows = [line for line in md.splitlines() if line.startswith("| mnist | none")]
    assert [line.split(" | ")[3] for line in rows] == ["2", "5", "10", "30", "100"]
    assert "| 5 | 0 of 2 | not run |" in rows[1] and "| 100 | 2 | 91.00 ± 0.00 |" in rows[4]
    capsys.readouterr()
    assert script.main(table_args(dirs, "--seeds", "2", "--only-lambs", "5", "--dry-run", table="lamb")) == 0
    out = capsys.readouterr().out
    assert "8 done, 4 pending, 8 not selected" in out
    pending = sorted(line.split()[1] for line in out.splitlines()
                     if line.strip().startswith("pending") and not line.endswith("(not selected)"))
    assert pending == [f"mnist-{m}-k2-lamb5-mnist_full-batchnorm-s{s}" for m in ("mixup", "none") for s in (0, 1)]
    assert sum(line.endswith("(not selected)") and "-lamb10-" in line for line in out.splitlines()) == 4
    assert sum(line.endswith("(not selected)") and "-lamb2-" in line for line in out.splitlines()) == 4


def test_settings_diff_compares_data_folders_as_real_paths(tmp_path, monkeypatch):
    from amr_keras.config import Config, resolve

    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = resolve(Config(dataset="mnist", data_dir=str(tmp_path / "data"), out="x"))
    assert settings_diff(cfg, {**dataclasses.asdict(cfg), "data_dir": "./data"}) == []
    assert settings_diff(cfg, {**dataclasses.asdict(cfg), "lamb": 100.0}) == ["lamb: run has 100.0, now 5.0"]


def test_unknown_table_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"Unknown table 'x'\. Choose one of: 1 \(.*\); lamb \("):
        accuracy.table_spec("x")


@pytest.mark.slow
def test_tiny_real_row_runs_through_train_and_records_the_cpu(tmp_path):
    from amr_keras.precision import cpu_info

    data = write_mnist_folder(str(tmp_path / "mnist"), n_train=96, n_test=32)
    out, runs = str(tmp_path / "results"), str(tmp_path / "runs")
    args = ["--table", "1", "--data-dir", f"mnist={data}", "--only", "mixup", "--seeds", "1", "--depth", "4",
            "--batch-size", "16", "--epochs", "1", "--precision", "float32", "--out", out, "--runs", runs]
    assert load_script().main(args) == 0
    stem = "table1_mnist-e1-d4-float32"  # batch 16 is the preset's
    with open(os.path.join(out, f"{stem}.json")) as f:
        rows = json.load(f)["rows"]
    (run,) = rows[2]["runs"]
    assert rows[2]["mixer"] == "mixup" and run["epochs"] == 1 and 0.0 <= run["test_probe_accuracy"] <= 1.0
    assert run["cpu_model"] == cpu_info()["model"] and run["precision"] == "float32"
    assert run["linear_eval_test_accuracy"] is not None and run["knn_test_accuracy"] is not None
    assert os.path.exists(os.path.join(runs, "mnist-mixup-k2-lamb5-mnist_full-batchnorm-e1-d4-float32-s0", "results.json"))
    md = read(os.path.join(out, f"{stem}.md"))
    assert "| 0 of 1 | not run |" in md_row(md, "acai", 2) and "| 1 |" in md_row(md, "mixup", 2)


def fashion_args(dirs, *extra, table="2"):
    return table_args(dirs, "--data-dir", f"fashion_mnist={dirs['data']}", *extra, table=table)


def test_table2_trains_every_size_for_the_same_steps_and_answers_the_question(dirs, monkeypatch):
    def scored(cfg):
        # mixup beats none by 3 points at N = 1,000 (seed spread 1 point), ties elsewhere.
        base = 0.80 + 0.01 * cfg.seed + 0.02 * (cfg.train_size // 5000)
        return base + (0.03 if cfg.mixer == "mixup" and cfg.train_size == 1000 else 0.0)

    fake = FakeTrain(scored)
    monkeypatch.setattr("amr_keras.train.run", fake)
    runs = accuracy.plan_runs(accuracy.TABLES["2"], [0, 1], {"mnist": dirs["data"]}, dirs["runs"])
    assert len(runs) == 2 * 4 * 4 * 2
    assert {(r.cfg.steps_per_epoch, r.cfg.epochs) for r in runs} == {(625, 4)}  # 2,500 steps whatever N
    assert os.path.basename(runs[0].folder) == "mnist-n1000-none-k2-lamb10-mnist_full-batchnorm-spe625-s0"
    assert [r.cfg.train_size for r in runs[::8]] == [1000, 5000, 10000, 20000] * 2
    assert script_main(fashion_args(dirs, "--seeds", "2", "--datasets", "mnist", "--only", "none", "mixup")) == 0
    assert len(fake.calls) == 4 * 2 * 2 and {c.train_size for c in fake.calls} == {1000, 5000, 10000, 20000}
    md = read(os.path.join(dirs["out"], "table2-mnist.md"))
    assert "| mnist | 1,000 | mixup | 2 | 10 | 2 |" in md and "2,500 training steps of 16 images" in md
    assert "| mixup-k2 minus none-k2 | mnist | 1,000 | 10 | 2 | +3.00 ± 0.00 (CI +3.00 to +3.00: ahead)" in md
    assert "| mixup-k2 minus none-k2 | mnist | 5,000 | 10 | 2 | +0.00 ± 0.00 (CI +0.00 to +0.00: open)" in md
    with open(os.path.join(dirs["out"], "table2-mnist.json")) as f:
        table = json.load(f)
    row = next(r for r in table["rows"] if (r["mixer"], r["train_size"]) == ("mixup", 1000))
    assert (row["code_channels"], row["seeds_done"], row["report"]) == (2, 2, "–")
    assert next(r for r in table["rows"] if r["mixer"] == "acai")["status"] == "not run"
    assert os.path.getsize(os.path.join(dirs["out"], "table2-mnist.png")) > 10_000


def script_main(args):
    return load_script().main(args)


def test_table3_uses_256_value_codes_and_lists_unreachable_data(dirs, monkeypatch):
    fake = FakeTrain(lambda cfg: 0.85)
    monkeypatch.setattr("amr_keras.train.run", fake)
    runs = accuracy.plan_runs(accuracy.TABLES["3"], [0], {"mnist": dirs["data"]}, dirs["runs"])
    assert {r.cfg.code_channels for r in runs} == {16} and {r.cfg.dataset for r in runs} == {
        "mnist", "fashion_mnist", "cifar10", "svhn"}
    assert os.path.basename(runs[1].folder) == "mnist-mixup-k2-c16-lamb10-mnist_full-batchnorm-s0"
    assert script_main(table_args(dirs, "--seeds", "1", "--datasets", "mnist", table="3")) == 0
    assert len(fake.calls) == 3 and {c.code_channels for c in fake.calls} == {16}
    with open(os.path.join(dirs["out"], "table3-mnist.json")) as f:
        table = json.load(f)
    assert table["recipe"]["code_channels"] == 16 and all(r["code_channels"] == 16 for r in table["rows"])
    assert all(r["report"] == "–" for r in table["rows"])  # the report's numbers are for 32-value codes


def test_quick_table2_trains_a_few_steps_per_run(dirs, monkeypatch):
    fake = FakeTrain(lambda cfg: 0.5)
    monkeypatch.setattr("amr_keras.train.run", fake)
    assert script_main(table_args(dirs, "--quick", "--datasets", "mnist", "--only", "mixup", table="2")) == 0
    assert len(fake.calls) == 4  # one seed, every N
    assert {(c.steps_per_epoch, c.epochs, c.depth) for c in fake.calls} == {(40, 1, 4)}
    md = read(os.path.join(dirs["out"], "table2-mnist-e1-d4.md"))
    assert "scripts/reproduce.py --table 2 --quick --datasets mnist" in md


def test_only_sizes_trains_the_chosen_subsets_and_tabulates_them_all(dirs, monkeypatch, capsys):
    fake = FakeTrain(lambda cfg: 0.8 + cfg.train_size / 1e6)
    monkeypatch.setattr("amr_keras.train.run", fake)
    args = ("--quick", "--datasets", "mnist", "--only", "mixup", "none")
    assert script_main(table_args(dirs, *args, "--only-sizes", "5000", "1000", table="2")) == 0
    assert sorted((c.mixer, c.train_size) for c in fake.calls) == [
        ("mixup", 1000), ("mixup", 5000), ("none", 1000), ("none", 5000)]
    capsys.readouterr()
    assert script_main(table_args(dirs, *args, "--only-sizes", "20000", "--dry-run", table="2")) == 0
    out = capsys.readouterr().out
    assert "4 done, 2 pending, 10 not selected" in out
    line = {run: text for text in out.splitlines() for run in ("n20000-mixup", "n10000-mixup", "n1000-mixup")
            if f"mnist-{run}-k2-" in text}
    assert line["n20000-mixup"].strip().startswith("pending") and "not selected" not in line["n20000-mixup"]
    assert line["n10000-mixup"].endswith("(not selected)") and line["n1000-mixup"].strip().startswith("done")
    md = read(os.path.join(dirs["out"], "table2-mnist-e1-d4.md"))
    assert "--only-sizes" not in md  # the table's command makes the whole table
    assert script_main(table_args(dirs, *args, "--only-sizes", "20000", table="2")) == 0
    assert [(c.mixer, c.train_size) for c in fake.calls[4:]] == [("none", 20000), ("mixup", 20000)]


def test_a_ledger_line_written_before_a_setting_existed_still_records_its_run():
    """A setting added since a line was written (absent from it) is the same when the run has its default or none
    for it: rebuilding a table does not record every run again; a value that differs does."""
    from amr_keras.tables.ledger import same_record

    old = {"run": "r", "settings": {"dataset": "mnist", "lamb": 5.0}, "results": {"acc": 0.9}}
    for new_settings in ({"cls": 0.0, "class_mixer": "informed"}, {"cls": None, "image_size": None}):
        assert same_record(old, {**old, "settings": {**old["settings"], **new_settings}})
    assert not same_record(old, {**old, "settings": {**old["settings"], "cls": 1.0}})
    assert not same_record(old, {**old, "settings": {**old["settings"], "lamb": 10.0}})
    assert not same_record(old, {**old, "results": {"acc": 0.8}})
    assert not same_record(None, old)
    # Read in today's terms: a line without a probe had the batch-normalised one, so a whitening run differs.
    assert not same_record(old, {**old, "settings": {**old["settings"], "probe": "whiten"}})
    assert same_record(old, {**old, "settings": {**old["settings"], "probe": "batchnorm"}})

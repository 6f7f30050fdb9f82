"""Hyper-parameter search: scripts/tune.py in-process on a tiny raw-file dataset, resume, outputs, fit --config."""

import json
import os
import signal
import time
import types

import keras_tuner
import numpy as np
import pytest

from conftest import class_images, model_input, sklearn_fits
from test_data import write_mnist_folder
from test_fit import load_script

from amr_keras import search
from amr_keras.config import CONFIG_FILE_KEYS, Config, ConfigError
from amr_keras.mixers import MIXERS
from amr_keras.model import AMR

SEARCH = "mixer,k,update_g_every"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_mnist_folder(str(tmp_path_factory.mktemp("mnist")), n_train=96, n_test=32)


def tune_args(data_dir, out, *extra):
    # Without XLA: compiling each trial's model would take most of the test time.
    return ["--dataset", "mnist", "--data-dir", data_dir, "--depth", "4", "--batch-size", "16", "--epochs", "1",
            "--tuner", "random", "--max-trials", "2", "--search", SEARCH, "--out", out, "--verbose", "0",
            "--no-jit-compile", *extra]


def base_config(data_dir, out):
    """The base Config of ``tune_args`` (as scripts/tune.py makes it)."""
    return Config(dataset="mnist", data_dir=data_dir, depth=4, batch_size=16, epochs=1, jit_compile=False, out=out)


def run_recording_fits(argv, interrupt_at=None, reports=None):
    """Run scripts/tune.py, returning (exit code, hyper-parameter values of every trial trained).

    With ``interrupt_at=n``, the n-th trial is interrupted before it trains: this process gets a real SIGTERM (a
    cluster's preemption), and the script must end with its one line and status 143.
    With ``reports=(out, list)``, the list gets what ``out/trials.md`` held as each trial started (None: no file).
    """
    calls = []
    original = search.AMRHyperModel.fit

    def recording_fit(self, hp, model, *args, **kwargs):
        if reports is not None:
            path = os.path.join(reports[0], "trials.md")
            reports[1].append(read_table(reports[0]) if os.path.exists(path) else None)
        calls.append(dict(hp.values))
        if len(calls) == interrupt_at:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        return original(self, hp, model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search.AMRHyperModel, "fit", recording_fit)
        if interrupt_at is None:
            return load_script("tune").main(argv), calls
        return load_script("tune").main(argv), calls


@pytest.fixture(scope="module")
def search_run(tiny_data, tmp_path_factory):
    """A two-trial random search interrupted in its second trial, then run again to the end."""
    out = str(tmp_path_factory.mktemp("search") / "s")
    reports = []
    stopped, interrupted = run_recording_fits(tune_args(tiny_data, out), interrupt_at=2, reports=(out, reports))
    assert stopped == 143
    code, resumed = run_recording_fits(tune_args(tiny_data, out))
    return types.SimpleNamespace(out=out, data=tiny_data, interrupted=interrupted, resumed=resumed, code=code,
                                 reports=reports)


def read_best(out):
    with open(os.path.join(out, "best_hyperparameters.json")) as f:
        return json.load(f)


def read_table(out):
    """Rows of trials.md as dicts keyed by the header."""
    with open(os.path.join(out, "trials.md")) as f:
        lines = [line for line in f.read().splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def error_line(err):
    """The one ``error: ...`` line of a script's stderr (other lines may be warnings of the libraries)."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.slow
def test_interrupted_search_resumes_only_the_unfinished_trial(search_run):
    assert search_run.code == 0
    assert len(search_run.interrupted) == 2
    # The rerun trains the interrupted trial again, with the values drawn for it, and nothing else.
    assert search_run.resumed == [search_run.interrupted[1]]


@pytest.mark.slow
def test_trials_md_is_written_as_each_trial_ends(search_run):
    # Before the first trial there is no report; when the second starts, the first is in it, scored, so a
    # search killed outright (no chance to clean up) still reports what it finished.
    first, second = search_run.reports
    assert first is None
    assert [(row["trial"], row["status"]) for row in second] == [("0", "COMPLETED")]
    assert 0.0 <= float(second[0]["best val_probe_accuracy"]) <= 1.0
    assert os.path.exists(os.path.join(search_run.out, "best_hyperparameters.json"))


@pytest.mark.slow
def test_rerun_of_a_finished_search_trains_nothing(search_run):
    before = read_best(search_run.out)
    code, calls = run_recording_fits(tune_args(search_run.data, search_run.out))
    assert code == 0 and calls == []
    assert read_best(search_run.out) == before and len(read_table(search_run.out)) == 2


@pytest.mark.slow
def test_best_hyperparameters_lie_in_the_search_space(search_run):
    best = read_best(search_run.out)
    assert set(best) <= set(CONFIG_FILE_KEYS)
    assert isinstance(best["lamb"], float) and search.LAMB_RANGE[0] <= best["lamb"] <= search.LAMB_RANGE[1]
    assert isinstance(best["lr"], float) and search.LR_RANGE[0] <= best["lr"] <= search.LR_RANGE[1]
    assert best["d_lr"] == best["lr"]
    assert best["mixer"] in MIXERS and best["k"] in (2, 3) and best["update_g_every"] in range(1, 6)
    base = (best["dataset"], best["preset"], best["epochs"], best["depth"], best["batch_size"])
    assert base == ("mnist", "mnist_full", 1, 4, 16)  # the default preset of --dataset mnist
    assert best["data_dir"] == os.path.abspath(search_run.data)


@pytest.mark.slow
def test_trials_table_ranks_every_trial(search_run):
    rows = read_table(search_run.out)
    assert len(rows) == 2
    assert [r["rank"] for r in rows] == ["1", "2"] and {r["trial"] for r in rows} == {"0", "1"}
    assert all(r["status"] == "COMPLETED" for r in rows)
    scores = [float(r["best val_probe_accuracy"]) for r in rows]
    assert scores[0] >= scores[1] and all(0.0 <= s <= 1.0 for s in scores)
    # The first row is the trial written to best_hyperparameters.json.
    best = read_best(search_run.out)
    assert rows[0]["mixer"] == best["mixer"] and float(rows[0]["lamb"]) == pytest.approx(best["lamb"], rel=1e-2)


@pytest.mark.slow
def test_tuner_checkpoint_of_the_best_trial_reloads(search_run):
    hypermodel = search.AMRHyperModel(base_config(search_run.data, search_run.out), 1, 10, 5, search_space=SEARCH)
    tuner = search.make_tuner("random", hypermodel, search_run.out, max_trials=2)
    trial = search.ranked_trials(tuner.oracle)[0]
    trained = tuner.load_model(trial)  # rebuilds the model and loads the trial's best-epoch weights
    fresh = hypermodel.build(trial.hyperparameters.copy())
    best = read_best(search_run.out)
    assert isinstance(trained, AMR) and trained.lamb == pytest.approx(best["lamb"]) and trained.mixer == best["mixer"]
    assert any(not np.array_equal(a, b) for a, b in zip(trained.get_weights(), fresh.get_weights()))


@pytest.mark.slow
def test_fit_trains_with_the_best_hyperparameters(search_run, tmp_path):
    best_path = os.path.join(search_run.out, "best_hyperparameters.json")
    out = str(tmp_path / "run")
    argv = ["--config", best_path, "--data-dir", search_run.data, "--depth", "4", "--epochs", "1", "--out", out,
            "--no-export", "--no-linear-eval", "--verbose", "0", "--no-jit-compile"]
    assert load_script("fit").main(argv) == 0
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    best = read_best(search_run.out)
    for key in ("lamb", "lr", "d_lr", "mixer", "k", "update_g_every", "batch_size"):
        assert results[key] == best[key], key


@pytest.mark.parametrize("content, message", [
    ('{"lamb": 10.0,', "is not valid JSON"),
    ('{"lamb": 10.0, "learning_rate": 0.001}', "unknown settings ['learning_rate']"),
    ('{"lamb": "10"}', "lamb must be float"),
    ('{"epochs": 2.5}', "epochs must be int"),
])
def test_malformed_config_file_is_a_one_line_error(tmp_path, capsys, content, message):
    path = tmp_path / "best_hyperparameters.json"
    path.write_text(content)
    assert load_script("fit").main(["--config", str(path), "--out", str(tmp_path / "run")]) == 2
    assert message in error_line(capsys.readouterr().err)


@pytest.mark.parametrize("extra, message", [
    (["--search", "mixer,slope"], "Cannot search 'slope'"),
    (["--max-trials", "0"], "max_trials must be an integer >= 1"),
    (["--seed", "1"], "other settings (seed: search has 0, now 1)"),
    (["--tuner", "hyperband"], "other settings (tuner: search has 'random', now 'hyperband')"),
    (["--objective", "posthoc"], "other settings (objective: search has 'probe', now 'posthoc')"),
    (["--lamb-range", "3:30"], "other settings (ranges: search has"),
    (["--lamb-range", "3"], "The lamb range must be LOW:HIGH"),
])
@pytest.mark.slow
def test_bad_search_settings_fail_with_one_line(search_run, capsys, extra, message):
    code, calls = run_recording_fits(tune_args(search_run.data, search_run.out, *extra))
    assert code == 2 and calls == []
    assert message in error_line(capsys.readouterr().err)


def test_hypermodel_draws_lamb_and_lr_and_keeps_base_k_without_mixing():
    base = Config(dataset="mnist_sample", depth=4, batch_size=16, k=2, jit_compile=False)
    hypermodel = search.AMRHyperModel(base, 1, 10, 5, search_space="k,mixer")
    assert hypermodel.search_space == ("mixer", "k")
    hp = keras_tuner.HyperParameters()
    hp.values = {"lamb": 5.0, "lr": 3e-4, "mixer": "none", "k": 3}
    cfg = hypermodel.config(hp)
    assert (cfg.lamb, cfg.lr, cfg.d_lr, cfg.mixer, cfg.k) == (5.0, 3e-4, 3e-4, "none", 2)
    model = hypermodel.build(hp)
    assert isinstance(model, AMR) and model.built and (model.lamb, model.mixer) == (5.0, "none")
    assert float(model.d_optimizer.learning_rate) == pytest.approx(3e-4)


def test_hypermodel_gives_acai_pairs_and_its_settings_only_to_acai_trials():
    base = Config(dataset="mnist_sample", depth=4, batch_size=16, k=3, jit_compile=False)
    hypermodel = search.AMRHyperModel(base, 1, 10, 5, search_space="mixer,k")
    hp = keras_tuner.HyperParameters()
    hp.values = {"lamb": 5.0, "lr": 3e-4, "mixer": "acai", "k": 3}
    assert (hypermodel.config(hp).mixer, hypermodel.config(hp).k) == ("acai", 2)
    base = Config(dataset="mnist_sample", depth=4, batch_size=16, mixer="acai", acai_gamma=0.2, acai_weight=0.5)
    hypermodel = search.AMRHyperModel(base, 1, 10, 5, search_space="mixer")
    hp.values = {"lamb": 5.0, "lr": 3e-4, "mixer": "mixup"}
    assert (hypermodel.config(hp).acai_gamma, hypermodel.config(hp).acai_weight) == (0.0, 1.0)
    hp.values = {"lamb": 5.0, "lr": 3e-4, "mixer": "acai"}
    assert (hypermodel.config(hp).acai_gamma, hypermodel.config(hp).acai_weight) == (0.2, 0.5)
    with pytest.raises(ConfigError, match="Searching k needs a mixer that mixes k codes .* base mixer is 'acai'"):
        search.AMRHyperModel(base, 1, 10, 5, search_space="k")


@pytest.mark.parametrize("name", ["random", "bayesian", "hyperband"])
def test_the_same_seed_draws_the_same_trials_seed_0_included(name, tmp_path):
    base = Config(dataset="mnist_sample", depth=4, batch_size=16, epochs=2, jit_compile=False)
    hypermodel = search.AMRHyperModel(base, 1, 10, 5, search_space="mixer,k")

    def draws(folder, seed):
        tuner = search.make_tuner(name, hypermodel, str(tmp_path / folder), max_trials=4, seed=seed)
        return [tuner.oracle.create_trial(f"tuner{i}").hyperparameters.values for i in range(3)]

    first = draws("a", 0)
    assert draws("b", 0) == first
    assert draws("c", 1) != first
    assert search.tuner_seed(0) != 0 and search.tuner_seed(7) == 7


def test_k_search_needs_batches_of_three():
    with pytest.raises(ConfigError, match="at least k"):
        search.AMRHyperModel(Config(dataset="mnist_sample", depth=4, batch_size=2), 1, 10, 5, search_space="k")


@pytest.mark.slow
def test_diverging_trials_are_failed_and_stop_the_search(tiny_data, tmp_path, capsys, monkeypatch):
    from amr_keras.callbacks import NonFiniteLossError

    def diverge(self, *args, **kwargs):
        raise NonFiniteLossError("d_loss became nan at step 3")

    monkeypatch.setattr(AMR, "fit", diverge)
    monkeypatch.setattr(search.space, "MAX_CONSECUTIVE_FAILED_TRIALS", 2)
    out = str(tmp_path / "s")
    assert load_script("tune").main(tune_args(tiny_data, out, "--max-trials", "3")) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith("error: 2 trials in a row failed") and "d_loss became nan" in line
    # Both trials are listed, unranked and FAILED (not retried), with the reason under the table.
    rows = read_table(out)
    assert [(r["rank"], r["status"]) for r in rows] == [("-", "FAILED"), ("-", "FAILED")]
    with open(os.path.join(out, "trials.md")) as f:
        assert f.read().count("d_loss became nan at step 3") == 2
    assert not os.path.exists(os.path.join(out, "best_hyperparameters.json"))


def test_hypermodel_searches_the_code_size_and_builds_that_code():
    base = Config(dataset="mnist_sample", depth=4, batch_size=16, code_channels=2, jit_compile=False)
    hypermodel = search.AMRHyperModel(base, 1, 10, 5, search_space="code_channels")
    hp = keras_tuner.HyperParameters()
    hypermodel.sample(hp)  # declares the space
    assert hp.get("code_channels") in search.CODE_CHANNELS_CHOICES
    assert list(hp.space[-1].values) == [2, 4, 8, 16]
    hp.values = {"lamb": 5.0, "lr": 3e-4, "code_channels": 16}
    model = hypermodel.build(hp)
    assert tuple(model.encoder.output_shape[1:]) == (4, 4, 16)
    assert hypermodel.config(hp).code_channels == 16


def test_ranges_narrow_the_search_and_equal_bounds_fix_a_value():
    assert search.parse_ranges() == search.RANGES
    ranges = search.parse_ranges({"lamb": "3:30", "lr": (1e-3, 1e-3), "beta": "0:0.5"})
    assert ranges == {"lamb": (3.0, 30.0), "lr": (1e-3, 1e-3), "beta": (0.0, 0.5)}
    base = Config(dataset="mnist_sample", depth=4, batch_size=16, jit_compile=False)
    hypermodel = search.AMRHyperModel(base, 1, 10, 5, search_space="beta", ranges=ranges)
    hp = keras_tuner.HyperParameters()
    hypermodel.sample(hp)  # declares the space
    space = {p.name: p for p in hp.space}
    assert type(space["lr"]).__name__ == "Fixed" and space["lr"].value == 1e-3
    assert (space["lamb"].min_value, space["lamb"].max_value, space["lamb"].sampling) == (3.0, 30.0, "log")
    assert (space["beta"].min_value, space["beta"].max_value, space["beta"].sampling) == (0.0, 0.5, "linear")
    hp.values.update({"lamb": 7.0, "beta": 0.25})
    cfg = hypermodel.config(hp)
    assert (cfg.lamb, cfg.lr, cfg.d_lr, cfg.beta) == (7.0, 1e-3, 1e-3, 0.25)
    model = hypermodel.build(hp)
    assert (model.lamb, model.beta) == (7.0, 0.25)


@pytest.mark.parametrize("ranges, message", [
    ({"slope": "0:1"}, "No search range for 'slope'"),
    ({"lamb": "30"}, "The lamb range must be LOW:HIGH"),
    ({"lr": "a:b"}, "The lr range must be LOW:HIGH"),
    ({"lamb": "30:3"}, "needs finite LOW <= HIGH, got 30:3"),
    ({"lr": "0:1e-3"}, "lr is searched on a log scale"),
    ({"beta": "-1:1"}, "beta (consistency weight) must be >= 0"),
])
def test_bad_ranges_say_what_is_wrong(ranges, message):
    with pytest.raises(ConfigError) as e:
        search.parse_ranges(ranges)
    assert message in str(e.value)


def test_objective_must_be_known_and_posthoc_needs_the_images():
    base = Config(dataset="mnist_sample", depth=4, batch_size=16, jit_compile=False)
    with pytest.raises(ConfigError, match="Unknown objective 'accuracy'. Choose one of: probe, posthoc"):
        search.AMRHyperModel(base, 1, 10, 5, objective="accuracy")
    with pytest.raises(ConfigError, match="posthoc objective needs the training and validation images"):
        search.AMRHyperModel(base, 1, 10, 5, objective="posthoc", posthoc_arrays={"train": None})
    assert search.objective("posthoc").name == "val_posthoc_accuracy"


def test_posthoc_objective_scores_the_final_codes_and_never_reads_the_test_split():
    from amr_keras.data import train_pipeline

    images, labels = class_images(80, seed=0)
    labels[::3] = (labels[::3] + 1) % 10  # learnable but for a third: a score far from both chance and 100%
    arrays = {"train": (images[:48], labels[:48]), "val": (images[48:], labels[48:]),
              # Not images at all: encoding them would fail, so the test passes only if they are never read.
              "test": (np.zeros((3, 5), np.float32), np.zeros(3, np.int64))}
    base = Config(dataset="mnist_sample", depth=4, batch_size=16, jit_compile=False)
    hypermodel = search.AMRHyperModel(base, 1, 10, 3, objective="posthoc", posthoc_arrays=arrays)
    assert set(hypermodel.posthoc_arrays) == {"train", "val"}
    hp = keras_tuner.HyperParameters()
    hp.values = {"lamb": 10.0, "lr": 1e-3}
    model = hypermodel.build(hp)
    model.run_eagerly = True  # three eager steps: tracing them would take longer than the whole test
    train_ds = train_pipeline(*arrays["train"], 16, seed=0)
    result = hypermodel.fit(hp, model, train_ds, steps_per_epoch=3, epochs=1, verbose=0)
    assert set(result) == {"val_posthoc_accuracy", "val_probe_accuracy"}
    # No validation data was given to fit, so the probe's score is missing (NaN), not made up.
    assert np.isnan(result["val_probe_accuracy"])
    # The best validation accuracy over the L2 grid, computed here: the trained encoder's codes of the
    # hand-made model input, and scikit-learn fitted directly.
    codes = {s: np.asarray(model.encode(model_input(arrays[s][0]))).reshape(len(arrays[s][0]), -1)
             for s in ("train", "val")}
    fits = sklearn_fits(codes["train"], arrays["train"][1])
    expected = max(clf.score(codes["val"], arrays["val"][1]) for clf in fits.values())
    assert result["val_posthoc_accuracy"] == pytest.approx(expected)

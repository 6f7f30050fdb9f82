"""scripts/fit.py run in-process on a tiny raw-file dataset: outputs, resume, bad settings."""

import contextlib
import importlib.util
import io
import json
import os
import pathlib
import re

import numpy as np
import pytest

from test_data import write_mnist_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_KEYS = {"dataset", "mixer", "k", "lamb", "epochs", "best_epoch", "best_val_probe_accuracy",
               "test_probe_accuracy", "train_seconds", "images_per_second",
               "linear_eval_val_accuracy", "linear_eval_test_accuracy", "knn_val_accuracy", "knn_test_accuracy"}


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def crash_after_first_epoch(monkeypatch, fit, args):
    """Run ``fit.main(args)``, stopped by a simulated crash right after the first epoch's checkpoint."""
    from amr_keras import callbacks

    original = callbacks.ResumableCheckpoint.on_epoch_end

    def save_then_crash(self, epoch, logs=None):
        original(self, epoch, logs)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(callbacks.ResumableCheckpoint, "on_epoch_end", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        fit.main(args)
    monkeypatch.setattr(callbacks.ResumableCheckpoint, "on_epoch_end", original)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_mnist_folder(str(tmp_path_factory.mktemp("mnist")), n_train=96, n_test=32)


def error_lines(err):
    """The ``error:`` lines of stderr (warnings, e.g. about non-official files, may come before them)."""
    return [line for line in err.splitlines() if line.startswith("error:")]


def tiny_args(data_dir, out, *extra):
    return ["--dataset", "mnist", "--data-dir", data_dir, "--depth", "4", "--batch-size", "16", "--epochs", "2",
            "--no-jit-compile", "--precision", "float32", "--out", out, "--verbose", "0", *extra]


def test_fit_writes_results_logs_and_checkpoints(tiny_data, tmp_path):
    """fit.py on the official files of a tiny MNIST, a training subset and a 4x4x3 code; its export and figure
    are the fast tier's 64x64 run's (tests/test_image_sizes.py) and the slow tier's (below)."""
    out = str(tmp_path / "run")
    # A 48-image subset of the 80 training images, a 4x4x3 code, 4 steps between validations.
    extra = ["--train-size", "48", "--code-channels", "3", "--steps-per-epoch", "4", "--no-export"]
    assert load_script("fit").main(tiny_args(tiny_data, out, *extra)) == 0
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert RESULT_KEYS <= set(results)
    assert results["epochs"] == 2 and 1 <= results["best_epoch"] <= 2
    assert (results["train_size"], results["num_train"], results["code_channels"], results["steps_per_epoch"]) == (
        48, 48, 3, 4)
    assert results["num_val"] == 16  # validation unchanged by the subset
    assert 0.0 <= results["test_probe_accuracy"] <= 1.0 and results["images_per_second"] > 0
    assert 0.0 <= results["linear_eval_test_accuracy"] <= 1.0
    for name in ("log.csv", "best.keras", "checkpoint/last.keras"):
        assert os.path.exists(os.path.join(out, name)), name
    assert not os.path.exists(os.path.join(out, "export"))
    assert os.listdir(os.path.join(out, "logs"))


@pytest.mark.slow
def test_fit_writes_results_export_and_figure(tiny_data, tmp_path, monkeypatch):
    from amr_keras import evaluate

    fits = []
    original = evaluate.linear_evaluation
    monkeypatch.setattr(evaluate, "linear_evaluation", lambda *a, **k: fits.append(original(*a, **k)) or fits[-1])
    out = str(tmp_path / "run")
    extra = ["--train-size", "48", "--code-channels", "3", "--steps-per-epoch", "4"]
    assert load_script("fit").main(tiny_args(tiny_data, out, *extra)) == 0
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    for name in ("interpolations.png", "export/saved_model.pb", "export/metadata.json"):
        assert os.path.exists(os.path.join(out, name)), name
    import tensorflow as tf

    loaded = tf.saved_model.load(os.path.join(out, "export"))
    # The export serves the classifier of the linear evaluation, fitted once.
    assert len(fits) == 1
    x = np.random.default_rng(0).random((3, 28, 28, 1)).astype("float32")
    codes = loaded.encode(x).numpy()
    assert codes.shape == (3, 4, 4, 3)
    codes = codes.reshape(3, -1)
    np.testing.assert_allclose(loaded.classify_linear(x).numpy(), fits[0]["classifier"].predict_proba(codes), atol=1e-4)
    with open(os.path.join(out, "export", "metadata.json")) as f:
        meta = json.load(f)
    assert (meta["code_shape"], meta["code_channels"], meta["train_size"]) == ([4, 4, 3], 3, 48)
    assert loaded.mix(x, x[::-1], np.ones((3, 3), "float32")).shape == (3, 28, 28, 1)
    heads = meta["heads"]
    assert heads["classify_linear"]["test_accuracy"] == results["linear_eval_test_accuracy"]
    assert heads["classify"]["test_accuracy"] == results["test_probe_accuracy"]


@pytest.mark.slow
def test_resume_continues_and_logs_the_whole_run(tiny_data, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    fit = load_script("fit")
    crash_after_first_epoch(monkeypatch, fit, tiny_args(tiny_data, out, "--no-export", "--no-linear-eval"))
    # Without --resume the folder is protected.
    assert fit.main(tiny_args(tiny_data, out, "--no-export", "--no-linear-eval")) == 2
    assert fit.main(tiny_args(tiny_data, out, "--no-export", "--no-linear-eval", "--resume")) == 0
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert results["epochs"] == 2
    with open(os.path.join(out, "log.csv")) as f:
        assert [line.split(",")[0] for line in f.read().split()[1:]] == ["0", "1"]

    # last.keras damaged on disk: resuming falls back to previous.keras, losing one epoch only.
    ckpt = os.path.join(out, "checkpoint")
    with open(os.path.join(ckpt, "state.json")) as f, open(os.path.join(ckpt, "previous_state.json")) as g:
        assert (json.load(f)["epochs_done"], json.load(g)["epochs_done"]) == (2, 1)
    with open(os.path.join(ckpt, "last.keras"), "r+b") as f:
        f.truncate(os.path.getsize(f.name) // 2)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert fit.main(tiny_args(tiny_data, out, "--no-export", "--no-linear-eval", "--resume")) == 0
    note = next(line for line in stdout.getvalue().splitlines() if line.startswith("note:"))
    assert note.startswith(f"note: {os.path.join(ckpt, 'last.keras')} is unreadable (")
    assert f"Resuming from the previous epoch's checkpoint {os.path.join(ckpt, 'previous.keras')} (epoch 1)" in note
    assert os.path.exists(os.path.join(ckpt, "last.keras.unreadable"))
    with open(os.path.join(ckpt, "state.json")) as f:
        assert json.load(f)["epochs_done"] == 2  # epoch 2 trained again and checkpointed
    with open(os.path.join(out, "log.csv")) as f:
        assert [line.split(",")[0] for line in f.read().split()[1:]] == ["0", "1"]
    # The scored weights are those of the epoch the results name.
    with open(os.path.join(out, "results.json")) as f, open(os.path.join(out, "best.json")) as g:
        results, record = json.load(f), json.load(g)
    assert results["best_epoch"] == record["epoch"] and 1 <= record["epoch"] <= 2
    assert results["best_val_probe_accuracy"] == pytest.approx(record["val_probe_accuracy"])


def test_resume_with_other_settings_is_refused(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "run")
    fit = load_script("fit")
    os.makedirs(out)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"lamb": 99.0}, f)
    assert fit.main(tiny_args(tiny_data, out, "--resume")) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--k", "1"], "k (codes per mix)"),
    (["--lamb", "0"], "lamb must be"),
    (["--batch-size", "2", "--k", "3"], "at least k"),
    (["--config", "/nonexistent.json"], "does not exist"),
    (["--batch-size", "128"], "batch_size 128 is larger than the 80 training images"),
    (["--train-size", "8"], "train_size 8 is smaller than one batch (16 images)"),
    (["--train-size", "81"], "81"),
    (["--code-channels", "0"], "code_channels must be an integer >= 1"),
    (["--mixer", "bernoulli", "--code-channels", "1"], "needs --code-channels >= 2"),
    (["--steps-per-epoch", "0"], "steps_per_epoch must be an integer >= 1"),
])
def test_bad_settings_fail_with_one_line(tiny_data, tmp_path, capsys, extra, message):
    assert load_script("fit").main(tiny_args(tiny_data, str(tmp_path / "r"), *extra)) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and message in error_lines(err)[0]


@pytest.mark.parametrize("flag, value, accepted", [
    ("--dataset", "cifar100", ("mnist", "kmnist", "fashion_mnist", "svhn", "cifar10", "mnist_sample")),
    ("--mixer", "cutmix", ("mixup", "bernoulli", "acai", "none")),
])
def test_unknown_choice_lists_the_accepted_values(tmp_path, capsys, flag, value, accepted):
    with pytest.raises(SystemExit) as exit_info:
        load_script("fit").main(["--out", str(tmp_path / "r"), flag, value])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: argument {flag}: invalid choice: '{value}'" in last
    assert all(name in last for name in accepted)


def _corrupt(folder, how):
    path = os.path.join(folder, "train-images-idx3-ubyte.gz")
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(b"not a gzip file" if how == "corrupt" else raw[: len(raw) // 2])
    return path


@pytest.mark.parametrize("problem, message", [
    ("missing", "does not exist or is not a folder"),
    ("corrupt", "is not a valid gzip file"),
    ("truncated", "is not a valid gzip file"),
])
def test_bad_data_dir_fails_with_one_line_and_leaves_no_run(tmp_path, capsys, problem, message):
    folder = str(tmp_path / "data")
    if problem != "missing":
        write_mnist_folder(folder, n_train=48, n_test=16)
        path = _corrupt(folder, problem)
        message = f"{path} {message}"
    out = str(tmp_path / "r")
    assert load_script("fit").main(tiny_args(folder, out)) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and message in error_lines(err)[0] and "Traceback" not in err
    # Nothing written: the same command works once the data is fixed.
    assert not os.path.exists(os.path.join(out, "config.json"))


def test_no_network_for_tfds_fails_with_one_line(tmp_path, capsys, monkeypatch):
    from amr_keras import sources

    monkeypatch.setattr(sources, "network_available", lambda *a, **k: False)
    args = ["--dataset", "svhn", "--tfds-data-dir", str(tmp_path / "tfds"), "--out", str(tmp_path / "r")]
    assert load_script("fit").main(args) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "no network" in err and "--data-dir" in err and "mnist_sample" in err


class FakeStrategy:
    """Stands in for a strategy with several replicas (this process has one device)."""

    def __init__(self, replicas):
        self.num_replicas_in_sync = replicas


@pytest.mark.parametrize("replicas, message", [
    (3, "batch_size 16 is not divisible by the 3 replicas"),
    (16, "Each of the 16 replicas gets 1 images, fewer than k=2"),
])
def test_batch_size_must_suit_the_replicas(tiny_data, tmp_path, capsys, monkeypatch, replicas, message):
    from amr_keras import train

    monkeypatch.setattr(train, "make_strategy", lambda name: FakeStrategy(replicas))
    assert load_script("fit").main(tiny_args(tiny_data, str(tmp_path / "r"))) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and message in error_lines(err)[0]


def test_multiworker_needs_tf_config(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert load_script("fit").main(tiny_args(tiny_data, str(tmp_path / "r"), "--strategy", "multiworker")) == 2
    assert "needs the TF_CONFIG environment variable" in capsys.readouterr().err


def nan_from_step(step):
    """A ``train_pipeline`` whose images turn NaN from global step ``step`` (1-based) on."""
    import tensorflow as tf

    from amr_keras import data

    def pipeline(*args, **kwargs):
        ds = data.train_pipeline(*args, **kwargs).enumerate()
        return ds.map(lambda i, b: (tf.where(i >= step - 1, float("nan"), b[0]), b[1]))

    return pipeline


@pytest.fixture(scope="module")
def nan_run(tiny_data, tmp_path_factory):
    """A run whose input turns NaN in epoch 2 (5 steps per epoch), and the checkpoint of epoch 1 as written."""
    from amr_keras import callbacks, train

    out = str(tmp_path_factory.mktemp("nan") / "run")
    saved = {}
    original = callbacks.ResumableCheckpoint.on_epoch_end

    def record(self, epoch, logs=None):
        original(self, epoch, logs)
        saved[epoch] = (open(self.model_path, "rb").read(), os.stat(self.model_path).st_mtime_ns)

    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(stderr):
        mp.setattr(callbacks.ResumableCheckpoint, "on_epoch_end", record)
        mp.setattr(train, "train_pipeline", nan_from_step(6))
        code = load_script("fit").main(tiny_args(tiny_data, out, "--no-export", "--no-linear-eval"))
    return out, code, saved, stderr.getvalue()


@pytest.mark.slow
def test_nan_loss_stops_with_loss_and_step_and_keeps_the_last_checkpoint(nan_run):
    import keras

    out, code, saved, err = nan_run
    assert code == 2 and list(saved) == [0]
    path = os.path.join(out, "checkpoint", "last.keras")
    assert len(error_lines(err)) == 1 and "Traceback" not in err
    assert re.match(r"error: (recon|d|g|probe)_loss became nan at step 6 \(epoch 2, batch 1\); training stopped\. "
                    r"(Also not finite: [a-z_, ]+\. )?"
                    rf"The last good checkpoint is {re.escape(path)}\.", error_lines(err)[0]), err
    # The checkpoint of epoch 1 is untouched, and loads: it is the last good state.
    assert open(path, "rb").read() == saved[0][0] and os.stat(path).st_mtime_ns == saved[0][1]
    model = keras.saving.load_model(path)
    assert int(model.d_optimizer.iterations) == 5
    with open(os.path.join(out, "checkpoint", "state.json")) as f:
        assert json.load(f)["epochs_done"] == 1


def test_nan_guard_names_every_diverged_value_and_advises_by_which_diverged():
    from amr_keras.callbacks import NonFiniteLossError, NonFiniteLossGuard

    guard = NonFiniteLossGuard()
    guard.on_train_batch_end(0, {"recon_loss": 0.3, "probe_loss": 2.1})  # finite: nothing happens
    with pytest.raises(NonFiniteLossError) as probe_only:
        guard.on_train_batch_end(4, {"recon_loss": 0.3, "d_loss": 1.2, "probe_loss": float("nan")})
    message = str(probe_only.value)
    assert message.startswith("probe_loss became nan at step 4 (epoch 1, batch 5); training stopped.")
    assert "--probe-lr" in message and "--lamb" not in message
    with pytest.raises(NonFiniteLossError) as all_of_them:
        guard.on_train_batch_end(2, {"recon_loss": float("inf"), "d_loss": float("nan"), "probe_loss": float("nan")})
    message = str(all_of_them.value)
    assert message.startswith("recon_loss became inf at step 2 (epoch 1, batch 3); training stopped. "
                              "Also not finite: d_loss, probe_loss. ")
    assert "lower --lr or --lamb" in message and "--probe-lr" not in message


@pytest.mark.slow
@pytest.mark.parametrize("damaged", ["last.keras", "state.json"])
def test_unreadable_checkpoint_without_previous_names_the_file(nan_run, tiny_data, tmp_path, capsys, damaged):
    import shutil

    out = str(tmp_path / "run")
    shutil.copytree(nan_run[0], out)
    folder = os.path.join(out, "checkpoint")
    assert not os.path.exists(os.path.join(folder, "previous.keras"))  # one epoch done: nothing to fall back to
    path = os.path.join(folder, damaged)
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])
    assert load_script("fit").main(tiny_args(tiny_data, out, "--no-export", "--no-linear-eval", "--resume")) == 2
    err = capsys.readouterr().err
    assert error_lines(err)[0].startswith(f"error: no readable checkpoint in {folder}: {path} is unreadable (")
    assert f"delete {folder} to restart the run from the beginning" in err
    assert len(error_lines(err)) == 1 and "Traceback" not in err


@pytest.mark.slow
def test_nan_in_the_first_epoch_says_no_checkpoint_exists(tiny_data, tmp_path, capsys, monkeypatch):
    from amr_keras import train

    monkeypatch.setattr(train, "train_pipeline", nan_from_step(3))
    out = str(tmp_path / "run")
    assert load_script("fit").main(tiny_args(tiny_data, out, "--no-export", "--no-linear-eval", "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "became nan at step 3 (epoch 1, batch 3)" in error_lines(err)[0]
    assert "No checkpoint exists yet (the first is written at the end of epoch 1)" in err
    assert "last good checkpoint" not in err and not os.path.exists(os.path.join(out, "checkpoint", "last.keras"))


def test_restore_pairs_models_and_states_after_a_rotation_cut_short(tmp_path):
    from amr_keras.callbacks import CheckpointError, ResumableCheckpoint

    ckpt = ResumableCheckpoint(str(tmp_path))

    def write(name, text):
        (tmp_path / name).write_text(text)

    def load(path):
        text = pathlib.Path(path).read_text()
        if text == "damaged":
            raise ValueError("truncated")
        return text

    assert ckpt.restore(load) == (None, 0)
    # Killed after last.keras (epoch 3) became previous.keras, before its state followed it.
    write("previous.keras", "model 3")
    write("previous_state.json", '{"epochs_done": 2}')
    write("state.json", '{"epochs_done": 3}')
    assert ckpt.restore(load) == ("model 3", 3)
    # ... and after the state followed it, the new last.keras written but not yet its state: that model was
    # never recorded (its epoch is trained again), so it goes without a note.
    os.replace(tmp_path / "state.json", tmp_path / "previous_state.json")
    write("last.keras", "model 4")
    assert ckpt.restore(load) == ("model 3", 3)
    assert not os.path.exists(tmp_path / "last.keras") and not os.path.exists(tmp_path / "last.keras.unreadable")
    # Both unreadable.
    write("last.keras", "damaged")
    write("state.json", '{"epochs_done": 4}')
    write("previous.keras", "damaged")
    with pytest.raises(CheckpointError, match=r"last.keras is unreadable \(ValueError: truncated\); .*previous.keras is"):
        ckpt.restore(load)


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('["worker"]', "must be a JSON object"),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', "'host:port' addresses"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "chief", "index": 0}}', "must name a job"),
    ('{"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 2}}',
     "integer from 0 to 1"),
])
def test_malformed_tf_config_is_named(tiny_data, tmp_path, capsys, monkeypatch, tf_config, message):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    out = tmp_path / "r"
    assert load_script("fit").main(tiny_args(tiny_data, str(out), "--strategy", "multiworker")) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and message in error_lines(err)[0]
    assert not out.exists()


def test_subset_and_code_size_name_the_run_and_bind_resume():
    import dataclasses

    from amr_keras.config import Config, resolve, settings_diff

    cfg = resolve(Config(dataset="mnist", train_size=1000, code_channels=16, preset="fast"))
    assert os.path.basename(cfg.out) == "mnist-n1000-mixup-k2-c16-lamb100-fast-s0"
    assert os.path.basename(resolve(Config(dataset="mnist", preset="fast")).out) == "mnist-mixup-k2-lamb100-fast-s0"
    saved = dataclasses.asdict(cfg)
    assert settings_diff(cfg, saved) == []
    assert settings_diff(dataclasses.replace(cfg, train_size=5000), saved) == ["train_size: run has 1000, now 5000"]
    assert settings_diff(dataclasses.replace(cfg, code_channels=2), saved) == ["code_channels: run has 16, now 2"]
    # A run made before these settings existed used the whole split and 2 channels.
    old = {k: v for k, v in saved.items() if k not in ("train_size", "code_channels", "steps_per_epoch")}
    assert settings_diff(dataclasses.replace(cfg, train_size=None, code_channels=2), old) == []


@pytest.mark.parametrize("argv, preset, lamb, epochs", [
    (["--dataset", "mnist"], "mnist_full", 5.0, 4),             # the 50,000-image split: lamb 5
    (["--dataset", "mnist", "--preset", "fast"], "fast", 100.0, 5),  # a named preset wins
    (["--dataset", "mnist", "--lamb", "30"], "mnist_full", 30.0, 4),  # a flag still beats the preset
    ([], "fast", 100.0, 5),                                      # mnist_sample
    (["--dataset", "fashion_mnist"], "fast", 100.0, 5),
])
def test_the_default_preset_depends_on_the_dataset(argv, preset, lamb, epochs):
    from amr_keras.config import default_preset
    from amr_keras.parser import config_from_args

    cfg = config_from_args(argv + ["--out", "x"])
    assert (cfg.preset, cfg.lamb, cfg.epochs) == (preset, lamb, epochs)
    assert default_preset("mnist") == "mnist_full" and default_preset("svhn") == "fast"


def test_a_run_made_under_the_old_mnist_default_names_the_preset_on_resume():
    import dataclasses

    from amr_keras.config import Config, resolve, settings_diff

    old = dataclasses.asdict(resolve(Config(dataset="mnist", preset="fast", out="x")))
    now = resolve(Config(dataset="mnist", out="x"))
    assert "preset: run has 'fast', now 'mnist_full'" in settings_diff(now, old)

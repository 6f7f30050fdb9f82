"""scripts/fit.py run in-process on a tiny raw-file dataset: outputs, resume, bad settings."""

import importlib.util
import json
import os

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


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_mnist_folder(str(tmp_path_factory.mktemp("mnist")), n_train=96, n_test=32)


def tiny_args(data_dir, out, *extra):
    return ["--dataset", "mnist", "--data-dir", data_dir, "--depth", "4", "--batch-size", "16", "--epochs", "2",
            "--out", out, "--verbose", "0", *extra]


def test_fit_writes_results_export_and_figure(tiny_data, tmp_path):
    out = str(tmp_path / "run")
    assert load_script("fit").main(tiny_args(tiny_data, out)) == 0
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert RESULT_KEYS <= set(results)
    assert results["epochs"] == 2 and 1 <= results["best_epoch"] <= 2
    assert 0.0 <= results["test_probe_accuracy"] <= 1.0 and results["images_per_second"] > 0
    for name in ("log.csv", "best.keras", "checkpoint/last.keras", "interpolations.png",
                 "export/saved_model.pb", "export/metadata.json"):
        assert os.path.exists(os.path.join(out, name)), name
    assert os.listdir(os.path.join(out, "logs"))
    import tensorflow as tf

    loaded = tf.saved_model.load(os.path.join(out, "export"))
    assert hasattr(loaded, "encode") and hasattr(loaded, "classify")


def test_resume_continues_and_logs_the_whole_run(tiny_data, tmp_path, monkeypatch):
    from amr_keras import callbacks

    out = str(tmp_path / "run")
    fit = load_script("fit")
    original = callbacks.ResumableCheckpoint.on_epoch_end

    def crash_after_first_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(callbacks.ResumableCheckpoint, "on_epoch_end", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit.main(tiny_args(tiny_data, out, "--no-export", "--no-linear-eval"))
    monkeypatch.setattr(callbacks.ResumableCheckpoint, "on_epoch_end", original)
    # Without --resume the folder is protected.
    assert fit.main(tiny_args(tiny_data, out, "--no-export", "--no-linear-eval")) == 2
    assert fit.main(tiny_args(tiny_data, out, "--no-export", "--no-linear-eval", "--resume")) == 0
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert results["epochs"] == 2
    with open(os.path.join(out, "log.csv")) as f:
        assert [line.split(",")[0] for line in f.read().split()[1:]] == ["0", "1"]


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
])
def test_bad_settings_fail_with_one_line(tiny_data, tmp_path, capsys, extra, message):
    assert load_script("fit").main(tiny_args(tiny_data, str(tmp_path / "r"), *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error:")

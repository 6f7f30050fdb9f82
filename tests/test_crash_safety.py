"""Runs that survive: kill -9 at 20+ instants, a real full disk and a read-only folder, and deterministic resume.

Slow (the 20-kill campaign: heavy, some 10 to 15 minutes on 2 cores): they train tiny runs for real, several times
each.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from test_fit import crash_after_first_epoch, error_lines, load_script, tiny_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from test_data import write_mnist_folder

    return write_mnist_folder(str(tmp_path_factory.mktemp("mnist")), n_train=96, n_test=32)


@pytest.mark.heavy
def test_crash_campaign_20_kills_leave_a_valid_run_equal_to_the_uninterrupted_one(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "crash_campaign.py"), "--work", str(tmp_path),
                           "--kills", "20"], capture_output=True, text=True, timeout=1500)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, "\n".join(lines[-30:]) + proc.stderr[-3000:]
    assert lines[-1].startswith("campaign passed: ") and int(lines[-1].split()[-2]) >= 20
    inside = set(next(line for line in lines if line.startswith("writes killed inside: ")).split(": ")[1].split(", "))
    assert {"config.json", "last.keras", "state.json", "export", "interpolations.png", "results.json"} <= inside, inside


def weights(path):
    import keras

    return keras.saving.load_model(path).get_weights()


@pytest.mark.slow
def test_deterministic_runs_repeat_bit_for_bit_and_resume_equals_the_uninterrupted_run(tiny_data, tmp_path,
                                                                                          monkeypatch):
    fit = load_script("fit")
    runs = {name: str(tmp_path / name) for name in ("a", "b", "resumed")}
    extra = ("--epochs", "3", "--steps-per-epoch", "2", "--no-export", "--deterministic")
    for name in ("a", "b"):
        assert fit.main(tiny_args(tiny_data, runs[name], *extra)) == 0
    crash_after_first_epoch(monkeypatch, fit, tiny_args(tiny_data, runs["resumed"], *extra))
    assert fit.main(tiny_args(tiny_data, runs["resumed"], *extra, "--resume")) == 0
    final = {name: weights(os.path.join(out, "checkpoint", "last.keras")) for name, out in runs.items()}
    for name in ("b", "resumed"):
        assert all(np.array_equal(x, y) for x, y in zip(final["a"], final[name])), name
    scores = {}
    for name, out in runs.items():
        with open(os.path.join(out, "results.json")) as f:
            r = json.load(f)
        scores[name] = (r["best_epoch"], r["test_probe_accuracy"], r["linear_eval_test_accuracy"], r["deterministic"])
    assert scores["a"] == scores["b"] == scores["resumed"] and scores["a"][3] is True


@pytest.mark.slow
def test_the_mixing_draws_continue_after_a_checkpoint_is_loaded(tmp_path):
    """The SeedGenerator of the mixes is saved with the model: a loaded model draws what the saved one would."""
    import keras

    from amr_keras.mixers import mix_codes
    from amr_keras.model import AMR
    from amr_keras.networks import build_networks

    model = AMR(*build_networks(depth=4), num_classes=10, mixer="mixup", k=2, lamb=5.0, seed=3)
    model.compile()
    codes = keras.ops.convert_to_tensor(np.random.default_rng(0).normal(size=(8, 4, 4, 2)).astype("float32"))
    mix_codes(codes, "mixup", 2, model.seed_generator)  # the state moves on from its start
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    ours = mix_codes(codes, "mixup", 2, model.seed_generator)
    theirs = mix_codes(codes, "mixup", 2, loaded.seed_generator)
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()[:100]}): needs root in a container "
                    "that allows mounts")


@pytest.fixture
def small_disk(tmp_path):
    """A 1.7 MB tmpfs (unmounted afterwards)."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "1700k")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_one_error_line_and_resume_finishes_it(tiny_data, small_disk, capsys):
    fit = load_script("fit")
    out = small_disk / "run"
    args = tiny_args(tiny_data, str(out), "--epochs", "3", "--steps-per-epoch", "1", "--no-linear-eval")
    assert fit.main(args) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "No space left on device" in errors[0], errors
    assert ("is intact" in errors[0] or "No checkpoint was written yet" in errors[0]) and "Free some space" in errors[0]
    leftovers = [n for _, dirs, files in os.walk(out) for n in files + dirs if ".tmp" in n]
    assert not leftovers, leftovers
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    resumed = "--resume" if os.path.exists(out / "config.json") else None
    assert fit.main([*args, *([resumed] if resumed else [])]) == 0
    with open(out / "log.csv") as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["0", "1", "2"]
    assert (out / "results.json").exists() and (out / "export" / "saved_model.pb").exists()


@pytest.mark.slow
def test_a_read_only_run_folder_is_one_error_line(tiny_data, tmp_path, capsys):
    fit = load_script("fit")
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "50m")
    try:
        out = disk / "run"
        args = tiny_args(tiny_data, str(out), "--epochs", "1", "--steps-per-epoch", "1", "--no-linear-eval",
                         "--no-export")
        assert fit.main(args) == 0
        before = sorted(os.listdir(out))
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        assert fit.main([*args, "--resume"]) == 2
        errors = error_lines(capsys.readouterr().err)
        assert len(errors) == 1 and "Read-only file system" in errors[0], errors
        assert sorted(os.listdir(out)) == before
    finally:
        subprocess.run(["umount", str(disk)], check=False)

"""Stop and go: SIGINT and SIGTERM end a run with a mid-epoch checkpoint and one line, and --resume continues from
that very batch (bit for bit with --deterministic); --checkpoint-every writes the same checkpoint on a timer."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from tensorflow.python.framework import config as tf_config

from amr_keras import train
from amr_keras.config import Config, ConfigError, resolve
from amr_keras.stopping import GracefulStop, RunStopped, StopSignals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SendSignal(keras.callbacks.Callback):
    """Sends ``signum`` to this process after training step ``step`` (1-based) of epoch ``epoch`` (1-based)."""

    def __init__(self, signum, epoch, step, times=1):
        super().__init__()
        self.signum, self.epoch, self.step, self.times = signum, epoch, step, times
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch == self.epoch and batch + 1 == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


def _cfg(out, **changes):
    settings = dict(dataset="mnist_sample", depth=4, epochs=2, steps_per_epoch=6, batch_size=16, linear_eval=False,
                    export=False, deterministic=True, verbose=0, out=str(out))
    return Config(**{**settings, **changes})


def _weights(out):
    model = keras.saving.load_model(os.path.join(out, "checkpoint", "last.keras"), compile=False)
    return [np.asarray(w) for w in model.weights]


def _state(out):
    with open(os.path.join(out, "checkpoint", "state.json")) as f:
        return json.load(f)


class StateSpy(keras.callbacks.Callback):
    """Records the checkpoint's state.json after every training step (None before the first)."""

    def __init__(self, out):
        super().__init__()
        self.path, self.states = os.path.join(out, "checkpoint", "state.json"), []

    def on_train_batch_end(self, batch, logs=None):
        self.states.append(_state(os.path.dirname(os.path.dirname(self.path))) if os.path.exists(self.path) else None)


@pytest.mark.slow
def test_sigterm_mid_epoch_checkpoints_that_step_and_resume_continues_from_it(tmp_path, monkeypatch):
    """One run stopped by SIGTERM after step 3 of epoch 1, with --checkpoint-every writing after every step; then
    resumed. (That the resumed run ends bit for bit as an uninterrupted one: the slow tests below.)"""
    out = tmp_path / "run"
    spy = StateSpy(str(out))
    # Injected where the run's own optional callbacks go (the FactorVAE curve, absent on mnist_sample).
    monkeypatch.setattr(train, "_factorvae_curve", lambda cfg, model: [spy, SendSignal(signal.SIGTERM, 1, 3)])
    with pytest.raises(RunStopped) as stop:
        train.run(_cfg(out, epochs=1, steps_per_epoch=5, checkpoint_every=1e-9))
    assert stop.value.exit_code == 143
    assert str(stop.value) == (f"stopped at epoch 1, step 3 (SIGTERM): checkpoint "
                               f"{out / 'checkpoint' / 'last.keras'}; continue with the same command and --resume")
    # The timer's checkpoint after step 1 was on disk at step 2; the stop's own holds step 3.
    assert spy.states[:2] == [None, {"epochs_done": 0, "steps_done": 1}]
    assert _state(out) == {"epochs_done": 0, "steps_done": 3}
    assert not (out / "results.json").exists()
    # The handlers are gone with the run: the process's own ones are back; so is op determinism (off).
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert not tf_config.is_op_determinism_enabled()
    monkeypatch.setattr(train, "_factorvae_curve", lambda cfg, model: [])
    results = train.run(dataclasses.replace(_cfg(out, epochs=1, steps_per_epoch=5), resume=True))
    assert results["epochs"] == 1 and _state(out) == {"epochs_done": 1}
    assert not tf_config.is_op_determinism_enabled()
    with pytest.raises(ConfigError, match="--checkpoint-every takes minutes > 0"):
        resolve(_cfg(out, checkpoint_every=0.0))


@pytest.mark.parametrize("signum, epoch, step", [pytest.param(signal.SIGTERM, 2, 2, marks=pytest.mark.slow),
                                                 pytest.param(signal.SIGINT, 1, 6, marks=pytest.mark.heavy)])
def test_in_process_stop_and_resume_end_as_the_uninterrupted_run(tmp_path, monkeypatch, signum, epoch, step):
    whole = tmp_path / "whole"
    train.run(_cfg(whole))
    stopped = tmp_path / "stopped"
    monkeypatch.setattr(train, "_factorvae_curve", lambda cfg, model: [SendSignal(signum, epoch, step)])
    with pytest.raises(RunStopped) as stop:
        train.run(_cfg(stopped))
    # A signal at an epoch's last step stops after that epoch's own checkpoint.
    assert str(stop.value).startswith("stopped after epoch 1" if step == 6 else f"stopped at epoch {epoch}, step {step}")
    monkeypatch.setattr(train, "_factorvae_curve", lambda cfg, model: [])
    assert train.run(dataclasses.replace(_cfg(stopped), resume=True))["epochs"] == 2
    for a, b in zip(_weights(whole), _weights(stopped)):
        np.testing.assert_array_equal(a, b)


def test_a_second_signal_while_the_first_is_handled_stops_at_once():
    signals = StopSignals(lambda signum: f"now ({signum})")
    with signals.installed():
        signals.deferring = True
        os.kill(os.getpid(), signal.SIGINT)  # recorded: the step in flight finishes
        assert signals.pending == signal.SIGINT
        with pytest.raises(RunStopped) as stop:
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C (e.g. during the checkpoint's save)
            time.sleep(1)
        assert stop.value.exit_code == 130
        signals.deferring, signals.pending = False, None
        with pytest.raises(RunStopped, match="now"):  # outside the training steps: at once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class FakeCheckpoint:
    model_path = "CKPT/last.keras"

    def __init__(self):
        self.saves = []

    def save(self, epochs_done, steps_done=0):
        self.saves.append((epochs_done, steps_done))


def test_graceful_stop_saves_the_step_then_stops_and_saves_on_its_timer():
    """The callback alone, as fit drives it: a recorded signal after step 3 of epoch 2 (a resumed fit whose first
    epoch starts at step 2) saves (1 epoch done, 3 + 2 steps) and raises; the timer saves without raising; a
    signal at an epoch's last step waits for the epoch's own checkpoint."""
    signals, ckpt = StopSignals(), FakeCheckpoint()
    stop = GracefulStop(signals, ckpt, steps_per_epoch=10, first_step=2, checkpoint_every=None)
    stop.on_train_begin()
    assert signals.deferring
    stop.on_epoch_begin(1)
    stop.on_train_batch_end(0)
    signals.pending = signal.SIGTERM
    with pytest.raises(RunStopped) as raised:
        stop.on_train_batch_end(2)
    assert ckpt.saves == [(1, 5)] and raised.value.exit_code == 143
    assert str(raised.value) == ("stopped at epoch 2, step 5 (SIGTERM): checkpoint CKPT/last.keras; continue with "
                                 "the same command and --resume")
    # The next epoch of the same fit starts at step 0; the timer writes after every step here.
    signals, ckpt = StopSignals(), FakeCheckpoint()
    stop = GracefulStop(signals, ckpt, steps_per_epoch=4, first_step=2, checkpoint_every=1e-9)
    stop.on_train_begin()
    stop.on_epoch_begin(0)
    stop.on_train_batch_end(0)  # step 3 of 4
    stop.on_train_batch_end(1)  # step 4: the epoch's own checkpoint comes next
    stop.on_epoch_end(0)
    stop.on_epoch_begin(1)
    stop.on_train_batch_end(0)
    assert ckpt.saves == [(0, 3), (1, 1)] and stop.mid_epoch_saves == 2
    signals.pending = signal.SIGINT
    stop.on_train_batch_end(3)  # the last step of epoch 2: no save here
    with pytest.raises(RunStopped, match=r"^stopped after epoch 2 \(SIGINT\)") as raised:
        stop.on_epoch_end(1)
    assert raised.value.exit_code == 130 and ckpt.saves == [(0, 3), (1, 1)]


def test_a_mid_epoch_checkpoint_restores_its_step(tmp_path):
    from amr_keras.callbacks import ResumableCheckpoint, checkpoint_epochs

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    ckpt = ResumableCheckpoint(str(tmp_path))
    ckpt.set_model(model)
    ckpt.save(3, steps_done=17)
    with open(tmp_path / "state.json") as f:
        assert json.load(f) == {"epochs_done": 3, "steps_done": 17}
    _, epochs = ResumableCheckpoint(str(tmp_path), create=False).restore(keras.saving.load_model)
    assert epochs == 3 and checkpoint_epochs(str(tmp_path)) == 3
    again = ResumableCheckpoint(str(tmp_path), create=False)
    again.restore(keras.saving.load_model)
    assert again.restored_steps == 17
    ckpt.save(4)  # an epoch's end: no steps
    again.restore(keras.saving.load_model)
    assert again.restored_steps == 0


def test_graceful_stop_line_names_the_step_and_the_checkpoint(tmp_path):
    from amr_keras.callbacks import ResumableCheckpoint

    stop = GracefulStop(StopSignals(), ResumableCheckpoint(str(tmp_path)), steps_per_epoch=10)
    assert stop.line(3, 7, signal.SIGTERM) == (f"stopped at epoch 3, step 7 (SIGTERM): checkpoint "
                                               f"{tmp_path / 'last.keras'}; continue with the same command and --resume")


def _fit_command(out, *extra):
    return [sys.executable, os.path.join(ROOT, "scripts", "fit.py"), "--depth", "4", "--epochs", "2",
            "--steps-per-epoch", "150", "--batch-size", "16", "--no-linear-eval", "--no-export", "--deterministic",
            "--verbose", "0", "--out", str(out), *extra]


@pytest.mark.parametrize("signum, code", [pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow),
                                          pytest.param(signal.SIGINT, 130, marks=pytest.mark.heavy)])
def test_a_real_fit_stopped_by_a_signal_at_a_random_step_resumes_to_the_same_weights(tmp_path, signum, code):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    whole = tmp_path / "whole"
    subprocess.run(_fit_command(whole), check=True, env=env, capture_output=True, cwd=ROOT)
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(_fit_command(stopped), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    # Wait for the training to begin (the log of epoch 1 exists), then a random moment within the run.
    deadline = time.time() + 240
    while not (stopped / "log.csv").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(np.random.default_rng().uniform(1.0, 5.0))
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == code, err
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.startswith("stopped")]
    assert len(lines) == 1 and "--resume" in lines[0], err
    resumed = subprocess.run(_fit_command(stopped, "--resume"), env=env, capture_output=True, text=True, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr
    for a, b in zip(_weights(whole), _weights(stopped)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.heavy
def test_a_reproduce_grid_stopped_by_sigterm_keeps_its_ledger_and_continues(tmp_path):
    """A two-run grid: SIGTERM while the second run trains. The first stays recorded, the second checkpointed;
    the same command then resumes the second and writes the table."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, os.path.join(ROOT, "scripts", "reproduce.py"), "--quick", "--mixers", "none", "mixup",
               "--out", str(tmp_path / "results")]
    ledger = tmp_path / "results" / "finished_runs.jsonl"
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    second = tmp_path / "results" / "runs" / "mnist_sample-mixup-k2-lamb100-fast-e1-d4-s0" / "log.csv"
    deadline = time.time() + 400
    while not (ledger.exists() and second.exists()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(np.random.default_rng().uniform(1.0, 4.0))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, out + err
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.startswith("stopped")]
    assert len(lines) == 1 and "run the same command again to continue" in lines[0], err
    assert len(ledger.read_text().splitlines()) == 1
    again = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0, again.stderr
    assert "--resume: continuing epoch 1 at step" in again.stdout, again.stdout
    assert len(ledger.read_text().splitlines()) == 2

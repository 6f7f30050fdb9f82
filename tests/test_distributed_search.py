"""Distributed hyper-parameter search: a chief serving KerasTuner's oracle, workers set by environment variables.

The slow tests run real processes on localhost (a chief and two workers, each importing TensorFlow): a tiny
search of 4 trials at depth 4, 2 steps per trial.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras_tuner
import pytest

from test_data import write_mnist_folder
from test_fit import load_script
from test_tuning import error_line, read_table

from amr_keras import search
from amr_keras.search import distributed
from amr_keras.config import Config, ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUNE = os.path.join(ROOT, "scripts", "tune.py")
TRIALS = 4


def search_argv(data_dir, out, *extra):
    return ["--dataset", "mnist", "--data-dir", data_dir, "--depth", "4", "--batch-size", "16", "--epochs", "1",
            "--steps-per-epoch", "2", "--tuner", "random", "--max-trials", str(TRIALS), "--out", out,
            "--verbose", "0", "--no-jit-compile", *extra]


def start(argv, tuner_id=None, port=None, log=None):
    """``scripts/tune.py argv`` as a process; with ``tuner_id``, a chief or worker of the oracle at ``port``."""
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        env.pop(name, None)
    if tuner_id is not None:
        env.update(KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port))
    return subprocess.Popen([sys.executable, TUNE, *argv], env=env, stdout=log or subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(procs, timeout=600):
    """Wait for every process; returns their outputs (the test fails, after killing them, past ``timeout``)."""
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs


def read_json(path):
    with open(path) as f:
        return json.load(f)


def checkpointed_trials(out):
    """Trial ids with a checkpoint (trained weights) in the search folder ``out``."""
    project = os.path.join(out, search.PROJECT_NAME)
    if not os.path.isdir(project):
        return set()
    return {name[len("trial_"):] for name in os.listdir(project)
            if os.path.exists(os.path.join(project, name, "checkpoint.weights.h5"))}


def wait_for(proc, path, timeout=300):
    """``path``, once it exists (written by ``proc``, which must still run)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None and time.monotonic() < deadline, f"no {path}"
        time.sleep(0.1)
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_mnist_folder(str(tmp_path_factory.mktemp("mnist")), n_train=96, n_test=32)


@pytest.mark.slow
def test_cluster_by_environment_trains_each_trial_once_and_refuses_other_settings(tiny_data, tmp_path):
    # Each process has its own folder, as on separate machines: the chief's holds the reports, a worker's only
    # the trials it trained.
    port = free_port()
    chief_out, bad_out = str(tmp_path / "chief"), str(tmp_path / "bad")
    worker_outs = {f"worker{i}": str(tmp_path / f"worker{i}") for i in range(2)}
    chief = start(search_argv(tiny_data, chief_out), "chief", port)
    workers = [start(search_argv(tiny_data, out, "--threads", "1"), tuner_id, port)
               for tuner_id, out in worker_outs.items()]
    bad = start(search_argv(tiny_data, bad_out, "--lamb-range", "3:30"), "worker9", port)
    chief_log, *worker_logs, bad_log = finish([chief, *workers, bad])

    assert [p.returncode for p in (chief, *workers)] == [0, 0, 0], (chief_log, worker_logs)
    rows = read_table(chief_out)
    assert sorted(r["trial"] for r in rows) == [str(i) for i in range(TRIALS)]
    assert all(r["status"] == "COMPLETED" for r in rows)
    assert os.path.exists(os.path.join(chief_out, "best_hyperparameters.json"))
    # The chief's record: every trial handed out exactly once, to both workers.
    handed = read_json(os.path.join(chief_out, distributed.TRIAL_WORKERS_FILE))
    assert sorted(handed) == sorted(r["trial"] for r in rows)
    assert all(len(who) == 1 for who in handed.values())
    assert {who[0] for who in handed.values()} == set(worker_outs)
    assert sorted(r["worker"] for r in rows) == sorted(who[0] for who in handed.values())
    # The workers' side: each trial's weights are in the folder of the worker it was handed to, and nowhere else.
    for tuner_id, out in worker_outs.items():
        assert checkpointed_trials(out) == {t for t, who in handed.items() if who == [tuner_id]}
        for report in ("trials.md", "best_hyperparameters.json", "search.json", distributed.TRIAL_WORKERS_FILE,
                       os.path.join(search.PROJECT_NAME, "oracle.json")):
            assert not os.path.exists(os.path.join(out, report)), report
    assert checkpointed_trials(chief_out) == set()  # the chief trains nothing
    # One progress line per ended trial, naming its worker and score.
    lines = [line for line in chief_log.splitlines() if line.startswith("trial ")]
    assert len(lines) == TRIALS and all("COMPLETED, val_probe_accuracy 0." in line for line in lines)
    assert {line.split()[3].rstrip(":") for line in lines} == set(worker_outs)
    # The worker with another lamb range was refused before it trained anything.
    assert bad.returncode == 2
    message = error_line(bad_log)
    assert "runs a search with other settings (ranges: chief has" in message and "'lamb': [3.0, 30.0]" in message
    assert checkpointed_trials(bad_out) == set() and "worker9" not in json.dumps(handed)


@pytest.mark.slow
def test_killed_worker_does_not_stop_the_search_and_its_trial_is_trained_again(tiny_data, tmp_path):
    out = str(tmp_path / "s")
    with open(tmp_path / "chief.log", "w") as log:
        chief = start(search_argv(tiny_data, out, "--workers", "2"), log=log)
        # Kill the first worker handed a trial, while it trains it.
        ledger = wait_for(chief, os.path.join(out, distributed.TRIAL_WORKERS_FILE))
        first_trial, (victim,) = next(iter(read_json(ledger).items()))
        pid = read_json(wait_for(chief, os.path.join(out, distributed.WORKERS_FOLDER, "workers.json")))[victim]["pid"]
        os.kill(pid, signal.SIGKILL)
        finish([chief], timeout=600)
    with open(tmp_path / "chief.log") as f:
        chief_log = f.read()

    assert chief.returncode == 0, chief_log
    rows = read_table(out)
    assert len(rows) == TRIALS and all(r["status"] == "COMPLETED" for r in rows)
    handed = read_json(ledger)
    survivor = ({"worker0", "worker1"} - {victim}).pop()
    # KerasTuner ended the lost trial INVALID and queued it again; the other worker trained it and the rest.
    assert handed.pop(first_trial) == [victim, survivor]
    assert all(who == [survivor] for who in handed.values())
    assert f"chief: worker {victim} exited with code -{signal.SIGKILL}" in chief_log
    assert f"trial {first_trial} on {victim}: INVALID, to be trained again: worker {victim} exited" in chief_log
    completed = [line for line in chief_log.splitlines() if line.startswith("trial ") and "COMPLETED" in line]
    assert sorted(line.split()[1] for line in completed) == sorted(r["trial"] for r in rows)


@pytest.mark.heavy
def test_stopped_chief_continues_the_search_when_started_again(tiny_data, tmp_path):
    out = str(tmp_path / "s")
    argv = search_argv(tiny_data, out, "--workers", "2")
    with open(tmp_path / "first.log", "w") as log:
        chief = start(argv, log=log)
        # Stop the chief as a job scheduler does (SIGTERM) once a trial has ended.
        wait_for(chief, os.path.join(out, "best_hyperparameters.json"))
        chief.send_signal(signal.SIGTERM)
        finish([chief], timeout=120)
    assert chief.returncode == 128 + signal.SIGTERM
    for worker in read_json(os.path.join(out, distributed.WORKERS_FOLDER, "workers.json")).values():
        with pytest.raises(ProcessLookupError):  # the chief stopped its workers
            os.kill(worker["pid"], 0)
    done_before = {r["trial"] for r in read_table(out) if r["status"] == "COMPLETED"}
    handed_before = read_json(os.path.join(out, distributed.TRIAL_WORKERS_FILE))
    assert done_before and len(done_before) < TRIALS

    second = start(argv)
    (log,) = finish([second])
    assert second.returncode == 0, log
    rows = read_table(out)
    assert len(rows) == TRIALS and all(r["status"] == "COMPLETED" for r in rows)
    handed = read_json(os.path.join(out, distributed.TRIAL_WORKERS_FILE))
    # Finished trials are kept; the ones stopped with the chief are trained afresh; the rest once.
    for trial in handed:
        runs = len(handed_before.get(trial, [])) + (trial not in done_before)
        assert len(handed[trial]) == runs, (trial, handed_before, handed)
    completed_now = {line.split()[1] for line in log.splitlines() if line.startswith("trial ") and "COMPLETED" in line}
    assert completed_now == {r["trial"] for r in rows} - done_before


def test_cluster_comes_from_kerastuner_environment_variables():
    env = {"KERASTUNER_TUNER_ID": "chief", "KERASTUNER_ORACLE_IP": "10.0.0.5", "KERASTUNER_ORACLE_PORT": "8000"}
    assert distributed.cluster_from_env(env) == distributed.Cluster("chief", "chief", "10.0.0.5", 8000)
    assert distributed.cluster_from_env({**env, "KERASTUNER_TUNER_ID": "worker3"}).role == "worker"
    assert distributed.cluster_from_env({"KERASTUNER_TUNER_ID": "worker3"}) is None  # no oracle address: one process
    with pytest.raises(ConfigError, match="KERASTUNER_TUNER_ID is not: set KERASTUNER_TUNER_ID=chief on the chief"):
        distributed.cluster_from_env({k: v for k, v in env.items() if k != "KERASTUNER_TUNER_ID"})
    with pytest.raises(ConfigError, match="KERASTUNER_ORACLE_PORT must be a port number, got 'x'"):
        distributed.cluster_from_env({**env, "KERASTUNER_ORACLE_PORT": "x"})


def test_workers_get_the_chiefs_options_without_the_launcher_ones():
    tune = load_script("tune")
    argv = ["--out", "s", "--workers", "3", "--threads-per-worker=2", "--epochs", "1", "--threads", "4", "--seed", "1"]
    assert tune.worker_argv(argv) == ["--out", "s", "--epochs", "1", "--seed", "1"]


SETTINGS = dict(tuner="random", search_space=[], objective="probe", ranges={"lamb": [1.0, 1000.0]},
                dataset="mnist", train_size=None, preset="mnist_full", mixer="mixup", k=2, beta=0.0,
                probe="whiten", depth=4, code_channels=2, batch_size=16, epochs=1, steps_per_epoch=2, seed=0,
                precision="float32", max_trials=4)


class FakeClient:
    """The chief's oracle as a worker sees it: only ``get_space``."""

    def __init__(self, settings=None):
        self.space = keras_tuner.HyperParameters()
        self.space.Float("lamb", 1.0, 1000.0)
        if settings is not None:
            self.space.Fixed(distributed.SETTINGS_HP, distributed._published_settings(settings))

    def get_space(self):
        return self.space


def test_worker_with_other_settings_than_the_chief_is_refused():
    cluster = distributed.Cluster("worker", "worker1", "10.0.0.5", 8000)
    distributed._check_chief_settings(FakeClient(SETTINGS), {**SETTINGS, "max_trials": 9}, cluster)  # may differ
    mine = {**SETTINGS, "ranges": {"lamb": [3.0, 30.0]}, "precision": "mixed_bfloat16"}
    with pytest.raises(ConfigError) as e:
        distributed._check_chief_settings(FakeClient(SETTINGS), mine, cluster)
    assert str(e.value).startswith(
        "The chief at 10.0.0.5:8000 runs a search with other settings (ranges: chief has {'lamb': [1.0, 1000.0]}, "
        "this worker {'lamb': [3.0, 30.0]}; precision: chief has 'float32', this worker 'mixed_bfloat16').")
    with pytest.raises(ConfigError, match="does not publish the settings of an amr_keras search"):
        distributed._check_chief_settings(FakeClient(), SETTINGS, cluster)


def test_workers_option_refuses_a_kerastuner_environment(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
    assert load_script("tune").main(["--out", str(tmp_path / "s"), "--workers", "2"]) == 2
    assert "--workers starts its own chief and workers on this machine" in error_line(capsys.readouterr().err)
    assert load_script("tune").main(["--out", str(tmp_path / "s"), "--threads-per-worker", "0"]) == 2
    assert error_line(capsys.readouterr().err) == "error: --threads-per-worker must be at least 1, got 0."


def test_chief_requeues_the_trial_of_a_lost_worker_once_then_fails_it(tmp_path, capsys):
    # A chief over a real KerasTuner oracle, without gRPC: workers are only ids asking for trials.
    hypermodel = search.AMRHyperModel(Config(dataset="mnist_sample", depth=4, batch_size=16), 1, 10, 2)
    kt_tuner = search.make_tuner("random", hypermodel, str(tmp_path), max_trials=3)
    chief = distributed._Chief(kt_tuner, hypermodel, str(tmp_path))
    oracle = kt_tuner.oracle
    first = oracle.create_trial("worker0")
    assert oracle.create_trial("worker1").trial_id != first.trial_id
    chief.worker_lost("worker0", -9)
    assert first.status == "INVALID" and oracle._retry_queue == [first.trial_id]
    # The next worker to ask is handed the lost trial before a new one.
    assert oracle.create_trial("worker2").trial_id == first.trial_id
    chief.worker_lost("worker2", -15)
    assert first.status == "FAILED" and oracle._retry_queue == []
    assert read_json(os.path.join(str(tmp_path), distributed.TRIAL_WORKERS_FILE))[first.trial_id] == ["worker0", "worker2"]
    rows = {r["trial"]: r for r in read_table(str(tmp_path))}
    assert (rows[first.trial_id]["status"], rows[first.trial_id]["worker"]) == ("FAILED", "worker0,worker2")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("trial ")]
    assert lines == [f"trial {first.trial_id} on worker0: INVALID, to be trained again: worker worker0 exited "
                     "with code -9 during the trial (0 of 3 ended)",
                     f"trial {first.trial_id} on worker2: FAILED: worker worker2 exited with code -15 during the "
                     "trial (1 of 3 ended)"]


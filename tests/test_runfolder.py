"""One owner per run folder, ledger appends from several processes, and write failures as one error line."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from amr_keras import runfolder
from amr_keras.runfolder import FolderLock, FolderLockError, append_line
from test_fit import error_lines, load_script, tiny_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# runfolder.py loaded by its path: a lock holder that starts in a fraction of a second (no TensorFlow).
HOLDER = textwrap.dedent("""
    import importlib.util, sys, time
    spec = importlib.util.spec_from_file_location("runfolder", {path!r})
    runfolder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runfolder)
    runfolder.FolderLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
""").format(path=os.path.join(ROOT, "amr_keras", "runfolder.py"))


@pytest.fixture
def holder():
    """Start a process that locks a folder and keeps it; yields a function ``lock(folder) -> Popen``."""
    procs = []

    def lock(folder):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield lock
    for proc in procs:
        proc.kill()
        proc.wait()


def snapshot(folder):
    """``{relative path: (size, mtime)}`` of every file under ``folder``."""
    found = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            st = os.stat(path)
            found[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns)
    return found


def test_lock_names_the_holder_and_is_released_when_it_is_killed(tmp_path, holder):
    folder = tmp_path / "run"
    proc = holder(folder)
    with pytest.raises(FolderLockError) as e:
        FolderLock(folder).acquire()
    assert e.value.holder["pid"] == proc.pid
    assert f"process {proc.pid} on host " in str(e.value) and str(folder) in str(e.value)
    proc.kill()
    proc.wait()
    lock = FolderLock(folder).acquire()  # SIGKILL leaves no stale lock
    assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_lock_is_reentrant_within_a_process(tmp_path, holder):
    folder = tmp_path / "run"
    with FolderLock(folder):
        with FolderLock(folder):  # reproduce.py holds a run's lock while train.run takes it again
            pass
        # Still held after the inner release: another process is refused.
        proc = subprocess.run([sys.executable, "-c", HOLDER, str(folder)], capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and "FolderLockError" in proc.stderr
    proc = holder(folder)  # released by the outer exit
    assert proc.poll() is None


def test_fit_refuses_a_run_folder_in_use_and_touches_nothing(tiny_data, tmp_path, holder, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "log.csv").write_text("epoch\n0\n")
    proc = holder(out)
    before = snapshot(out)
    code = load_script("fit").main(tiny_args(tiny_data, str(out), "--resume"))
    assert code == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and f"process {proc.pid}" in errors[0] and str(out) in errors[0]
    assert snapshot(out) == before


def test_a_refused_start_never_removes_the_folder_another_process_just_created(tiny_data, tmp_path, holder,
                                                                               monkeypatch):
    from amr_keras import train

    out = tmp_path / "run"
    holder(out)  # the other process created the folder (and holds it) after this one looked for it
    (out / "log.csv").write_text("epoch\n")
    real_isdir = os.path.isdir
    monkeypatch.setattr(train.os.path, "isdir", lambda p: False if str(p) == str(out) else real_isdir(p))
    assert load_script("fit").main(tiny_args(tiny_data, str(out))) == 2
    assert sorted(os.listdir(out)) == [".lock", "log.csv"]


def test_tune_refuses_a_search_folder_in_use_and_touches_nothing(tiny_data, tmp_path, holder, capsys):
    out = tmp_path / "search"
    out.mkdir()
    (out / "search.json").write_text("{}")
    proc = holder(out)
    before = snapshot(out)
    args = ["--dataset", "mnist", "--data-dir", tiny_data, "--depth", "4", "--epochs", "1", "--max-trials", "1",
            "--out", str(out)]
    assert load_script("tune").main(args) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and f"process {proc.pid}" in errors[0] and "search folder" in errors[0], errors
    assert snapshot(out) == before


def test_reproduce_skips_a_run_that_another_process_trains(tmp_path, holder, monkeypatch, capsys):
    from amr_keras import tables, train
    from amr_keras.config import Config

    trained = []
    monkeypatch.setattr(train, "run", lambda cfg, argv=None, resume_hint=None: trained.append(cfg.out))
    runs = [tables.PlannedRun(("mnist_sample", "mixup", 2, 100.0, None), Config(out=str(tmp_path / f"r{i}")))
            for i in range(2)]
    proc = holder(runs[0].folder)
    tables.train_missing(runs)
    assert trained == [runs[1].folder]
    assert f"{runs[0].name}: skipped, process {proc.pid}" in capsys.readouterr().out


APPENDER = textwrap.dedent("""
    import importlib.util, json, sys
    spec = importlib.util.spec_from_file_location("runfolder", {path!r})
    runfolder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runfolder)
    for i in range(300):
        runfolder.append_line(sys.argv[1], json.dumps({{"writer": sys.argv[2], "i": i, "pad": "x" * 3000}}) + "\\n")
""").format(path=os.path.join(ROOT, "amr_keras", "runfolder.py"))


def test_ledger_appends_from_two_processes_never_interleave(tmp_path):
    ledger = tmp_path / "finished_runs.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(ledger), w]) for w in "ab"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert sorted((e["writer"], e["i"]) for e in entries) == [(w, i) for w in "ab" for i in range(300)]


def test_a_torn_ledger_line_is_skipped_and_the_next_append_cuts_it_off(tmp_path):
    from amr_keras.tables import LEDGER_NAME, load_ledger

    entry = {"run": "a", "settings": {}, "results": {}}
    ledger = tmp_path / LEDGER_NAME
    ledger.write_text(json.dumps(entry) + "\n" + json.dumps({**entry, "run": "b"})[:20])
    assert list(load_ledger(tmp_path)) == ["a"]
    append_line(str(ledger), json.dumps({**entry, "run": "c"}) + "\n")
    assert list(load_ledger(tmp_path)) == ["a", "c"]
    assert ledger.read_text() == json.dumps(entry) + "\n" + json.dumps({**entry, "run": "c"}) + "\n"


@pytest.mark.slow
def test_disk_full_at_a_checkpoint_is_one_error_line_and_resume_continues(tiny_data, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    fit = load_script("fit")
    args = tiny_args(tiny_data, out, "--steps-per-epoch", "2", "--no-linear-eval", "--no-export")
    # The second epoch's checkpoint meets a full disk (the first was written).
    monkeypatch.setenv(runfolder.FAULTS_ENV, "last.keras@2=enospc")
    monkeypatch.setattr(runfolder, "_hits", {})
    assert fit.main(args) == 2
    errors = error_lines(capsys.readouterr().err)
    last = os.path.join(out, "checkpoint", "last.keras")
    assert len(errors) == 1, errors
    assert f"could not write {last} (No space left on device)" in errors[0]
    assert f"The last complete checkpoint, {last} (epoch 1), is intact" in errors[0] and "--resume" in errors[0]
    assert not [p for p in snapshot(out) if ".tmp" in p]  # the partial checkpoint was removed
    monkeypatch.delenv(runfolder.FAULTS_ENV)
    assert fit.main([*args, "--resume"]) == 0
    with open(os.path.join(out, "log.csv")) as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["0", "1"]


def test_a_failed_write_removes_its_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    path.write_text('{"old": 1}')
    monkeypatch.setenv(runfolder.FAULTS_ENV, "results.json=enospc")
    monkeypatch.setattr(runfolder, "_hits", {})
    with pytest.raises(runfolder.WriteFailure) as e:
        runfolder.write_json_atomically(str(path), {"new": 2})
    assert e.value.path == str(path) and "No space left on device" in str(e.value)
    assert os.listdir(tmp_path) == ["results.json"] and json.loads(path.read_text()) == {"old": 1}


@pytest.mark.parametrize("state, expected", [
    ({"checkpoint/last.keras": "m", "checkpoint/state.json": '{"epochs_done": 3}'},
     "The last complete checkpoint, {out}/checkpoint/last.keras (epoch 3), is intact."),
    # Cut short between the rotation's moves: the newest complete checkpoint is previous.keras with state.json.
    ({"checkpoint/previous.keras": "m", "checkpoint/state.json": '{"epochs_done": 2}',
      "checkpoint/previous_state.json": '{"epochs_done": 1}'},
     "The last complete checkpoint, {out}/checkpoint/previous.keras (epoch 2), is intact."),
    ({}, "No checkpoint was written yet"),
])
def test_the_write_failure_message_names_what_is_intact(tmp_path, state, expected):
    import errno

    from amr_keras.config import Config
    from amr_keras.train import _write_failure_message

    out = tmp_path / "run"
    for name, text in state.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    cause = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "log.csv"))
    message = _write_failure_message(cause, Config(out=str(out)), str(out))
    assert message.startswith(f"could not write {out}/log.csv (No space left on device). ")
    assert expected.format(out=out) in message
    assert ("--resume" in message) == bool(state)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from test_data import write_mnist_folder

    return write_mnist_folder(str(tmp_path_factory.mktemp("mnist")), n_train=96, n_test=32)


def test_deterministic_reaches_every_run_of_reproduce_and_every_trial_of_tune(tiny_data, tmp_path, monkeypatch):
    from amr_keras import train
    from amr_keras.search import SearchError
    from amr_keras.tables import accuracy

    script = load_script("reproduce")
    trained = []
    monkeypatch.setattr(train, "run", lambda cfg, argv=None, resume_hint=None: trained.append(cfg))
    monkeypatch.setattr(accuracy, "write_tables", lambda *a, **k: ("t.md", "t.json"))
    args = ["--table", "1", "--data-dir", f"mnist={tiny_data}", "--seeds", "1", "--only", "mixup:2",
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "results")]
    assert script.main([*args, "--deterministic"]) == 0
    assert [cfg.deterministic for cfg in trained] == [True]
    assert "--deterministic" in script.command_line(script.parse_args([*args, "--deterministic"]))
    trained.clear()
    assert script.main(args) == 0  # the runs of a request without it are not deterministic
    assert [cfg.deterministic for cfg in trained] == [False]

    tune = load_script("tune")
    seen = []

    def fake_search(cfg, **kwargs):
        seen.append(cfg)
        raise SearchError("stop here")

    monkeypatch.setattr(tune, "search", fake_search)
    assert tune.main(["--dataset", "mnist", "--data-dir", tiny_data, "--out", str(tmp_path / "s"),
                      "--deterministic"]) == 2
    assert seen[0].deterministic is True

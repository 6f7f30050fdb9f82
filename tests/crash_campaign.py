"""Kill a tiny training run with SIGKILL again and again, resume it after each kill, and check what is left.

The run (depth 4, one step per epoch, ``--deterministic``) is killed at random
instants and inside its writes: the test-only hook ``AMR_KERAS_TEST_FAULTS``
(``amr_keras.runfolder.fault_point``) makes the process kill itself in the
middle of a checkpoint, best-model, state, record, export, figure or results
write, its temporary file cut to half (a torn write). After each kill the same
command runs again, with ``--resume`` once the run folder holds a run. At the
end the run folder must be complete and valid (``log.csv`` has each epoch
once, every checkpoint loads, the export loads, no temporary file is left) and
its final weights and scores must equal those of the same run never
interrupted. Then the ledger append of ``scripts/reproduce.py`` is killed
half-way, and the ledger must still read.

Usage:
    python tests/crash_campaign.py --work DIR [--kills 20] [--seed 0] [--epochs 24]
    python tests/crash_campaign.py --work DIR --kills 2 --drift --epochs 3    # any fit.py arguments after --drift

Prints one line per attempt and ``campaign passed: N kills`` (exit 0), or the
first check that failed (exit 1).
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

# Write points (amr_keras.runfolder.fault_point names) reached at the end of every epoch, and once at the end.
EPOCH_POINTS = ("last.keras", "last.keras:rotate", "state.json", "best.keras", "best.json", "config.json")
FINAL_POINTS = ("export", "interpolations.png", "results.json")


def fit_command(data_dir, out, epochs, resume):
    return [sys.executable, os.path.join(ROOT, "scripts", "fit.py"), "--dataset", "mnist", "--data-dir", data_dir,
            "--depth", "4", "--batch-size", "16", "--epochs", str(epochs), "--steps-per-epoch", "1",
            "--no-jit-compile", "--precision", "float32", "--deterministic", "--verbose", "0", "--out", out,
            *(["--resume"] if resume else [])]


def run_fit(cmd, faults=None, kill_after=None, hits_log=None):
    """Run fit.py; returns (return code, output). ``kill_after`` seconds: SIGKILL from outside; ``hits_log``: where
    the fault hook names the write it killed the process in."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("AMR_KERAS_TEST_FAULTS", None)
    if faults:
        env["AMR_KERAS_TEST_FAULTS"] = faults
        env["AMR_KERAS_TEST_FAULTS_LOG"] = hits_log or os.devnull
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
    return proc.returncode, out


def epochs_done(out):
    from amr_keras.callbacks import ResumableCheckpoint

    found = ResumableCheckpoint.newest_complete(os.path.join(out, "checkpoint"))
    return found[1] if found else 0


def campaign(work, kills_wanted, seed, epochs):
    from test_data import write_mnist_folder

    rng = random.Random(seed)
    data_dir = write_mnist_folder(os.path.join(work, "data"), n_train=96, n_test=32)
    baseline, out = os.path.join(work, "baseline"), os.path.join(work, "run")
    t0 = time.perf_counter()
    code, text = run_fit(fit_command(data_dir, baseline, epochs, resume=False))
    if code != 0:
        raise AssertionError(f"the uninterrupted run failed ({code}):\n{text}")
    lifetime = time.perf_counter() - t0
    print(f"uninterrupted run: {lifetime:.1f} s", flush=True)

    hits_log = os.path.join(work, "fault_hits.log")
    kills, attempt, hit, cycle = 0, 0, [], []
    while True:
        attempt += 1
        if attempt > 4 * kills_wanted + 20:
            raise AssertionError(f"the run did not finish after {attempt - 1} attempts")
        done = epochs_done(out)
        started = os.path.exists(os.path.join(out, "config.json"))
        faults, kill_after = None, None
        final_left = sorted(set(FINAL_POINTS) - set(hit))
        if kills >= kills_wanted and not final_left:
            what = "no fault"
        elif done == epochs:
            point = final_left[0] if final_left else rng.choice(FINAL_POINTS)
            faults, what = f"{point}=kill", f"armed: the {point} write"
        elif len(hit) >= len(EPOCH_POINTS) and rng.random() < 0.2:
            kill_after = rng.uniform(1.0, lifetime)
            what = f"kill at {kill_after:.1f} s"
        else:
            # Every write point in turn (a shuffled cycle), at its 1st, 2nd or 3rd occurrence in the process.
            cycle = cycle or rng.sample(EPOCH_POINTS, len(EPOCH_POINTS))
            point = cycle.pop()
            nth = 1 if point == "config.json" else rng.choice((1, 2, 3))
            # last.keras@4 stops a process whose chosen write is not reached (no better epoch: no best.keras).
            faults, what = f"{point}@{nth}=kill,last.keras@4=kill", f"armed: the {point} write (#{nth})"
        if os.path.exists(hits_log):
            os.remove(hits_log)
        code, text = run_fit(fit_command(data_dir, out, epochs, resume=started), faults, kill_after, hits_log)
        killed = code == -signal.SIGKILL
        kills += killed
        where = ""
        if killed and os.path.exists(hits_log):
            with open(hits_log) as f:
                hit.append(f.read().strip())
            where = f" inside the {hit[-1]} write"
        print(f"attempt {attempt}: {what}; epochs done before {done}, after {epochs_done(out)}; "
              f"{f'killed{where}' if killed else f'exit {code}'}", flush=True)
        if not killed and code != 0:
            raise AssertionError(f"attempt {attempt} ({what}) failed with exit {code}:\n{text}")
        if code == 0 and kills >= kills_wanted and not final_left:
            break
        if code == 0:
            # Finished before enough kills: without results.json the next attempts score, export and write it
            # again from the last checkpoint, so their kills land in those final writes.
            os.remove(os.path.join(out, "results.json"))
    print(f"writes killed inside: {', '.join(sorted(set(hit)))}")
    check_run(out, baseline, epochs)
    check_ledger_kill(work, out)
    return kills


def check_run(out, baseline, epochs):
    """The run folder is complete, valid and equal to the uninterrupted run's."""
    import keras
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from amr_keras.train import read_log

    leftovers = [os.path.relpath(os.path.join(b, n), out) for b, dirs, files in os.walk(out)
                 for n in files + dirs if ".tmp" in n or n.endswith(".old")]
    assert not leftovers, f"temporary files left: {leftovers}"
    with open(os.path.join(out, "log.csv")) as f:
        epoch_column = [line.split(",")[0] for line in f.read().splitlines()[1:]]
    assert epoch_column == [str(e) for e in range(epochs)], f"log.csv epochs: {epoch_column}"
    assert len(read_log(os.path.join(out, "log.csv"))) == epochs
    models = {}
    for name in ("checkpoint/last.keras", "checkpoint/previous.keras", "best.keras"):
        models[name] = keras.saving.load_model(os.path.join(out, name))
    if os.path.exists(os.path.join(out, "checkpoint/previous_best.keras")):
        keras.saving.load_model(os.path.join(out, "checkpoint/previous_best.keras"))
    tf.saved_model.load(os.path.join(out, "export"))
    with open(os.path.join(out, "export", "metadata.json")) as f:
        json.load(f)
    Image.open(os.path.join(out, "interpolations.png")).verify()
    for name in ("checkpoint/last.keras", "best.keras"):
        ours = models[name].get_weights()
        theirs = keras.saving.load_model(os.path.join(baseline, name)).get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs)), f"{name} differs from the uninterrupted run"
    with open(os.path.join(out, "results.json")) as f:
        ours = json.load(f)
    with open(os.path.join(baseline, "results.json")) as f:
        theirs = json.load(f)
    for key in ("best_epoch", "best_val_probe_accuracy", "test_probe_accuracy", "linear_eval_test_accuracy",
                "knn_test_accuracy"):
        assert ours[key] == theirs[key], f"results.json {key}: {ours[key]} after the kills, {theirs[key]} without"
    print(f"run folder valid: {epochs} log rows, checkpoints load, weights and scores equal the uninterrupted run's")


def check_ledger_kill(work, run):
    """Kill ``tables.record_finished`` half-way through its append; the ledger must still read."""
    script = ("import sys; from amr_keras import tables; from amr_keras.config import Config; "
              "r = tables.PlannedRun(('mnist', 'mixup', 2, 1.0, None), Config(out=sys.argv[1])); "
              "print(tables.record_finished([r], sys.argv[2]))")
    ledger_dir = os.path.join(work, "ledger")
    for faults in ("finished_runs.jsonl=kill", None):
        env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.pop("AMR_KERAS_TEST_FAULTS", None)
        if faults:
            env["AMR_KERAS_TEST_FAULTS"] = faults
        proc = subprocess.run([sys.executable, "-c", script, run, ledger_dir], env=env, capture_output=True, text=True)
        assert proc.returncode == (-signal.SIGKILL if faults else 0), proc.stderr
    from amr_keras.tables import load_ledger

    assert list(load_ledger(ledger_dir)) == ["run"], "the ledger lost the run or kept the torn line"
    print("ledger append killed half-way: the ledger reads, the run is recorded once")


def drift(work, kills, seed, fit_args):
    """Train ``fit.py FIT_ARGS`` uninterrupted, and again killed ``kills`` times, each in the middle of the epoch
    after a new checkpoint, and resumed; print both runs' scores and how far the final weights moved."""
    import keras
    import numpy as np

    from amr_keras.train import read_log

    rng = random.Random(seed)
    outs = {name: os.path.join(work, name) for name in ("uninterrupted", "resumed")}
    base = [sys.executable, os.path.join(ROOT, "scripts", "fit.py"), *fit_args, "--verbose", "0"]
    code, text = run_fit([*base, "--out", outs["uninterrupted"]])
    assert code == 0, text
    epoch_s = read_log(os.path.join(outs["uninterrupted"], "log.csv"))[-1]["epoch_seconds"]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for i in range(kills):
        started = os.path.exists(os.path.join(outs["resumed"], "config.json"))
        proc = subprocess.Popen([*base, "--out", outs["resumed"], *(["--resume"] if started else [])], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while epochs_done(outs["resumed"]) <= i and proc.poll() is None:
            time.sleep(0.2)
        at = rng.uniform(0.2, 0.8) * epoch_s
        time.sleep(at)
        proc.send_signal(signal.SIGKILL)
        code = proc.wait()
        print(f"kill {i + 1}: {at:.0f} s into epoch {i + 2}: {'killed' if code == -signal.SIGKILL else f'exit {code}'}"
              f", resumes after epoch {epochs_done(outs['resumed'])}", flush=True)
    code, text = run_fit([*base, "--out", outs["resumed"], "--resume"])
    assert code == 0, text
    results = {}
    for name, out in outs.items():
        with open(os.path.join(out, "results.json")) as f:
            results[name] = json.load(f)
    keys = ("best_epoch", "test_probe_accuracy", "linear_eval_test_accuracy", "knn_test_accuracy")
    for name, r in results.items():
        print(f"{name}: " + ", ".join(f"{k} {r[k]}" for k in keys))
    a = keras.saving.load_model(os.path.join(outs["uninterrupted"], "checkpoint", "last.keras")).get_weights()
    b = keras.saving.load_model(os.path.join(outs["resumed"], "checkpoint", "last.keras")).get_weights()
    print(f"final weights: identical {all(np.array_equal(x, y) for x, y in zip(a, b))}, largest difference "
          f"{max(float(np.max(np.abs(x - y))) for x, y in zip(a, b) if x.size):.3g}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="an empty folder for the data and the runs")
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs at least (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    p.add_argument("--epochs", type=int, default=24, help="epochs of the tiny run (one step each)")
    p.add_argument("--drift", nargs=argparse.REMAINDER,
                   help="instead of the campaign: fit.py arguments of a run to train uninterrupted and killed "
                        "--kills times (each in the middle of the epoch after a checkpoint) and resumed; prints "
                        "how far the two land apart")
    args = p.parse_args(argv)
    if args.drift:
        drift(args.work, args.kills, args.seed, args.drift)
        return 0
    try:
        kills = campaign(args.work, args.kills, args.seed, args.epochs)
    except AssertionError as e:
        print(f"campaign failed: {e}")
        return 1
    print(f"campaign passed: {kills} kills")
    return 0


if __name__ == "__main__":
    sys.exit(main())

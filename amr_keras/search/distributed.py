"""Distributed search: KerasTuner's chief oracle served over gRPC; workers set by environment variables, or
started on this machine (``LocalWorkers``)."""

import dataclasses
import json
import os
import subprocess
import threading
import time

import keras_tuner

from amr_keras.config import ConfigError
from amr_keras.search import space
from amr_keras.search.space import (
    SEARCH_KEYS,
    SearchError,
    _failed_in_a_row,
    _last_line,
    _search_result,
    _setting_diffs,
    _too_many_failures,
    _write_json,
    write_reports,
)

# --objective name -> the metric a trial is scored by (higher is better).
# --- Distributed search: KerasTuner's chief oracle served over gRPC, workers set by environment variables ---

ENV_TUNER_ID = "KERASTUNER_TUNER_ID"
ENV_ORACLE_IP = "KERASTUNER_ORACLE_IP"
ENV_ORACLE_PORT = "KERASTUNER_ORACLE_PORT"
# The chief publishes the settings that shape a trial in the oracle's space, as a fixed value that no trial
# uses ("tuner/" names are KerasTuner's own and left out of the reports); a worker compares its own with it.
SETTINGS_HP = "tuner/amr_search_settings"
TRIAL_WORKERS_FILE = "trial_workers.json"
WORKERS_FOLDER = "workers"
# How often the chief checks whether the search is over and whether its local workers are alive.
CHIEF_POLL_S = 0.5
# After the last trial, how long the chief keeps serving for workers that have not yet heard that the
# search is over (a worker asks within moments of ending its trial; a dead one never asks).
CHIEF_GRACE_S = 30.0


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in a distributed search.

    Attributes:
        role: ``"chief"`` (serves the oracle) or ``"worker"`` (trains trials).
        tuner_id: KerasTuner's id of this process (the chief's contains ``chief``).
        ip: where the chief serves the oracle (a worker connects there).
        port: its port; 0 lets a chief pick a free one (for its own ``workers``).
        workers: ``LocalWorkers`` that the chief starts once it serves, and watches; None on a cluster.
    """

    role: str
    tuner_id: str
    ip: str
    port: int
    workers: object = None


def cluster_from_env(environ=None):
    """The ``Cluster`` set by KerasTuner's environment variables, or None (a single-process search).

    ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT`` name where the chief serves the oracle;
    ``KERASTUNER_TUNER_ID`` is ``chief`` on the chief and a distinct id (``worker0``, ``worker1``, ...) on
    each worker.

    Example:
        >>> cluster_from_env({"KERASTUNER_TUNER_ID": "worker1", "KERASTUNER_ORACLE_IP": "10.0.0.5",
        ...                   "KERASTUNER_ORACLE_PORT": "8000"}).role
        'worker'
    """
    env = os.environ if environ is None else environ
    names = (ENV_TUNER_ID, ENV_ORACLE_IP, ENV_ORACLE_PORT)
    if ENV_ORACLE_IP not in env and ENV_ORACLE_PORT not in env:
        return None
    missing = [name for name in names if not env.get(name)]
    if missing:
        raise ConfigError(f"A distributed search needs {', '.join(names)} set on every process, but "
                          f"{', '.join(missing)} is not: set {ENV_TUNER_ID}=chief on the chief and worker0, "
                          "worker1, ... on the workers, or unset them all for a search in one process.")
    try:
        port = int(env[ENV_ORACLE_PORT])
    except ValueError:
        raise ConfigError(f"{ENV_ORACLE_PORT} must be a port number, got {env[ENV_ORACLE_PORT]!r}.") from None
    tuner_id = env[ENV_TUNER_ID]
    return Cluster("chief" if "chief" in tuner_id else "worker", tuner_id, env[ENV_ORACLE_IP], port)


def _published_settings(settings):
    return json.dumps({k: settings[k] for k in SEARCH_KEYS}, sort_keys=True)


def _check_chief_settings(oracle, settings, cluster):
    """Refuse to work for a chief whose search has other settings (asks the chief; waits for it to start)."""
    where = f"{cluster.ip}:{cluster.port}"
    published = next((hp.value for hp in oracle.get_space().space if hp.name == SETTINGS_HP), None)
    if published is None:
        raise ConfigError(f"The oracle at {where} does not publish the settings of an amr_keras search: start the "
                          f"chief with scripts/tune.py and {ENV_TUNER_ID}=chief.")
    diffs = _setting_diffs(json.loads(published), settings, "chief has", "this worker")
    if diffs:
        raise ConfigError(
            f"The chief at {where} runs a search with other settings ({'; '.join(diffs)}). Start every worker "
            "with the chief's options (only --out, --data-dir, --tfds-data-dir, --max-trials, --threads and "
            "--verbose may differ)."
        )


def _train_as_worker(kt_tuner, cluster, out, *fit_args, **fit_kwargs):
    trained = []
    trial_end = kt_tuner.on_trial_end

    def on_trial_end(trial):
        trained.append(trial.trial_id)
        trial_end(trial)

    kt_tuner.on_trial_end = on_trial_end
    kt_tuner.search(*fit_args, **fit_kwargs)
    return {"role": "worker", "tuner_id": cluster.tuner_id, "trained": trained, "out": out}


class _Chief:
    """The oracle of a distributed search as its chief serves it.

    Wraps the oracle's ``create_trial`` and ``end_trial`` (which KerasTuner's gRPC servicer calls for the
    workers) to record which worker is handed each trial (``trial_workers.json``), rewrite the reports and
    print a line as each trial ends, and stop handing out trials after too many failures in a row.
    """

    def __init__(self, kt_tuner, hypermodel, out):
        self.tuner, self.oracle, self.hypermodel, self.out = kt_tuner, kt_tuner.oracle, hypermodel, out
        self.lock = threading.RLock()  # the servicer's thread and the chief's loop both end trials
        self.error = None
        self.ledger = os.path.join(out, TRIAL_WORKERS_FILE)
        self.workers = {}
        if os.path.exists(self.ledger):
            with open(self.ledger) as f:
                self.workers = json.load(f)
        self._create_trial, self._end_trial = self.oracle.create_trial, self.oracle.end_trial
        self.oracle.create_trial, self.oracle.end_trial = self.create_trial, self.end_trial

    def create_trial(self, tuner_id):
        with self.lock:
            if self.error is not None:
                self.oracle.tuner_ids.discard(tuner_id)
                return keras_tuner.engine.trial.Trial(self.oracle.get_space(), status="STOPPED")
            trial = self._create_trial(tuner_id)
            if trial.status == "RUNNING":
                self.workers.setdefault(trial.trial_id, []).append(tuner_id)
                _write_json(self.ledger, self.workers)
            return trial

    def end_trial(self, trial):
        with self.lock:
            oracle = self.oracle
            worker = next((w for w, t in oracle.ongoing_trials.items() if t.trial_id == trial.trial_id), None)
            # A result for a trial that a restarted chief queued again: it is not trained a second time.
            if trial.trial_id in oracle._retry_queue:
                oracle._retry_queue.remove(trial.trial_id)
            try:
                self._end_trial(trial)
            except RuntimeError as e:
                # KerasTuner's stop after too many failed trials in a row (raised before it saved the trial).
                if _failed_in_a_row(oracle) < space.MAX_CONSECUTIVE_FAILED_TRIALS:
                    raise
                self.error = _too_many_failures(oracle, e, self.out)
                oracle._save_trial(oracle.trials[trial.trial_id])
                oracle.save()
                if worker is not None:
                    oracle.ongoing_trials.pop(worker, None)
            write_reports(self.tuner, self.hypermodel, self.out, self.workers)
            print(self.progress_line(oracle.trials[trial.trial_id], worker), flush=True)

    def worker_lost(self, tuner_id, code):
        """End the trial of a worker that exited while training it, as KerasTuner ends a crashed trial:
        INVALID, queued to be trained again while retries are left (``MAX_RETRIES_PER_TRIAL``), else FAILED."""
        with self.lock:
            self.oracle.tuner_ids.discard(tuner_id)
            trial = self.oracle.ongoing_trials.get(tuner_id)
            if trial is None:
                return
            trial.status = "INVALID"
            trial.message = f"worker {tuner_id} exited with code {code} during the trial"
            self.end_trial(trial)

    def progress_line(self, trial, worker):
        if trial.status == "COMPLETED" and trial.score is not None:
            what = f"COMPLETED, {self.oracle.objective.name} {trial.score:.4f}"
        elif trial.trial_id in self.oracle._retry_queue:
            what = f"{trial.status}, to be trained again: {_last_line(trial.message)}"
        else:
            what = f"{trial.status}: {_last_line(trial.message)}"
        ended = len(self.oracle.end_order)
        worker = worker or "a lost worker"
        return f"trial {trial.trial_id} on {worker}: {what} ({ended} of {self.oracle.max_trials} ended)"


def _start_oracle_server(oracle, ip, port):
    """Serve ``oracle`` over gRPC at ``ip:port`` (0: a free port) with KerasTuner's servicer.

    Returns:
        ``(server, servicer, port)``.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer

    # One thread, as KerasTuner's own chief: requests are answered one at a time.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(f"{ip}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise ConfigError(f"Cannot serve the oracle at {ip}:{port} (address not of this machine, or port in use): "
                          f"set {ENV_ORACLE_IP} to this machine's address and {ENV_ORACLE_PORT} to a free port.")
    server.start()
    return server, servicer, bound


def _serve_as_chief(kt_tuner, hypermodel, settings, cluster, out):
    """Serve the search's oracle until it is over, then return the result as a single-process search does.

    KerasTuner's own chief (``oracle_chief.start_server``) waits, once the search is over, until every
    worker it ever saw has asked for a trial again; a worker that died never does, so it would wait forever.
    This chief serves with KerasTuner's servicer and waits at most ``CHIEF_GRACE_S`` for them; with local
    workers it also ends the trial of a worker that exited while training it (``_Chief.worker_lost``).
    """
    oracle = kt_tuner.oracle
    oracle.verbose = 0  # the chief prints one line per ended trial instead
    space = oracle.get_space()
    space.Fixed(SETTINGS_HP, _published_settings(settings))
    oracle.update_space(space)
    kt_tuner.save()
    chief = _Chief(kt_tuner, hypermodel, out)
    server, servicer, port = _start_oracle_server(oracle, cluster.ip, cluster.port)
    pool = cluster.workers
    print(f"chief: serving the oracle of {out} at {cluster.ip}:{port} ({len(oracle.trials)} of {oracle.max_trials} "
          "trials started before)", flush=True)
    try:
        if pool is not None:
            pool.start(cluster.ip, port)
            print(f"chief: started {pool.count} workers; their logs are in {pool.folder}", flush=True)
        _serve_until_over(chief, servicer, pool)
    finally:
        server.stop(grace=1)
        if pool is not None:
            pool.stop()
        best, best_settings = write_reports(kt_tuner, hypermodel, out, chief.workers)
    if chief.error is not None:
        raise chief.error
    return _search_result(oracle, best, best_settings, out, "chief")


def _serve_until_over(chief, servicer, pool, poll=CHIEF_POLL_S, grace=CHIEF_GRACE_S):
    over_since = None
    while True:
        time.sleep(poll)
        if pool is not None:
            for tuner_id, code in pool.exited():
                if code != 0:
                    print(f"chief: worker {tuner_id} exited with code {code}", flush=True)
                    chief.worker_lost(tuner_id, code)
        with chief.lock:
            over = (servicer.stop_triggered or chief.error is not None) and not chief.oracle.ongoing_trials
            waiting = bool(chief.oracle.tuner_ids)
        if pool is not None:
            if not pool.running():
                if over:
                    return
                raise SearchError(f"Every worker exited before the search ended ({pool.describe()}).")
            continue
        if over:
            over_since = over_since or time.monotonic()
            if not waiting or time.monotonic() - over_since > grace:
                return


class LocalWorkers:
    """Worker processes of a distributed search on this machine, started by its chief (``tune.py --workers N``).

    Worker ``i`` runs ``command`` with ``KERASTUNER_TUNER_ID=worker<i>`` and the chief's address, its output in
    ``folder/worker<i>.log``; ``folder/workers.json`` lists their ids, pids, logs, threads and GPUs.

    Args:
        command: the command line of a worker (e.g. ``[python, scripts/tune.py, <the chief's options>]``).
        count: number of workers.
        folder: where their logs go.
        threads: CPU threads of each worker (appended as ``--threads``; also ``OMP_NUM_THREADS``), or None.
        gpus: GPU ids handed out one per worker in turn (``CUDA_VISIBLE_DEVICES``); empty: none.
    """

    def __init__(self, command, count, folder, threads=None, gpus=()):
        self.command, self.count, self.folder = list(command), int(count), folder
        self.threads, self.gpus = threads, list(gpus)
        self.procs = {}
        self._reported = set()

    def start(self, ip, port):
        """Start the workers, telling them the chief is at ``ip:port``."""
        os.makedirs(self.folder, exist_ok=True)
        listing = {}
        for i in range(self.count):
            tuner_id = f"worker{i}"
            env = {**os.environ, ENV_TUNER_ID: tuner_id, ENV_ORACLE_IP: ip, ENV_ORACLE_PORT: str(port)}
            command = list(self.command)
            if self.threads:
                command += ["--threads", str(self.threads)]
                env["OMP_NUM_THREADS"] = str(self.threads)
            gpu = self.gpus[i % len(self.gpus)] if self.gpus else None
            env["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else env.get("CUDA_VISIBLE_DEVICES", "")
            log_path = os.path.join(self.folder, f"{tuner_id}.log")
            with open(log_path, "w") as log:
                proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            self.procs[tuner_id] = proc
            listing[tuner_id] = {"pid": proc.pid, "log": log_path, "threads": self.threads, "gpu": gpu}
        _write_json(os.path.join(self.folder, "workers.json"), listing)

    def exited(self):
        """``[(tuner_id, exit code)]`` of the workers that exited since the last call."""
        ended = [(tuner_id, proc.poll()) for tuner_id, proc in self.procs.items()
                 if tuner_id not in self._reported and proc.poll() is not None]
        self._reported.update(tuner_id for tuner_id, _ in ended)
        return ended

    def running(self):
        return any(proc.poll() is None for proc in self.procs.values())

    def describe(self):
        """Exit codes, and the last ``error:`` line of the workers' logs, for a message."""
        codes = ", ".join(f"{tuner_id}: {proc.poll()}" for tuner_id, proc in self.procs.items())
        errors = []
        for tuner_id in self.procs:
            with open(os.path.join(self.folder, f"{tuner_id}.log"), errors="replace") as f:
                errors += [line.strip() for line in f if line.startswith("error:")]
        said = f"; {errors[-1]}" if errors else ""
        return f"exit codes {codes}; logs in {self.folder}{said}"

    def stop(self, timeout=10.0):
        """Stop the workers still running (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def local_gpus():
    """GPU ids to hand to local workers, one each (``CUDA_VISIBLE_DEVICES`` values); hides them from this process.

    The chief trains nothing, so it keeps no GPU memory. Call before TensorFlow runs any op.
    """
    import tensorflow as tf

    found = tf.config.list_physical_devices("GPU")
    if not found:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(len(found))]
    tf.config.set_visible_devices([], "GPU")
    return ids[: len(found)]


def limit_cpu_threads(threads):
    """Run this process's TensorFlow ops on ``threads`` CPU threads (inter-op: up to 2 ops at once).

    Workers sharing a machine each get a share of its cores. Call before TensorFlow runs any op.
    """
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(int(threads))
    tf.config.threading.set_inter_op_parallelism_threads(min(2, int(threads)))



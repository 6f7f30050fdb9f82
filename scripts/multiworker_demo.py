"""Run scripts/fit.py as a MultiWorkerMirroredStrategy cluster of processes on this machine.

Each worker is a process with its own ``TF_CONFIG`` (same cluster of free
localhost ports, its own task index). Worker 0 is the chief and writes the run
folder ``--out``; the others write into ``OUT/.worker-N``, removed when they
finish. Arguments after ``--`` are passed to every fit.py.

On CPUs this checks the set-up, not speed: each step exchanges every gradient
over gRPC (about 3 s per step for two workers at depth 4 on a 2-core machine).

Examples:
    python scripts/multiworker_demo.py --out runs/mw -- --depth 4 --epochs 1 --batch-size 128 --no-linear-eval
    python scripts/multiworker_demo.py --workers 2 --out runs/mw     # default fit.py settings on mnist_sample

On several machines, run fit.py once per machine with ``--strategy multiworker``
and a ``TF_CONFIG`` naming every machine's host:port and that machine's index.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

FIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fit.py")


def free_ports(n):
    """``n`` distinct TCP ports free on localhost right now."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports, index):
    """The ``TF_CONFIG`` of worker ``index`` in a cluster of localhost ``ports`` (worker 0 is the chief)."""
    return json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def launch(out, fit_args, workers=2, timeout=None):
    """Start ``workers`` fit.py processes and wait for all; returns their exit codes (chief first).

    The chief's output goes to this terminal, the other workers' to ``worker-N.log``
    files in a temporary folder whose path is printed when a worker fails. When
    one worker fails or ``timeout`` seconds pass, the others are killed.
    """
    ports = free_ports(workers)
    logs = tempfile.mkdtemp(prefix="amr-workers-")
    procs = []
    for i in range(workers):
        env = {**os.environ, "TF_CONFIG": tf_config(ports, i), "TF_CPP_MIN_LOG_LEVEL": "2"}
        cmd = [sys.executable, FIT, "--strategy", "multiworker", "--out", out, *fit_args]
        log = None if i == 0 else open(os.path.join(logs, f"worker-{i}.log"), "w")
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT if log else None), log))
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        # Poll them all: when one worker fails, the others would wait for it forever.
        while any(proc.poll() is None for proc, _ in procs):
            if any(proc.poll() for proc, _ in procs) or (deadline and time.monotonic() > deadline):
                break
            time.sleep(0.5)
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if log:
                log.close()
    codes = [proc.returncode for proc, _ in procs]
    if any(codes):
        print(f"worker exit codes {codes}; logs of the other workers in {logs}", file=sys.stderr)
    return codes


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    own, fit_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Arguments after -- go to every scripts/fit.py, e.g. -- --depth 4 --epochs 1.")
    p.add_argument("--out", default="runs/multiworker-demo", help="run folder written by the chief")
    p.add_argument("--workers", type=int, default=2, help="number of worker processes")
    p.add_argument("--timeout", type=float, default=None, help="seconds before the workers are killed")
    args = p.parse_args(own)
    if args.workers < 1:
        p.error("--workers must be at least 1")
    codes = launch(args.out, fit_args, args.workers, args.timeout)
    # A killed worker has a negative code: report it as 1.
    return next((c for c in codes if c > 0), 1) if any(codes) else 0


if __name__ == "__main__":
    sys.exit(main())

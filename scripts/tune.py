"""Search AMR hyper-parameters with KerasTuner; train the best ones with scripts/fit.py --config.

Always searched: lamb (1..1000, log scale) and lr (1e-5..1e-2, log scale; the discriminator uses the same rate);
--lamb-range / --lr-range narrow them. --search adds mixer (mixup/bernoulli/acai/none), k (2..3), update_g_every
(1..5), code_channels (2/4/8/16) and/or beta (0..1, --beta-range). Trials are scored on validation: by their online
probe's best accuracy (--objective probe) or by a logistic regression fitted on their final codes (--objective
posthoc). Run the same command again to continue a stopped search (finished trials are kept).

Examples:
    python scripts/tune.py --out runs/search --max-trials 10 --epochs 4               # embedded MNIST sample
    python scripts/tune.py --out runs/search-svhn --dataset svhn --tuner bayesian --search mixer,k
    python scripts/tune.py --out runs/search-mnist --dataset mnist --data-dir DIR --epochs 1 \
        --objective posthoc --lamb-range 3:30 --lr-range 5e-4:4e-3 --search beta --tuner bayesian
    python scripts/fit.py --config runs/search/best_hyperparameters.json --epochs 20    # train the best settings

Distributed (docs/distributed_search.md): --workers N runs the chief and N workers on this machine (one GPU or a
share of the CPU cores each); on a cluster, run the same command on every machine with KERASTUNER_TUNER_ID
(chief, worker0, worker1, ...), KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT (the chief's address) set.
    python scripts/tune.py --out runs/search --max-trials 20 --epochs 4 --workers 4
"""

import argparse
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from amr_keras.config import PRESETS, Config, ConfigError  # noqa: E402
from amr_keras.data import DATASETS, DataError  # noqa: E402
from amr_keras.mixers import MIXERS  # noqa: E402
from amr_keras.precision import PRECISIONS  # noqa: E402
from amr_keras.probe import PROBES  # noqa: E402
from amr_keras.runfolder import FolderLockError  # noqa: E402
from amr_keras.stopping import RunStopped  # noqa: E402
from amr_keras.search import (OBJECTIVES, RANGES, SEARCHABLE, TUNERS, WORKERS_FOLDER, Cluster,  # noqa: E402
                              LocalWorkers, SearchError, cluster_from_env, limit_cpu_threads, local_gpus, search)

# Options of this process alone, not passed on to the workers that --workers starts.
LAUNCHER_OPTIONS = ("--workers", "--threads-per-worker", "--threads")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="search folder; run again with the same folder to continue")
    p.add_argument("--dataset", choices=DATASETS, default="mnist_sample", help="dataset (default mnist_sample)")
    p.add_argument("--data-dir", help="folder with the official raw files (offline); otherwise tensorflow-datasets")
    p.add_argument("--tfds-data-dir", help="where tensorflow-datasets keeps its data")
    p.add_argument("--train-size", type=int,
                   help="train every trial on a fixed, class-stratified subset of this many training images")
    p.add_argument("--tuner", choices=TUNERS, default="random", help="search algorithm (default random)")
    p.add_argument("--max-trials", type=int, default=10, help="most trials in all, finished ones included (default 10)")
    p.add_argument("--epochs", type=int, help="epochs per trial (hyperband: at most; default: the preset's)")
    p.add_argument("--search", default="",
                   help=f"comma-separated hyper-parameters to search besides lamb and lr: {','.join(SEARCHABLE)}")
    p.add_argument("--objective", choices=tuple(OBJECTIVES), default="probe",
                   help="what scores a trial on validation: probe (the online probe's best accuracy over the epochs) "
                        "or posthoc (a logistic regression fitted on the final codes; measures the codes, costs a "
                        "fit per trial)")
    for name, (low, high) in RANGES.items():
        p.add_argument(f"--{name}-range", metavar="LOW:HIGH",
                       help=f"search range of {name} (default {low:g}:{high:g}; LOW=HIGH fixes it)")
    p.add_argument("--mixer", choices=MIXERS, help="mixer of every trial, unless --search mixer (default mixup)")
    p.add_argument("--k", type=int, help="codes mixed per image, unless --search k (default 2)")
    p.add_argument("--beta", type=float, help="consistency weight of every trial, unless --search beta (default 0)")
    p.add_argument("--probe", choices=PROBES, help="online probe of every trial (default whiten)")
    p.add_argument("--preset", choices=tuple(PRESETS),
                   help="base settings of every trial (default mnist_full for --dataset mnist, fast otherwise)")
    p.add_argument("--depth", type=int, help="channels of the first scale of every network (default: the preset's)")
    p.add_argument("--code-channels", type=int, default=2,
                   help="feature maps of the 4x4 code (default 2: 32 values; searched with --search code_channels)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the preset's)")
    p.add_argument("--steps-per-epoch", type=int,
                   help="training steps between validations (default: one pass over the training images)")
    p.add_argument("--jit-compile", action="store_true", default=None,
                   help="compile the train step with XLA (default: the preset's; XLA takes a while to compile "
                        "each trial's model, which matters for short trials)")
    p.add_argument("--no-jit-compile", dest="jit_compile", action="store_false", default=None,
                   help="run the train step without XLA")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="compute precision of every trial (default auto: mixed_bfloat16 where the hardware has "
                        "bfloat16 units, else float32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, the data order and the draws (default 0)")
    p.add_argument("--deterministic", action="store_true",
                   help="TensorFlow's deterministic ops in every trial (fit.py --deterministic)")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), help="progress output (default: bar on a terminal)")
    p.add_argument("--workers", type=int, default=0,
                   help="run the search distributed on this machine: a chief (serves the oracle, writes the reports) "
                        "and this many worker processes, each training one trial at a time")
    p.add_argument("--threads-per-worker", type=int,
                   help="CPU threads of each --workers process (default: the cores split between them; with GPUs, "
                        "one GPU per worker and TensorFlow's default threads)")
    p.add_argument("--threads", type=int,
                   help="CPU threads of this process's TensorFlow ops (intra-op; inter-op: up to 2)")
    return p


def worker_argv(argv):
    """``argv`` without the options of this process alone (``LAUNCHER_OPTIONS`` and their values)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCHER_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in LAUNCHER_OPTIONS)):
            out.append(arg)
    return out


def local_cluster(args, argv):
    """The chief of a search on this machine with ``args.workers`` workers running this script."""
    if cluster_from_env() is not None:
        raise ConfigError("--workers starts its own chief and workers on this machine: unset KERASTUNER_TUNER_ID, "
                          "KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT, or drop --workers.")
    gpus = local_gpus()
    threads = args.threads_per_worker
    if threads is None and not gpus:
        threads = max(1, (os.cpu_count() or 1) // args.workers)
    command = [sys.executable, os.path.abspath(__file__), *worker_argv(argv)]
    workers = LocalWorkers(command, args.workers, os.path.join(args.out, WORKERS_FOLDER), threads=threads, gpus=gpus)
    # A job scheduler's SIGTERM stops the chief as Ctrl-C does: it stops its workers and writes the reports.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return Cluster("chief", "chief", "127.0.0.1", 0, workers)


def _exit_on_sigterm(signum, frame):
    sys.exit(128 + signum)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    for name in ("workers", "threads_per_worker", "threads"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "workers" else 1):
            print(f"error: --{name.replace('_', '-')} must be at least {0 if name == 'workers' else 1}, got {value}.",
                  file=sys.stderr)
            return 2
    if args.threads:
        limit_cpu_threads(args.threads)
    base = {k: v for k, v in dict(mixer=args.mixer, k=args.k, beta=args.beta, probe=args.probe).items()
            if v is not None}
    ranges = {name: getattr(args, f"{name}_range") for name in RANGES if getattr(args, f"{name}_range") is not None}
    cfg = Config(**base, dataset=args.dataset, data_dir=args.data_dir, tfds_data_dir=args.tfds_data_dir,
                 preset=args.preset,
                 depth=args.depth, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
                 train_size=args.train_size, code_channels=args.code_channels, steps_per_epoch=args.steps_per_epoch,
                 jit_compile=args.jit_compile, precision=args.precision, deterministic=args.deterministic,
                 out=args.out)
    try:
        cluster = local_cluster(args, argv) if args.workers else None
        result = search(cfg, tuner=args.tuner, max_trials=args.max_trials, search_space=args.search,
                        verbose=args.verbose, objective=args.objective, ranges=ranges, cluster=cluster)
    except (ConfigError, DataError, SearchError, FolderLockError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:  # Ctrl-C or SIGTERM: finished trials and reports kept
        print(e, file=sys.stderr)
        return e.exit_code
    if result["role"] == "worker":
        print(f"\n{result['tuner_id']}: trained trials {', '.join(result['trained']) or 'none'}; the chief writes the "
              "reports")
        return 0
    searched = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in result["best_values"].items())
    out = result["out"]
    print(f"\n{result['completed']} of {result['trials']} trials completed; best: trial {result['best_trial']}, "
          f"{result['objective']} {result['best_score']:.4f} ({searched})")
    print(f"outputs in {out}: best_hyperparameters.json, trials.md, search.json, logs/ (TensorBoard), "
          "amr_search/ (KerasTuner)")
    print(f"train with them: python scripts/fit.py --config {os.path.join(out, 'best_hyperparameters.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the runs of a table through the code of fit.py (skipping finished ones, resuming started ones) and tabulate it.

Named tables, one recipe for every row (only mixer and k change); run folders go to
runs/ (where fit.py puts the same runs), the tables to results/:
  --table 1     the paper's Table 1 on the official MNIST split (--data-dir mnist=DIR with the official IDX files:
                50,000 / 10,000 / official 10,000 test): none (AE + GAN), acai, mixup, bernoulli (k=2) and mixup k=3
                (triplet), preset mnist_full (the fast preset with lamb 5 and 4 epochs: 200,000 training images per
                run). Writes results/table1_mnist.md and results/table1_mnist.json.
  --table lamb  none and mixup at lamb 2, 5, 10, 30 and 100 with the same recipe (its lamb-5 runs are Table 1's);
                writes results/lamb_sweep_mnist.md with the mixup-minus-none gap per lamb.
  --table 2     the paper's Table 2, fewer training images: none, acai, mixup, bernoulli on fixed class-stratified
                subsets of N = 1,000 / 5,000 / 10,000 / 20,000 training images of MNIST and Fashion-MNIST
                (validation and test unchanged), every run 2,500 steps of 16 images whatever N (4 validations).
                --datasets svhn runs the paper's own SVHN grid. Writes results/table2.md, .json and .png.
  --table 3     the paper's Table 3, 256-value codes (4x4x16): none, mixup, bernoulli on MNIST, Fashion-MNIST,
                CIFAR-10 and SVHN (those without data here are listed as not available), preset mnist_full.
                Writes results/table3.md and .json. Tables 2 and 3 keep lamb 10, the preset's value when they
                were made (--lamb 5 gives each a variant).
  --table 4     the paper's Table 4, disentanglement on dSprites: none (AE + GAN), mixup, bernoulli, mixup k=3,
                bernoulli k=3, beta-VAE at the paper's beta 100 and 110 (--only bvae:100) and a beta-VAE at
                Higgins et al.'s beta 4 with the KL summed (--only bvae_sum:4), on dsprites_procedural (the factor
                grid rendered in code; --datasets dsprites for the official pixels, with --data-dir dsprites=DIR
                or tfds), preset dsprites (6 epochs of 60,000 images = 360,000 images seen per run), 5 seeds for
                none and mixup and 3 for the other rows unless --seeds; the final model scored by the FactorVAE
                metric and the official code's function. Writes results/table4.md, .json and
                results/table4_traversals.png. Recipe flags: --epochs, --batch-size, --depth, --lr, --precision.
  --datasets    with --table: replace the table's datasets (the files then carry their names).
Recipe flags (--lamb, --lr, --d-lr, --beta, --epochs, --batch-size, --depth, --precision, --preset) change every
run of the table; the run folders and table files then carry them in their names (e.g. --lamb 30 writes
results/table1_mnist-lamb30.md from runs/mnist-mixup-k2-lamb30-mnist_full-s0 ...), so variants never collide.
--no-recon-gan changes the mixup and bernoulli rows only (runs/mnist-mixup-norecgan-k2-..., table files tagged
-norecgan): none has no mixes to judge and ACAI no such term, so those rows are the table's without the flag.

Without --table: the grid --datasets x --mixers x --seeds (preset fast unless --preset), written as
OUT/table1.md and OUT/table1.json, runs in OUT/runs/. Datasets that cannot be reached (no network for
tensorflow-datasets and no --data-dir) are listed as "not available offline".

A finished run (results.json) is read, not trained again; a started one (config.json and its checkpoint) resumes
from its last finished epoch. Every finished run is also recorded in OUT/finished_runs.jsonl (settings and
scores), and a run recorded there with the table's settings counts as finished where its folder is gone (a fresh
clone): --out results continues the committed tables; another --out trains every run afresh. The tables are
rewritten after every finished run, so a partial table can be committed and the command run again later (or
one row at a time with --only). Runs train seed by seed (every row of seed 0, then of seed 1, ...), so a table
stopped part-way holds paired runs. Exit status: 0, 1 when a run stopped on a NaN loss (the others still ran),
2 on a bad setting.

Examples:
    python scripts/reproduce.py --table 1 --data-dir mnist=DIR                # 5 rows x 3 seeds
    python scripts/reproduce.py --table 1 --data-dir mnist=DIR --dry-run      # which runs are done, which are not
    python scripts/reproduce.py --table 1 --data-dir mnist=DIR --only acai    # one row (here ACAI, k=2)
    python scripts/reproduce.py --table lamb --data-dir mnist=DIR             # lamb 2 / 5 / 10 / 30 / 100 sweep
    python scripts/reproduce.py --table lamb --data-dir mnist=DIR --seeds 2 --only-lambs 100   # one lamb first
    python scripts/reproduce.py --table 2 --data-dir mnist=DIR --data-dir fashion_mnist=DIR2 --seeds 2
    python scripts/reproduce.py --table 2 --data-dir mnist=DIR --only-sizes 1000 5000   # the small subsets first
    python scripts/reproduce.py --table 3 --data-dir mnist=DIR --data-dir fashion_mnist=DIR2 --seeds 2
    python scripts/reproduce.py --quick                                       # smoke run of the grid, a few minutes
    python scripts/reproduce.py --datasets mnist_sample fashion_mnist --data-dir fashion_mnist=DIR --seeds 3
"""

import argparse
import os
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from amr_keras import tables  # noqa: E402
from amr_keras.tables import accuracy  # noqa: E402
from amr_keras.config import PRESETS, ConfigError  # noqa: E402
from amr_keras.data import DATASETS  # noqa: E402
from amr_keras.precision import PRECISIONS  # noqa: E402
from amr_keras.probe import PROBES  # noqa: E402
from amr_keras.runfolder import FolderLockError, RunWriteError  # noqa: E402
from amr_keras.stopping import RunStopped  # noqa: E402



def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", help=f"named table: {', '.join(n for n in tables.table_names() if n != 'grid')} "
                                   "(default: grid, the grid of "
                                   "--datasets and --mixers)")
    p.add_argument("--datasets", nargs="+", choices=DATASETS,
                   help=f"the grid's datasets (default: {' '.join(accuracy.GRID_DATASETS)}); with --table: replace the "
                        "table's own")
    p.add_argument("--data-dir", action="append", default=[], metavar="NAME=DIR",
                   help="raw-file folder of one dataset, e.g. mnist=/data/mnist (repeatable)")
    p.add_argument("--seeds", nargs="+", type=int, default=[3], metavar="N",
                   help="a count N (seeds 0 to N-1; default 3), or two or more seeds, e.g. --seeds 1 2 "
                        "(one seed S other than 0: --seeds S S)")
    p.add_argument("--mixers", "--only", nargs="+", metavar="MIXER[:K]",
                   help="grid: its settings (default: none:2 mixup:2 bernoulli:2 mixup:3; also acai:2). "
                        "--table: train only these rows (e.g. --only acai mixup:3); the table still lists every row. "
                        "MIXER alone means MIXER:2")
    p.add_argument("--only-sizes", nargs="+", type=int, metavar="N",
                   help="--table 2: train only the runs on these training-set sizes (e.g. --only-sizes 1000 5000); "
                        "the table still lists every size")
    p.add_argument("--only-lambs", nargs="+", type=float, metavar="LAMB",
                   help="train only the runs at these lamb values of the table (e.g. --table lamb --only-lambs 100); "
                        "the table still lists every lamb")
    r = p.add_argument_group("recipe (every run of the table; default: the table's preset)")
    r.add_argument("--preset", choices=tuple(PRESETS), help="grid: fast by default; --table 1 and lamb: mnist_full")
    r.add_argument("--lamb", nargs="+", type=float, help="lamb value(s); several make one row per value")
    r.add_argument("--lr", type=float,
                   help="learning rate of the autoencoder (the discriminator keeps the preset's d_lr, as with fit.py)")
    r.add_argument("--d-lr", type=float, help="learning rate of the discriminator")
    r.add_argument("--beta", type=float, help="weight of the consistency term (default 0: none)")
    r.add_argument("--epochs", type=int, help="training epochs")
    r.add_argument("--batch-size", type=int, help="batch size")
    r.add_argument("--depth", type=int, help="channels of the first scale of every network")
    r.add_argument("--precision", choices=PRECISIONS, help="compute precision (default auto)")
    r.add_argument("--probe", choices=PROBES,
                   help="online linear probe (default: the table's; tables 1, lamb, 2 and 3 keep batchnorm, the "
                        "probe their runs were made with, and --probe whiten writes a variant of them)")
    r.add_argument("--no-recon-gan", dest="recon_gan", action="store_false", default=None,
                   help="the mixup and bernoulli rows drop the adversarial term on reconstructions (the official "
                        "code's disable_g_recon); none and acai rows keep it and share the runs of the table "
                        "without this flag; files tagged -norecgan")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: 1 seed, 1 epoch, depth 4 (the grid: on mnist_sample; --table 2: "
                        f"{accuracy.QUICK_BUDGET_STEPS} steps per run)")
    p.add_argument("--out", default="results", help="folder of the tables (and, for the grid, of runs/)")
    p.add_argument("--runs", help="folder of the run folders (default: runs for --table, OUT/runs for the grid)")
    p.add_argument("--table-only", action="store_true", help="tabulate the finished runs without training")
    p.add_argument("--dry-run", action="store_true",
                   help="print the planned runs and which are done, started or pending; train and write nothing")
    p.add_argument("--stop-after", type=float, metavar="MINUTES",
                   help="start no run that would not end within MINUTES from now (estimated from the finished "
                        "runs of its row; a shorter run may still start); the grid resumes with the same command")
    p.add_argument("--deterministic", action="store_true",
                   help="train with TensorFlow's deterministic ops (fit.py --deterministic); run names do not change")
    return p.parse_args(argv)


def parse_seeds(values):
    """``[3]`` -> ``[0, 1, 2]``; two or more values are the seeds themselves."""
    if len(values) == 1:
        if values[0] < 1:
            raise ConfigError(f"--seeds N needs a count N >= 1 (seeds 0 to N-1), got {values[0]}.")
        return list(range(values[0]))
    if min(values) < 0:
        raise ConfigError(f"--seeds takes seeds >= 0, got {' '.join(map(str, values))}.")
    return sorted(set(values))


def parse_data_dirs(items):
    """``["mnist=/data/mnist"]`` -> ``{"mnist": "/data/mnist"}``."""
    dirs = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or name not in DATASETS:
            raise ConfigError(f"--data-dir takes NAME=DIR with NAME in {', '.join(DATASETS)}, got {item!r}.")
        dirs[name] = folder
    return dirs


def command_line(args, seeds=True):
    """The command that makes the whole table: what was given, less --only, --only-sizes, --only-lambs, --dry-run,
    --table-only and --stop-after (and --seeds when ``seeds`` is false: the table's own)."""
    words = ["python", "scripts/reproduce.py"]
    if args.table:
        words += ["--table", args.table]
    words += ["--quick"] if args.quick else []
    words += ["--deterministic"] if args.deterministic else []
    words += ["--datasets", *args.datasets] if args.datasets else []
    if not args.table:
        words += ["--mixers", *args.mixers] if args.mixers else []
    for item in args.data_dir:
        words += ["--data-dir", item]
    words += ["--seeds", *map(str, args.seeds)] if seeds else []
    words += ["--no-recon-gan"] if args.recon_gan is False else []
    for flag in ("preset", "lamb", "lr", "d_lr", "beta", "epochs", "batch_size", "depth", "precision", "probe", "runs"):
        value = getattr(args, flag)
        if value is not None:
            values = value if isinstance(value, list) else [value]
            words += [f"--{flag.replace('_', '-')}", *(f"{v:g}" if isinstance(v, float) else str(v) for v in values)]
    if args.out != "results":
        words += ["--out", args.out]
    return shlex.join(words)


def stop_by(args):
    """The ``time.time()`` of ``--stop-after``, or ``None``."""
    if args.stop_after is None:
        return None
    if not args.stop_after > 0:
        raise ConfigError(f"--stop-after takes minutes > 0, got {args.stop_after:g}.")
    return time.time() + 60 * args.stop_after


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        return _run(args, argv)
    except (ConfigError, FolderLockError, RunWriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:  # Ctrl-C or SIGTERM: the run in progress checkpointed, the ledger is whole
        print(e, file=sys.stderr)
        return e.exit_code


def request_of(args, argv):
    """The ``amr_keras.tables.TableRequest`` of the parsed command line."""
    recipe = {key: getattr(args, key) for key in tables.RECIPE_FIELDS}
    return tables.TableRequest(
        name=args.table or "grid", out=args.out, runs_dir=args.runs, data_dirs=parse_data_dirs(args.data_dir),
        datasets=tuple(args.datasets) if args.datasets else None,
        seeds=tuple(parse_seeds(args.seeds)) if "--seeds" in argv else None,
        only=tuple(args.mixers) if args.mixers else None,
        only_sizes=tuple(args.only_sizes) if args.only_sizes else None,
        only_lambs=tuple(args.only_lambs) if args.only_lambs else None,
        recipe={key: value for key, value in recipe.items() if value is not None}, quick=args.quick,
        deterministic=args.deterministic)


def _run(args, argv):
    plan = tables.plan_table(request_of(args, argv))
    summary = tables.describe_plan(plan.runs, plan.rows, plan.train_sizes, plan.lambs)
    name = args.table or "grid"
    print(f"table {name} -> {os.path.join(args.out, plan.stem)}.md; {summary[0]}; run folders in {plan.runs_dir}")
    if args.dry_run:
        print("\n".join(summary[1:]))
        return 0
    command = command_line(args, seeds=plan.seeds_in_command)

    def write(unavailable=None):
        return plan.write(plan.runs, args.out, plan.stem, command, unavailable)

    unavailable, failed = {}, []
    if not args.table_only:
        unavailable, failed = tables.train_missing(plan.runs, plan.rows, argv=["scripts/reproduce.py", *argv],
                                                   on_finished=write, train_sizes=plan.train_sizes,
                                                   lambs=plan.lambs, stop_by=stop_by(args))
    drawn = plan.finish(plan.runs, args.out, plan.stem) if plan.finish else []
    md, js = write(unavailable)
    print(f"wrote {md} and {js}" + "".join(f" and {item}" if os.path.isfile(item) else f" ({item})"
                                           for item in drawn))
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C outside a run (loading, tabulating): the ledger and the tables are whole
        print("stopped (SIGINT) outside a run: nothing was lost; run the same command again to continue",
              file=sys.stderr)
        sys.exit(130)

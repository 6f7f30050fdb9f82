"""Train AMR and write a run folder (logs, checkpoints, results.json, SavedModel, figure).

Examples:
    python scripts/fit.py                                   # embedded MNIST sample, offline, a few minutes
    python scripts/fit.py --dataset svhn --mixer bernoulli  # tensorflow-datasets
    python scripts/fit.py --dataset fashion_mnist --data-dir DIR   # official raw files, offline
    python scripts/fit.py --out runs/x --resume             # continue a stopped run
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from amr_keras.callbacks import CheckpointError, NonFiniteLossError  # noqa: E402
from amr_keras.config import ConfigError  # noqa: E402
from amr_keras.parser import config_from_args  # noqa: E402
from amr_keras.data import DataError  # noqa: E402
from amr_keras.runfolder import FolderLockError, RunWriteError  # noqa: E402
from amr_keras.stopping import RunStopped  # noqa: E402
from amr_keras.train import run  # noqa: E402


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = config_from_args(argv)
        results = run(cfg, argv=["scripts/fit.py", *argv])
    except (ConfigError, DataError, NonFiniteLossError, CheckpointError, FolderLockError, RunWriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:  # Ctrl-C or SIGTERM: a checkpoint was written (or none was due)
        print(e, file=sys.stderr)
        return e.exit_code
    test = results["test_probe_accuracy"]
    which = "last epoch" if results.get("score_epoch") == "last" else "best epoch"
    if results.get("labelled", True):
        print(f"\n{which} {results['best_epoch']}: validation probe accuracy "
              f"{results['best_val_probe_accuracy']:.4f}, test probe accuracy "
              f"{'n/a (no test split)' if test is None else f'{test:.4f}'}")
    else:
        print(f"\nlast epoch {results['best_epoch']} (unlabelled images: no probe accuracy, no post-hoc evaluation)")
    if "factorvae_score" in results:
        print(f"FactorVAE score {results['factorvae_score']:.3f} ({results['factorvae_active_dims']} of "
              f"{results['factorvae_code_dims']} code values kept); the official code's function "
              f"{results['factorvae_official_score']:.3f} (its scale: at most 0.8)")
    if "linear_eval_test_accuracy" in results:
        lt = results["linear_eval_test_accuracy"]
        print(f"post-hoc linear evaluation: validation {results['linear_eval_val_accuracy']:.4f}, "
              f"test {'n/a' if lt is None else f'{lt:.4f}'}")
    print(f"{results['train_seconds']:.0f} s of training, {results['images_per_second']:.0f} images/s")
    print(f"outputs in {cfg.out}: results.json, log.csv, logs/ (TensorBoard), best.keras, checkpoint/"
          + (", export/ (SavedModel), interpolations.png" if cfg.export else ""))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C before training began (e.g. while TensorFlow loads): nothing to keep
        print("stopped before training began (SIGINT): nothing to continue", file=sys.stderr)
        sys.exit(130)

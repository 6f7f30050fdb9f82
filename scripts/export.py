"""Export a training run's best model as a SavedModel with image-space endpoints, or add the post-hoc head to one.

Usage:
    python scripts/export.py RUN_DIR [--out DIR] [--linear-head [--dataset NAME] [--data-dir DIR]]
    python scripts/export.py EXPORT_DIR --linear-head [--dataset NAME] [--data-dir DIR] [--out DIR]

RUN_DIR holds best.keras and results.json (as written by training); the export
goes to RUN_DIR/export unless --out is given. See amr_keras/export.py for the
endpoints (encode, decode, reconstruct, mix, mix_alpha, classify, classify_linear).

--linear-head fits the post-hoc logistic regression on the codes of the training
split (L2 picked on validation) and exports it as classify_linear; this loads
the dataset: by default the run's dataset and --data-dir (config.json), or the
export's dataset (metadata.json). Given an existing SavedModel folder instead of
a run folder (e.g. saved_models/NAME), it adds classify_linear to that export,
in place unless --out is given, and keeps its other endpoints unchanged.
"""

import argparse
import os

from amr_keras.data import DATASETS, DataError
from amr_keras.export import add_linear_head, export_run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", metavar="RUN_DIR|EXPORT_DIR",
                        help="training run folder (best.keras, results.json) or, with --linear-head, a SavedModel "
                             "export")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output folder (default: RUN_DIR/export, or EXPORT_DIR itself)")
    parser.add_argument("--linear-head", action="store_true",
                        help="fit the post-hoc logistic regression and export it as classify_linear")
    parser.add_argument("--dataset", choices=DATASETS, default=None,
                        help="dataset to fit the head on (default: the run's or the export's)")
    parser.add_argument("--data-dir", default=None, help="folder of the dataset's official raw files (offline)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the post-hoc fit")
    args = parser.parse_args(argv)
    if not args.linear_head and (args.dataset or args.data_dir):
        parser.error("--dataset and --data-dir are for fitting the post-hoc head: add --linear-head.")
    is_export = os.path.isfile(os.path.join(args.path, "saved_model.pb"))
    if is_export and not args.linear_head:
        parser.error(f"{args.path} is already a SavedModel export: pass --linear-head to add classify_linear "
                     "to it, or give the training run folder to export it again.")
    try:
        if is_export:
            path = add_linear_head(args.path, args.dataset, data_dir=args.data_dir, out=args.out, seed=args.seed)
        else:
            path = export_run(args.path, args.out, linear_head=args.linear_head, dataset=args.dataset,
                              data_dir=args.data_dir, seed=args.seed)
    except DataError as e:
        parser.exit(2, f"error: {e}\n")
    print(f"Wrote SavedModel and metadata.json to {path}")


if __name__ == "__main__":
    main()

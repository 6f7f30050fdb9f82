"""Draw interpolation and reconstruction figures from an exported model.

Usage:
    python scripts/interpolate.py SAVED_MODEL_DIR [--dataset NAME] [--data-dir DIR] [--pairs 6] [--out DIR]

Images come from the test split (the training split when there is none) of the
dataset named in SAVED_MODEL_DIR/metadata.json unless --dataset is given;
writes interpolations.png and reconstructions.png to --out (default
SAVED_MODEL_DIR/figures).
"""

import argparse

from amr_keras.data import DATASETS
from amr_keras.plots import make_figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saved_model_dir", metavar="SAVED_MODEL_DIR", help="folder written by scripts/export.py")
    parser.add_argument("--dataset", choices=DATASETS, default=None,
                        help="dataset of the images (default: the one in metadata.json)")
    parser.add_argument("--data-dir", metavar="DIR", default=None, help="folder of the official raw files (offline)")
    parser.add_argument("--pairs", type=int, default=6, help="number of image pairs (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the choice of images and masks (default 0)")
    parser.add_argument("--out", metavar="DIR", default=None, help="output folder (default: SAVED_MODEL_DIR/figures)")
    args = parser.parse_args(argv)
    for path in make_figures(args.saved_model_dir, args.dataset, args.data_dir, args.pairs, args.out, args.seed):
        print(f"Wrote {path}")


if __name__ == "__main__":
    main()

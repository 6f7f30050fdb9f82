"""Export a training run's best model as a SavedModel with image-space endpoints.

Usage:
    python scripts/export.py RUN_DIR [--out DIR]

RUN_DIR holds best.keras and results.json (as written by training); the export
goes to RUN_DIR/export unless --out is given. See amr_keras/export.py for the
endpoints (encode, decode, reconstruct, mix, mix_alpha, classify).
"""

import argparse

from amr_keras.export import export_run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="training run folder with best.keras and results.json")
    parser.add_argument("--out", metavar="DIR", default=None, help="output folder (default: RUN_DIR/export)")
    args = parser.parse_args(argv)
    path = export_run(args.run_dir, args.out)
    print(f"Wrote SavedModel and metadata.json to {path}")


if __name__ == "__main__":
    main()

"""Post-hoc linear evaluation and k-NN accuracy of a trained AMR encoder's frozen codes.

Usage:
    python scripts/evaluate.py runs/RUN_DIR --dataset mnist [--data-dir DIR] [--seed N] [--json OUT.json]
    python scripts/evaluate.py runs/RUN_DIR/export --dataset mnist_sample
    python scripts/evaluate.py runs/RUN_DIR --dataset dsprites_procedural --metric factorvae

--metric factorvae: the FactorVAE disentanglement score on dSprites (amr_keras.disentanglement): defaults
800 votes for the majority-vote classifier, 800 held-out votes, L = 800 images per vote (the official code's
800 and 800), standard deviations over 10,000 images, code values whose standard deviation is below 0.05 pruned
(--prune, --prune-relative); beside it, the official AMR code's function on the same votes (its scale: at most
0.8). A beta-VAE is scored on its posterior mean.

The first argument is a run folder (``best.keras`` or ``export/``), a ``.keras``
file, or a SavedModel export with an ``encode`` endpoint.
"""

import argparse
import json
import sys
import time

from amr_keras import disentanglement
from amr_keras.data import DATASETS, DataError
from amr_keras.evaluate import evaluate_saved


def _fmt(value):
    return "n/a (no test split)" if value is None else f"{value:.4f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="run folder, .keras file or SavedModel export folder")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data-dir", default=None, help="folder of official raw files (offline)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=10, help="neighbours of the k-NN vote")
    parser.add_argument("--train-size", type=int, default=None,
                        help="fit on the class-stratified subset of N training images that fit.py --train-size N "
                             "trained on (default: the whole training split)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="L2 strengths of the linear evaluation fitted at once (default: one per CPU core)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--metric", choices=("linear", "factorvae"), default="linear",
                        help="linear: post-hoc linear evaluation and k-NN (default); factorvae: the FactorVAE "
                             "disentanglement score (dsprites, dsprites_procedural)")
    parser.add_argument("--votes", type=int, default=disentanglement.VOTES,
                        help="factorvae: votes that train the majority-vote classifier")
    parser.add_argument("--eval-votes", type=int, default=disentanglement.EVAL_VOTES,
                        help="factorvae: held-out votes the score is taken on")
    parser.add_argument("--samples", type=int, default=disentanglement.SAMPLES, help="factorvae: images per vote (L)")
    parser.add_argument("--prune", type=float, default=disentanglement.PRUNE_THRESHOLD,
                        help="factorvae: drop code values whose standard deviation is below this")
    parser.add_argument("--prune-relative", action="store_true",
                        help="factorvae: --prune is a fraction of the largest standard deviation")
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.metric == "factorvae":
        return _factorvae(parser, args)

    start = time.perf_counter()
    try:
        results = evaluate_saved(args.path, args.dataset, data_dir=args.data_dir, seed=args.seed, k=args.k,
                                 train_size=args.train_size, n_jobs=args.jobs)
    except (FileNotFoundError, DataError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    seconds = time.perf_counter() - start
    c = results["linear_eval_C"]
    print(f"linear evaluation (L2 = {results['linear_eval_l2']:g}, "
          f"scikit-learn C = {'inf (no penalty)' if c is None else f'{c:g}'}): "
          f"validation {_fmt(results['linear_eval_val_accuracy'])}, test {_fmt(results['linear_eval_test_accuracy'])}"
          + ("" if results["linear_eval_converged"] else
             f" (the fit stopped at its iteration limit, {results['linear_eval_iterations']} iterations)"))
    print(f"k-NN (k = {args.k}, cosine): "
          f"validation {_fmt(results['knn_val_accuracy'])}, test {_fmt(results['knn_test_accuracy'])}")
    print(f"evaluated in {seconds:.1f} s (loading, encoding, linear evaluation and k-NN)")
    return _write_json(args.json, results)


def _write_json(path, results):
    """Write ``results`` to ``path`` when one is given; the script's exit status (0)."""
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {path}")
    return 0


def _factorvae(parser, args):
    start = time.perf_counter()
    try:
        results = disentanglement.factorvae_saved(args.path, args.dataset, data_dir=args.data_dir, seed=args.seed,
                                                  votes=args.votes, eval_votes=args.eval_votes, samples=args.samples,
                                                  prune_threshold=args.prune, prune_relative=args.prune_relative,
                                                  official=True)
    except (FileNotFoundError, DataError, ValueError) as e:
        parser.exit(2, f"error: {e}\n")
    print(f"FactorVAE score: {results['factorvae_score']:.4f} on {args.eval_votes} held-out votes "
          f"({results['factorvae_train_score']:.4f} on the {args.votes} votes of the classifier; L = {args.samples}; "
          f"{results['factorvae_active_dims']} of {results['factorvae_code_dims']} code values active)")
    per_factor = ", ".join(f"{name} {acc:.3f}" for name, acc in results["factorvae_per_factor"].items())
    print(f"held-out accuracy per factor held fixed: {per_factor}")
    print(f"code value -> factor: {results['factorvae_assignment']}")
    print(f"the official AMR code's function (on the {args.votes} votes; at most 0.8): "
          f"{results['factorvae_official_score']:.4f}")
    print(f"evaluated in {time.perf_counter() - start:.1f} s")
    return _write_json(args.json, results)


if __name__ == "__main__":
    sys.exit(main())

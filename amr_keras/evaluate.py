"""Post-hoc evaluation of frozen codes on scikit-learn: logistic regression and cosine k-NN.

The online probe of ``amr_keras.model.AMR`` learns with Adam while the codes
under it still move, so it lags behind the final encoder. This module judges the
codes of a trained (frozen) encoder the way representation-learning papers
do: encode every image once, then

* fit a multinomial logistic regression (``StandardScaler`` +
  ``LogisticRegression``, lbfgs) for each L2 strength of a grid, pick the
  strength by validation accuracy and report its test accuracy;
* classify by majority vote of the ``k`` nearest training codes under cosine
  similarity (``KNeighborsClassifier``).

Example:
    >>> splits = amr_keras.data.load_dataset("mnist_sample")
    >>> results = evaluate_codes(model.encode, splits.arrays)
    >>> results["linear_eval_val_accuracy"], results["knn_val_accuracy"]

Reference:
    C. Beckham et al. On Adversarial Mixup Resynthesis. NeurIPS 2019
    (the paper reports the accuracy of a linear classifier on the frozen codes).
"""

import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from amr_keras.data import load_dataset, preprocess

DEFAULT_L2_GRID = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
RESULT_KEYS = (
    "linear_eval_val_accuracy",
    "linear_eval_test_accuracy",
    "linear_eval_l2",
    "linear_eval_C",
    "linear_eval_iterations",
    "linear_eval_converged",
    "knn_val_accuracy",
    "knn_test_accuracy",
)


# --------------------------------------------------------------------------- encoding
def _to_numpy(out):
    # A SavedModel endpoint may return a one-entry dict of outputs.
    if isinstance(out, dict):
        if len(out) != 1:
            raise ValueError(f"encode_fn returned a dict with {len(out)} outputs {sorted(out)}; expected one code "
                             "tensor.")
        out = next(iter(out.values()))
    return np.asarray(out)


def encode_arrays(encode_fn, images_uint8, batch_size=512, preprocess_fn=preprocess):
    """Encode source-size uint8 images with a frozen encoder, batch by batch.

    No gradient tape is open here, so nothing is recorded for differentiation
    and no weight changes: ``encode_fn`` must run the encoder in inference mode
    (``AMR.encode`` and ``encoder(x, training=False)`` do).

    Args:
        images_uint8: ``(N, 28, 28, 1)`` or ``(N, 32, 32, 3)`` uint8 images (0-255).
        encode_fn: maps one preprocessed batch to codes of any shape ``(B, ...)``,
            e.g. ``model.encode`` of ``amr_keras.model.AMR``.
        batch_size: images per call of ``encode_fn``.
        preprocess_fn: turns a uint8 batch into ``encode_fn``'s input; the default
            ``amr_keras.data.preprocess`` gives the model's 32x32 [-1, 1] input.

    Returns:
        float32 array ``(N, D)`` of flattened codes.

    Example:
        >>> codes = encode_arrays(model.encode, splits.arrays["val"][0])
        >>> codes.shape
        (1000, 32)
    """
    # An array, or an array-like that reads its images as they are used (images.ImageFiles: kept lazy).
    images = images_uint8 if hasattr(images_uint8, "batches") else np.asarray(images_uint8)
    if images.ndim != 4:
        raise ValueError(
            f"encode_arrays expects a batch of images (N, H, W, C), got an array of shape {images.shape}."
        )
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    chunks = []
    batches = (images.batches(int(batch_size)) if hasattr(images, "batches") else
               (images[start : start + batch_size] for start in range(0, len(images), int(batch_size))))
    for batch in batches:
        codes = _to_numpy(encode_fn(preprocess_fn(batch)))
        chunks.append(codes.reshape(len(codes), -1).astype(np.float32))
    if not chunks:
        raise ValueError("encode_arrays got no images (N = 0).")
    return np.concatenate(chunks, axis=0)


# --------------------------------------------------------------------------- checks
def _codes_and_labels(codes, labels, what):
    codes = np.asarray(codes)
    labels = np.asarray(labels)
    if codes.ndim < 2:
        raise ValueError(f"{what} codes must have shape (N, D) (or (N, ...)), got {codes.shape}.")
    codes = codes.reshape(len(codes), -1)
    labels = labels.reshape(-1)
    if len(codes) != len(labels):
        raise ValueError(f"{what}: {len(codes)} codes but {len(labels)} labels; they must match one to one.")
    if len(codes) == 0:
        raise ValueError(f"{what}: no codes to evaluate.")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError(f"{what} labels must be non-negative integers (class indices), got dtype {labels.dtype}.")
    if not np.all(np.isfinite(codes)):
        raise ValueError(f"{what} codes contain NaN or infinite values; the encoder diverged.")
    return codes.astype(np.float64), labels.astype(np.int64)


# --------------------------------------------------------------------------- linear evaluation
def l2_to_C(l2, num_train):
    """scikit-learn's ``C`` for the L2 strength ``l2`` of ``mean(loss) + l2 * ||W||^2``.

    ``LogisticRegression`` minimises ``C * sum(loss) + 0.5 * ||W||^2`` (bias not
    penalised). Divided by ``C * num_train`` this is ``mean(loss) + ||W||^2 /
    (2 * C * num_train)``, so ``C = 1 / (2 * l2 * num_train)``: the same ``l2``
    means the same per-example trade-off on any number of training codes.

    Args:
        l2: strength >= 0 (``keras.regularizers.L2`` convention on the mean loss).
        num_train: number of training codes.

    Returns:
        ``C`` (``inf``, no penalty, for ``l2 = 0``).
    """
    return np.inf if l2 == 0 else 1.0 / (2.0 * l2 * num_train)


def _fit_logistic(x, y, l2, seed, max_iter):
    """``StandardScaler`` + multinomial ``LogisticRegression`` (lbfgs) fitted at strength ``l2``.

    Call it inside ``threadpool_limits(limits=1, user_api="blas")`` (``linear_evaluation`` does, once for all
    its fits: threadpoolctl's limits are process-wide, so fits in parallel threads must not set and restore
    them one by one).
    """
    clf = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=l2_to_C(l2, len(x)), tol=1e-5, max_iter=max_iter, random_state=seed),
    )
    # The caller also silences ConvergenceWarning: not converging is recorded in ``per_l2`` instead.
    return clf.fit(x, y)


def _available_cores():
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _resolve_jobs(n_jobs, tasks):
    if n_jobs is None:
        return max(1, min(tasks, _available_cores()))
    if isinstance(n_jobs, bool) or int(n_jobs) != n_jobs or n_jobs < 1:
        raise ValueError(f"n_jobs must be None (one per core) or an integer >= 1, got {n_jobs!r}.")
    return max(1, min(tasks, int(n_jobs)))


def _log_loss(clf, x, y, num_classes):
    # Classes absent from the training codes get probability 0 (log_loss clips it).
    proba = np.zeros((len(x), num_classes))
    proba[:, clf.classes_] = clf.predict_proba(x)
    return float(log_loss(y, proba, labels=np.arange(num_classes)))


def linear_evaluation(
    train_codes,
    train_labels,
    val_codes,
    val_labels,
    test_codes=None,
    test_labels=None,
    l2_grid=DEFAULT_L2_GRID,
    seed=0,
    num_classes=None,
    max_iter=3000,
    n_jobs=None,
):
    """Fit a multinomial logistic regression on frozen codes and pick its L2 strength on validation.

    For each ``l2`` of the grid, a scikit-learn pipeline standardises the codes
    with the training mean and standard deviation (``StandardScaler``) and fits
    ``LogisticRegression`` (lbfgs, multinomial, float64) with ``C =
    l2_to_C(l2, num_train)``, i.e. it minimises ``mean cross-entropy + l2 *
    ||W||^2`` (bias not penalised) on the training codes. For ``l2 > 0`` the
    problem is strictly convex, so each fit is the unique optimum (to the
    gradient tolerance 1e-5); ``max_iter`` only binds for ``l2 = 0`` on
    separable codes, whose optimum is at infinity. The strength with the best
    validation accuracy wins (ties: lower validation loss, then the larger
    ``l2``); test codes are scored once, with that strength. Test data never
    influences the choice, and the fit uses the training codes only.

    The strengths are fitted in ``n_jobs`` threads, each fit with one BLAS thread: the solver makes thousands
    of small BLAS calls, which run slower with more threads (on 50,000 codes of Fashion-MNIST on a 2-core
    machine with one core busy elsewhere, three strengths took 475 s with OpenBLAS' default two threads and
    52 s with one), while separate fits share the cores well. The unpenalised fit, usually the longest, starts
    first. Results do not depend on ``n_jobs``.

    Args:
        train_codes, val_codes, test_codes: ``(N, D)`` (or ``(N, ...)``) codes.
        train_labels, val_labels, test_labels: ``(N,)`` integer class labels.
        l2_grid: L2 strengths to try (>= 0), see ``l2_to_C``.
        seed: ``random_state`` of the solver (lbfgs uses no randomness: every
            seed gives the same result).
        num_classes: number of classes (default: largest label seen + 1).
        max_iter: lbfgs iteration limit per strength.
        n_jobs: strengths fitted at once (default ``None``: one per available core, at most one per strength).

    Returns:
        dict with ``val_accuracy``, ``test_accuracy`` (None without test codes),
        ``l2`` (the chosen strength), ``C`` (its scikit-learn value, ``inf`` for
        0), ``classifier`` (the fitted ``Pipeline`` of the chosen strength:
        ``predict_proba`` on raw codes) and ``per_l2``: ``{l2: {"C",
        "train_accuracy", "val_accuracy", "val_loss", "iterations", "converged"}}``.

    Example:
        >>> res = linear_evaluation(z_train, y_train, z_val, y_val, z_test, y_test)
        >>> res["l2"], res["val_accuracy"], res["test_accuracy"]
    """
    x_tr, y_tr = _codes_and_labels(train_codes, train_labels, "train")
    x_val, y_val = _codes_and_labels(val_codes, val_labels, "validation")
    if (test_codes is None) != (test_labels is None):
        raise ValueError("Pass both test_codes and test_labels, or neither.")
    has_test = test_codes is not None
    labelled = [(x_val, y_val, "validation")]
    if has_test:
        x_te, y_te = _codes_and_labels(test_codes, test_labels, "test")
        labelled.append((x_te, y_te, "test"))
    for x, _, name in labelled:
        if x.shape[1] != x_tr.shape[1]:
            raise ValueError(f"{name} codes have {x.shape[1]} features, train codes {x_tr.shape[1]}.")
    grid = [float(v) for v in l2_grid]
    if not grid or any(not v >= 0 for v in grid):
        raise ValueError(f"l2_grid must be a non-empty sequence of strengths >= 0, got {l2_grid!r}.")
    seen = max(int(y.max()) for y in [y_tr] + [y for _, y, _ in labelled]) + 1
    num_classes = seen if num_classes is None else int(num_classes)
    if num_classes < seen:
        raise ValueError(f"num_classes={num_classes}, but the labels go up to {seen - 1}.")

    strengths = sorted(set(grid))
    workers = _resolve_jobs(n_jobs, len(strengths))

    def fit_and_score(l2):
        clf = _fit_logistic(x_tr, y_tr, l2, seed, int(max_iter))
        iterations = int(clf[-1].n_iter_[0])
        return clf, {
            "C": clf[-1].C,
            "train_accuracy": float(clf.score(x_tr, y_tr)),
            "val_accuracy": float(clf.score(x_val, y_val)),
            "val_loss": _log_loss(clf, x_val, y_val, num_classes),
            "iterations": iterations,
            "converged": iterations < int(max_iter),
        }

    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if workers == 1:
            done = [fit_and_score(l2) for l2 in strengths]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="linear_eval") as pool:
                done = list(pool.map(fit_and_score, strengths))
    fits = {l2: clf for l2, (clf, _) in zip(strengths, done)}
    per_l2 = {l2: scores for l2, (_, scores) in zip(strengths, done)}
    best = max(per_l2, key=lambda l2: (per_l2[l2]["val_accuracy"], -per_l2[l2]["val_loss"], l2))
    return {
        "val_accuracy": per_l2[best]["val_accuracy"],
        "test_accuracy": float(fits[best].score(x_te, y_te)) if has_test else None,
        "l2": best,
        "C": per_l2[best]["C"],
        "classifier": fits[best],
        "per_l2": per_l2,
    }


# --------------------------------------------------------------------------- k-NN
def _tie_break_by_similarity(distances):
    # One vote per neighbour, less 1e-6 x its cosine distance (<= 2): for k < 500,000 one vote more always
    # outweighs the k small terms, so the majority decides and a tie goes to the closer neighbours.
    return 1.0 - 1e-6 * distances


def knn_accuracy(train_codes, train_labels, query_codes, query_labels, k=10):
    """Accuracy of a cosine-similarity k-nearest-neighbour vote over the training codes.

    Each query takes the ``k`` training codes of highest cosine similarity and
    predicts the label they hold most often (scikit-learn's brute-force
    ``KNeighborsClassifier``, ``metric="cosine"``, which computes the distances
    in memory-bounded chunks). Ties in the vote go to the tied label with the
    largest summed similarity among the ``k`` neighbours, then the lowest label.

    Args:
        train_codes: ``(N, D)`` reference codes; ``train_labels`` their integer labels.
        query_codes: ``(M, D)`` codes to classify; ``query_labels`` their true labels.
        k: neighbours per vote (``1 <= k <= N``).

    Returns:
        Fraction of queries classified correctly (float).
    """
    x_tr, y_tr = _codes_and_labels(train_codes, train_labels, "train")
    x_q, y_q = _codes_and_labels(query_codes, query_labels, "query")
    if x_q.shape[1] != x_tr.shape[1]:
        raise ValueError(f"query codes have {x_q.shape[1]} features, train codes {x_tr.shape[1]}.")
    if int(k) != k or not 1 <= k <= len(x_tr):
        raise ValueError(f"k must be an integer between 1 and the {len(x_tr)} training codes, got {k!r}.")
    knn = KNeighborsClassifier(n_neighbors=int(k), metric="cosine", algorithm="brute",
                               weights=_tie_break_by_similarity)
    return float(knn.fit(x_tr, y_tr).score(x_q, y_q))


# --------------------------------------------------------------------------- whole evaluation
def evaluate_codes(encode_fn, arrays, seed=0, batch_size=512, k=10, preprocess_fn=preprocess, return_classifier=False,
                   n_jobs=None):
    """Encode every split once and run the linear evaluation and k-NN on the codes.

    Args:
        encode_fn: frozen encoder, see ``encode_arrays``.
        arrays: ``{"train": (x_uint8, y), "val": (x, y)[, "test": (x, y)]}``, e.g.
            ``amr_keras.data.load_dataset(...).arrays``.
        seed: passed to ``linear_evaluation``.
        batch_size: images per ``encode_fn`` call.
        k: neighbours of the k-NN vote.
        preprocess_fn: uint8 batch -> ``encode_fn`` input (see ``encode_arrays``).
        return_classifier: also return the fitted linear classifier.
        n_jobs: L2 strengths fitted at once, see ``linear_evaluation`` (default: one per core).

    Returns:
        Flat JSON-ready dict (the keys of ``RESULT_KEYS``): ``linear_eval_val_accuracy``,
        ``linear_eval_test_accuracy`` (None without test), ``linear_eval_l2``,
        ``linear_eval_C`` (None for no penalty), ``linear_eval_iterations`` and
        ``linear_eval_converged`` (lbfgs iterations of the chosen strength's fit, and whether it
        stopped before the iteration limit), ``knn_val_accuracy``, ``knn_test_accuracy``
        (None without test). With ``return_classifier``, the pair ``(dict, classifier)``:
        the ``Pipeline`` of ``linear_evaluation`` that scored them (``predict_proba`` on
        flattened codes), e.g. for ``amr_keras.export.export_model(..., linear_head=...)``.
    """
    missing = [s for s in ("train", "val") if s not in arrays]
    if missing:
        raise ValueError(
            f"arrays lacks the {', '.join(missing)} split(s); expected keys 'train', 'val' and optionally "
            f"'test' (got {sorted(arrays)})."
        )
    codes = {
        split: (encode_arrays(encode_fn, x, batch_size, preprocess_fn), np.asarray(y))
        for split, (x, y) in arrays.items()
        if split in ("train", "val", "test")
    }
    test = codes.get("test", (None, None))
    linear = linear_evaluation(*codes["train"], *codes["val"], *test, seed=seed, n_jobs=n_jobs)
    results = {
        "linear_eval_val_accuracy": linear["val_accuracy"],
        "linear_eval_test_accuracy": linear["test_accuracy"],
        "linear_eval_l2": linear["l2"],
        "linear_eval_C": None if np.isinf(linear["C"]) else float(linear["C"]),
        "linear_eval_iterations": linear["per_l2"][linear["l2"]]["iterations"],
        "linear_eval_converged": linear["per_l2"][linear["l2"]]["converged"],
        "knn_val_accuracy": knn_accuracy(*codes["train"], *codes["val"], k=k),
        "knn_test_accuracy": None if test[0] is None else knn_accuracy(*codes["train"], *test, k=k),
    }
    return (results, linear["classifier"]) if return_classifier else results


# --------------------------------------------------------------------------- saved models
def _images01(images_uint8):
    import tensorflow as tf

    return tf.cast(images_uint8, tf.float32) / 255.0


def _is_saved_model(path):
    return os.path.isfile(os.path.join(path, "saved_model.pb"))


def load_encoder(path):
    """Find a frozen encoder in ``path`` and return ``(encode_fn, preprocess_fn, description)``.

    ``path`` may be:

    * a SavedModel folder (holds ``saved_model.pb``) with an ``encode``
      endpoint taking float32 images in [0, 1] at the dataset's source size;
    * a ``.keras`` file of an ``amr_keras.model.AMR`` (or any model with an ``encoder``);
    * a run folder holding ``best.keras`` (preferred) or an ``export/`` SavedModel.

    Raises:
        FileNotFoundError: nothing loadable at ``path`` (the message lists what was looked for).
        ValueError: a SavedModel without an ``encode`` endpoint, or a model without an encoder.
    """
    if os.path.isdir(path) and not _is_saved_model(path):
        if os.path.isfile(os.path.join(path, "best.keras")):
            path = os.path.join(path, "best.keras")
        elif _is_saved_model(os.path.join(path, "export")):
            path = os.path.join(path, "export")
        else:
            raise FileNotFoundError(
                f"{path} is neither a SavedModel export (no saved_model.pb) nor a run folder "
                "(no best.keras, no export/saved_model.pb). Pass the run folder written by scripts/fit.py "
                "or its export/ folder."
            )
    if os.path.isdir(path):
        import tensorflow as tf

        loaded = tf.saved_model.load(path)
        if not hasattr(loaded, "encode"):
            raise ValueError(
                f"The SavedModel at {path} has no 'encode' endpoint (signatures: "
                f"{sorted(getattr(loaded, 'signatures', {}))}); export it with amr_keras' export."
            )
        # The closure keeps ``loaded`` alive: the endpoint alone does not own its variables.
        return (lambda x: loaded.encode(x)), _images01, f"SavedModel {path} (encode endpoint)"
    if path.endswith(".keras") and os.path.isfile(path):
        import keras

        import amr_keras.bvae  # noqa: F401  (registers BVAE for deserialisation)
        import amr_keras.model  # noqa: F401  (registers AMR for deserialisation)

        model = keras.saving.load_model(path, compile=False)
        encoder = getattr(model, "encoder", None)
        if encoder is None:
            raise ValueError(f"The model in {path} ({type(model).__name__}) has no 'encoder' to evaluate.")
        return (lambda x: encoder(x, training=False)), preprocess, f"Keras model {path}"
    raise FileNotFoundError(
        f"{path} does not exist or is not a .keras file, a SavedModel folder or a run folder."
    )


def evaluate_saved(path, dataset, data_dir=None, seed=0, batch_size=512, k=10, return_classifier=False,
                   train_size=None, n_jobs=None):
    """Evaluate the codes of a saved encoder on ``dataset`` (see ``load_encoder`` for ``path``).

    Args:
        path: SavedModel folder, ``.keras`` file, or run folder.
        dataset: one of ``amr_keras.data.DATASETS``.
        data_dir: folder of official raw files (offline), as in ``load_dataset``.
        seed: passed to ``linear_evaluation``.
        batch_size: images per encoder call.
        k: neighbours of the k-NN vote.
        return_classifier: also return the fitted linear classifier (see ``evaluate_codes``).
        train_size: fit on the same class-stratified subset of N training images as ``--train-size N``
            (default: the whole training split).
        n_jobs: L2 strengths fitted at once, see ``linear_evaluation`` (default: one per core).

    Returns:
        The dict of ``evaluate_codes`` (with ``return_classifier``, the pair ``(dict, classifier)``).

    Example:
        >>> evaluate_saved("runs/mnist_mixup", "mnist")["linear_eval_test_accuracy"]
    """
    encode_fn, preprocess_fn, _ = load_encoder(path)
    splits = load_dataset(dataset, data_dir=data_dir, batch_size=64, train_size=train_size)
    return evaluate_codes(encode_fn, splits.arrays, seed=seed, batch_size=batch_size, k=k, preprocess_fn=preprocess_fn,
                          return_classifier=return_classifier, n_jobs=n_jobs)

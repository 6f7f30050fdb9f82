"""Post-hoc evaluation of frozen codes: a linear probe fitted to convergence, and cosine k-NN.

The online probe of ``amr_keras.model.AMR`` learns with Adam while the codes
under it still move, so it lags behind the final encoder. This module judges the
codes of a trained (frozen) encoder the way representation-learning papers
do: encode every image once, then

* fit a multinomial logistic regression on standardised codes for each L2
  strength of a grid, each solved exactly (L-BFGS-B in float64, a deterministic
  regularisation path from the strongest L2 down), pick the strength by
  validation accuracy and report its test accuracy;
* classify by majority vote of the ``k`` nearest training codes under cosine
  similarity.

Example:
    >>> splits = amr_keras.data.load_dataset("mnist_sample")
    >>> results = evaluate_codes(model.encode, splits.arrays)
    >>> results["linear_eval_val_accuracy"], results["knn_val_accuracy"]

Reference:
    C. Beckham et al. On Adversarial Mixup Resynthesis. NeurIPS 2019
    (the paper reports the accuracy of a linear classifier on the frozen codes).
"""

import contextlib
import os

import numpy as np
import scipy.optimize

from amr_keras.data import load_dataset, preprocess

DEFAULT_L2_GRID = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
RESULT_KEYS = (
    "linear_eval_val_accuracy",
    "linear_eval_test_accuracy",
    "linear_eval_l2",
    "knn_val_accuracy",
    "knn_test_accuracy",
)


# --------------------------------------------------------------------------- encoding
def _to_numpy(out):
    # A SavedModel endpoint may return a one-entry dict of outputs.
    if isinstance(out, dict):
        if len(out) != 1:
            raise ValueError(f"encode_fn returned a dict with {len(out)} outputs {sorted(out)}; expected one code tensor.")
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
    images = np.asarray(images_uint8)
    if images.ndim != 4:
        raise ValueError(
            f"encode_arrays expects a batch of images (N, H, W, C), got an array of shape {images.shape}."
        )
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    chunks = []
    for start in range(0, len(images), int(batch_size)):
        codes = _to_numpy(encode_fn(preprocess_fn(images[start : start + batch_size])))
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
    return codes, labels.astype(np.int64)


# --------------------------------------------------------------------------- linear evaluation
def _single_blas_thread():
    """Run BLAS on one thread (when ``threadpoolctl`` is installed; otherwise change nothing).

    The fits make thousands of small BLAS calls (330 parameters, 50,000 x 32
    codes). Waking OpenBLAS' thread pool for each costs more than it saves, and
    on a busy 2-core machine L-BFGS-B ran 50x slower with two threads than with one.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _softmax_objective(theta, x, labels, l2):
    """Mean softmax cross-entropy + ``l2 * sum(W**2)`` (bias not penalised) and its gradient."""
    n, d = x.shape
    c = theta.size // (d + 1)
    w = theta[: d * c].reshape(d, c)
    rows = np.arange(n)
    logits = x @ w
    logits += theta[d * c :]
    logits -= logits.max(axis=1, keepdims=True)
    true_logits = logits[rows, labels]
    probs = np.exp(logits, out=logits)
    sums = probs.sum(axis=1)
    loss = np.mean(np.log(sums) - true_logits) + l2 * np.sum(w * w)
    # d loss / d logits = (softmax - onehot) / n
    probs /= sums[:, None]
    probs[rows, labels] -= 1.0
    probs /= n
    grad_w = x.T @ probs
    grad_w += 2.0 * l2 * w
    return loss, np.concatenate([grad_w.ravel(), probs.sum(axis=0)])


def _predict(theta, x, num_classes):
    d = x.shape[1]
    logits = x @ theta[: d * num_classes].reshape(d, num_classes) + theta[d * num_classes :]
    return logits


def _accuracy_and_loss(logits, labels):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-np.mean(log_probs[np.arange(len(labels)), labels]))
    return float(np.mean(np.argmax(logits, axis=1) == labels)), loss


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
    max_iter=1000,
):
    """Fit a multinomial logistic regression on frozen codes and pick its L2 strength on validation.

    Codes are standardised with the training mean and standard deviation. For
    each ``l2`` of the grid, ``mean cross-entropy + l2 * ||W||^2`` (bias not
    penalised, the convention of ``keras.regularizers.L2``) is minimised on the
    training codes with scipy's L-BFGS-B in float64, strongest ``l2`` first
    from zero weights, each next one warm-started from the previous optimum.
    For ``l2 > 0`` the problem is strictly convex, so each fit is the unique
    optimum (to the solver's tolerance); ``max_iter`` only binds for ``l2 = 0``
    on separable codes, whose optimum is at infinity. The strength with the
    best validation accuracy wins (ties: lower validation loss, then the
    larger ``l2``); test codes are scored once, with that strength. Test data
    never influences the choice, and the fit uses the training codes only.

    Args:
        train_codes, val_codes, test_codes: ``(N, D)`` (or ``(N, ...)``) codes.
        train_labels, val_labels, test_labels: ``(N,)`` integer class labels.
        l2_grid: L2 strengths to try (>= 0).
        seed: kept for a uniform API; the solver uses no randomness (zero
            start, deterministic path and line search), so every seed gives
            the same result.
        num_classes: number of classes (default: largest label seen + 1).
        max_iter: L-BFGS-B iteration limit per strength.

    Returns:
        dict with ``val_accuracy``, ``test_accuracy`` (None without test codes),
        ``l2`` (the chosen strength) and ``per_l2``: ``{l2: {"train_accuracy",
        "val_accuracy", "val_loss", "iterations", "converged"}}``.

    Example:
        >>> res = linear_evaluation(z_train, y_train, z_val, y_val, z_test, y_test)
        >>> res["l2"], res["val_accuracy"], res["test_accuracy"]
    """
    del seed  # deterministic solver; see the docstring
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

    mean = x_tr.astype(np.float64).mean(axis=0)
    std = x_tr.astype(np.float64).std(axis=0)
    std[std < 1e-12] = 1.0  # constant features: centre only
    standardise = lambda x: (x.astype(np.float64) - mean) / std  # noqa: E731
    x_tr, x_val = standardise(x_tr), standardise(x_val)
    d = x_tr.shape[1]

    # A regularisation path: strongest L2 first, each fit warm-started from the
    # previous optimum (same optima for l2 > 0, far fewer iterations).
    per_l2, thetas = {}, {}
    theta = np.zeros(d * num_classes + num_classes)
    for l2 in sorted(set(grid), reverse=True):
        with _single_blas_thread():
            opt = scipy.optimize.minimize(
                _softmax_objective,
                theta,
                args=(x_tr, y_tr, l2),
                jac=True,
                method="L-BFGS-B",
                options={"maxiter": int(max_iter), "gtol": 1e-5, "ftol": 1e-9},
            )
        theta = thetas[l2] = opt.x
        val_acc, val_loss = _accuracy_and_loss(_predict(opt.x, x_val, num_classes), y_val)
        train_acc = float(np.mean(np.argmax(_predict(opt.x, x_tr, num_classes), axis=1) == y_tr))
        per_l2[l2] = dict(
            train_accuracy=train_acc,
            val_accuracy=val_acc,
            val_loss=val_loss,
            iterations=int(opt.nit),
            converged=bool(opt.success),
        )
    per_l2 = {l2: per_l2[l2] for l2 in sorted(per_l2)}
    best = max(per_l2, key=lambda l2: (per_l2[l2]["val_accuracy"], -per_l2[l2]["val_loss"], l2))
    test_acc = None
    if has_test:
        test_acc, _ = _accuracy_and_loss(_predict(thetas[best], standardise(x_te), num_classes), y_te)
    return {"val_accuracy": per_l2[best]["val_accuracy"], "test_accuracy": test_acc, "l2": best, "per_l2": per_l2}


# --------------------------------------------------------------------------- k-NN
def _unit_rows(x):
    x = x.astype(np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def knn_accuracy(train_codes, train_labels, query_codes, query_labels, k=10, max_block_elements=1 << 24):
    """Accuracy of a cosine-similarity k-nearest-neighbour vote over the training codes.

    Each query takes the ``k`` training codes of highest cosine similarity and
    predicts the label they hold most often. Ties in the vote go to the tied
    label with the largest summed similarity among the ``k`` neighbours (then
    the lowest label). Similarities are computed block by block (at most
    ``max_block_elements`` query x train entries at once, 64 MB in float32),
    so 50,000 x 10,000 codes fit in memory.

    Args:
        train_codes: ``(N, D)`` reference codes; ``train_labels`` their integer labels.
        query_codes: ``(M, D)`` codes to classify; ``query_labels`` their true labels.
        k: neighbours per vote (``1 <= k <= N``).
        max_block_elements: size of one block of the similarity matrix.

    Returns:
        Fraction of queries classified correctly (float).
    """
    x_tr, y_tr = _codes_and_labels(train_codes, train_labels, "train")
    x_q, y_q = _codes_and_labels(query_codes, query_labels, "query")
    if x_q.shape[1] != x_tr.shape[1]:
        raise ValueError(f"query codes have {x_q.shape[1]} features, train codes {x_tr.shape[1]}.")
    if int(k) != k or not 1 <= k <= len(x_tr):
        raise ValueError(f"k must be an integer between 1 and the {len(x_tr)} training codes, got {k!r}.")
    k = int(k)
    num_classes = int(y_tr.max()) + 1
    x_tr, x_q = _unit_rows(x_tr), _unit_rows(x_q)
    block = max(1, int(max_block_elements) // len(x_tr))
    correct = 0
    for start in range(0, len(x_q), block):
        sims = x_q[start : start + block] @ x_tr.T
        rows = np.arange(len(sims))[:, None]
        top = np.argpartition(sims, len(x_tr) - k, axis=1)[:, -k:]
        top_sims = sims[rows, top].astype(np.float64)
        # Per-class vote counts and summed similarities, via one flat bincount each.
        flat = (rows * num_classes + y_tr[top]).ravel()
        size = len(sims) * num_classes
        counts = np.bincount(flat, minlength=size).reshape(len(sims), num_classes)
        sim_sums = np.bincount(flat, weights=top_sims.ravel(), minlength=size).reshape(len(sims), num_classes)
        tied = counts == counts.max(axis=1, keepdims=True)
        pred = np.argmax(np.where(tied, sim_sums, -np.inf), axis=1)
        correct += int(np.sum(pred == y_q[start : start + block]))
    return correct / len(x_q)


# --------------------------------------------------------------------------- whole evaluation
def evaluate_codes(encode_fn, arrays, seed=0, batch_size=512, k=10, preprocess_fn=preprocess):
    """Encode every split once and run the linear evaluation and k-NN on the codes.

    Args:
        encode_fn: frozen encoder, see ``encode_arrays``.
        arrays: ``{"train": (x_uint8, y), "val": (x, y)[, "test": (x, y)]}``, e.g.
            ``amr_keras.data.load_dataset(...).arrays``.
        seed: passed to ``linear_evaluation``.
        batch_size: images per ``encode_fn`` call.
        k: neighbours of the k-NN vote.
        preprocess_fn: uint8 batch -> ``encode_fn`` input (see ``encode_arrays``).

    Returns:
        Flat dict: ``linear_eval_val_accuracy``, ``linear_eval_test_accuracy``
        (None without test), ``linear_eval_l2``, ``knn_val_accuracy``,
        ``knn_test_accuracy`` (None without test).
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
    linear = linear_evaluation(*codes["train"], *codes["val"], *test, seed=seed)
    return {
        "linear_eval_val_accuracy": linear["val_accuracy"],
        "linear_eval_test_accuracy": linear["test_accuracy"],
        "linear_eval_l2": linear["l2"],
        "knn_val_accuracy": knn_accuracy(*codes["train"], *codes["val"], k=k),
        "knn_test_accuracy": None if test[0] is None else knn_accuracy(*codes["train"], *test, k=k),
    }


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

        import amr_keras.model  # noqa: F401  (registers AMR for deserialisation)

        model = keras.saving.load_model(path, compile=False)
        encoder = getattr(model, "encoder", None)
        if encoder is None:
            raise ValueError(f"The model in {path} ({type(model).__name__}) has no 'encoder' to evaluate.")
        return (lambda x: encoder(x, training=False)), preprocess, f"Keras model {path}"
    raise FileNotFoundError(
        f"{path} does not exist or is not a .keras file, a SavedModel folder or a run folder."
    )


def evaluate_saved(path, dataset, data_dir=None, seed=0, batch_size=512, k=10):
    """Evaluate the codes of a saved encoder on ``dataset`` (see ``load_encoder`` for ``path``).

    Args:
        path: SavedModel folder, ``.keras`` file, or run folder.
        dataset: one of ``amr_keras.data.DATASETS``.
        data_dir: folder of official raw files (offline), as in ``load_dataset``.
        seed: passed to ``linear_evaluation``.
        batch_size: images per encoder call.
        k: neighbours of the k-NN vote.

    Returns:
        The dict of ``evaluate_codes``.

    Example:
        >>> evaluate_saved("runs/mnist_mixup", "mnist")["linear_eval_test_accuracy"]
    """
    encode_fn, preprocess_fn, _ = load_encoder(path)
    splits = load_dataset(dataset, data_dir=data_dir, batch_size=64)
    return evaluate_codes(encode_fn, splits.arrays, seed=seed, batch_size=batch_size, k=k, preprocess_fn=preprocess_fn)

"""The FactorVAE disentanglement metric (Kim & Mnih, 2018) on dSprites, as the paper's Table 4 scores it.

1. Scale: every code value is divided by its standard deviation over the dataset (``variance_samples`` random
   images). Values whose standard deviation is below ``prune_threshold`` times the largest one are dropped as
   collapsed (Kim & Mnih prune the dimensions a VAE collapsed to its prior; a relative threshold treats an
   autoencoder's codes, which have no fixed scale, alike).
2. Vote: pick a factor ``k`` (each of the five in turn: shape, scale, orientation, x, y) and a random value of
   it; encode ``samples`` (L) images sharing that value, every other factor random; the scaled code value of
   least variance over them votes for ``k``.
3. Classify: the majority-vote classifier maps each code value to the factor it voted for most often in the
   ``votes`` training votes; the score is its accuracy on ``eval_votes`` other, held-out votes. Chance is 1/5;
   a code whose every factor has a code value of its own scores 1.

Defaults: 800 training votes and L = 800 images per vote, as the official AMR code's
``dsprite_disentanglement_fv`` (``n_votes=800, L=800``), plus 800 held-out votes (that code reports the
majority vote's accuracy on its own 800 votes, and leaves out its last factor); 10,000 images for the
standard deviations. Votes are spread evenly over the factors.

Reference:
    H. Kim, A. Mnih. Disentangling by Factorising. ICML 2018, Sec. 4.
"""

import numpy as np

VOTES = 800
EVAL_VOTES = 800
SAMPLES = 800  # L
VARIANCE_SAMPLES = 10000
PRUNE_THRESHOLD = 0.05


def _encode_all(encode, source, classes, batch_size):
    """Codes ``(N, D)`` (float64) of the images of grid cells ``classes``, encoded ``batch_size`` at a time."""
    out = []
    for start in range(0, len(classes), batch_size):
        codes = np.asarray(encode(source.images(classes[start:start + batch_size])))
        out.append(codes.reshape(len(codes), -1).astype(np.float64))
    return np.concatenate(out)


def _votes(encode, source, scale, keep, n_votes, samples, rng, batch_size):
    """``(factor, code value of least scaled variance)`` for ``n_votes`` votes spread evenly over the factors."""
    n_factors = len(source.factor_sizes)
    factors = np.arange(n_votes) % n_factors
    winners = np.empty(n_votes, np.int64)
    for i, factor in enumerate(factors):
        value = rng.integers(0, source.factor_sizes[factor])
        classes = source.sample_classes(rng, samples, fixed=factor, value=value)
        codes = _encode_all(encode, source, classes, batch_size)[:, keep] / scale
        winners[i] = int(np.argmin(codes.var(axis=0)))
    return factors, winners


def factorvae_score(encode, source, votes=VOTES, eval_votes=EVAL_VOTES, samples=SAMPLES,
                    variance_samples=VARIANCE_SAMPLES, prune_threshold=PRUNE_THRESHOLD, seed=0, batch_size=800):
    """FactorVAE disentanglement score of ``encode`` on the factors of ``source``.

    Args:
        encode: uint8 images ``(N, 64, 64, 1)`` of 0 and 255 -> codes ``(N, ...)`` (flattened here). See
            ``image_encoder`` for a model or an export.
        source: a ``amr_keras.dsprites.FactorSource`` (its ``images``, ``sample_classes``, ``factor_sizes``).
        votes: votes that train the majority-vote classifier.
        eval_votes: held-out votes it is scored on.
        samples: images per vote (L).
        variance_samples: random images over which each code value's standard deviation is taken.
        prune_threshold: code values with a standard deviation below this fraction of the largest are dropped.
        seed: seed of every draw (factor values, images).
        batch_size: images encoded at a time.

    Returns:
        dict: ``factorvae_score`` (held-out accuracy), ``factorvae_train_score`` (accuracy on the training
        votes), ``factorvae_per_factor`` (held-out accuracy on the votes of each factor, by name),
        ``factorvae_active_dims`` (code values kept), ``factorvae_assignment`` (factor name per kept code value,
        ``None`` for one that never won a vote), and the settings (``factorvae_votes``, ...).

    Example:
        >>> factorvae_score(lambda x: factors_of(x), ProceduralSource())["factorvae_score"]
        1.0
    """
    for name, value in (("votes", votes), ("eval_votes", eval_votes), ("samples", samples),
                        ("variance_samples", variance_samples)):
        if int(value) != value or value < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {value!r}.")
    rng = np.random.default_rng(seed)
    codes = _encode_all(encode, source, source.sample_classes(rng, variance_samples), batch_size)
    std = codes.std(axis=0)
    keep = std >= prune_threshold * std.max() if std.max() > 0 else np.zeros(len(std), bool)
    if not keep.any():
        raise ValueError("every code value is constant over the dataset: the encoder has collapsed, there is "
                         "nothing to score.")
    scale = std[keep]
    train_factors, train_winners = _votes(encode, source, scale, keep, votes, samples, rng, batch_size)
    eval_factors, eval_winners = _votes(encode, source, scale, keep, eval_votes, samples, rng, batch_size)
    n_dims, n_factors = int(keep.sum()), len(source.factor_sizes)
    counts = np.zeros((n_dims, n_factors), np.int64)
    np.add.at(counts, (train_winners, train_factors), 1)
    # Majority vote per code value; ties go to the first factor, a value that never won predicts -1 (wrong).
    assignment = np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1), -1)
    names = getattr(source, "factor_names", tuple(str(i) for i in range(n_factors)))
    correct = assignment[eval_winners] == eval_factors
    return {
        "factorvae_score": float(np.mean(correct)),
        "factorvae_per_factor": {names[f]: float(np.mean(correct[eval_factors == f])) for f in range(n_factors)},
        "factorvae_train_score": float(np.mean(assignment[train_winners] == train_factors)),
        "factorvae_active_dims": n_dims,
        "factorvae_code_dims": int(len(keep)),
        "factorvae_assignment": [names[a] if a >= 0 else None for a in assignment],
        "factorvae_votes": int(votes), "factorvae_eval_votes": int(eval_votes), "factorvae_samples": int(samples),
        "factorvae_variance_samples": int(variance_samples), "factorvae_prune_threshold": float(prune_threshold),
    }


def image_encoder(encode_fn, preprocess_fn):
    """``encode`` for ``factorvae_score``: uint8 images of 0/255 -> codes (numpy).

    Args:
        encode_fn, preprocess_fn: as returned by ``amr_keras.evaluate.load_encoder`` (a model's encoder on
            [-1, 1] images with ``amr_keras.data.preprocess``, or an export's ``encode`` on [0, 1] images);
            a beta-VAE's encoder is its posterior mean.
    """
    return lambda images: np.asarray(encode_fn(preprocess_fn(images)))


def factorvae_saved(path, dataset, data_dir=None, tfds_data_dir=None, **kwargs):
    """``factorvae_score`` of a saved encoder (run folder, ``.keras`` file or export, see
    ``amr_keras.evaluate.load_encoder``) on a dSprites dataset (``dsprites`` or ``dsprites_procedural``).

    Args:
        **kwargs: passed to ``factorvae_score`` (``votes``, ``eval_votes``, ``samples``, ``seed``, ...).
    """
    from amr_keras.data import DSPRITES_DATASETS, DataError
    from amr_keras.dsprites import factor_source
    from amr_keras.evaluate import load_encoder

    if dataset not in DSPRITES_DATASETS:
        raise DataError(f"The FactorVAE metric needs the factors of dSprites: use --dataset "
                        f"{' or '.join(DSPRITES_DATASETS)}, not {dataset}.")
    encode_fn, preprocess_fn, _ = load_encoder(path)
    source, _ = factor_source(dataset, data_dir, tfds_data_dir)
    return factorvae_score(image_encoder(encode_fn, preprocess_fn), source, **kwargs)

"""Two disentanglement scores on dSprites: the FactorVAE score (Kim & Mnih, 2018) and the official AMR code's.

``factorvae_score`` is the FactorVAE score as Kim & Mnih define it and disentanglement_lib computes it, the
primary score of Table 4:

1. Scale: every code value is divided by its standard deviation over the dataset (``variance_samples`` random
   images). Values whose standard deviation is below ``prune_threshold`` are dropped as collapsed (Kim & Mnih
   prune the dimensions a VAE collapsed to its prior; disentanglement_lib's configuration prunes a standard
   deviation below 0.05, the default here; ``prune_relative=True`` reads the threshold as a fraction of the
   largest standard deviation instead, which treats codes of any scale alike).
2. Vote: pick a factor ``k`` (each of the five in turn: shape, scale, orientation, x, y) and a random value of
   it; encode ``samples`` (L) images sharing that value, every other factor random; the scaled code value of
   least variance over them votes for ``k``.
3. Classify: the majority-vote classifier maps each code value to the factor it voted for most often in the
   ``votes`` training votes; the score is its accuracy on ``eval_votes`` other, held-out votes. Chance is 1/5;
   a code whose every factor has a code value of its own scores 1.

Defaults: 800 training votes and L = 800 images per vote, as the official AMR code, plus 800 held-out votes;
10,000 images for the standard deviations. Votes are spread evenly over the factors.

``factorvae_official_score`` reproduces the official AMR code's ``dsprite_disentanglement_fv`` (``tools.py`` of
christopher-beckham/amr), the function behind the paper's Table 4, quirks included, so that a row can be set
beside the paper's on the paper's own scale. It departs from the FactorVAE score in four ways: no code value is
pruned; each value is scaled by its standard deviation over the votes' own images (not over the dataset); each
*factor* is mapped to the code value that wins most of its votes (several factors may share one value, so a code
whose one informative value wins every vote is not penalised); and its loop over the factors (``range(ys.max())``)
never counts the last factor's (y's) votes as right. So a perfect code scores 0.8 there, and a code with one
informative value for all five factors about 0.8 too (0.2 by the FactorVAE score). It is scored on its own votes
(no held-out votes). Read it as the paper's scale, not as a disentanglement measure.

Reference:
    H. Kim, A. Mnih. Disentangling by Factorising. ICML 2018, Sec. 4.
    F. Locatello et al. Challenging Common Assumptions in the Unsupervised Learning of Disentangled
    Representations. ICML 2019 (disentanglement_lib).
"""

import numpy as np

VOTES = 800
EVAL_VOTES = 800
SAMPLES = 800  # L
VARIANCE_SAMPLES = 10000
PRUNE_THRESHOLD = 0.05  # disentanglement_lib's factor_vae_metric.gin: prune_dims.threshold = 0.05


def _encode_all(encode, source, classes, batch_size):
    """Codes ``(N, D)`` (float64) of the images of grid cells ``classes``, encoded ``batch_size`` at a time."""
    out = []
    for start in range(0, len(classes), batch_size):
        codes = np.asarray(encode(source.images(classes[start:start + batch_size])))
        out.append(codes.reshape(len(codes), -1).astype(np.float64))
    return np.concatenate(out)


def _draw_votes(encode, source, n_votes, samples, rng, batch_size):
    """Factors ``(n_votes,)``, spread evenly, and the codes ``(n_votes, samples, D)`` (float32) of each vote's
    images: ``samples`` images sharing one random value of the vote's factor, every other factor random."""
    n_factors = len(source.factor_sizes)
    factors = np.arange(n_votes) % n_factors
    codes = None
    for i, factor in enumerate(factors):
        value = rng.integers(0, source.factor_sizes[factor])
        classes = source.sample_classes(rng, samples, fixed=factor, value=value)
        vote = _encode_all(encode, source, classes, batch_size)
        if codes is None:
            codes = np.empty((n_votes, samples, vote.shape[1]), np.float32)
        codes[i] = vote
    return factors, codes


def _winners(codes, scale, keep):
    """The code value of least scaled variance of each vote."""
    return np.array([int(np.argmin((vote.astype(np.float64)[:, keep] / scale).var(axis=0))) for vote in codes])


def factorvae_score(encode, source, votes=VOTES, eval_votes=EVAL_VOTES, samples=SAMPLES,
                    variance_samples=VARIANCE_SAMPLES, prune_threshold=PRUNE_THRESHOLD, prune_relative=False, seed=0,
                    batch_size=800, official=False):
    """FactorVAE disentanglement score of ``encode`` on the factors of ``source``.

    Args:
        encode: uint8 images ``(N, 64, 64, 1)`` of 0 and 255 -> codes ``(N, ...)`` (flattened here). See
            ``image_encoder`` for a model or an export.
        source: a ``amr_keras.dsprites.FactorSource`` (its ``images``, ``sample_classes``, ``factor_sizes``).
        votes: votes that train the majority-vote classifier.
        eval_votes: held-out votes it is scored on.
        samples: images per vote (L).
        variance_samples: random images over which each code value's standard deviation is taken.
        prune_threshold: code values with a standard deviation over the dataset below this are dropped.
        prune_relative: read ``prune_threshold`` as a fraction of the largest standard deviation.
        seed: seed of every draw (factor values, images).
        batch_size: images encoded at a time.
        official: also compute ``factorvae_official_score`` on the training votes (drawn as the official function
            draws its votes; spread alike when ``votes`` is a multiple of the factors).

    Returns:
        dict: ``factorvae_score`` (held-out accuracy), ``factorvae_train_score`` (accuracy on the training
        votes), ``factorvae_per_factor`` (held-out accuracy on the votes of each factor, by name),
        ``factorvae_active_dims`` (code values kept), ``factorvae_assignment`` (factor name per kept code value,
        ``None`` for one that never won a vote), the settings (``factorvae_votes``, ...), and with ``official``
        the keys of ``factorvae_official_score``. A code whose every value is pruned scores 0 with no value
        kept, as in disentanglement_lib.

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
    std = codes.std(axis=0, ddof=1)
    threshold = prune_threshold * std.max() if prune_relative else prune_threshold
    keep = (std >= threshold) & (std > 0)
    train_factors, train_codes = _draw_votes(encode, source, votes, samples, rng, batch_size)
    names = getattr(source, "factor_names", tuple(str(i) for i in range(len(source.factor_sizes))))
    settings = {
        "factorvae_code_dims": int(len(keep)),
        "factorvae_votes": int(votes), "factorvae_eval_votes": int(eval_votes), "factorvae_samples": int(samples),
        "factorvae_variance_samples": int(variance_samples), "factorvae_prune_threshold": float(prune_threshold),
        "factorvae_prune_relative": bool(prune_relative),
        **(_official(train_factors, train_codes, names) if official else {}),
    }
    if not keep.any():
        # Every value collapsed (below the threshold): nothing is kept to vote, and disentanglement_lib scores 0.
        return {"factorvae_score": 0.0, "factorvae_per_factor": dict.fromkeys(names, 0.0),
                "factorvae_train_score": 0.0, "factorvae_active_dims": 0, "factorvae_assignment": [], **settings}
    scale = std[keep]
    eval_factors, eval_codes = _draw_votes(encode, source, eval_votes, samples, rng, batch_size)
    train_winners, eval_winners = _winners(train_codes, scale, keep), _winners(eval_codes, scale, keep)
    n_dims, n_factors = int(keep.sum()), len(names)
    counts = np.zeros((n_dims, n_factors), np.int64)
    np.add.at(counts, (train_winners, train_factors), 1)
    # Majority vote per code value; ties go to the first factor, a value that never won predicts -1 (wrong).
    assignment = np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1), -1)
    correct = assignment[eval_winners] == eval_factors
    return {
        "factorvae_score": float(np.mean(correct)),
        "factorvae_per_factor": {names[f]: float(np.mean(correct[eval_factors == f])) for f in range(n_factors)},
        "factorvae_train_score": float(np.mean(assignment[train_winners] == train_factors)),
        "factorvae_active_dims": n_dims,
        "factorvae_assignment": [names[a] if a >= 0 else None for a in assignment],
        **settings,
    }


def factorvae_official_score(encode, source, votes=VOTES, samples=SAMPLES, seed=0, batch_size=800):
    """The official AMR code's ``dsprite_disentanglement_fv``, quirks included (see the module docstring).

    Args:
        encode, source, batch_size: as for ``factorvae_score``.
        votes: votes in all (``votes // factors`` per factor, as the official ``n_votes``).
        samples: images per vote (the official ``L``).
        seed: seed of every draw.

    Returns:
        dict: ``factorvae_official_score`` (0 to 0.8 for five factors), ``factorvae_official_per_factor`` (share
        of each factor's votes won by its most common code value; the last factor's is reported but, as in the
        official code, never counted), ``factorvae_official_votes``, ``factorvae_official_samples``.

    Example:
        >>> factorvae_official_score(lambda x: factors_of(x), ProceduralSource())["factorvae_official_score"]
        0.8
    """
    for name, value in (("votes", votes), ("samples", samples)):
        if int(value) != value or value < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {value!r}.")
    n_factors = len(source.factor_sizes)
    if votes // n_factors < 1:
        raise ValueError(f"votes must be at least the number of factors ({n_factors}), got {votes}.")
    factors, codes = _draw_votes(encode, source, votes // n_factors * n_factors, samples, np.random.default_rng(seed),
                                 batch_size)
    return _official(factors, codes, getattr(source, "factor_names", tuple(str(i) for i in range(n_factors))))


def _official(factors, codes, names):
    """The official function on drawn votes: ``factors (V,)``, ``codes (V, L, D)``."""
    n_factors = len(names)
    xs = codes.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # a constant value gives nan, as in the official code
        xs = xs / xs.reshape(-1, xs.shape[-1]).std(axis=0, keepdims=True)
        winners = np.argmin(xs.var(axis=1), axis=1)
    counts = [np.bincount(winners[factors == f]).max() if (factors == f).any() else 0 for f in range(n_factors)]
    # The official loop is range(ys.max()): the last factor's votes are never counted as right.
    return {
        "factorvae_official_score": float(sum(counts[:n_factors - 1]) / len(winners)),
        "factorvae_official_per_factor": {names[f]: float(counts[f] / max(1, np.sum(factors == f)))
                                          for f in range(n_factors)},
        "factorvae_official_votes": int(len(winners)), "factorvae_official_samples": int(codes.shape[1]),
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
    from amr_keras.data import DataError, dataset_names, dataset_spec
    from amr_keras.dsprites import factor_source
    from amr_keras.evaluate import load_encoder

    with_factors = [name for name in dataset_names() if dataset_spec(name).factors]
    if dataset not in with_factors:
        raise DataError(f"The FactorVAE metric needs the factors of dSprites: use --dataset "
                        f"{' or '.join(with_factors)}, not {dataset}.")
    encode_fn, preprocess_fn, _ = load_encoder(path)
    source, _ = factor_source(dataset, data_dir, tfds_data_dir)
    return factorvae_score(image_encoder(encode_fn, preprocess_fn), source, **kwargs)

"""Mixing functions for codes: mixup, Bernoulli (per feature map), their k-way versions, ACAI's mixup, and none.

Every mixer pairs each code of a batch with ``k - 1`` partners drawn by random
permutations of the *same* batch (under ``tf.distribute`` that is the replica's
own batch) and combines them with weights ``w`` of shape ``(k, batch, 1, 1, C')``
that are non-negative and sum to one over ``k``. A flat code ``(batch, C)`` (the
``burgess`` networks) takes weights ``(k, batch, C')``: its "feature maps" are its values,
so Bernoulli draws one mask entry per code value.

- ``mixup``: one weight vector per example, ``C' = 1``; for k=2, ``a ~ U(0, 1)``;
  for k > 2, ``w ~ Dirichlet(1, ..., 1)``.
- ``bernoulli``: one 0/1 choice per example and per feature map, ``C' = C``;
  for k=2 a mask ``m ~ Bernoulli(p)`` with one ``p ~ U(0, 1)`` per batch (as the
  reference code's feature-map mixer); for k > 2 each feature map is taken
  whole from one of the k codes, chosen uniformly.
- ``acai``: mixup of pairs (k must be 2), ``a ~ U(0, 1)`` per example; the model
  then trains ACAI's critic, which regresses the weight ``a`` (see ``amr_keras.model``).
- ``none``: no mixing (the AE + GAN baseline); ``mix_codes`` returns ``None``.

Reference:
    C. Beckham et al. On Adversarial Mixup Resynthesis. NeurIPS 2019, Sec. 2.
    D. Berthelot, C. Raffel, A. Roy, I. Goodfellow. Understanding and Improving
    Interpolation in Autoencoders via an Adversarial Regularizer. ICLR 2019.
"""

import dataclasses

import keras
from keras import ops

from amr_keras.registry import Registry


@dataclasses.dataclass(frozen=True)
class MixerSpec:
    """One way of mixing codes: how its weights are drawn and how many codes it mixes.

    Adding a mixer is one ``register_mixer(MixerSpec(...))`` call (``docs/contributing.md``).

    Attributes:
        name: the ``--mixer`` value.
        weights: ``weights(k, batch, channels, seed, ones) -> (k, batch, *ones, 1 or channels)``: non-negative
            float32 weights summing to 1 over the first axis; ``ones`` is ``(1, 1)`` for code maps
            ``(batch, H, W, C)`` and ``()`` for flat codes ``(batch, C)``; ``seed`` a ``keras.random.SeedGenerator``.
            None for a mixer that does not mix (``none``).
        max_k: the most codes one mix takes (``acai``: 2, as its critic regresses the weight of a pair); None: any.
        summary: one line for the docs.
    """

    name: str
    weights: object
    max_k: int = None
    summary: str = ""


def _mixup_weights(k, batch, channels, seed, ones):
    if k == 2:
        a = keras.random.uniform((batch, *ones, 1), seed=seed)
        return ops.stack([a, 1.0 - a])
    # Dirichlet(1, ..., 1) as normalised Exponential(1) draws.
    e = -ops.log(keras.random.uniform((k, batch, *ones, 1), minval=1e-7, maxval=1.0, seed=seed))
    return e / ops.sum(e, axis=0, keepdims=True)


def _bernoulli_weights(k, batch, channels, seed, ones):
    if k == 2:
        p = keras.random.uniform((), seed=seed)
        m = ops.cast(keras.random.uniform((batch, *ones, channels), seed=seed) < p, "float32")
        return ops.stack([m, 1.0 - m])
    choice = keras.random.randint((batch, *ones, channels), 0, k, seed=seed)
    # one_hot puts the k axis last; move it to the front.
    return ops.moveaxis(ops.one_hot(choice, k, dtype="float32"), -1, 0)


_REGISTRY = Registry("mixer")


def register_mixer(spec, replace=False):
    """Make ``spec`` a mixer of the model, the settings and the scripts; returns it.

    Raises:
        ValueError: a mixer of that name exists (pass ``replace=True`` to replace it), or ``max_k`` is below 2.
    """
    if spec.max_k is not None and spec.max_k < 2:
        raise ValueError(f"mixer {spec.name!r}: max_k must be at least 2 (a mix takes two codes or more).")
    return _REGISTRY.register(spec, replace)


def mixer_names():
    """The registered mixers, built-in ones first."""
    return _REGISTRY.names()


def mixer_spec(name):
    """The ``MixerSpec`` of ``name``; ``ValueError`` listing the known ones for an unknown name."""
    return _REGISTRY.spec(name)


for _spec in (
    MixerSpec("mixup", _mixup_weights, summary="convex combinations: U(0, 1) for pairs, Dirichlet(1, ..., 1) for k"),
    MixerSpec("bernoulli", _bernoulli_weights, summary="each feature map taken whole from one of the k codes"),
    MixerSpec("acai", _mixup_weights, max_k=2, summary="mixup of pairs, with ACAI's critic regressing the weight"),
    MixerSpec("none", None, summary="no mixing: the AE + GAN baseline"),
):
    register_mixer(_spec)

# The built-in mixers (use mixer_names in new code: it also sees mixers registered later).
MIXERS = mixer_names()
# Mixers that mix any number k >= 2 of codes; "acai" mixes pairs only, and k means nothing to "none".
K_WAY_MIXERS = tuple(name for name in MIXERS if _REGISTRY[name].weights is not None and _REGISTRY[name].max_k is None)


def check_mixer(mixer, k=2):
    """Validate a mixer name and ``k``; raise ``ValueError`` saying what is accepted."""
    spec = mixer_spec(mixer)
    if int(k) != k or k < 2:
        raise ValueError(f"k (codes mixed together) must be an integer >= 2, got {k!r}.")
    if spec.max_k is not None and k > spec.max_k:
        if mixer == "acai":
            raise ValueError(
                f"Mixer 'acai' mixes pairs of codes (its critic regresses the weight of the pair): k must be 2, "
                f"got {k!r}. Use k=2, or mixup/bernoulli for k-way mixes."
            )
        raise ValueError(f"Mixer {mixer!r} mixes at most {spec.max_k} codes, got k={k!r}.")
    return mixer, int(k)


def mixing_weights(mixer, k, batch, channels, seed, rank=4):
    """Draw mixing weights of shape ``(k, batch, 1, 1, 1 or channels)`` (``rank`` 2: ``(k, batch, 1 or channels)``).

    Args:
        mixer: a registered mixer that mixes (``"mixup"``, ``"bernoulli"``, ``"acai"`` (mixup of pairs), ...).
        k: number of codes mixed together (>= 2).
        batch: batch size (a Python int or scalar tensor).
        channels: feature maps of the code (the values of a flat code).
        seed: a ``keras.random.SeedGenerator``.
        rank: rank of the codes: 4 for ``(batch, H, W, C)`` maps, 2 for flat ``(batch, C)`` codes.

    Returns:
        Non-negative float32 weights summing to 1 over the first axis.
    """
    spec = _REGISTRY.get(mixer)
    if spec is None or spec.weights is None:
        mixing = [name for name, s in _REGISTRY.items() if s.weights is not None]
        raise ValueError(f"mixing_weights needs one of {', '.join(map(repr, mixing))}, got {mixer!r}.")
    return spec.weights(k, batch, channels, seed, (1,) * (rank - 2))


def partners(codes, k, seed):
    """Stack ``codes`` with ``k - 1`` random permutations of it: shape ``(k, batch, ...)``."""
    batch = ops.shape(codes)[0]
    stack = [codes]
    for _ in range(k - 1):
        perm = ops.argsort(keras.random.uniform((batch,), seed=seed))
        stack.append(ops.take(codes, perm, axis=0))
    return ops.stack(stack)


def mix_codes(codes, mixer, k, seed, return_weights=False):
    """Mix each code of a batch with ``k - 1`` others of the same batch.

    Args:
        codes: ``(batch, H, W, C)`` code maps, or flat ``(batch, C)`` codes.
        mixer: a registered mixer (``mixer_names()``).
        k: number of codes per mix (>= 2).
        seed: a ``keras.random.SeedGenerator`` (its state advances on each call).
        return_weights: also return the sources and weights (for tests, plots and
            ACAI's critic, whose target is a function of the weights).

    Returns:
        The mixed codes, same shape as ``codes`` (or ``None`` for ``"none"``);
        with ``return_weights``, a tuple ``(mixed, sources, weights)``.

    Example:
        >>> seed = keras.random.SeedGenerator(0)
        >>> mixed = mix_codes(keras.ops.ones((8, 4, 4, 2)), "mixup", 2, seed)
    """
    check_mixer(mixer, k)
    if mixer_spec(mixer).weights is None:
        return (None, None, None) if return_weights else None
    sources = partners(codes, k, seed)
    weights = ops.cast(mixing_weights(mixer, k, ops.shape(codes)[0], codes.shape[-1], seed, rank=len(codes.shape)),
                       codes.dtype)
    mixed = ops.sum(weights * sources, axis=0)
    return (mixed, sources, weights) if return_weights else mixed


def mix_pair(codes_a, codes_b, weight):
    """Mix two batches of codes with given weights: ``weight * a + (1 - weight) * b``.

    ``weight`` of shape ``(batch,)`` is mixup (one weight per example); of shape
    ``(batch, C)`` it is a per-feature-map mask (Bernoulli when 0/1); for flat codes ``(batch, C)``, one
    weight per code value.
    """
    weight = ops.cast(weight, codes_a.dtype)
    ones = (1,) * (len(codes_a.shape) - 2)
    if len(weight.shape) == 1:
        weight = ops.reshape(weight, (-1, *ones, 1))
    else:
        weight = ops.reshape(weight, (-1, *ones, weight.shape[-1]))
    return weight * codes_a + (1.0 - weight) * codes_b

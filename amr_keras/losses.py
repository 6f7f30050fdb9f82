"""The losses of AMR and ACAI, and the checks of their settings: reconstruction (l1, l2, bce), the adversarial
term's binary cross-entropy, and ACAI's critic and regulariser.

``amr_keras.model`` trains with them (its public names include these, as before).
"""

from keras import ops

# bce: the decoder emits logits; binary cross-entropy against the image mapped to [0, 1], summed over pixels
# (the official dSprites code's bce_sum), mean over the batch; decoded images are tanh(logits / 2), in [-1, 1].
RECON_LOSSES = ("l1", "l2", "bce")
# ACAI settings that reproduce the official AMR code's ACAIF3: the critic sees
# plain reconstructions, and the autoencoder's regulariser has weight 1.
ACAI_GAMMA = 0.0
ACAI_WEIGHT = 1.0
# Mixers whose adversarial term on reconstructions can be dropped (recon_gan False): the others would be left
# with nothing to judge (none) or have no such term (acai).
RECON_GAN_OPTIONAL_MIXERS = ("mixup", "bernoulli")


def _bce_with_logits(logits, target):
    """Mean binary cross-entropy of sigmoid(logits) against a target in [0, 1] (a constant or one per logit)."""
    labels = ops.broadcast_to(ops.cast(target, logits.dtype), ops.shape(logits))
    return ops.mean(ops.binary_crossentropy(labels, logits, from_logits=True))


def recon_loss(kind, x, decoded):
    """Reconstruction loss of images ``x`` in [-1, 1] and the decoder's output (float32 scalar).

    ``"l1"`` / ``"l2"``: mean absolute / squared difference over every pixel. ``"bce"``: the decoder's output
    is logits; binary cross-entropy against ``(x + 1) / 2``, summed over the pixels of each image and averaged
    over the batch (the official dSprites code's ``bce_sum``).
    """
    x, decoded = ops.cast(x, "float32"), ops.cast(decoded, "float32")
    if kind == "bce":
        per_pixel = ops.binary_crossentropy((x + 1.0) / 2.0, decoded, from_logits=True)
        return ops.mean(ops.sum(ops.reshape(per_pixel, (ops.shape(x)[0], -1)), axis=1))
    diff = x - decoded
    return ops.mean(ops.abs(diff)) if kind == "l1" else ops.mean(ops.square(diff))


def check_acai_settings(mixer, acai_gamma, acai_weight):
    """Validate ACAI's two settings; raise ``ValueError`` saying what is accepted.

    They only change the ``"acai"`` variant, so any other mixer must keep the
    defaults (``ACAI_GAMMA``, ``ACAI_WEIGHT``) rather than silently ignore them.
    """
    if not 0.0 <= acai_gamma < 1.0:
        raise ValueError(
            f"acai_gamma (weight of the input in the blends gamma*x + (1-gamma)*x_rec that ACAI's critic sees) "
            f"must be in [0, 1), got {acai_gamma!r}. 0 shows the critic plain reconstructions; the ACAI paper uses 0.2."
        )
    if not acai_weight >= 0.0:
        raise ValueError(
            f"acai_weight (weight of the autoencoder's ACAI regulariser) must be >= 0, got {acai_weight!r}. "
            "The official AMR code uses 1, the ACAI paper 0.5."
        )
    if mixer != "acai" and (acai_gamma, acai_weight) != (ACAI_GAMMA, ACAI_WEIGHT):
        raise ValueError(
            f"acai_gamma and acai_weight only apply to mixer 'acai', but mixer is {mixer!r} and they are "
            f"{acai_gamma!r} and {acai_weight!r}: use mixer 'acai', or leave them at their defaults "
            f"({ACAI_GAMMA:g} and {ACAI_WEIGHT:g})."
        )


def check_recon_gan(mixer, recon_gan):
    """Validate ``recon_gan`` (the adversarial term on reconstructions); raise ``ValueError`` saying why.

    Turning it off (the official code's ``disable_g_recon=True``) needs a mixer: with ``"none"`` nothing
    would be left for the discriminator to judge. ACAI has no such term for the autoencoder (its critic
    sees reconstructions as the "no mixing" end of its scale), so it keeps the default.
    """
    if not isinstance(recon_gan, bool):
        raise ValueError(f"recon_gan must be True or False, got {recon_gan!r}.")
    if recon_gan or mixer not in ("none", "acai"):  # RECON_GAN_OPTIONAL_MIXERS and any registered mixer
        return
    if mixer == "none":
        raise ValueError("recon_gan=False needs a mixer: with mixer 'none' the discriminator would judge nothing "
                         "but real images. Use mixup or bernoulli, or keep recon_gan=True (AE + GAN).")
    raise ValueError(f"recon_gan=False does not apply to mixer {mixer!r}: ACAI's autoencoder has no adversarial "
                     "term on reconstructions (its critic sees them as unmixed). Keep recon_gan=True.")


def acai_critic_target(alpha):
    """ACAI's critic target for a mix of two codes with weight ``alpha``: ``2 * min(alpha, 1 - alpha)``.

    0 for an end point (``alpha`` 0 or 1, a plain reconstruction), 1 for the
    middle of the interpolation (``alpha = 0.5``).
    """
    return 2.0 * ops.minimum(alpha, 1.0 - alpha)


def acai_losses(real_logits, rec_logits, mix_logits, alpha, acai_weight=ACAI_WEIGHT):
    """The critic's loss and the autoencoder's regulariser of ACAI, from the critic's logits.

    Args:
        real_logits: critic logits of the images, ``(batch,)``.
        rec_logits: critic logits of the reconstructions (or of the blends
            ``gamma * x + (1 - gamma) * x_rec``), ``(batch,)``.
        mix_logits: critic logits of the decoded mixes, ``(batch,)``.
        alpha: mixing weight of each mix, ``(batch,)``.
        acai_weight: weight of the regulariser.

    Returns:
        ``(critic_loss, regulariser)``: ``BCE(D(x), 0) + BCE(D(x_rec), 0) +
        BCE(D(x_mix), 2 * min(alpha, 1 - alpha))`` and
        ``acai_weight * BCE(D(x_mix), 0)`` (means over the batch).
    """
    alpha = ops.reshape(ops.cast(alpha, mix_logits.dtype), ops.shape(mix_logits))
    critic = (_bce_with_logits(real_logits, 0.0) + _bce_with_logits(rec_logits, 0.0)
              + _bce_with_logits(mix_logits, acai_critic_target(alpha)))
    return critic, acai_weight * _bce_with_logits(mix_logits, 0.0)

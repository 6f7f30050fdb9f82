"""Training learns: a dozen steps on a tiny learnable problem lower the reconstruction loss and lift the probe."""

import keras
import numpy as np
import tensorflow as tf
from conftest import class_images

from amr_keras.data import preprocess
from amr_keras.model import AMR, default_optimizer
from amr_keras.networks import build_networks

STEPS, BATCH, HELD_OUT = 12, 32, 200


def held_out_scores(model, x, y):
    """(reconstruction loss, probe accuracy) of ``model`` on held-out images, as its ``test_step`` reports them."""
    model.reset_metrics()
    logs = model.test_step((x, y))
    return float(logs["recon_loss"]), float(logs["probe_accuracy"])


def test_a_dozen_steps_lower_the_reconstruction_loss_and_lift_the_probe_above_chance():
    # Ten classes, each a bright row over noise: learnable from a few hundred images. Eager steps (tracing a
    # step takes longer than these twelve); learning rates above the defaults so that a dozen steps show it.
    x, y = class_images(STEPS * BATCH + HELD_OUT, seed=0)
    x, y = preprocess(x), tf.constant(y.astype("int32"))
    keras.utils.set_random_seed(0)
    model = AMR(*build_networks(depth=4), update_g_every=1, seed=0)
    model.compile(ae_optimizer=default_optimizer(3e-3), d_optimizer=default_optimizer(1e-3),
                  probe_optimizer=default_optimizer(5e-2))
    recon_before, accuracy_before = held_out_scores(model, x[-HELD_OUT:], y[-HELD_OUT:])
    for i in range(STEPS):
        model.train_step((x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]))
    recon_after, accuracy_after = held_out_scores(model, x[-HELD_OUT:], y[-HELD_OUT:])
    # Seed 0 goes from about 1.08 to 0.50, and from 3% to 45% accuracy (chance: 10%).
    assert recon_after < 0.7 * recon_before, (recon_before, recon_after)
    assert accuracy_after >= 0.3 and accuracy_after > accuracy_before + 0.2, (accuracy_before, accuracy_after)
    assert np.isfinite([recon_after, accuracy_after]).all()

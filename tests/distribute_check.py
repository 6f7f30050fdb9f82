"""Helper of tests/test_distribute.py, run in a fresh interpreter: MirroredStrategy on two CPUs vs one device.

The two logical CPU devices must be configured before TensorFlow initialises its devices, which the
pytest process may already have done; hence a separate process. Prints one JSON line of measurements;
the test makes the assertions.

Every comparison starts both models from the same weights and feeds the same global batch: the
single-device model sees it whole, each of the two replicas half of it. Plain SGD is used so that the
weight change is the gradient itself (Adam's first step, about ``lr * sign(grad)``, would hide a loss
scaled by a wrong replica count). The mixer is "none": mixing partners are drawn within each replica's
batch, so with a real mixer the mixes differ from the single-device ones by design.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from amr_keras.model import AMR  # noqa: E402
from amr_keras.networks import build_networks  # noqa: E402

# 32 images and a 16-value code (4x4x1): the whitening probe's covariance estimate has full rank, so its
# inverse square root does not magnify float rounding along unused directions.
GLOBAL_BATCH = 32
CODE_CHANNELS = 1
LR = 0.1


def parts(model):
    """Every variable of the model, grouped by network (non-trainable ones included)."""
    return {
        "encoder": model.encoder.weights,
        "decoder": model.decoder.weights,
        "discriminator": model.discriminator.weights,  # includes spectral-norm vectors
        "probe": model.probe.weights,
        "probe_norm": model.probe_norm.weights,  # running mean, covariance and count of the whitening
        "probe_average": model.probe_average.weights,  # running average of the probe's weights
    }


def snapshot(model):
    return {name: [np.array(v) for v in vs] for name, vs in parts(model).items()}


def max_diff(a, b):
    return {name: max(float(np.max(np.abs(x - y))) for x, y in zip(a[name], b[name])) for name in a}


class Snapshots(keras.callbacks.Callback):
    """Weights and logs after every training batch."""

    def __init__(self):
        super().__init__()
        self.weights, self.logs = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.weights.append(snapshot(self.model))
        self.logs.append({k: float(v) for k, v in logs.items()})


def build(strategy, mixer="none", update_g_every=2, weights=None):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = AMR(*build_networks(depth=4, code_channels=CODE_CHANNELS), mixer=mixer, update_g_every=update_g_every)
        if weights is not None:
            model.set_weights(weights)
        model.compile(ae_optimizer=keras.optimizers.SGD(LR), d_optimizer=keras.optimizers.SGD(LR),
                      probe_optimizer=keras.optimizers.SGD(LR))
    return model


def batch_norm_statistics(strategy, synchronized, codes):
    """Moving mean and variance of a probe-like BatchNormalization after one step on ``codes`` (momentum 0)."""
    with strategy.scope():
        norm = keras.layers.BatchNormalization(center=False, scale=False, momentum=0.0, synchronized=synchronized)
        norm.build(codes.shape)
    data = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(codes))
    tf.function(lambda x: strategy.run(lambda c: norm(c, training=True), args=(x,)))(next(iter(data)))
    return np.array(norm.moving_mean), np.array(norm.moving_variance)


def train(model, steps):
    """Fit ``steps`` global batches (the same ones for every model); return the per-step snapshots."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (steps * GLOBAL_BATCH, 32, 32, 1)).astype("float32")
    y = (np.arange(steps * GLOBAL_BATCH) % 10).astype("int32")
    snaps = Snapshots()
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH), epochs=1, verbose=0,
              callbacks=[snaps])
    return snaps


def iterations(model):
    return {name: int(getattr(model, f"{name}_optimizer").iterations.numpy()) for name in ("ae", "d", "probe")}


def main():
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    # Reference: one device, update_g_every=2, two steps (the autoencoder moves on the first only).
    single = build(tf.distribute.get_strategy())
    start = single.get_weights()
    before = snapshot(single)
    ref = train(single, 2)
    # The same under MirroredStrategy: two traced step functions, with and without the autoencoder update.
    multi = build(mirrored, weights=start)
    got = train(multi, 2)
    # Why the probe's BatchNormalization is synchronized: per-replica statistics of two half batches
    # whose means differ are not those of the global batch.
    rng = np.random.default_rng(1)
    codes = np.concatenate([rng.normal(0, 1, (4, 3)), rng.normal(3, 1, (4, 3))]).astype("float32")
    norm_stats = {str(sync): [s.tolist() for s in batch_norm_statistics(mirrored, sync, codes)]
                  for sync in (True, False)}
    # A real mixer runs under the strategy (partners drawn within each replica's half batch).
    mixup = train(build(mirrored, mixer="mixup", update_g_every=1), 1)
    report = {
        "replicas": multi.distribute_strategy.num_replicas_in_sync,
        "diff": [max_diff(a, b) for a, b in zip(ref.weights, got.weights)],
        "global_mean_variance": [codes.mean(0).tolist(), codes.var(0).tolist()],
        "norm_mean_variance": norm_stats,
        "update_single": [max_diff(a, b) for a, b in zip([before] + ref.weights[:-1], ref.weights)],
        "update_mirrored": [max_diff(a, b) for a, b in zip([before] + got.weights[:-1], got.weights)],
        "iterations_single": iterations(single),
        "iterations_mirrored": iterations(multi),
        "logs_single": ref.logs,
        "logs_mirrored": got.logs,
        "logs_mixup": mixup.logs,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())

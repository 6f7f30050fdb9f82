"""Parts of the online linear probe: a running whitening of the code and a running average of its weights.

The probe is one linear layer trained on ``stop_gradient(code)`` while the autoencoder trains. Two things
held it below a logistic regression fitted afterwards on the same frozen codes:

* The code's dimensions are strongly correlated (the covariance of a 32-value MNIST code spans three
  orders of magnitude), so a first-order optimizer crawls along the flat directions. ``RunningWhitening``
  decorrelates the code with running estimates of its mean and covariance.
* At a constant learning rate and 16 images a step, the weights of the last step are a noisy sample around
  the optimum. ``update_average`` keeps an exponential moving average of them (Polyak averaging), and the
  probe classifies with the average.

The whitening is an affine map of the code and the averaged weights are one linear layer, so the probe that
classifies is still a linear function of the code. ``PROBES`` names the two probes a model can have:
``"whiten"`` (the above) and ``"batchnorm"`` (per-dimension batch normalisation and the last step's weights,
which models saved before the choice existed have).
"""

import keras
import tensorflow as tf
from keras import layers, ops

PROBES = ("whiten", "batchnorm")
# Running estimates of the code's mean and covariance: about the last 100 steps (1,600 codes at batch 16).
WHITEN_MOMENTUM = 0.99
# Added to the correlation matrix before its Cholesky factorisation: bounds the gain on directions the code
# barely uses.
WHITEN_EPSILON = 1e-3
# Decay of the probe's weight average: about the last 1,000 steps.
PROBE_AVERAGE_DECAY = 0.999


def check_probe(probe):
    """Raise ``ValueError`` unless ``probe`` names one of ``PROBES``."""
    if probe not in PROBES:
        raise ValueError(f"Unknown probe {probe!r}. Choose one of: {', '.join(PROBES)} (whiten: running "
                         "whitening and averaged weights; batchnorm: batch normalisation, last weights).")


def _replica_sum(values):
    """``values`` summed over the replicas of a ``tf.distribute`` strategy (unchanged without one)."""
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return values
    context = tf.distribute.get_replica_context()
    if context.num_replicas_in_sync == 1:
        return values
    return context.all_reduce(tf.distribute.ReduceOp.SUM, values)


def warmup_momentum(momentum, count):
    """``min(momentum, count / (count + 1))``: the first updates average plainly, so initial values fade at once."""
    count = ops.cast(count, "float32")
    return ops.minimum(ops.cast(momentum, "float32"), count / (count + 1.0))


@keras.saving.register_keras_serializable(package="amr_keras")
class RunningWhitening(layers.Layer):
    """Whiten inputs with running estimates of their mean and covariance; no trainable weights.

    ``update(x)`` folds a batch ``(n, d)`` into the estimates: exponential moving averages of the batch
    mean and of the unbiased batch covariance, with momentum ``min(momentum, t / (t + 1))`` at the
    ``t``-th update (the first batch replaces the initial values). Under ``tf.distribute`` the moments
    are those of the global batch (sums all-reduced over replicas), so every replica holds the same estimates.

    ``call(x)`` returns ``L^-1 S^-1 (x - mean)``: ``S`` the diagonal of standard deviations and
    ``L L^T = R + epsilon I`` the Cholesky factor of the correlation matrix ``R``. Its output has about
    unit covariance. Training and evaluation use the same estimates (unlike batch normalisation, whose
    training output uses the batch's own statistics).

    Args:
        momentum: weight of the old estimates in each update, in [0, 1).
        epsilon: added to the correlation matrix's diagonal, > 0.

    Example:
        >>> white = RunningWhitening()
        >>> white.build((None, 32))
        >>> white.update(codes)
        >>> z = white(codes)
    """

    def __init__(self, momentum=WHITEN_MOMENTUM, epsilon=WHITEN_EPSILON, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}.")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon!r}.")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        # "mean" aggregation: every replica assigns the same (all-reduced) value.
        kw = dict(trainable=False, autocast=False, aggregation="mean")
        self.moving_mean = self.add_weight(shape=(dim,), initializer="zeros", name="moving_mean", **kw)
        self.moving_covariance = self.add_weight(shape=(dim, dim), initializer="identity",
                                                 name="moving_covariance", **kw)
        self.count = self.add_weight(shape=(), initializer="zeros", name="count", **kw)
        self.built = True

    def update(self, x):
        """Fold the batch ``x`` ``(n, d)``, n >= 2, into the running mean and covariance."""
        x = ops.cast(x, "float32")
        n = ops.cast(ops.shape(x)[0], "float32")
        # Sums over the (global) batch, then its moments: replicas of unequal batches weigh by their size.
        total, n = _replica_sum((ops.sum(x, axis=0), n))
        mean = total / n
        # Unbiased covariance of the (global) batch from codes centred on its mean: E[x x^T] - m m^T in
        # float32 cancels catastrophically (and stops being positive definite) when the codes sit far from
        # 0 compared with their spread.
        centred = x - mean
        outer = _replica_sum(ops.matmul(ops.transpose(centred), centred))
        covariance = outer / ops.maximum(n - 1.0, 1.0)
        # A batch of non-finite codes (a diverging run) leaves the estimates as they were: the run's NaN
        # guard then reports the loss, and the last checkpoint's statistics stay usable.
        finite = ops.logical_and(ops.all(ops.isfinite(mean)), ops.all(ops.isfinite(covariance)))
        m = ops.where(finite, warmup_momentum(self.momentum, self.count), 1.0)
        mean = ops.where(finite, mean, 0.0)
        covariance = ops.where(finite, covariance, 0.0)
        self.moving_mean.assign(m * self.moving_mean + (1.0 - m) * mean)
        self.moving_covariance.assign(m * self.moving_covariance + (1.0 - m) * covariance)
        self.count.assign(self.count + ops.cast(finite, "float32"))

    def whitening(self):
        """``(mean, scale, L)``: ``call(x)`` is ``solve(L, ((x - mean) / scale)^T)^T``."""
        cov = ops.convert_to_tensor(self.moving_covariance)
        scale = ops.sqrt(ops.maximum(ops.diagonal(cov), 1e-12))
        corr = cov / ops.outer(scale, scale)
        dim = ops.shape(cov)[0]
        # tf.linalg directly: keras.ops.cholesky raises on a non-finite result, where NaN outputs let the
        # training loop's NaN guard name the problem.
        chol = tf.linalg.cholesky(corr + self.epsilon * ops.eye(dim, dtype="float32"))
        return ops.convert_to_tensor(self.moving_mean), scale, chol

    def call(self, x):
        mean, scale, chol = self.whitening()
        z = (ops.cast(x, "float32") - mean) / scale
        return ops.transpose(tf.linalg.triangular_solve(chol, ops.transpose(z), lower=True))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}


def update_average(average_variables, variables, step, decay=PROBE_AVERAGE_DECAY):
    """Move each average towards its variable: ``avg = d * avg + (1 - d) * var``,
    ``d = min(decay, (1 + step) / (10 + step))``.

    The step-dependent decay (as in TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``)
    lets the average follow closely during the first hundred steps, when the weights move fast.

    Args:
        average_variables: the averages, assigned in place.
        variables: the variables averaged, in the same order.
        step: updates so far (e.g. the optimizer's ``iterations`` after its update).
        decay: the decay reached after many steps, in [0, 1).
    """
    step = ops.cast(step, "float32")
    d = ops.minimum(ops.cast(decay, "float32"), (1.0 + step) / (10.0 + step))
    for average, var in zip(average_variables, variables):
        average.assign(d * average + (1.0 - d) * ops.cast(var, average.dtype))

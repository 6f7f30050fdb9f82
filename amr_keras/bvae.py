"""beta-VAE (Higgins et al., 2017), the baseline of the paper's Table 4, with the same online linear probe as AMR.

The encoder has two heads, the mean and the log-variance of a diagonal Gaussian posterior; a code is drawn with
the reparameterisation ``z = mean + exp(log_var / 2) * eps``; the loss is
``recon(x, g(z)) + beta_kl * KL(q(z|x) || N(0, I))``, the reconstruction summed over pixels and averaged over the
batch, the KL reduced over the code values by ``kl_reduction``:

- ``"mean"`` (the default): averaged over the code values, as the official AMR code (``models/vae.py``:
  ``kl_divergence(q, prior).mean()`` over batch and code values). ``beta_kl=100`` is the paper's beta 100.
- ``"sum"``: summed over the code values, as Higgins et al. and Burgess et al. write the beta-VAE objective (and
  disentanglement_lib computes it). With a code of D values, ``beta_kl=B`` summed is ``beta_kl=B*D`` averaged:
  the paper's beta 100 on its 10-value code is beta 10 summed.
There is no discriminator and no mixing. Everything that reads a code (the linear probe, ``encode``, the export,
the post-hoc evaluation, the disentanglement metric) reads the mean.

``BVAE`` is an ``amr_keras.model.AMR`` in every interface the rest of the package uses (``encoder`` is the
mean's view of the posterior network, ``decoder``, ``encode``/``decode``/``classify``, ``probe_accuracy``,
``get_config``, checkpoints), so it trains through ``amr_keras.train.run`` (``--model bvae --beta-kl B``).

Reference:
    I. Higgins et al. beta-VAE: Learning Basic Visual Concepts with a Constrained Variational Framework. ICLR 2017.
    C. P. Burgess et al. Understanding disentangling in beta-VAE. 2018.
"""

import keras
import tensorflow as tf
from keras import ops

from amr_keras.model import AMR, _descend, _replicas, default_optimizer, recon_loss


KL_REDUCTIONS = ("mean", "sum")


def kl_divergence(mean, log_var, reduction="mean"):
    """``KL(N(mean, exp(log_var)) || N(0, I))`` of each code value, averaged over the batch.

    Args:
        mean, log_var: ``(batch, code)``.
        reduction: ``"mean"`` (over the code values, the official AMR code's) or ``"sum"`` (Higgins et al.).
    """
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"kl_reduction must be one of {', '.join(KL_REDUCTIONS)}, got {reduction!r}.")
    mean, log_var = ops.cast(mean, "float32"), ops.cast(log_var, "float32")
    per_value = 0.5 * (ops.exp(log_var) + ops.square(mean) - 1.0 - log_var)
    reduce = ops.mean if reduction == "mean" else ops.sum
    return ops.mean(reduce(per_value, axis=1))


@keras.saving.register_keras_serializable(package="amr_keras")
class BVAE(AMR):
    """beta-VAE with an online linear probe on the posterior mean.

    Args:
        posterior: image (in [-1, 1]) -> ``[mean, log_var]``, each ``(batch, code)`` (e.g.
            ``networks.build_burgess_encoder(heads=2)``).
        decoder: code -> image (logits with ``recon="bce"``).
        num_classes: classes of the linear probe.
        beta_kl: weight of the KL term (> 0; 1 is the plain VAE).
        kl_reduction: ``"mean"`` (default; the official AMR code: the KL averaged over the code values) or
            ``"sum"`` (summed over them, Higgins et al.).
        recon: reconstruction loss, as for AMR (``"bce"``: summed over pixels).
        seed: seed of the reparameterisation noise.
        probe: ``"whiten"`` or ``"batchnorm"``, as for AMR.

    Example:
        >>> enc = build_burgess_encoder(heads=2)
        >>> model = BVAE(enc, build_burgess_decoder(), num_classes=3, beta_kl=4.0)
        >>> model.compile()
        >>> model.fit(train_ds, epochs=1)
    """

    def __init__(self, posterior, decoder, num_classes=10, beta_kl=1.0, recon="bce", seed=0, probe="whiten",
                 kl_reduction="mean", **kwargs):
        if len(posterior.outputs) != 2:
            raise ValueError("The posterior network of a BVAE must have two outputs, the mean and the log-variance "
                             f"(build_burgess_encoder(heads=2)); got {len(posterior.outputs)}.")
        if not beta_kl > 0:
            raise ValueError(f"beta_kl (weight of the KL term) must be > 0, got {beta_kl!r}.")
        if kl_reduction not in KL_REDUCTIONS:
            raise ValueError(f"kl_reduction must be one of {', '.join(KL_REDUCTIONS)}, got {kl_reduction!r}.")
        mean_view = keras.Model(posterior.input, posterior.outputs[0], name="encoder_mean")
        super().__init__(mean_view, decoder, None, num_classes=num_classes, mixer="none", k=2, lamb=1.0,
                         recon=recon, update_g_every=1, seed=seed, probe=probe, **kwargs)
        self.posterior = posterior
        self.beta_kl = float(beta_kl)
        self.kl_reduction = kl_reduction
        self.kl_tracker = keras.metrics.Mean(name="kl_loss")
        self.loss_tracker = keras.metrics.Mean(name="vae_loss")

    # ----------------------------------------------------------------- compile
    def compile(self, ae_optimizer=None, probe_optimizer=None, d_optimizer=None, **kwargs):
        """Set the two optimizers (encoder + decoder, probe; when omitted, Adam lr 1e-4 with betas (0.9, 0.99) as the
        official beta-VAE scripts for the first, the AMR reference's for the probe) and compile.

        ``d_optimizer`` must be left out: a beta-VAE has no discriminator.
        """
        if d_optimizer is not None:
            raise ValueError("A BVAE has no discriminator: pass ae_optimizer and probe_optimizer only.")
        for bad in ("optimizer", "loss"):
            if kwargs.pop(bad, None) is not None:
                raise ValueError(f"BVAE.compile takes ae_optimizer and probe_optimizer, not {bad}=.")
        keras.Model.compile(self, optimizer=None, **kwargs)
        # The official beta-VAE scripts: Adam lr 1e-4, betas (0.9, 0.99).
        self.ae_optimizer = (default_optimizer(name="ae_adam", beta_1=0.9) if ae_optimizer is None
                             else keras.optimizers.get(ae_optimizer))
        self.probe_optimizer = (default_optimizer(name="probe_adam") if probe_optimizer is None
                                else keras.optimizers.get(probe_optimizer))
        self.ae_optimizer.build(self.ae_variables)
        self.probe_optimizer.build(self.probe.trainable_variables)
        self._amr_compile_args = {k: v for k, v in kwargs.items() if k in ("jit_compile", "steps_per_execution")}

    def get_compile_config(self):
        if self.ae_optimizer is None:
            return {}
        return {"ae_optimizer": keras.saving.serialize_keras_object(self.ae_optimizer),
                "probe_optimizer": keras.saving.serialize_keras_object(self.probe_optimizer),
                **getattr(self, "_amr_compile_args", {})}

    def compile_from_config(self, config):
        config = dict(config)
        for key in ("ae_optimizer", "probe_optimizer"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        self.compile(**config)

    # ----------------------------------------------------------------- config
    NETWORK_KEYS = ("posterior", "decoder")  # for AMR.from_config

    def get_config(self):
        config = keras.Model.get_config(self)
        config.update(posterior=keras.saving.serialize_keras_object(self.posterior),
                      decoder=keras.saving.serialize_keras_object(self.decoder),
                      num_classes=self.num_classes, beta_kl=self.beta_kl, recon=self.recon, seed=self.seed,
                      probe=self.probe_kind, kl_reduction=self.kl_reduction)
        return config

    @classmethod
    def from_config(cls, config):
        # Models saved before kl_reduction was a setting summed the KL over the code values.
        return super().from_config({"kl_reduction": "sum", **config})

    # ----------------------------------------------------------------- parts
    @property
    def ae_variables(self):
        return self.posterior.trainable_variables + self.decoder.trainable_variables

    @property
    def metrics(self):
        return [self.recon_tracker, self.kl_tracker, self.loss_tracker, self.probe_loss_tracker,
                self.probe_acc_tracker]

    def _forward(self, x, training, attrs=None):
        """Posterior, a reparameterised draw (the mean when not training), its decoding, and the losses."""
        mean, log_var = self.posterior(x, training=training)
        z = mean
        if training:
            noise = keras.random.normal(ops.shape(mean), seed=self.seed_generator, dtype=mean.dtype)
            z = mean + ops.exp(0.5 * log_var) * noise
        decoded = self.decoder(z, training=training)
        recon = recon_loss(self.recon, x, decoded)
        kl = kl_divergence(mean, log_var, self.kl_reduction)
        return dict(code=mean, recon_loss=recon, kl_loss=kl, loss=recon + self.beta_kl * kl)

    def _loss_trackers(self):
        return (("recon_loss", self.recon_tracker), ("kl_loss", self.kl_tracker), ("loss", self.loss_tracker))

    def make_train_function(self, force=False):
        return keras.Model.make_train_function(self, force)

    def train_step(self, data):
        x, y, _ = self._unpack(data)
        replicas = _replicas()
        with tf.GradientTape(persistent=True) as tape:
            # Encode to a mean and a log-variance, decode a reparameterised draw, and the losses (``_forward``);
            # the probe reads the mean through a stop-gradient.
            out = self._forward(x, training=True)
            probe_logits, out["probe_loss"] = self._probe_loss(out["code"], y, training=True)
            loss = self.ae_optimizer.scale_loss(out["loss"] / replicas)
            probe_loss = self.probe_optimizer.scale_loss(out["probe_loss"] / replicas)
        # The encoder and the decoder descend reconstruction + beta * KL; the probe its cross-entropy.
        _descend(tape, loss, self.ae_optimizer, self.ae_variables)
        self._train_probe(tape, probe_loss)
        del tape
        return self._update_metrics(out, y, probe_logits, out["probe_loss"])

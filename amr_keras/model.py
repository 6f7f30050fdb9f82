"""The AMR model: autoencoder + discriminator + mixer + stop-gradient linear probe in one ``keras.Model``.

With ``mixer="acai"`` the same model trains ACAI instead: the discriminator
becomes a critic that regresses the mixing weight of decoded mixes.

Reference:
    C. Beckham, S. Honari, V. Verma, A. Lamb, F. Ghadiri, R. D. Hjelm,
    Y. Bengio, C. Pal. On Adversarial Mixup Resynthesis. NeurIPS 2019.

    D. Berthelot, C. Raffel, A. Roy, I. Goodfellow. Understanding and Improving
    Interpolation in Autoencoders via an Adversarial Regularizer. ICLR 2019.
"""

import keras
import tensorflow as tf
from keras import layers, ops

from amr_keras.losses import (ACAI_GAMMA, ACAI_WEIGHT, RECON_GAN_OPTIONAL_MIXERS, RECON_LOSSES,  # noqa: F401
                              _bce_with_logits, acai_critic_target, acai_losses, check_acai_settings,
                              check_recon_gan, recon_loss)
from amr_keras.classmix import MASK_PRIOR, ClassMixing, check_class_mixing
from amr_keras.mixers import check_mixer, mix_codes, mix_pair
from amr_keras.networks import code_dim
from amr_keras.probe import RunningWhitening, check_probe, update_average

# The losses and their settings' checks live in amr_keras.losses; their public names are importable from here.

def default_optimizer(learning_rate=1e-4, name=None, beta_1=0.5):
    """Adam as in the reference code: betas (0.5, 0.99), weight decay 1e-5 (the official beta-VAE: beta_1 0.9).

    Keras applies weight decay decoupled from the gradient (AdamW style); the
    reference adds it to the gradient (PyTorch ``Adam(weight_decay=...)``).
    At 1e-5 both are negligible next to the losses.
    """
    return keras.optimizers.Adam(
        learning_rate=learning_rate, beta_1=beta_1, beta_2=0.99, weight_decay=1e-5, name=name
    )


def _multi_worker(strategy):
    """Whether ``strategy`` spans several workers (the case Keras reduces step outputs with ``axis=0``)."""
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())


def _replicas():
    """Replicas of the current strategy (1 without one). Losses are per-replica means; dividing them by this
    count makes the summed (all-reduced) gradients those of the global-batch mean."""
    return tf.distribute.get_replica_context().num_replicas_in_sync if tf.distribute.has_strategy() else 1


def _descend(tape, loss, optimizer, variables):
    """One step of ``optimizer`` on ``variables`` down the gradient of ``loss`` (recorded on ``tape``)."""
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))


@keras.saving.register_keras_serializable(package="amr_keras")
class AMR(ClassMixing, keras.Model):
    """Adversarial Mixup Resynthesis with an online linear probe.

    Each training step:

    1. encodes the batch, decodes the codes (reconstructions) and decodes mixes
       of the codes (``mixer``, ``k`` codes per mix);
    2. runs the discriminator once on ``[x, reconstructions, mixes]`` and uses
       that single forward pass for both players (the reference computes the
       same values in five separate passes: the discriminator's and the
       autoencoder's losses are both taken at the current weights);
    3. updates the discriminator on ``BCE(D(x),1) + BCE(D(x_rec),0) + BCE(D(x_mix),0)``;
    4. every ``update_g_every``-th step, updates encoder and decoder on
       ``lamb * recon(x, x_rec) + BCE(D(x_rec),1) + BCE(D(x_mix),1)``
       (+ ``beta * |f(x_mix) - z_mix|``);
    5. updates the linear probe on ``stop_gradient(code)`` with its own optimizer.

    The probe (``probe="whiten"``, the default) whitens the code with running estimates of its mean and
    covariance and classifies with the running average of its trained weights (``amr_keras.probe``);
    ``probe="batchnorm"`` standardises with batch normalisation and classifies with the last weights.

    With ``mixer="acai"`` (ACAI as in the official AMR code's ``ACAIF3``), codes are
    mixed in pairs with ``alpha ~ U(0, 1)`` and the discriminator is a critic that
    regresses ``alpha``: step 3 minimises ``BCE(D(x),0) + BCE(D(x_rec),0) +
    BCE(D(x_mix), 2*min(alpha, 1-alpha))`` and step 4 ``lamb * recon(x, x_rec) +
    acai_weight * BCE(D(x_mix),0)`` (+ consistency); nothing pushes the
    reconstructions towards "real". With ``acai_gamma > 0`` the critic sees the
    blends ``acai_gamma * x + (1 - acai_gamma) * x_rec`` instead of ``x_rec``.

    Losses are averaged over the global batch, so ``N`` replicas of a
    ``tf.distribute`` strategy take the same step as one device with the same
    global batch. Mixing partners are drawn within each replica's batch.

    Args:
        encoder: image (32x32xC, in [-1, 1]) -> code map.
        decoder: code map -> image.
        discriminator: image -> one logit per image.
        num_classes: classes of the linear probe.
        mixer: ``"mixup"``, ``"bernoulli"``, ``"acai"`` or ``"none"``.
        k: codes per mix (>= 2; exactly 2 for ``"acai"``).
        lamb: weight of the reconstruction loss (> 0).
        beta: weight of the optional consistency loss (>= 0; 0 turns it off).
        recon: ``"l1"``, ``"l2"`` (means over pixels) or ``"bce"`` reconstruction loss (the decoder then
            emits logits; the loss is summed over pixels; see ``recon_loss``).
        update_g_every: update the autoencoder every this many steps (>= 1).
        seed: seed of the mixing randomness.
        acai_gamma: ``"acai"`` only: the critic sees ``acai_gamma * x + (1 - acai_gamma) * x_rec``
            with target 0, in [0, 1). 0 (default, ``ACAIF3``) shows it plain
            reconstructions; the ACAI paper uses 0.2.
        acai_weight: ``"acai"`` only: weight of the autoencoder's ``BCE(D(x_mix), 0)``
            term, >= 0. Default 1 (``ACAIF3``); the ACAI paper uses 0.5.
            Other mixers reject values of ``acai_gamma`` and ``acai_weight`` other
            than the defaults (``ValueError``) instead of ignoring them.
        recon_gan: whether the autoencoder is also trained to make its reconstructions fool the
            discriminator (default True, as in every experiment of the paper). False (the official code's
            ``disable_g_recon``) leaves the discriminator images and mixes only; it needs ``"mixup"`` or
            ``"bernoulli"`` (``ValueError`` otherwise).
        probe: ``"whiten"`` (default) or ``"batchnorm"``, see above. Both are one linear layer on the
            stop-gradient code; the whitening probe comes closer to a logistic regression fitted on the
            frozen codes afterwards.

    Example:
        >>> enc, dec, disc = amr_keras.networks.build_networks()
        >>> model = AMR(enc, dec, disc, mixer="mixup")
        >>> model.compile()
        >>> model.fit(train_ds, validation_data=val_ds, epochs=3)
        >>> acai = AMR(*amr_keras.networks.build_networks(), mixer="acai", acai_gamma=0.2, acai_weight=0.5)

    Reference:
        Beckham et al. On Adversarial Mixup Resynthesis. NeurIPS 2019.
        Berthelot et al. Understanding and Improving Interpolation in Autoencoders
        via an Adversarial Regularizer. ICLR 2019 (ACAI).
    """

    def __init__(
        self,
        encoder,
        decoder,
        discriminator,
        num_classes=10,
        mixer="mixup",
        k=2,
        lamb=10.0,
        beta=0.0,
        recon="l1",
        update_g_every=5,
        seed=0,
        acai_gamma=ACAI_GAMMA,
        acai_weight=ACAI_WEIGHT,
        probe="whiten",
        recon_gan=True,
        cls_weight=0.0,
        class_mixer="informed",
        mask_prior=MASK_PRIOR,
        attribute_groups=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_class_mixing(cls_weight, class_mixer, mask_prior)
        check_mixer(mixer, k)
        check_probe(probe)
        check_acai_settings(mixer, acai_gamma, acai_weight)
        check_recon_gan(mixer, recon_gan)
        if not lamb > 0:
            raise ValueError(f"lamb (weight of the reconstruction loss) must be > 0, got {lamb!r}.")
        if not beta >= 0:
            raise ValueError(f"beta (consistency weight) must be >= 0, got {beta!r}.")
        if recon not in RECON_LOSSES:
            raise ValueError(f"Unknown reconstruction loss {recon!r}. Choose one of: {', '.join(RECON_LOSSES)}.")
        if int(update_g_every) != update_g_every or update_g_every < 1:
            raise ValueError(f"update_g_every must be an integer >= 1, got {update_g_every!r}.")
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
        self.encoder = encoder
        self.decoder = decoder
        self.discriminator = discriminator
        self.num_classes = int(num_classes)
        self.mixer = mixer
        self.k = int(k)
        self.lamb = float(lamb)
        self.beta = float(beta)
        self.recon = recon
        self.update_g_every = int(update_g_every)
        self.seed = int(seed)
        self.acai_gamma = float(acai_gamma)
        self.acai_weight = float(acai_weight)
        self.recon_gan = recon_gan
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="mix_seed")
        self.probe_kind = probe
        # float32 under every precision policy: a few hundred inputs and 10 outputs cost nothing, and the
        # code's statistics need float32's precision.
        dim = code_dim(encoder)
        if probe == "whiten":
            # Whitened with running statistics, classified with the running average of the trained weights
            # (see amr_keras.probe): an affine map and one linear layer, so still a linear function of the code.
            self.probe_norm = RunningWhitening(name="probe_norm", dtype="float32")
            self.probe_average = layers.Dense(self.num_classes, name="probe_average", dtype="float32",
                                              trainable=False)
            self.probe_average.build((None, dim))
        else:
            # Standardised with batch normalisation (no trainable parameters; synchronized: under
            # tf.distribute the statistics are those of the global batch); classified with the last weights.
            self.probe_norm = layers.BatchNormalization(center=False, scale=False, momentum=0.9, synchronized=True,
                                                        name="probe_norm", dtype="float32")
            self.probe_average = None
        self.probe = layers.Dense(self.num_classes, name="probe", dtype="float32")
        self.probe_norm.build((None, dim))
        self.probe.build((None, dim))
        if self.probe_average is not None:
            for average, var in zip(self.probe_average.weights, self.probe.weights):
                average.assign(var)
        self._init_class_mixing(cls_weight, class_mixer, mask_prior, attribute_groups)
        self.recon_tracker = keras.metrics.Mean(name="recon_loss")
        self.d_tracker = keras.metrics.Mean(name="d_loss")
        self.g_tracker = keras.metrics.Mean(name="g_loss")
        self.probe_loss_tracker = keras.metrics.Mean(name="probe_loss")
        self.probe_acc_tracker = keras.metrics.SparseCategoricalAccuracy(name="probe_accuracy")
        self.ae_optimizer = None
        self.d_optimizer = None
        self.probe_optimizer = None
        self.built = True

    # The mixing draws' SeedGenerator is not a layer, so Keras would save no state for it: a model loaded from a
    # checkpoint would draw the first steps' mixes again, and a resumed run would not continue the interrupted one.
    _MIX_SEED_KEY = "mix_seed_state"

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store[self._MIX_SEED_KEY] = self.seed_generator.state

    def load_own_variables(self, store):
        keys = list(store.keys())
        if self._MIX_SEED_KEY in keys:  # absent from checkpoints written before it was saved
            self.seed_generator.state.assign(store[self._MIX_SEED_KEY])
        super().load_own_variables({key: store[key] for key in keys if key != self._MIX_SEED_KEY})

    # ----------------------------------------------------------------- compile
    def compile(self, ae_optimizer=None, d_optimizer=None, probe_optimizer=None, **kwargs):
        """Set the three optimizers (reference defaults when omitted) and compile.

        Args:
            ae_optimizer: updates encoder + decoder. Default Adam 1e-4, betas (0.5, 0.99), wd 1e-5.
            d_optimizer: updates the discriminator. Same default.
            probe_optimizer: updates the linear probe. Same default.
            **kwargs: passed to ``keras.Model.compile`` (e.g. ``jit_compile``,
                ``steps_per_execution``). ``optimizer``/``loss`` are not used.
        """
        for bad in ("optimizer", "loss"):
            if kwargs.get(bad) is not None:
                raise ValueError(
                    f"AMR.compile takes ae_optimizer, d_optimizer and probe_optimizer, not {bad}=."
                )
            kwargs.pop(bad, None)
        super().compile(optimizer=None, **kwargs)
        opts = []
        for opt, name in ((ae_optimizer, "ae_adam"), (d_optimizer, "d_adam"), (probe_optimizer, "probe_adam")):
            opt = default_optimizer(name=name) if opt is None else keras.optimizers.get(opt)
            if keras.mixed_precision.global_policy().compute_dtype == "float16" and not isinstance(
                opt, keras.optimizers.LossScaleOptimizer
            ):
                opt = keras.optimizers.LossScaleOptimizer(opt)
            opts.append(opt)
        self.ae_optimizer, self.d_optimizer, self.probe_optimizer = opts
        # Build now: variables cannot be created inside the traced step's branches.
        self.ae_optimizer.build(self.ae_variables)
        self.d_optimizer.build(self.d_variables)
        self.probe_optimizer.build(self.probe.trainable_variables)
        self._amr_compile_args = {k: v for k, v in kwargs.items() if k in ("jit_compile", "steps_per_execution")}

    def get_compile_config(self):
        if self.ae_optimizer is None:
            return {}
        return {
            "ae_optimizer": keras.saving.serialize_keras_object(self.ae_optimizer),
            "d_optimizer": keras.saving.serialize_keras_object(self.d_optimizer),
            "probe_optimizer": keras.saving.serialize_keras_object(self.probe_optimizer),
            **getattr(self, "_amr_compile_args", {}),
        }

    def compile_from_config(self, config):
        # Restores the three optimizers; their states are then loaded from the file.
        config = dict(config)
        for key in ("ae_optimizer", "d_optimizer", "probe_optimizer"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        self.compile(**config)

    # ----------------------------------------------------------------- config
    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            decoder=keras.saving.serialize_keras_object(self.decoder),
            discriminator=keras.saving.serialize_keras_object(self.discriminator),
            num_classes=self.num_classes,
            mixer=self.mixer,
            k=self.k,
            lamb=self.lamb,
            beta=self.beta,
            recon=self.recon,
            update_g_every=self.update_g_every,
            seed=self.seed,
            acai_gamma=self.acai_gamma,
            acai_weight=self.acai_weight,
            probe=self.probe_kind,
            recon_gan=self.recon_gan,
            cls_weight=self.cls_weight,
            class_mixer=self.class_mixer_kind,
            mask_prior=self.mask_prior,
            attribute_groups=None if self.attribute_groups is None else self.attribute_groups.to_json(),
        )
        return config

    # The networks among the constructor's arguments (serialized whole by get_config).
    NETWORK_KEYS = ("encoder", "decoder", "discriminator")

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in cls.NETWORK_KEYS:
            config[key] = keras.saving.deserialize_keras_object(config[key])
        # Models saved before the probe was a setting have the batch-normalised one.
        config.setdefault("probe", "batchnorm")
        return cls(**config)

    # ----------------------------------------------------------------- parts
    @property
    def ae_variables(self):
        mixer = self.class_mixer.trainable_variables if self.cls_weight > 0 else []
        return self.encoder.trainable_variables + self.decoder.trainable_variables + mixer

    @property
    def d_variables(self):
        """The discriminator's weights, and its attribute head's when class-conditional mixing trains."""
        head = self.attribute_head.trainable_variables if self.cls_weight > 0 else []
        return self.discriminator.trainable_variables + head

    @property
    def metrics(self):
        return [self.recon_tracker, self.d_tracker, self.g_tracker, self.probe_loss_tracker, self.probe_acc_tracker,
                *self.class_mix_trackers]

    def _image(self, decoded):
        """Decoder output -> image in [-1, 1]: itself, or ``tanh(logits / 2) = 2 sigmoid(logits) - 1`` for bce."""
        return ops.tanh(decoded / 2.0) if self.recon == "bce" else decoded

    # Outputs are float32 also under mixed precision (the networks then compute in float16 or bfloat16).
    def call(self, inputs, training=False):
        """Reconstruct ``inputs`` (images in [-1, 1])."""
        decoded = self.decoder(self.encoder(inputs, training=training), training=training)
        return ops.cast(self._image(decoded), "float32")

    def encode(self, images):
        """Codes of images in [-1, 1]."""
        return ops.cast(self.encoder(images, training=False), "float32")

    def decode(self, codes):
        """Images in [-1, 1] (approximately) from codes."""
        return ops.cast(self._image(self.decoder(codes, training=False)), "float32")

    def classify(self, images):
        """Class probabilities of the linear probe."""
        return ops.softmax(self.probe_logits(self.encode(images)))

    @staticmethod
    def _flat_codes(codes):
        return ops.reshape(ops.cast(codes, "float32"), (ops.shape(codes)[0], -1))

    def probe_logits(self, codes, training=False):
        """Logits of the linear probe for (batch, H, W, C) codes (the averaged weights of a whitening probe)."""
        flat = self._flat_codes(codes)
        if self.probe_average is not None:
            return ops.cast(self.probe_average(self.probe_norm(flat)), "float32")
        return ops.cast(self.probe(self.probe_norm(flat, training=training)), "float32")

    def mix(self, images_a, images_b, weight):
        """Decode mixes of the codes of two batches (see ``mixers.mix_pair``)."""
        return self.decode(mix_pair(self.encode(images_a), self.encode(images_b), weight))

    # ----------------------------------------------------------------- losses
    def _recon_loss(self, x, decoded):
        return recon_loss(self.recon, x, decoded)

    def _forward(self, x, training, attrs=None):
        """Shared forward pass: codes, reconstructions, mixes, one discriminator pass, and the losses.

        The discriminator sees ``[x, x_rec, x_mix]`` (ACAI with ``acai_gamma > 0``: the
        blends in place of ``x_rec``; mixer ``"none"``: no ``x_mix``), and the class-conditional mixes
        when ``cls > 0`` (``attrs``: the batch's attribute codes; ``amr_keras.classmix``).

        Returns:
            dict of the code and the losses ``recon_loss``, ``d_loss``, ``g_loss`` (float32 scalars).
        """
        batch = ops.shape(x)[0]
        code = self.encoder(x, training=training)
        decoded = self.decoder(code, training=training)
        rec = self._image(decoded)
        z_mix, _, weights = mix_codes(code, self.mixer, self.k, self.seed_generator, return_weights=True)
        # Without the adversarial term on reconstructions (recon_gan False) the discriminator sees only
        # images and mixes, and the reconstructions answer to the reconstruction loss alone.
        fakes = [rec] if self.recon_gan else []
        if self.mixer == "acai" and self.acai_gamma > 0:
            fakes = [self.acai_gamma * ops.cast(x, rec.dtype) + (1.0 - self.acai_gamma) * rec]
        x_mix = None
        if z_mix is not None:
            x_mix = self._image(self.decoder(z_mix, training=training))
            fakes.append(x_mix)
        cmix = None
        if self.cls_weight > 0:
            cmix = self._class_mix(code, attrs, training)
            fakes.append(cmix["image"])
        # One discriminator pass serves both players: their losses take its logits at the current weights.
        logits = ops.cast(self.discriminator(ops.concatenate([x] + fakes, axis=0), training=training), "float32")
        real_logits, fake_logits = logits[:batch], logits[batch:]
        if self.mixer == "acai":
            # The critic's loss moves only the discriminator (_train_step differentiates it with respect to
            # the discriminator's weights alone), so the fakes need no stop_gradient here.
            d_loss, adv = acai_losses(real_logits, fake_logits[:batch], fake_logits[batch:], weights[0],
                                      self.acai_weight)
        else:
            groups = len(fakes)
            # Each fake group (reconstructions, mixes) is a mean over the batch, summed over groups.
            d_loss = _bce_with_logits(real_logits, 1.0) + groups * _bce_with_logits(fake_logits, 0.0)
            adv = groups * _bce_with_logits(fake_logits, 1.0)
        recon = self._recon_loss(x, decoded)
        g_loss = self.lamb * recon + adv
        if self.beta > 0 and z_mix is not None:
            consistency = ops.mean(ops.abs(ops.cast(self.encoder(x_mix, training=training) - z_mix, "float32")))
            g_loss = g_loss + self.beta * consistency
        out = dict(code=code, recon_loss=recon, d_loss=d_loss, g_loss=g_loss)
        if cmix is not None:
            out.update(self._class_mix_losses(x, attrs, cmix, training))
            out["d_loss"] = out["d_loss"] + self.cls_weight * out["attr_real_loss"]
            out["g_loss"] = (out["g_loss"] + self.cls_weight * out["attr_mix_loss"]
                             + self.mask_prior * out["mask_prior_loss"])
        return out

    def _probe_loss(self, code, y, training):
        """Probe logits and loss; a training step of a whitening probe first updates its statistics and
        takes the logits of the weights being trained (evaluation: of their average)."""
        if training and self.probe_average is not None:
            flat = self._flat_codes(ops.stop_gradient(code))
            self.probe_norm.update(flat)
            logits = ops.cast(self.probe(self.probe_norm(flat)), "float32")
        else:
            logits = self.probe_logits(ops.stop_gradient(code), training=training)
        loss = ops.mean(ops.sparse_categorical_crossentropy(y, logits, from_logits=True))
        return logits, loss

    def _loss_trackers(self):
        """``(key of _forward's output, its tracker)`` of every loss logged."""
        return (("recon_loss", self.recon_tracker), ("d_loss", self.d_tracker), ("g_loss", self.g_tracker))

    def _update_metrics(self, out, y, probe_logits, probe_loss):
        for key, tracker in self._loss_trackers():
            tracker.update_state(out[key])
        for tracker in self.class_mix_trackers:
            tracker.update_state(out[tracker.name])
        self.probe_loss_tracker.update_state(probe_loss)
        self.probe_acc_tracker.update_state(y, probe_logits)
        results = {m.name: m.result() for m in self.metrics}
        if _multi_worker(tf.distribute.get_strategy()):
            # Keras reduces step outputs across workers along axis 0, which fails
            # on scalars (keras-team/keras#20585): give them that axis.
            results = {name: ops.reshape(value, (1,)) for name, value in results.items()}
        return results

    def _unpack(self, data):
        if not isinstance(data, (tuple, list)) or len(data) < 2:
            raise ValueError(
                "AMR trains on (images, labels) batches: labels feed only the linear probe. "
                "Got a dataset without labels."
            )
        if self.cls_weight > 0 and len(data) < 3:
            raise ValueError("AMR with cls > 0 trains on (images, labels, attributes) batches (the attributes: "
                             "int codes, batch x groups; amr_keras.data pipelines with attributes=...).")
        return data[0], data[1], (data[2] if self.cls_weight > 0 else None)

    # ----------------------------------------------------------------- steps
    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        if self.update_g_every == 1:
            return super().make_train_function(force)
        with self.distribute_strategy.scope():
            distributed = tf.distribute.has_strategy()
        if self.steps_per_execution > 1:
            if distributed:
                raise ValueError(
                    "With a tf.distribute strategy and update_g_every > 1, use steps_per_execution=1."
                )
            # Several steps per call: the autoencoder update is decided in-graph (a cond).
            return super().make_train_function(force)
        # Two step functions are traced, with and without the autoencoder
        # update, and picked per step. Under tf.distribute an optimizer update
        # cannot sit inside a traced conditional (it synchronises replicas), and
        # under XLA a conditional holding a whole update runs several times
        # slower than either branch alone.
        with_ae = self._make_function(lambda data: self._train_step(data, ae_update=True))
        without_ae = self._make_function(lambda data: self._train_step(data, ae_update=False))

        def train_function(iterator):
            step = int(self.d_optimizer.iterations.numpy())
            return (with_ae if step % self.update_g_every == 0 else without_ae)(iterator)

        self.train_function = train_function
        return train_function

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' version first reduces a batch across replicas, which fails under
        # MultiWorkerMirroredStrategy (keras-team/keras#20585). Every variable of
        # AMR exists after __init__ and compile(): there is nothing to build.
        if all(layer.built for layer in self._flatten_layers()):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, data):
        return self._train_step(data, ae_update=None)

    def _train_step(self, data, ae_update):
        """One step of AMR, top to bottom as the paper's algorithm (Beckham et al., 2019, Sec. 2).

        ``ae_update`` None decides in the graph whether the autoencoder trains at this step; True or False fixes
        it when the step is traced (``make_train_function``: two step functions, for tf.distribute and XLA).
        """
        x, y, attrs = self._unpack(data)
        replicas = _replicas()
        with tf.GradientTape(persistent=True) as tape:
            # Encode x, decode the codes and their mixes, one discriminator pass over [x, reconstructions,
            # decoded mixes], and every loss (``_forward``); the probe reads the code through a stop-gradient.
            out = self._forward(x, training=True, attrs=attrs)
            probe_logits, out["probe_loss"] = self._probe_loss(out["code"], y, training=True)
            # Per-replica means over the replica count (the all-reduced gradients are the global batch's), scaled
            # by each optimizer (loss scaling under float16).
            d_loss = self.d_optimizer.scale_loss(out["d_loss"] / replicas)
            g_loss = self.ae_optimizer.scale_loss(out["g_loss"] / replicas)
            probe_loss = self.probe_optimizer.scale_loss(out["probe_loss"] / replicas)

        # The autoencoder descends lamb * reconstruction + its adversarial terms (+ beta * consistency), at every
        # update_g_every-th step (counted by the discriminator's optimizer before its own update).
        self._every_update_g_every(ae_update, lambda: _descend(tape, g_loss, self.ae_optimizer, self.ae_variables))
        # The discriminator descends its loss on real images against reconstructions and mixes (ACAI: the
        # critic's regression of the mixing weight).
        _descend(tape, d_loss, self.d_optimizer, self.d_variables)
        # The linear probe descends its cross-entropy.
        self._train_probe(tape, probe_loss)
        return self._update_metrics(out, y, probe_logits, out["probe_loss"])

    def _every_update_g_every(self, ae_update, update):
        """Run ``update`` at every ``update_g_every``-th step: always (1), as traced (``ae_update`` True or
        False), or through a conditional in the graph (``ae_update`` None)."""
        if self.update_g_every == 1 or ae_update:
            update()
        elif ae_update is None:
            ops.cond(ops.equal(self.d_optimizer.iterations % self.update_g_every, 0), update, lambda: None)

    def _train_probe(self, tape, scaled_loss):
        """Train the linear probe on the stop-gradient code (and move its running average)."""
        _descend(tape, scaled_loss, self.probe_optimizer, self.probe.trainable_variables)
        if self.probe_average is not None:
            update_average(self.probe_average.weights, self.probe.trainable_variables, self.probe_optimizer.iterations)

    def test_step(self, data):
        x, y, attrs = self._unpack(data)
        out = self._forward(x, training=False, attrs=attrs)
        probe_logits, probe_loss = self._probe_loss(out["code"], y, training=False)
        return self._update_metrics(out, y, probe_logits, probe_loss)

    def predict_step(self, data):
        x = data[0] if isinstance(data, (tuple, list)) else data
        return self(x, training=False)

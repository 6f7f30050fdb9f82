"""Class-conditional mixing: mix two codes so that the decoded image carries the attributes asked of it.

For each image ``a`` of a batch and a partner ``b`` (a random permutation of the same batch), each attribute group
(``amr_keras.attributes``) is taken from ``a`` or from ``b`` with probability 1/2: ``take`` (one 0/1 per group) and
the asked attributes ``y_mix = take * attrs(a) + (1 - take) * attrs(b)``, group by group. A learned mixer gives a
mask ``m`` in [0, 1] over the code's feature maps (its values, for a flat code), and the mix is
``m * f(a) + (1 - m) * f(b)``. Its decoding is one more fake for the discriminator, which gets an auxiliary head:
one softmax per attribute group, trained on real images (their own attributes); the autoencoder and the mixer
are trained so that the head finds the asked attributes in the decoded mix.

Two mixers (``CLASS_MIXERS``):

- ``informed`` (the default): the mask is a function of what decides it: ``take`` and the attributes of both
  images (one-hot), through an MLP with a sigmoid output.
- ``official``: the released code's ``ClassMixer`` (``architectures/discriminators.py``, christopher-beckham/amr):
  the mask is an MLP of ``y_mix`` alone. Two departures, both stated: its last ReLU before the sigmoid (commented
  as a bug there; it keeps every mask value at 0.5 or above) is left out, and the mask is over the code's feature
  maps as there. ``y_mix`` does not say which image supplies a group where the two differ (a has it and b not
  gives the same ``y_mix`` as the reverse, and a mask that picks one image's feature maps must then be opposite
  in the two cases); a nonlinear decoder can escape this only by reading blends of codes in a way of its own.
  Kept as the baseline it is.

Losses, with the weights of the settings (``cls``, ``mask_prior``), as in the repository's older training loop
(root ``swapgan.py`` at commit 34036c8) with softmax groups in place of its per-attribute sigmoids:

- generator: ``GAN(D(dec(h)), real) + cls * CE(D_attr(dec(h)), y_mix) + mask_prior * mean((sum(m) - C/2)^2)``;
- discriminator: ``dec(h)`` is a fake; ``+ cls * CE(D_attr(x), attrs(x))`` on real images.

``CE`` is the softmax cross-entropy of each group, averaged over the batch and summed over the groups.
"""

import keras
from keras import layers, ops

from amr_keras.attributes import AttributeGroups

CLASS_MIXERS = ("informed", "official")
MASK_PRIOR = 1e-4  # the released loop's eps
HIDDEN = 128  # width of the mixer's hidden layers


def check_class_mixing(cls_weight, class_mixer, mask_prior):
    """Validate the settings of class-conditional mixing; ``ValueError`` saying what is accepted."""
    if not isinstance(cls_weight, (int, float)) or isinstance(cls_weight, bool) or cls_weight < 0:
        raise ValueError(f"cls (weight of the attribute losses) must be a number >= 0, got {cls_weight!r}.")
    if class_mixer not in CLASS_MIXERS:
        raise ValueError(f"Unknown class mixer {class_mixer!r}. Choose one of: {', '.join(CLASS_MIXERS)}.")
    if not isinstance(mask_prior, (int, float)) or isinstance(mask_prior, bool) or mask_prior < 0:
        raise ValueError(f"mask_prior must be a number >= 0, got {mask_prior!r}.")


@keras.saving.register_keras_serializable(package="amr_keras")
class ClassMixer(layers.Layer):
    """The mask of a class-conditional mix: ``(batch, channels)`` values in [0, 1].

    Args:
        kind: ``"informed"`` (input: ``take``, and both images' one-hot attributes) or ``"official"`` (input:
            the one-hot asked attributes ``y_mix``).
        channels: mask values (the code's feature maps, or its values for a flat code).
        hidden: width of the two hidden layers.
    """

    def __init__(self, kind="informed", channels=2, hidden=HIDDEN, **kwargs):
        super().__init__(**kwargs)
        if kind not in CLASS_MIXERS:
            raise ValueError(f"Unknown class mixer {kind!r}. Choose one of: {', '.join(CLASS_MIXERS)}.")
        self.kind, self.channels, self.hidden = kind, int(channels), int(hidden)
        self.body = [layers.Dense(self.hidden, activation="relu", name="hidden0", dtype="float32"),
                     layers.Dense(self.hidden, activation="relu", name="hidden1", dtype="float32"),
                     layers.Dense(self.channels, name="mask_logits", dtype="float32")]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.body:
            layer.build(shape)
            shape = (shape[0], layer.units)
        self.built = True

    @staticmethod
    def inputs(kind, take, onehot_a, onehot_b, onehot_mix):
        """What ``kind`` sees: ``[take, onehot_a, onehot_b]`` (informed) or ``onehot_mix`` (official)."""
        if kind == "informed":
            return ops.concatenate([take, onehot_a, onehot_b], axis=-1)
        return onehot_mix

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        for layer in self.body:
            x = layer(x)
        return ops.sigmoid(x)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "channels": self.channels, "hidden": self.hidden}


def group_cross_entropy(logits, codes, sizes):
    """Softmax cross-entropy of each attribute group, averaged over the batch and summed over the groups.

    Args:
        logits: ``(batch, sum(sizes))``, the groups' logits side by side.
        codes: ``(batch, groups)`` int value indices.
        sizes: values of each group.
    """
    total, offset = 0.0, 0
    for g, size in enumerate(sizes):
        part = logits[:, offset:offset + size]
        total = total + ops.mean(ops.sparse_categorical_crossentropy(codes[:, g], part, from_logits=True))
        offset += size
    return total


def group_accuracy(logits, codes, sizes):
    """``(batch, groups)`` booleans: whether each group's arg-max is its code."""
    hits, offset = [], 0
    for g, size in enumerate(sizes):
        hits.append(ops.equal(ops.argmax(logits[:, offset:offset + size], axis=-1), ops.cast(codes[:, g], "int64")))
        offset += size
    return ops.stack(hits, axis=1)


def one_hot_groups(codes, sizes):
    """``(batch, groups)`` int codes -> ``(batch, sum(sizes))`` float32 one-hot vectors side by side."""
    return ops.concatenate([ops.one_hot(ops.cast(codes[:, g], "int32"), size, dtype="float32")
                            for g, size in enumerate(sizes)], axis=-1)


def draw_request(codes, seed):
    """A partner for each image and the attributes asked of their mix.

    Returns:
        ``(perm, take, asked)``: the partner's index in the batch; ``take`` float32 ``(batch, groups)``, 1 where
        the group comes from the image itself (Bernoulli(0.5)), 0 from the partner; ``asked`` the int codes.
    """
    batch = ops.shape(codes)[0]
    perm = keras.random.shuffle(ops.arange(batch), seed=seed)
    take = ops.cast(keras.random.uniform(ops.shape(codes), seed=seed) < 0.5, "float32")
    partner = ops.take(codes, perm, axis=0)
    asked = ops.where(take > 0, codes, partner)
    return perm, take, asked


def mask_prior_loss(mask, channels):
    """``mean((sum(mask) - channels / 2)^2)``: keeps the mask from taking everything from one image."""
    return ops.mean(ops.square(ops.sum(mask, axis=-1) - channels / 2.0))


def apply_mask(mask, code_a, code_b):
    """``mask * code_a + (1 - mask) * code_b`` with the mask ``(batch, C)`` over the last axis of the codes."""
    m = ops.cast(mask, code_a.dtype)
    if len(code_a.shape) == 4:
        m = m[:, None, None, :]
    return m * code_a + (1.0 - m) * code_b


def groups_of(attribute_groups):
    """``AttributeGroups`` from itself, its ``to_json`` list, or None."""
    if attribute_groups is None or isinstance(attribute_groups, AttributeGroups):
        return attribute_groups
    return AttributeGroups.from_json(attribute_groups)


# Layers of the discriminator whose output the attribute head reads: the acai networks' last stage, the
# burgess networks' last dense layer.
FEATURE_LAYERS = ("top_act", "dense1_act")


def discriminator_features(discriminator):
    """A model of ``discriminator``'s inner features (its own layers, shared: training either trains both)."""
    for name in FEATURE_LAYERS:
        try:
            layer = discriminator.get_layer(name)
        except ValueError:
            continue
        return keras.Model(discriminator.inputs, layer.output, name="discriminator_features")
    raise ValueError(f"class-conditional mixing reads the discriminator's features at one of {FEATURE_LAYERS}; "
                     "this discriminator has none of them.")


class ClassMixing:
    """The class-conditional part of ``amr_keras.model.AMR`` (a base class of it): its layers, one mix per
    image, and the losses of the module's docstring. Off (nothing built) when ``cls`` is 0."""

    def _init_class_mixing(self, cls_weight, class_mixer, mask_prior, attribute_groups):
        self.cls_weight, self.class_mixer_kind, self.mask_prior = float(cls_weight), class_mixer, float(mask_prior)
        self.attribute_groups = groups_of(attribute_groups)
        self.class_mix_trackers = []
        if self.cls_weight == 0:
            return
        if self.attribute_groups is None:
            raise ValueError("cls > 0 mixes attributes: give attribute_groups (amr_keras.attributes.AttributeGroups, "
                             "e.g. Splits.info.attributes).")
        if self.mixer == "acai":
            raise ValueError("class-conditional mixing (cls > 0) goes with the mixers whose discriminator tells real "
                             "from fake, not with acai's critic: choose another --mixer.")
        groups = self.attribute_groups
        self.mask_channels = int(self.encoder.output_shape[-1])
        self.class_mixer = ClassMixer(class_mixer, self.mask_channels, name="class_mixer")
        width = len(groups) + 2 * groups.width if class_mixer == "informed" else groups.width
        self.class_mixer.build((None, width))
        self.discriminator_features = discriminator_features(self.discriminator)
        self.attribute_head = layers.Dense(groups.width, name="attribute_head", dtype="float32")
        self.attribute_head.build((None, int(self.discriminator_features.output_shape[-1])))
        self.class_mix_trackers = [keras.metrics.Mean(name=name) for name in
                                   ("attr_real_loss", "attr_mix_loss", "attr_real_accuracy", "attr_mix_accuracy",
                                    "mask_prior_loss", "mask_mean")]

    def attribute_logits(self, images, training=False):
        """The discriminator's attribute head on images in [-1, 1]: ``(batch, groups.width)`` float32 logits."""
        features = ops.cast(self.discriminator_features(images, training=training), "float32")
        if len(features.shape) == 4:
            features = ops.mean(features, axis=(1, 2))
        return self.attribute_head(features)

    def _class_mix(self, code, attrs, training):
        """One class-conditional mix per image: partner, asked attributes, mask, decoded image."""
        sizes = self.attribute_groups.sizes
        perm, take, asked = draw_request(attrs, self.seed_generator)
        own = one_hot_groups(attrs, sizes)
        partner = ops.take(own, perm, axis=0)
        mask = self.class_mixer(ClassMixer.inputs(self.class_mixer_kind, take, own, partner,
                                                  one_hot_groups(asked, sizes)))
        mixed = apply_mask(mask, code, ops.take(code, perm, axis=0))
        return dict(image=self._image(self.decoder(mixed, training=training)), mask=mask, asked=asked)

    def _class_mix_losses(self, x, attrs, cmix, training):
        """The attribute losses (real images: their own; mixes: the asked ones), the mask prior, and the shares of
        groups the head finds as it should (on mixes: as asked)."""
        sizes = self.attribute_groups.sizes
        batch = ops.shape(x)[0]
        logits = self.attribute_logits(ops.concatenate([ops.cast(x, cmix["image"].dtype), cmix["image"]], axis=0),
                                       training=training)
        real, mix = logits[:batch], logits[batch:]
        return dict(
            attr_real_loss=group_cross_entropy(real, attrs, sizes),
            attr_mix_loss=group_cross_entropy(mix, cmix["asked"], sizes),
            attr_real_accuracy=ops.mean(ops.cast(group_accuracy(real, attrs, sizes), "float32")),
            attr_mix_accuracy=ops.mean(ops.cast(group_accuracy(mix, cmix["asked"], sizes), "float32")),
            mask_prior_loss=mask_prior_loss(cmix["mask"], self.mask_channels),
            mask_mean=ops.mean(cmix["mask"]),
        )

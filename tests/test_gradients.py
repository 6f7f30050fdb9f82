"""What each optimizer applies: the gradients of the documented losses, computed here independently.

A step runs through ``fit`` (eagerly, so that each applied gradient can be read; one test traces the step as
``fit`` does by default). A spy on every optimizer's ``apply_gradients`` records the ``(gradient, variable)``
pairs, and a spy on the model's mixer records the mixing draws. The test then restores the model's variables and
computes, with a tape of its own over the same networks and the same draws, the losses as the method defines them
(docs/method.md, the docstrings of ``amr_keras.model`` and ``amr_keras.bvae``), term by term:

- autoencoder: ``lamb * recon(x, x_rec) + BCE(D(x_rec), 1) + BCE(D(x_mix), 1) + beta * |f(x_mix) - z_mix|``
  (ACAI: ``lamb * recon + acai_weight * BCE(D(x_mix), 0)``);
- discriminator: ``BCE(D(x), 1) + BCE(D(x_rec), 0) + BCE(D(x_mix), 0)`` (ACAI's critic:
  ``BCE(D(x), 0) + BCE(D(x_rec), 0) + BCE(D(x_mix), 2 min(a, 1 - a))``);
- probe: cross-entropy of a linear layer on the whitened stop-gradient code;
- beta-VAE: ``recon(x, g(mean + exp(log_var / 2) * eps)) + beta_kl * KL``.

Each test also checks that the comparison has teeth: scaling any one term of the reference by 1.5 (or dropping the
sampling noise) makes it disagree with what was applied.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import amr_keras.model as amr_model
from amr_keras.bvae import BVAE
from amr_keras.mixers import mix_codes, mix_pair
from amr_keras.model import AMR
from amr_keras.networks import build_arch, build_burgess_decoder, build_burgess_encoder, build_networks

BATCH = 6
NUM_CLASSES = 3
# Relative error allowed between applied and reference gradients (float32, same operations in another order);
# a term scaled by 1.5 must move the reference by more than PERTURBED times this.
TOLERANCE = 1e-4
PERTURBED = 10


# --------------------------------------------------------------------------- the losses, written from the docs
def bce(logits, target):
    """Mean binary cross-entropy of sigmoid(logits) against ``target``: ``softplus(l) - target * l``."""
    return ops.mean(ops.softplus(logits) - target * logits)


def l1(x, y):
    return ops.mean(ops.abs(x - y))


def bce_sum(x, logits):
    """Binary cross-entropy of sigmoid(logits) against ``(x + 1) / 2``, summed over pixels, mean over the batch."""
    per_pixel = ops.softplus(logits) - (x + 1.0) / 2.0 * logits
    return ops.mean(ops.sum(ops.reshape(per_pixel, (ops.shape(x)[0], -1)), axis=1))


def cross_entropy(labels, logits):
    log_p = logits - ops.logsumexp(logits, axis=1, keepdims=True)
    return -ops.mean(ops.take_along_axis(log_p, ops.cast(labels[:, None], "int32"), axis=1))


# --------------------------------------------------------------------------- recording a step
class Applied:
    """Spies on a model's optimizers: what each one applied, in order.

    ``calls`` lists ``(optimizer, {variable id: gradient})`` per ``apply_gradients`` call; under ``tf.function``
    the gradients are also assigned to ``store`` (variables made beforehand), readable after the step.
    """

    def __init__(self, model, monkeypatch):
        self.calls = []
        self.store = {}
        groups = {"ae": model.ae_variables, "probe": model.probe.trainable_variables}
        if model.discriminator is not None:
            groups["d"] = model.discriminator.trainable_variables
        for name, variables in groups.items():
            self.store[name] = {id(v): tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v in variables}
            optimizer = getattr(model, f"{name}_optimizer")
            monkeypatch.setattr(optimizer, "apply_gradients", self._spy(name, optimizer.apply_gradients))

    def _spy(self, name, apply_gradients):
        def spy(grads_and_vars):
            pairs = list(grads_and_vars)
            for grad, var in pairs:
                assert grad is not None, f"{name}: no gradient for {var.path}"
                self.store[name][id(var)].assign(grad)  # KeyError: a variable this optimizer must not move
            eager = tf.executing_eagerly()
            self.calls.append((name, {id(v): np.array(g) if eager else None for g, v in pairs}))
            return apply_gradients(pairs)
        return spy

    def last(self, name):
        """``{variable id: gradient}`` of ``name``'s last update (from ``store``: also after a traced step)."""
        ids = [ids for opt, ids in self.calls if opt == name][-1]
        return {i: np.array(self.store[name][i]) for i in ids}


def record_mixes(monkeypatch):
    """Record each call of the model's mixer: ``(codes, mixed, sources, weights)`` as NumPy arrays."""
    draws = []
    real = amr_model.mix_codes

    def spy(codes, mixer, k, seed, return_weights=False):
        out = real(codes, mixer, k, seed, return_weights=True)
        if tf.executing_eagerly():
            draws.append((np.array(codes), *(None if t is None else np.array(t) for t in out)))
        else:
            draws.append("traced")
        return out if return_weights else out[0]

    monkeypatch.setattr(amr_model, "mix_codes", spy)
    return draws


def partner_indices(codes, sources):
    """For each of the ``k`` sources, the index of the code of the batch it is: ``sources[j] = codes[perm[j]]``."""
    flat = codes.reshape(len(codes), -1)
    perms = []
    for source in sources:
        match = np.all(source.reshape(len(source), 1, -1) == flat[None], axis=2)
        assert np.all(match.sum(axis=1) == 1), "a mixing source is not one code of the batch"
        perms.append(match.argmax(axis=1))
    return np.stack(perms)


def snapshot(model):
    return [np.array(v) for v in model.variables]


def restore(model, values):
    for var, value in zip(model.variables, values):
        var.assign(value)


def sgd():
    return keras.optimizers.SGD(learning_rate=0.01)


def fit_spied(model, x, y, monkeypatch, eager=True, **compile_kw):
    model.compile(**compile_kw, run_eagerly=eager)
    applied = Applied(model, monkeypatch)
    applied.history = model.fit(batches(x, y), epochs=1, shuffle=False, verbose=0)
    return applied


def batches(x, y):
    """``(x, y)`` in batches of BATCH, in order, as ``fit`` gets them from a ``tf.data`` pipeline."""
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)


# --------------------------------------------------------------------------- comparing
def _flat(grads, variables):
    return np.concatenate([np.ravel(grads[id(v)]) for v in variables])


def rel_error(applied, expected, scale=None):
    """``|applied - expected|`` relative to ``scale`` (default ``|expected|``)."""
    return float(np.linalg.norm(applied - expected) / (np.linalg.norm(expected) if scale is None else scale))


def check(applied, terms, weights, variables, label):
    """``applied`` (``{id: gradient}``) is ``sum(weights[t] * terms[t])`` over exactly ``variables``, and scaling
    any one term by 1.5 would break the match.

    Errors are relative to the sum of the terms' sizes: the discriminator's terms nearly cancel at the start.
    """
    assert set(applied) == {id(v) for v in variables}, f"{label}: applied to other variables than its own"
    got = _flat(applied, variables)
    parts = {t: weights[t] * np.concatenate([np.ravel(g) for g in terms[t]]) for t in weights if weights[t]}
    expected = sum(parts.values())
    scale = sum(np.linalg.norm(part) for part in parts.values())
    error = rel_error(got, expected, scale)
    assert error < TOLERANCE, f"{label}: applied gradients differ from the documented loss's by {error:.2e}"
    for t, part in parts.items():
        off = rel_error(got, expected + 0.5 * part, scale)
        assert off > PERTURBED * TOLERANCE, f"{label}: term {t!r} too small to be checked ({off:.1e})"


def _grads(tape, loss, variables):
    return [ops.convert_to_numpy(g) if g is not None else np.zeros(v.shape, "float32")
            for g, v in zip(tape.gradient(loss, variables), variables)]


# --------------------------------------------------------------------------- AMR
# The documented defaults of AMR's settings; a test's settings are these updated with the case's.
DEFAULTS = dict(mixer="mixup", k=2, lamb=10.0, beta=0.0, recon="l1", acai_gamma=0.0, acai_weight=1.0,
                recon_gan=True, probe="whiten")


def amr_reference(model, settings, x, y, draw):
    """Per-term gradients of the documented AMR (or ACAI) losses for ``settings`` (those the model was given, not
    read back from it), with the recorded mixing draw, over the model's networks.

    Returns ``{"ae": {term: grads}, "d": {term: grads}, "probe": {"probe": grads}}``.
    """
    enc, dec, disc = model.encoder, model.decoder, model.discriminator
    image = (lambda out: ops.tanh(out / 2.0)) if settings["recon"] == "bce" else (lambda out: out)
    with tf.GradientTape(persistent=True) as tape:
        code = enc(x, training=True)
        decoded = dec(code, training=True)
        x_rec = image(decoded)
        seen = {"real": x}
        if settings["mixer"] == "acai":
            g = settings["acai_gamma"]
            seen["rec"] = g * x + (1.0 - g) * x_rec
        elif settings["recon_gan"]:
            seen["rec"] = x_rec
        if draw is not None:
            codes, _, sources, weights = draw
            perms = partner_indices(codes, sources)
            z_mix = sum(weights[j] * ops.take(code, perms[j], axis=0) for j in range(len(perms)))
            x_mix = image(dec(z_mix, training=True))
            seen["mix"] = x_mix
        # One pass of the discriminator over every image it judges, as the model does: its spectral norm
        # renormalises the kernels in each training-mode call.
        logits = disc(ops.concatenate(list(seen.values()), axis=0), training=True)
        d = dict(zip(seen, ops.split(logits, len(seen))))
        recon = {"bce": lambda: bce_sum(x, decoded), "l1": lambda: l1(x, x_rec),
                 "l2": lambda: ops.mean(ops.square(x - x_rec))}[settings["recon"]]()
        ae = {"recon": recon}
        if settings["mixer"] == "acai":
            alpha = ops.reshape(weights[0], (-1,))
            critic = {"real": bce(d["real"], 0.0), "rec": bce(d["rec"], 0.0),
                      "mix": bce(d["mix"], 2.0 * ops.minimum(alpha, 1.0 - alpha))}
            ae["acai"] = bce(d["mix"], 0.0)
        else:
            critic = {"real": bce(d["real"], 1.0)}
            critic.update({name: bce(d[name], 0.0) for name in ("rec", "mix") if name in d})
            ae.update({f"gan_{name}": bce(d[name], 1.0) for name in ("rec", "mix") if name in d})
        if draw is not None and settings["beta"] > 0:
            ae["consistency"] = l1(enc(x_mix, training=True), z_mix)
        flat = ops.reshape(ops.stop_gradient(code), (BATCH, -1))
        if settings["probe"] == "whiten":
            model.probe_norm.update(flat)
            probe_logits = model.probe(model.probe_norm(flat))
        else:
            probe_logits = model.probe(model.probe_norm(flat, training=True))
        probe = cross_entropy(y, probe_logits)
    ae_vars, d_vars = model.ae_variables, disc.trainable_variables
    return {"ae": {t: _grads(tape, loss, ae_vars) for t, loss in ae.items()},
            "d": {t: _grads(tape, loss, d_vars) for t, loss in critic.items()},
            "probe": {"probe": _grads(tape, probe, model.probe.trainable_variables)}}


def amr_weights(settings, reference):
    ae = {"recon": settings["lamb"], "gan_rec": 1.0, "gan_mix": 1.0, "acai": settings["acai_weight"],
          "consistency": settings["beta"]}
    return {"ae": {t: ae[t] for t in reference["ae"]}, "d": dict.fromkeys(reference["d"], 1.0),
            "probe": {"probe": 1.0}}


def check_amr_step(model, settings, applied, reference):
    """Each optimizer's update (``{name: {id: gradient}}``) is the gradient of its documented loss."""
    weights = amr_weights(settings, reference)
    groups = {"ae": model.ae_variables, "d": model.discriminator.trainable_variables,
              "probe": model.probe.trainable_variables}
    for name, variables in groups.items():
        check(applied[name], reference[name], weights[name], variables, name)


# The networks of every AMR here, built once per session and reset to their first weights for each model.
_NETWORKS = {}


def tiny_amr(arch="acai", update_g_every=1, **kw):
    """An AMR of the smallest networks: ACAI's at depth 2 and one scale (a 17x17x2 code), or burgess' at depth 4."""
    if arch not in _NETWORKS:
        keras.utils.set_random_seed(0)
        nets = build_networks(depth=2, scales=1) if arch == "acai" else build_arch("burgess", depth=4)
        _NETWORKS[arch] = nets, [[np.array(v) for v in net.variables] for net in nets]
    nets, values = _NETWORKS[arch]
    for net, net_values in zip(nets, values):
        restore(net, net_values)
    return AMR(*nets, num_classes=NUM_CLASSES, update_g_every=update_g_every, **kw)


def images(shape, seed=0, binary=False, n=BATCH):
    rng = np.random.default_rng(seed)
    if binary:
        return (rng.integers(0, 2, (n, *shape)) * 2 - 1).astype("float32")
    return rng.uniform(-1, 1, (n, *shape)).astype("float32")


def labels(n=BATCH):
    return np.arange(n) % NUM_CLASSES


# lamb well below the paper's 10 keeps every term of the autoencoder's loss large enough to be seen. Mixup with
# k=3 is in test_autoencoder_steps_every_update_g_every_steps; ACAI with acai_gamma 0 shows its critic the
# reconstructions, as every other mixer does.
CASES = {
    "mixup_consistency": dict(mixer="mixup", lamb=0.5, beta=1.0),
    "bernoulli_without_recon_gan": dict(mixer="bernoulli", lamb=0.3, recon_gan=False),
    "bernoulli_k3_l2_batchnorm_probe": dict(mixer="bernoulli", k=3, lamb=0.6, recon="l2", probe="batchnorm"),
    # beta without mixes: there is no consistency term to add.
    "none": dict(mixer="none", lamb=0.5, beta=0.5),
    "acai_gamma_weight": dict(mixer="acai", lamb=0.2, acai_gamma=0.2, acai_weight=0.5),
    # Table 4's setting: flat codes, bce summed over 64x64 pixels (hence the small lamb).
    "burgess_bce_bernoulli": dict(arch="burgess", mixer="bernoulli", lamb=0.01, recon="bce"),
}


def run_amr(model, x, y, monkeypatch, eager=True):
    """Fit ``model`` on ``x`` in batches of BATCH; ``(spy on its optimizers, recorded mixing draws, first weights)``."""
    draws = record_mixes(monkeypatch)
    before = snapshot(model)
    applied = fit_spied(model, x, y, monkeypatch, eager=eager, ae_optimizer=sgd(), d_optimizer=sgd(),
                            probe_optimizer=sgd())
    return applied, draws, before


def check_draw(settings, draw):
    """The recorded mixing weights: ``k`` per mix, one per example (mixup) or per feature map (Bernoulli),
    non-negative, summing to one; and the model's first draw is the first of a generator with its seed (0)."""
    codes, _, sources, weights = draw
    per_map = codes.shape[-1] if settings["mixer"] == "bernoulli" else 1
    assert weights.shape == (settings["k"], BATCH, *(1,) * (codes.ndim - 2), per_map) and np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, atol=1e-6)
    _, replayed_sources, replayed = mix_codes(codes, settings["mixer"], settings["k"], keras.random.SeedGenerator(0),
                                              return_weights=True)
    np.testing.assert_array_equal(weights, np.asarray(replayed))
    np.testing.assert_array_equal(sources, np.asarray(replayed_sources))


@pytest.mark.parametrize("case", list(CASES))
def test_amr_applies_the_gradients_of_the_documented_losses(case, monkeypatch):
    kw = dict(CASES[case])
    arch = kw.pop("arch", "acai")
    settings = {**DEFAULTS, **kw}
    model = tiny_amr(arch, **kw)
    x = images((64, 64, 1) if arch == "burgess" else (32, 32, 1), binary=arch == "burgess")
    applied, draws, before = run_amr(model, x, labels(), monkeypatch)
    assert [name for name, _ in applied.calls] == ["ae", "d", "probe"]
    assert len(draws) == 1
    draw = None if settings["mixer"] == "none" else draws[0]
    if draw is not None:
        check_draw(settings, draw)
    restore(model, before)
    reference = amr_reference(model, settings, tf.constant(x), tf.constant(labels()), draw)
    check_amr_step(model, settings, {name: applied.last(name) for name in ("ae", "d", "probe")}, reference)


def test_autoencoder_steps_every_update_g_every_steps(monkeypatch):
    settings = {**DEFAULTS, "mixer": "mixup", "k": 3, "lamb": 0.4}
    model = tiny_amr(mixer="mixup", k=3, lamb=0.4, update_g_every=2)
    x = images((32, 32, 1), n=3 * BATCH)
    applied, draws, before = run_amr(model, x, labels(len(x)), monkeypatch)
    # Steps 0 and 2 update the autoencoder (three steps: step 2 tells "every second step" from "the first only");
    # the discriminator and the probe step every time.
    assert [name for name, _ in applied.calls] == ["ae", "d", "probe", "d", "probe", "ae", "d", "probe"]
    # The first step's updates (from the step function that includes the autoencoder's) are those of the
    # documented losses.
    check_draw(settings, draws[0])
    restore(model, before)
    reference = amr_reference(model, settings, tf.constant(x[:BATCH]), tf.constant(labels()), draws[0])
    check_amr_step(model, settings, dict(applied.calls[:3]), reference)


def test_autoencoder_steps_every_update_g_every_steps_when_decided_in_the_step(monkeypatch):
    """With several steps per execution the step itself decides (a conditional on the discriminator's step
    count): the autoencoder still steps at steps 0, 2, 4, ..."""
    model = tiny_amr(mixer="mixup", update_g_every=2)
    x = images((32, 32, 1), n=3 * BATCH)
    model.compile(ae_optimizer=sgd(), d_optimizer=sgd(), probe_optimizer=sgd(), steps_per_execution=3,
                  run_eagerly=True)
    applied = Applied(model, monkeypatch)
    model.fit(batches(x, labels(len(x))), epochs=1, shuffle=False, verbose=0)
    assert [name for name, _ in applied.calls] == ["ae", "d", "probe", "d", "probe", "ae", "d", "probe"]


@pytest.mark.parametrize("probe", ["whiten", "batchnorm"])
def test_probe_loss_sends_no_gradient_into_the_code(probe):
    """The probe trains on ``stop_gradient(code)``: its loss has no gradient with respect to the code.

    (The applied autoencoder gradients above already leave the probe out; this guards the stop-gradient itself.)
    """
    model = tiny_amr(mixer="none", probe=probe)
    code = tf.Variable(np.random.default_rng(0).normal(size=(BATCH, 17, 17, 2)).astype("float32"))
    for training in (True, False):
        with tf.GradientTape() as tape:
            _, loss = model._probe_loss(code, tf.constant(labels()), training=training)
        assert tape.gradient(loss, code) is None
        assert np.isfinite(float(loss))


# --------------------------------------------------------------------------- the mixing draws themselves
MIXES = [("mixup", 2), ("mixup", 3), ("bernoulli", 2), ("bernoulli", 3), ("acai", 2)]


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("mixer, k", MIXES)
def test_mixing_draws_follow_the_seed_and_the_documented_shapes(mixer, k, flat):
    """Every draw goes through the model's SeedGenerator (a seed repeats a run's mixes); the weights are ``k`` per
    mix, one per example (mixup, ACAI) or per feature map / code value (Bernoulli), and every one of the ``k``
    codes takes part."""
    shape = (32, 10) if flat else (32, 4, 4, 8)
    codes = np.random.default_rng(0).normal(size=shape).astype("float32")

    def draw(seed):
        return [np.asarray(t) for t in mix_codes(codes, mixer, k, keras.random.SeedGenerator(seed), True)]

    first, again, other = draw(5), draw(5), draw(6)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[2], other[2])
    weights = first[2]
    per_map = shape[-1] if mixer == "bernoulli" else 1
    assert weights.shape == (k, 32, *(1,) * (len(shape) - 2), per_map)
    assert np.all(weights.reshape(k, -1).sum(axis=1) > 0), "a code that never takes part in the mixes"


@pytest.mark.parametrize("shape", [(5, 4, 4, 3), (5, 10)])
def test_mix_pair_weighs_each_example_and_feature_map(shape):
    """``mix_pair`` (the exports' ``mix`` and the interpolation figures): ``w * a + (1 - w) * b`` per example, or
    per feature map (code value) with a mask."""
    rng = np.random.default_rng(1)
    a, b = (rng.normal(size=shape).astype("float32") for _ in range(2))
    weight = rng.uniform(size=5).astype("float32")
    expected = np.stack([weight[i] * a[i] + (1 - weight[i]) * b[i] for i in range(5)])
    np.testing.assert_allclose(np.asarray(mix_pair(a, b, weight)), expected, atol=1e-6)
    mask = rng.integers(0, 2, (5, shape[-1])).astype("float32")
    expected = np.stack([mask[i] * a[i] + (1 - mask[i]) * b[i] for i in range(5)])
    np.testing.assert_allclose(np.asarray(mix_pair(a, b, mask)), expected, atol=1e-6)


# Tracing the step takes several seconds.
@pytest.mark.slow
def test_traced_step_applies_the_same_gradients(monkeypatch):
    """The step ``fit`` traces by default (``tf.function``) applies what the documented losses give."""
    settings = {**DEFAULTS, "lamb": 0.5, "beta": 0.5}
    model = tiny_amr(mixer="mixup", lamb=0.5, beta=0.5)
    x = images((32, 32, 1), seed=1)
    seed_state = np.array(model.seed_generator.state)
    applied, draws, before = run_amr(model, x, labels(), monkeypatch, eager=False)
    assert draws == ["traced"] and [name for name, _ in applied.calls] == ["ae", "d", "probe"]
    # The spy saw symbolic draws: replay them eagerly from the generator's state before the step.
    restore(model, before)
    model.seed_generator.state.assign(seed_state)
    code = model.encoder(x, training=True)
    draw = (np.array(code), *(np.array(t) for t in amr_model.mix_codes(code, "mixup", 2, model.seed_generator, True)))
    restore(model, before)
    reference = amr_reference(model, settings, tf.constant(x), tf.constant(labels()), draw)
    check_amr_step(model, settings, {name: applied.last(name) for name in ("ae", "d", "probe")}, reference)


# --------------------------------------------------------------------------- beta-VAE
def bvae_reference(model, x, y, seed, kl_reduction):
    """Gradients of the beta-VAE's documented terms over its networks, with the noise of a generator seeded
    ``seed``: ``({"recon", "kl", "recon_of_mean"}: autoencoder grads, {"probe": probe grads}, {term: value})``."""
    with tf.GradientTape(persistent=True) as tape:
        mean, log_var = model.posterior(x, training=True)
        # The model's first draw from a generator seeded like its own.
        eps = keras.random.normal(ops.shape(mean), seed=keras.random.SeedGenerator(seed))
        z = mean + ops.exp(0.5 * log_var) * eps
        recon = bce_sum(x, model.decoder(z, training=True))
        per_value = 0.5 * (ops.exp(log_var) + ops.square(mean) - 1.0 - log_var)
        kl = ops.mean((ops.mean if kl_reduction == "mean" else ops.sum)(per_value, axis=1))
        # The same reconstruction without the noise: what a model that decodes the mean would be trained on.
        recon_of_mean = bce_sum(x, model.decoder(mean, training=True))
        flat = ops.stop_gradient(mean)
        model.probe_norm.update(flat)
        probe = cross_entropy(y, model.probe(model.probe_norm(flat)))
    ae_vars = model.ae_variables
    return ({"recon": _grads(tape, recon, ae_vars), "kl": _grads(tape, kl, ae_vars),
             "recon_of_mean": _grads(tape, recon_of_mean, ae_vars)},
            {"probe": _grads(tape, probe, model.probe.trainable_variables)},
            {"recon": float(recon), "kl": float(kl), "recon_of_mean": float(recon_of_mean)})


SEED = 3


# The paper's beta 100 on its 10-value code, averaged over the code values (the official code) or summed.
@pytest.mark.parametrize("kl_reduction, beta_kl", [("mean", 100.0), ("sum", 10.0)])
def test_bvae_applies_the_gradients_of_recon_plus_beta_kl(kl_reduction, beta_kl, monkeypatch):
    keras.utils.set_random_seed(0)
    model = BVAE(build_burgess_encoder(filters=4, heads=2), build_burgess_decoder(filters=4),
                 num_classes=NUM_CLASSES, beta_kl=beta_kl, seed=SEED, kl_reduction=kl_reduction)
    x, y = images((64, 64, 1), binary=True), labels()
    before = snapshot(model)
    applied = fit_spied(model, x, y, monkeypatch, ae_optimizer=sgd(), probe_optimizer=sgd())
    assert [name for name, _ in applied.calls] == ["ae", "probe"]
    restore(model, before)
    ae, probe, values = bvae_reference(model, tf.constant(x), tf.constant(y), SEED, kl_reduction)
    check(applied.last("ae"), ae, {"recon": 1.0, "kl": beta_kl}, model.ae_variables, "ae")
    check(applied.last("probe"), probe, {"probe": 1.0}, model.probe.trainable_variables, "probe")
    got = _flat(applied.last("ae"), model.ae_variables)

    def total(**weights):
        return sum(w * np.concatenate([np.ravel(g) for g in ae[t]]) for t, w in weights.items())

    # The sampling noise is used: decoding the mean instead gives other gradients.
    assert rel_error(got, total(recon_of_mean=1.0, kl=beta_kl)) > PERTURBED * TOLERANCE
    # The KL's reduction matters: the other one scales the KL by the code's 10 values (or a tenth).
    other = 10.0 if kl_reduction == "mean" else 0.1
    assert rel_error(got, total(recon=1.0, kl=beta_kl * other)) > PERTURBED * TOLERANCE
    # What the step logged, and what evaluation reports (it decodes the mean): the same terms' values.
    logs = applied.history.history
    assert logs["kl_loss"][0] == pytest.approx(values["kl"], rel=1e-4)
    assert logs["vae_loss"][0] == pytest.approx(values["recon"] + beta_kl * values["kl"], rel=1e-4)
    restore(model, before)
    scores = model.evaluate(batches(x, y), verbose=0, return_dict=True)
    assert scores["recon_loss"] == pytest.approx(values["recon_of_mean"], rel=1e-4)
    assert scores["kl_loss"] == pytest.approx(values["kl"], rel=1e-4)

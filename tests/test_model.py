"""AMR model: which weights each optimizer moves, finite metrics, fit/evaluate with callbacks, save/load."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from amr_keras.data import synthetic_dataset
from amr_keras.model import AMR, default_optimizer
from amr_keras.networks import build_networks


def tiny_model(mixer="mixup", k=2, update_g_every=1, seed=0, **kw):
    keras.utils.set_random_seed(seed)
    return AMR(*build_networks(depth=4), mixer=mixer, k=k, update_g_every=update_g_every, seed=seed, **kw)


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.uniform(-1, 1, (n, 32, 32, 1)).astype("float32")),
            tf.constant(rng.integers(0, 10, n).astype("int32")))


def _snapshot(model):
    parts = {"encoder": model.encoder, "decoder": model.decoder, "discriminator": model.discriminator,
             "probe": model.probe}
    return {name: [np.array(v) for v in part.trainable_variables] for name, part in parts.items()}


def _changed(before, after):
    return {name for name in before if any(not np.array_equal(a, b) for a, b in zip(before[name], after[name]))}


@pytest.mark.parametrize("mixer", ["mixup", "acai"])
@pytest.mark.parametrize("moving, expected", [
    ("ae", {"encoder", "decoder"}),
    ("d", {"discriminator"}),
    ("probe", {"probe"}),
])
def test_each_optimizer_changes_only_its_own_network(moving, expected, mixer):
    model = tiny_model(mixer=mixer)
    lrs = {name: (1e-2 if name == moving else 0.0) for name in ("ae", "d", "probe")}
    model.compile(ae_optimizer=default_optimizer(lrs["ae"]), d_optimizer=default_optimizer(lrs["d"]),
                  probe_optimizer=default_optimizer(lrs["probe"]))
    before = _snapshot(model)
    d_before = [np.array(v) for v in model.discriminator.variables]
    model.train_step(_batch())
    after = _snapshot(model)
    changed = _changed(before, after)
    if moving != "d":
        # Keras' SpectralNormalization rewrites the kernels with their normalised
        # values in every training-mode forward pass; with a zero discriminator
        # learning rate that renormalisation must be the only change.
        assert changed - {"discriminator"} == expected
        for v, value in zip(model.discriminator.variables, d_before):
            v.assign(value)
        model.discriminator(_batch()[0], training=True)
        renormalised = [np.array(v) for v in model.discriminator.trainable_variables]
        for a, b in zip(after["discriminator"], renormalised):
            np.testing.assert_allclose(a, b, atol=1e-6)
    else:
        assert changed == expected


def test_autoencoder_updates_only_every_update_g_every_steps():
    # Eager steps (a traced step takes seconds to build): the same ops.cond runs its branch directly. The traced
    # conditional is covered by test_fit_updates_the_autoencoder_every_update_g_every_steps (steps_per_execution,
    # with -m slow).
    model = tiny_model(update_g_every=3)
    model.compile()
    step = model.train_step
    changed = []
    for i in range(4):
        before = _snapshot(model)
        step(_batch(seed=i))
        changed.append(_changed(before, _snapshot(model)))
    assert ["encoder" in c for c in changed] == [True, False, False, True]
    assert all({"discriminator", "probe"} <= c for c in changed)
    assert int(model.ae_optimizer.iterations) == 2 and int(model.d_optimizer.iterations) == 4


@pytest.mark.parametrize("mixer, k", [("mixup", 2), ("bernoulli", 2), ("mixup", 3), ("bernoulli", 3), ("acai", 2),
                                      ("none", 2)])
def test_train_step_returns_finite_values_for_every_metric(mixer, k):
    model = tiny_model(mixer=mixer, k=k, beta=0.5 if mixer in ("mixup", "acai") else 0.0,
                       **({"acai_gamma": 0.2, "acai_weight": 0.5} if mixer == "acai" else {}))
    model.compile()
    logs = model.train_step(_batch())
    assert set(logs) == {"recon_loss", "d_loss", "g_loss", "probe_loss", "probe_accuracy"}
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert 0.0 <= float(logs["probe_accuracy"]) <= 1.0


@pytest.mark.slow
def test_fit_and_evaluate_with_standard_callbacks(tmp_path):
    model = tiny_model(update_g_every=2)
    model.compile()
    train = synthetic_dataset(64, batch_size=16)
    val = synthetic_dataset(32, batch_size=16, seed=1)
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor="val_probe_accuracy", mode="max",
                                        save_best_only=True),
        keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
        keras.callbacks.TensorBoard(str(tmp_path / "tb")),
        keras.callbacks.BackupAndRestore(str(tmp_path / "backup")),
        keras.callbacks.EarlyStopping("val_probe_accuracy", mode="max", patience=5),
    ]
    history = model.fit(train, validation_data=val, epochs=2, callbacks=callbacks, verbose=0)
    assert len(history.history["val_probe_accuracy"]) == 2
    assert os.path.exists(tmp_path / "best.keras") and os.path.exists(tmp_path / "log.csv")
    assert any(files for _, _, files in os.walk(tmp_path / "tb"))
    scores = model.evaluate(val, return_dict=True, verbose=0)
    assert set(scores) >= {"recon_loss", "probe_accuracy", "d_loss"}
    assert all(np.isfinite(v) for v in scores.values())
    # 4 batches per epoch, 2 epochs: the discriminator stepped 8 times, the autoencoder 4.
    assert int(model.d_optimizer.iterations) == 8 and int(model.ae_optimizer.iterations) == 4


# Traces (or compiles) a step function: seconds each, so with -m slow (XLA's compile: a minute and more, -m heavy).
@pytest.mark.parametrize("compile_args", [pytest.param({"jit_compile": True}, marks=pytest.mark.heavy),
                                          pytest.param({"steps_per_execution": 2}, marks=pytest.mark.slow)])
def test_fit_updates_the_autoencoder_every_update_g_every_steps(compile_args):
    # jit_compile: two traced step functions picked per step; steps_per_execution > 1: an in-graph cond.
    model = tiny_model(update_g_every=3)
    model.compile(**compile_args)
    before = _snapshot(model)
    model.fit(synthetic_dataset(48, batch_size=8), epochs=1, verbose=0)
    assert int(model.d_optimizer.iterations) == 6 and int(model.ae_optimizer.iterations) == 2  # steps 0 and 3
    assert {"encoder", "decoder", "discriminator", "probe"} <= _changed(before, _snapshot(model))


def test_keras_round_trip_keeps_outputs_config_and_optimizer_state(tmp_path):
    model = tiny_model(mixer="bernoulli", k=3, lamb=3.0)
    model.compile()
    step = model.train_step  # eager: what is saved does not depend on tracing, which takes seconds
    for i in range(2):
        step(_batch(seed=i))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x, _ = _batch(5, seed=9)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(loaded.classify(x)), np.asarray(model.classify(x)), atol=1e-5)
    assert (loaded.mixer, loaded.k, loaded.lamb) == ("bernoulli", 3, 3.0)
    assert int(loaded.d_optimizer.iterations) == 2
    for a, b in zip(loaded.ae_optimizer.variables, model.ae_optimizer.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b))
    # Training continues from the restored state.
    loaded.train_step(_batch(seed=3))
    assert int(loaded.d_optimizer.iterations) == 3


@pytest.mark.parametrize("kwargs, match", [
    ({"mixer": "cutmix"}, "Unknown mixer"),
    ({"k": 1}, ">= 2"),
    ({"lamb": 0.0}, "lamb"),
    ({"recon": "huber"}, "reconstruction loss"),
    ({"update_g_every": 0}, "update_g_every"),
    ({"mixer": "acai", "k": 3}, "Mixer 'acai' mixes pairs of codes .*: k must be 2, got 3"),
    ({"mixer": "acai", "acai_gamma": 1.0}, r"acai_gamma .* must be in \[0, 1\), got 1.0"),
    ({"mixer": "acai", "acai_weight": -0.5}, "acai_weight .* must be >= 0, got -0.5"),
    ({"mixer": "bernoulli", "acai_weight": 0.5}, "only apply to mixer 'acai', but mixer is 'bernoulli'"),
])
def test_bad_settings_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(**kwargs)


def test_dataset_without_labels_is_rejected():
    model = tiny_model()
    model.compile()
    with pytest.raises(ValueError, match="labels"):
        model.train_step(_batch()[0])


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_leaky_relu_gradient_matches_tensorflows_and_reads_the_output(precision):
    from amr_keras.networks import LeakyReLU
    from amr_keras.precision import precision_scope

    with precision_scope(precision):
        layer = LeakyReLU(0.2)
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype("float32"))
    weights = tf.range(x.shape[-1], dtype=tf.float32) + 1.0

    def loss(fn, x):
        return tf.reduce_sum(tf.cast(fn(x), tf.float32) * weights)

    cast = tf.bfloat16 if precision == "mixed_bfloat16" else tf.float32
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, theirs = loss(layer, x), loss(lambda v: tf.nn.leaky_relu(tf.cast(v, cast), 0.2), x)
    np.testing.assert_array_equal(tape.gradient(ours, x).numpy(), tape.gradient(theirs, x).numpy())
    slopes = np.unique(np.round(tape.gradient(ours, x).numpy() / weights.numpy(), 2))  # bfloat16 0.2 is 0.2002
    np.testing.assert_array_equal(slopes, np.array([0.2, 1.0], dtype=np.float32))

    # In a traced gradient, every LeakyReluGrad reads the activation's output, never its input (a BiasAdd that
    # grappler's remapper fuses into the convolution).
    @tf.function
    def grad(v):
        with tf.GradientTape() as t:
            t.watch(v)
            out = loss(lambda u: layer(tf.nn.bias_add(u, tf.ones([3]))), v)
        return t.gradient(out, v)

    ops = grad.get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph.get_operations()
    grads = [op for op in ops if op.type == "LeakyReluGrad"]
    assert grads and all(op.inputs[1].op.type == "LeakyRelu" for op in grads)

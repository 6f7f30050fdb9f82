"""The online probe's parts: running whitening, weight averaging, and the probe setting end to end."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from amr_keras.config import ConfigError, settings_diff, upgrade_run_settings
from amr_keras.parser import config_from_args
from amr_keras.model import AMR, default_optimizer
from amr_keras.networks import build_networks
from amr_keras.probe import PROBE_AVERAGE_DECAY, RunningWhitening, update_average


def correlated(n, dim=4, seed=0):
    """Codes whose dimensions are strongly correlated and offset from zero."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) + 3.0 * np.eye(dim)
    return (rng.normal(size=(n, dim)) @ mixing + rng.normal(5, 2, dim)).astype("float32")


def whitening(momentum=0.9, epsilon=1e-6, dim=4):
    layer = RunningWhitening(momentum=momentum, epsilon=epsilon)
    layer.build((None, dim))
    return layer


def test_first_update_takes_the_batch_mean_and_unbiased_covariance():
    x = correlated(64)
    layer = whitening()
    layer.update(x)
    np.testing.assert_allclose(layer.moving_mean.numpy(), x.mean(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(layer.moving_covariance.numpy(), np.cov(x.T), rtol=1e-4, atol=1e-3)
    # Its output on that batch is centred and has unit covariance: whitened, not only standardised.
    z = np.asarray(layer(x))
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(z.T), np.eye(4), atol=1e-3)
    assert np.max(np.abs(np.corrcoef(x.T) - np.eye(4))) > 0.3  # the input was correlated


def test_codes_far_from_zero_with_a_small_spread_still_whiten():
    # E[x x^T] - m m^T in float32 loses everything here (offset 300, spread 0.01), and its Cholesky
    # factorisation fails (NaN outputs); the covariance of the centred codes does not.
    rng = np.random.default_rng(0)
    layer = whitening(momentum=0.9, epsilon=1e-3, dim=32)
    for _ in range(20):
        x = (300.0 + 0.01 * rng.standard_normal((512, 32))).astype("float32")
        layer.update(x)
    np.testing.assert_allclose(np.diag(layer.moving_covariance.numpy()), 1e-4, rtol=0.2)
    z = np.asarray(layer((300.0 + 0.01 * rng.standard_normal((4096, 32))).astype("float32")))
    assert np.isfinite(z).all()
    np.testing.assert_allclose(np.cov(z.T), np.eye(32), atol=0.15)


def test_later_updates_are_moving_averages_with_warm_up():
    a, b, c = correlated(32, seed=1), correlated(32, seed=2), correlated(32, seed=3)
    layer = whitening(momentum=0.9)
    for batch in (a, b, c):
        layer.update(batch)
    # Momenta min(0.9, t / (t + 1)) for t = 0, 1, 2: 0 (replace), 1/2 (plain mean of two), then 2/3 (plain mean of three).
    expected = (a.mean(0) + b.mean(0) + c.mean(0)) / 3
    np.testing.assert_allclose(layer.moving_mean.numpy(), expected, rtol=1e-5, atol=1e-4)
    layer.update(a)  # t = 3: momentum 0.75
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.75 * expected + 0.25 * a.mean(0), rtol=1e-5, atol=1e-4)
    assert float(layer.count.numpy()) == 4


def test_whitening_is_an_affine_map_of_the_code():
    # A linear layer on it is a linear function of the code.
    layer = whitening()
    layer.update(correlated(64))
    x1, x2 = correlated(8, seed=5), correlated(8, seed=6)
    mixed = np.asarray(layer(0.3 * x1 + 0.7 * x2))
    np.testing.assert_allclose(mixed, 0.3 * np.asarray(layer(x1)) + 0.7 * np.asarray(layer(x2)), atol=1e-4)


def test_bad_whitening_settings_are_refused():
    with pytest.raises(ValueError, match="momentum must be in"):
        RunningWhitening(momentum=1.0)
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        RunningWhitening(epsilon=0.0)


def test_update_average_follows_closely_at_first_then_with_the_decay():
    var = tf.Variable([1.0, 2.0])
    avg = tf.Variable([0.0, 0.0])
    update_average([avg], [var], step=0)  # decay min(0.999, 1/10) = 0.1
    np.testing.assert_allclose(avg.numpy(), [0.9, 1.8], rtol=1e-6)
    avg.assign([0.0, 0.0])
    update_average([avg], [var], step=10**6)  # long after: the decay itself
    np.testing.assert_allclose(avg.numpy(), [1 - PROBE_AVERAGE_DECAY, 2 * (1 - PROBE_AVERAGE_DECAY)], rtol=1e-4)


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.uniform(-1, 1, (n, 32, 32, 1)).astype("float32")),
            tf.constant(rng.integers(0, 10, n).astype("int32")))


def tiny(probe="whiten"):
    keras.utils.set_random_seed(0)
    model = AMR(*build_networks(depth=4), mixer="mixup", update_g_every=1, probe=probe)
    model.compile(ae_optimizer=default_optimizer(1e-3), d_optimizer=default_optimizer(1e-3),
                  probe_optimizer=default_optimizer(1e-2))
    return model


def test_a_step_trains_the_probe_and_moves_its_average_and_statistics():
    model = tiny()
    before = [w.numpy().copy() for w in model.probe_average.weights]
    model.train_step(_batch())
    assert float(model.probe_norm.count.numpy()) == 1
    probe, average = [w.numpy() for w in model.probe.weights], [w.numpy() for w in model.probe_average.weights]
    # The average sits between where it was and where the weights went: after the optimizer's first
    # update (iterations 1) the decay is (1 + 1) / (10 + 1).
    d = 2.0 / 11.0
    for b, p, a in zip(before, probe, average):
        np.testing.assert_allclose(a, d * b + (1 - d) * p, rtol=1e-5, atol=1e-6)
        assert not np.allclose(a, b)


def test_classification_uses_the_averaged_weights():
    model = tiny()
    model.train_step(_batch())
    x = _batch(seed=1)[0]
    codes = model.encode(x)
    flat = tf.reshape(codes, (codes.shape[0], -1))
    expected = model.probe_average(model.probe_norm(flat))
    np.testing.assert_allclose(np.asarray(model.probe_logits(codes)), np.asarray(expected), atol=1e-5)
    # Not the last weights: moving the trained probe alone leaves the classifier unchanged.
    model.probe.kernel.assign(model.probe.kernel * 3.0)
    np.testing.assert_allclose(np.asarray(model.probe_logits(codes)), np.asarray(expected), atol=1e-5)


@pytest.mark.parametrize("probe", ["whiten", "batchnorm"])
def test_keras_round_trip_keeps_the_probe(tmp_path, probe):
    model = tiny(probe)
    for seed in range(3):
        model.train_step(_batch(seed=seed))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.probe_kind == probe
    x = _batch(seed=7)[0]
    np.testing.assert_allclose(np.asarray(loaded.classify(x)), np.asarray(model.classify(x)), atol=1e-6)
    if probe == "whiten":
        np.testing.assert_allclose(loaded.probe_norm.moving_covariance.numpy(), model.probe_norm.moving_covariance.numpy())


def test_models_saved_before_the_setting_load_with_the_batchnorm_probe():
    config = tiny("batchnorm").get_config()
    del config["probe"]
    assert AMR.from_config(config).probe_kind == "batchnorm"


def test_unknown_probe_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="Unknown probe 'linear'.*whiten, batchnorm"):
        AMR(*build_networks(depth=4), probe="linear")
    with pytest.raises(SystemExit):
        config_from_args(["--probe", "linear"])


def test_runs_made_before_the_setting_had_the_batchnorm_probe(tmp_path):
    old = {"dataset": "mnist_sample", "mixer": "mixup", "precision": "float32"}  # no "probe" key
    assert upgrade_run_settings(old)["probe"] == "batchnorm"
    assert "probe" not in old
    cfg = config_from_args(["--precision", "float32"])
    saved = {k: v for k, v in vars(cfg).items() if k != "probe"}
    assert settings_diff(cfg, upgrade_run_settings(saved)) == ["probe: run has 'batchnorm', now 'whiten'"]
    cfg_bn = config_from_args(["--precision", "float32", "--probe", "batchnorm"])
    assert settings_diff(cfg_bn, upgrade_run_settings(saved)) == []
    assert cfg_bn.out.endswith("-fast-batchnorm-s0") and cfg.out.endswith("-fast-s0")


def test_resuming_an_old_run_with_the_default_probe_says_what_differs(tmp_path):
    from amr_keras import train

    out = tmp_path / "run"
    out.mkdir()
    cfg = config_from_args(["--precision", "float32", "--out", str(out)])
    saved = {k: v for k, v in vars(cfg).items() if k != "probe"}
    (out / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="probe: run has 'batchnorm', now 'whiten'"):
        train._check_resume(cfg, str(out))
    bn = config_from_args(["--precision", "float32", "--out", str(out), "--probe", "batchnorm"])
    assert train._check_resume(bn, str(out)).probe == "batchnorm"
    assert os.path.exists(out / "config.json")


def test_a_non_finite_batch_leaves_the_statistics_as_they_were():
    layer = whitening()
    x = correlated(32)
    layer.update(x)
    mean, cov = layer.moving_mean.numpy().copy(), layer.moving_covariance.numpy().copy()
    bad = x.copy()
    bad[3, 1] = np.nan
    layer.update(bad)
    np.testing.assert_array_equal(layer.moving_mean.numpy(), mean)
    np.testing.assert_array_equal(layer.moving_covariance.numpy(), cov)
    assert float(layer.count.numpy()) == 1
    # NaN codes give NaN outputs (for the NaN guard to report), not an exception.
    out = np.asarray(layer(bad))
    assert np.isnan(out[3]).any() and np.isfinite(out[0]).all()

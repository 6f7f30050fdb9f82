"""ACAI variant (mixer="acai"): critic target and losses by hand, save/load, export, CLI settings, resume."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from test_fit import load_script, tiny_args
from test_model import _batch, tiny_model

from amr_keras.config import CONFIG_FILE_KEYS, RUN_KEYS, ConfigError
from amr_keras.parser import config_from_args
from amr_keras.mixers import mix_codes
from amr_keras.model import ACAI_GAMMA, ACAI_WEIGHT, acai_critic_target, acai_losses


def _bce(logits, target):
    """Mean binary cross-entropy of sigmoid(logits) against ``target``, in NumPy."""
    logits = np.asarray(logits, np.float64)
    return float(np.mean(np.logaddexp(0.0, logits) - target * logits))


def test_critic_target_is_zero_at_the_ends_and_one_in_the_middle():
    alpha = np.array([0.0, 1.0, 0.5, 0.25, 0.9], "float32")
    np.testing.assert_allclose(np.asarray(acai_critic_target(alpha)), [0.0, 0.0, 1.0, 0.5, 0.2], atol=1e-6)


def test_acai_losses_match_a_hand_computation():
    rng = np.random.default_rng(0)
    real, rec, mix = (rng.normal(size=8).astype("float32") for _ in range(3))
    alpha = rng.uniform(size=8).astype("float32")
    critic, reg = acai_losses(real, rec, mix, alpha, acai_weight=0.5)
    target = 2 * np.minimum(alpha, 1 - alpha)
    assert float(critic) == pytest.approx(_bce(real, 0) + _bce(rec, 0) + _bce(mix, target), rel=1e-5)
    assert float(reg) == pytest.approx(0.5 * _bce(mix, 0), rel=1e-5)


@pytest.mark.parametrize("gamma, weight", [(ACAI_GAMMA, ACAI_WEIGHT), (0.2, 0.5)])
def test_model_losses_match_a_hand_computation(gamma, weight):
    model = tiny_model(mixer="acai", lamb=3.0, acai_gamma=gamma, acai_weight=weight)
    model.compile()
    x, y = _batch()
    # The same draws as the model's first step: a fresh generator with the model's seed.
    code = model.encoder(x)
    rec = np.asarray(model.decoder(code))
    mixed, _, weights = mix_codes(code, "acai", 2, keras.random.SeedGenerator(model.seed), return_weights=True)
    alpha = np.asarray(weights[0]).reshape(-1)
    shown = gamma * np.asarray(x) + (1 - gamma) * rec
    d_real, d_rec, d_mix = (np.asarray(model.discriminator(v)) for v in (x, shown, model.decoder(mixed)))
    logs = model.test_step((x, y))

    recon = float(np.mean(np.abs(np.asarray(x) - rec)))
    critic = _bce(d_real, 0) + _bce(d_rec, 0) + _bce(d_mix, 2 * np.minimum(alpha, 1 - alpha))
    assert float(logs["recon_loss"]) == pytest.approx(recon, rel=1e-5)
    assert float(logs["d_loss"]) == pytest.approx(critic, rel=1e-4)
    # No term pushes reconstructions towards "real": the autoencoder's loss is recon + the mixes' term only,
    # and a BCE(D(x_rec), 1) term would be large enough to be seen.
    assert float(logs["g_loss"]) == pytest.approx(3.0 * recon + weight * _bce(d_mix, 0), rel=1e-4)
    assert _bce(d_rec, 1) > 0.1


def test_keras_round_trip_keeps_the_acai_settings(tmp_path):
    model = tiny_model(mixer="acai", acai_gamma=0.2, acai_weight=0.5)
    model.compile()
    path = str(tmp_path / "acai.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    config = loaded.get_config()
    assert (config["mixer"], config["k"], config["acai_gamma"], config["acai_weight"]) == ("acai", 2, 0.2, 0.5)
    x, y = _batch(5, seed=3)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-5)
    # Same weights and the same mixing draws: the same losses, so the settings are in effect after loading.
    a, b = model.test_step((x, y)), loaded.test_step((x, y))
    for name in ("d_loss", "g_loss"):
        assert float(a[name]) == pytest.approx(float(b[name]), rel=1e-5), name


@pytest.mark.slow
def test_export_records_acai_and_mixes_codes_like_the_eager_model(tmp_path):
    from amr_keras.export import Endpoints, export_model, load_metadata

    model = tiny_model(mixer="acai", acai_gamma=0.2)
    path = export_model(model, tmp_path / "export", (28, 28, 1), metadata={"dataset": "mnist_sample"})
    meta = load_metadata(path)
    assert (meta["mixer"], meta["k"], meta["acai_gamma"], meta["acai_weight"]) == ("acai", 2, 0.2, ACAI_WEIGHT)
    loaded = tf.saved_model.load(path)
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 28, 28, 1), np.float32), rng.random((3, 28, 28, 1), np.float32)
    alpha = np.array([0.0, 0.3, 1.0], np.float32)
    expected = Endpoints(model, (28, 28, 1)).mix_alpha(a, b, alpha)
    np.testing.assert_allclose(loaded.mix_alpha(a, b, alpha).numpy(), np.asarray(expected), atol=1e-5)


def test_cli_accepts_acai_and_its_settings(tmp_path):
    cfg = config_from_args(["--mixer", "acai", "--acai-gamma", "0.2", "--acai-weight", "0.5"])
    assert (cfg.mixer, cfg.k, cfg.acai_gamma, cfg.acai_weight) == ("acai", 2, 0.2, 0.5)
    assert os.path.basename(cfg.out) == "mnist_sample-acai-g0.2-w0.5-k2-lamb100-fast-s0"
    assert config_from_args(["--mixer", "acai"]).out.endswith("mnist_sample-acai-k2-lamb100-fast-s0")
    path = tmp_path / "best_hyperparameters.json"
    path.write_text(json.dumps({"mixer": "acai", "acai_gamma": 0.2, "acai_weight": 1}))
    cfg = config_from_args(["--config", str(path), "--acai-weight", "0.25"])
    assert (cfg.mixer, cfg.acai_gamma, cfg.acai_weight) == ("acai", 0.2, 0.25)
    assert {"acai_gamma", "acai_weight"} <= set(RUN_KEYS) & set(CONFIG_FILE_KEYS)


@pytest.mark.parametrize("argv, message", [
    (["--mixer", "acai", "--k", "3"], "Mixer 'acai' mixes pairs of codes (its critic regresses the weight of the "
                                      "pair): k must be 2, got 3."),
    (["--mixer", "acai", "--acai-gamma", "1"], "acai_gamma (weight of the input in the blends"),
    (["--mixer", "acai", "--acai-weight", "-1"], "acai_weight (weight of the autoencoder's ACAI regulariser) must "
                                                 "be >= 0, got -1.0"),
    (["--mixer", "mixup", "--acai-gamma", "0.2"], "acai_gamma and acai_weight only apply to mixer 'acai', but "
                                                  "mixer is 'mixup'"),
])
def test_cli_rejects_bad_acai_settings_with_one_line(tmp_path, capsys, argv, message):
    with pytest.raises(ConfigError) as info:
        config_from_args(argv)
    assert str(info.value).startswith(message)
    assert load_script("fit").main(argv + ["--out", str(tmp_path / "r")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == [f"error: {info.value}"]
    assert not os.path.exists(tmp_path / "r")


def test_resume_refuses_other_acai_settings(tmp_path, capsys):
    out = str(tmp_path / "run")
    os.makedirs(out)
    saved = config_from_args(["--mixer", "acai", "--out", out])
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(saved), f)
    assert load_script("fit").main(["--mixer", "acai", "--acai-gamma", "0.2", "--out", out, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "other settings (acai_gamma: run has 0.0, now 0.2)" in err


def test_resume_of_a_run_saved_without_the_acai_settings_takes_their_defaults(tmp_path):
    from amr_keras.train import _check_resume

    cfg = config_from_args(["--out", str(tmp_path)])
    saved = {k: v for k, v in dataclasses.asdict(cfg).items() if not k.startswith("acai_")}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    _check_resume(cfg, str(tmp_path))  # the defaults match
    with pytest.raises(ConfigError, match=r"acai_weight: run has 1.0, now 0.5"):
        _check_resume(dataclasses.replace(cfg, mixer="acai", acai_weight=0.5), str(tmp_path))


@pytest.mark.slow
def test_fit_records_acai_in_config_and_results(tmp_path):
    from test_data import write_mnist_folder

    data = write_mnist_folder(str(tmp_path / "mnist"), n_train=64, n_test=16)
    out = str(tmp_path / "run")
    argv = tiny_args(data, out, "--mixer", "acai", "--acai-gamma", "0.2", "--acai-weight", "0.5", "--epochs", "1",
                     "--no-export", "--no-linear-eval")
    assert load_script("fit").main(argv) == 0
    for name in ("results.json", "config.json"):
        with open(os.path.join(out, name)) as f:
            saved = json.load(f)
        assert (saved["mixer"], saved["k"], saved["acai_gamma"], saved["acai_weight"]) == ("acai", 2, 0.2, 0.5), name

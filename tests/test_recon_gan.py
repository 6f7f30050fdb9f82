"""recon_gan=False (the official code's disable_g_recon): losses by hand, save/load, settings and errors."""

import json
import os

import keras
import numpy as np
import pytest

from test_acai import _bce
from test_fit import load_script, tiny_args
from test_model import _batch, tiny_model

from amr_keras.config import CONFIG_FILE_KEYS, RUN_KEYS, ConfigError
from amr_keras.parser import config_from_args
from amr_keras.mixers import mix_codes


def _check_losses_by_hand(model):
    """The model's d_loss and g_loss on a batch against a NumPy computation with its recon_gan setting."""
    x, y = _batch(seed=3)
    # The same mixing draws as the model's next step: a generator in the model's generator's state.
    draws = keras.random.SeedGenerator(0)
    draws.state.assign(model.seed_generator.state)
    code = model.encoder(x)
    rec = model.decoder(code)
    mixed, _, _ = mix_codes(code, "mixup", 2, draws, return_weights=True)
    d_real, d_rec, d_mix = (np.asarray(model.discriminator(v)) for v in (x, rec, model.decoder(mixed)))
    logs = model.test_step((x, y))

    recon = float(np.mean(np.abs(np.asarray(x) - np.asarray(rec))))
    if model.recon_gan:
        # Each fake group is a mean over the batch; the two groups are summed.
        d_loss = _bce(d_real, 1) + 2 * _bce(np.concatenate([d_rec, d_mix]), 0)
        g_loss = model.lamb * recon + 2 * _bce(np.concatenate([d_rec, d_mix]), 1)
    else:
        d_loss = _bce(d_real, 1) + _bce(d_mix, 0)
        g_loss = model.lamb * recon + _bce(d_mix, 1)
    assert float(logs["d_loss"]) == pytest.approx(d_loss, rel=1e-4)
    assert float(logs["g_loss"]) == pytest.approx(g_loss, rel=1e-4)
    # The reconstructions' terms are large enough that leaving them in or out shows.
    assert _bce(d_rec, 1) > 0.1 and _bce(d_rec, 0) > 0.1


@pytest.mark.parametrize("recon_gan", [True, False])
def test_losses_match_a_hand_computation(recon_gan):
    model = tiny_model(mixer="mixup", lamb=3.0, recon_gan=recon_gan)
    model.compile()
    _check_losses_by_hand(model)


def test_a_step_without_the_term_moves_every_network():
    model = tiny_model(mixer="bernoulli", recon_gan=False)
    model.compile()
    before = [np.array(v) for v in model.trainable_variables]
    logs = model.train_step(_batch())
    assert all(np.isfinite(float(v)) for v in logs.values())
    moved = [not np.array_equal(a, np.asarray(b)) for a, b in zip(before, model.trainable_variables)]
    assert all(moved)


def test_keras_round_trip_keeps_the_setting(tmp_path):
    model = tiny_model(recon_gan=False)
    model.compile()
    model.train_step(_batch())
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.recon_gan is False
    _check_losses_by_hand(loaded)
    # Models saved before the setting existed had the term.
    config = model.get_config()
    config.pop("recon_gan")
    assert type(model).from_config(config).recon_gan is True


@pytest.mark.parametrize("mixer, match", [
    ("none", "recon_gan=False needs a mixer"),
    ("acai", "does not apply to mixer 'acai'"),
])
def test_mixers_without_the_term_are_refused(mixer, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(mixer=mixer, recon_gan=False)
    with pytest.raises(ConfigError, match=match):
        config_from_args(["--mixer", mixer, "--no-recon-gan"])


def test_cli_flag_names_the_run_and_is_a_run_setting():
    cfg = config_from_args(["--no-recon-gan"])
    assert cfg.recon_gan is False
    assert os.path.basename(cfg.out) == "mnist_sample-mixup-norecgan-k2-lamb100-fast-s0"
    assert config_from_args([]).recon_gan is True
    assert "recon_gan" in set(RUN_KEYS) & set(CONFIG_FILE_KEYS)


def test_export_records_the_setting(tmp_path, monkeypatch):
    from amr_keras.export import METADATA_FILE, export_model

    # Only metadata.json matters here: the SavedModel (seconds of tracing its endpoints) is left out.
    class NoSavedModel:
        def __getattr__(self, name):  # track, add_endpoint: nothing to do
            return lambda *args, **kwargs: None

        def write_out(self, path, verbose=True):
            os.makedirs(path)

    monkeypatch.setattr(keras.export, "ExportArchive", NoSavedModel)
    for recon_gan in (False, True):
        path = export_model(tiny_model(recon_gan=recon_gan), tmp_path / str(recon_gan), (28, 28, 1),
                            metadata={"dataset": "mnist_sample"})
        with open(os.path.join(path, METADATA_FILE)) as f:
            assert json.load(f)["recon_gan"] is recon_gan


# Trains for real (two runs of scripts/fit.py): run with -m slow.
@pytest.mark.slow
def test_fit_records_the_setting_and_resume_refuses_a_change(tmp_path, capsys):
    from test_data import write_mnist_folder

    data = write_mnist_folder(str(tmp_path / "mnist"), n_train=64, n_test=16)
    out = str(tmp_path / "run")
    argv = tiny_args(data, out, "--epochs", "1", "--no-export", "--no-linear-eval")
    assert load_script("fit").main(argv + ["--no-recon-gan"]) == 0
    for name in ("results.json", "config.json"):
        with open(os.path.join(out, name)) as f:
            assert json.load(f)["recon_gan"] is False, name
    # Resuming with the term back on would mix two losses in one run.
    assert load_script("fit").main(argv + ["--resume", "--epochs", "2"]) == 2
    assert "recon_gan: run has False, now True" in capsys.readouterr().err

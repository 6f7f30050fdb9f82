"""The 64x64 burgess networks, mixers on flat codes, the bce reconstruction, the beta-VAE, and their settings."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from amr_keras import networks
from amr_keras.bvae import BVAE, kl_divergence
from amr_keras.config import Config, ConfigError, default_run_name, resolve
from amr_keras.mixers import mix_codes, mix_pair
from amr_keras.model import AMR, recon_loss


def _images(n=8, seed=0):
    return (np.random.default_rng(seed).integers(0, 2, (n, 64, 64, 1)) * 2 - 1).astype("float32")


def test_burgess_networks_shapes_and_sizes():
    enc, dec, disc = networks.build_arch("burgess", depth=8)
    assert enc.output_shape == (None, networks.BURGESS_CODE)
    assert dec.output_shape == (None, 64, 64, 1)
    assert disc.output_shape == (None,)
    assert disc(_images(3)).shape == (3,)
    # 4 stride-2 convolutions: 64 -> 4, flattened to 4*4*filters before the dense 256.
    assert enc.get_layer("flat").output.shape[-1] == 4 * 4 * 8
    two = networks.build_burgess_encoder(1, 8, heads=2)
    assert [o.shape for o in two.outputs] == [(None, 10), (None, 10)]
    with pytest.raises(ValueError, match="64x64"):
        networks.build_burgess_encoder(image_size=32)


def test_mixers_on_a_flat_code():
    codes = np.random.default_rng(0).normal(size=(32, 10)).astype("float32")
    mixed, src, w = (np.asarray(t) for t in mix_codes(codes, "mixup", 2, keras.random.SeedGenerator(1), True))
    assert w.shape == (2, 32, 1) and mixed.shape == (32, 10)
    np.testing.assert_allclose(mixed, w[0] * src[0] + w[1] * src[1], atol=1e-6)
    # Bernoulli: one mask entry per code value, each value taken whole from one code.
    mixed, src, w = (np.asarray(t) for t in mix_codes(codes, "bernoulli", 2, keras.random.SeedGenerator(2), True))
    assert w.shape == (2, 32, 10) and set(np.unique(w)) <= {0.0, 1.0}
    assert np.all((mixed == src[0]) | (mixed == src[1]))
    assert 0 < (mixed == src[0]).mean() < 1
    mixed, src, w = (np.asarray(t) for t in mix_codes(codes, "bernoulli", 3, keras.random.SeedGenerator(3), True))
    assert w.shape == (3, 32, 10)
    np.testing.assert_array_equal(w.sum(0), 1.0)
    assert np.all((mixed == src[0]) | (mixed == src[1]) | (mixed == src[2]))
    mixed, _, w = (np.asarray(t) for t in mix_codes(codes, "mixup", 3, keras.random.SeedGenerator(4), True))
    assert w.shape == (3, 32, 1)
    np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-6)
    a, b = codes[:4], codes[4:8]
    np.testing.assert_allclose(np.asarray(mix_pair(a, b, np.array([1, 0, 1, 0], "float32"))),
                               np.stack([a[0], b[1], a[2], b[3]]))
    mask = np.zeros((4, 10), "float32")
    mask[:, :3] = 1
    out = np.asarray(mix_pair(a, b, mask))
    np.testing.assert_array_equal(out[:, :3], a[:, :3])
    np.testing.assert_array_equal(out[:, 3:], b[:, 3:])


def test_bce_reconstruction_is_summed_over_pixels():
    x = _images(4)
    logits = np.random.default_rng(1).normal(size=x.shape).astype("float32")
    target = (x + 1) / 2
    p = 1 / (1 + np.exp(-logits))
    expected = np.mean(np.sum(-(target * np.log(p) + (1 - target) * np.log(1 - p)), axis=(1, 2, 3)))
    assert float(recon_loss("bce", x, logits)) == pytest.approx(expected, rel=1e-4)
    # At logits 0 every pixel costs log 2.
    assert float(recon_loss("bce", x, np.zeros_like(x))) == pytest.approx(64 * 64 * np.log(2), rel=1e-5)


def test_amr_with_bce_decodes_into_minus_one_one_and_trains_on_flat_codes():
    enc, dec, disc = networks.build_arch("burgess", depth=4)
    model = AMR(enc, dec, disc, num_classes=3, mixer="bernoulli", k=3, lamb=1.0, recon="bce", update_g_every=1)
    model.compile()
    x = _images(8)
    out = np.asarray(model(x))
    np.testing.assert_allclose(out, np.tanh(np.asarray(dec(enc(x))) / 2), atol=1e-5)
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(8) % 3)).batch(4)
    logs = model.fit(ds, epochs=1, verbose=0).history
    assert all(np.isfinite(v[-1]) for v in logs.values())
    assert logs["recon_loss"][-1] > 64 * 64 * 0.5  # summed over 4,096 pixels, not a mean


def test_kl_divergence_known_values_of_both_reductions():
    zeros = np.zeros((3, 10), "float32")
    assert float(kl_divergence(zeros, zeros)) == pytest.approx(0.0)
    # Mean 1, variance 1: 0.5 per value; the official AMR code averages over the 10 values, Higgins et al. sum.
    assert float(kl_divergence(np.ones((3, 10), "float32"), zeros)) == pytest.approx(0.5)
    assert float(kl_divergence(np.ones((3, 10), "float32"), zeros, "sum")) == pytest.approx(5.0)
    # log-variance 1: 0.5 * (e - 1 - 1) per value.
    assert float(kl_divergence(zeros, zeros + 1, "mean")) == pytest.approx(0.5 * (np.e - 2), rel=1e-5)
    assert float(kl_divergence(zeros, zeros + 1, "sum")) == pytest.approx(10 * 0.5 * (np.e - 2), rel=1e-5)
    # Per-example values averaged over the batch: means 0 and 2 on the first value only.
    mean = np.zeros((2, 10), "float32")
    mean[1, 0] = 2.0
    assert float(kl_divergence(mean, np.zeros_like(mean), "sum")) == pytest.approx((0.0 + 2.0) / 2)
    assert float(kl_divergence(mean, np.zeros_like(mean), "mean")) == pytest.approx((0.0 + 2.0 / 10) / 2)
    with pytest.raises(ValueError, match="kl_reduction"):
        kl_divergence(zeros, zeros, "max")


def test_beta_kl_100_is_the_official_beta_100():
    """The official models/vae.py: recon summed over pixels (mean over the batch) + beta * KL averaged over batch
    and code values. Computed here by hand for a fixed posterior: beta 100 with the mean is beta 10 summed."""
    model = _bvae(beta=100.0)
    x = _images(4)
    mean, log_var = (np.asarray(t, np.float64) for t in model.posterior(x))
    official_kl = np.mean(0.5 * (np.exp(log_var) + mean**2 - 1.0 - log_var))  # torch .mean() over (batch, code)
    out = model._forward(x, training=False)
    assert float(out["kl_loss"]) == pytest.approx(official_kl, rel=1e-4)
    assert float(out["loss"]) == pytest.approx(float(out["recon_loss"]) + 100.0 * official_kl, rel=1e-4)
    summed = _bvae(beta=10.0)
    summed_model = BVAE(summed.posterior, summed.decoder, num_classes=3, beta_kl=10.0, kl_reduction="sum")
    summed_model.posterior.set_weights(model.posterior.get_weights())
    summed_model.decoder.set_weights(model.decoder.get_weights())
    out_sum = summed_model._forward(x, training=False)
    assert float(out_sum["loss"]) == pytest.approx(float(out["loss"]), rel=1e-4)


def _bvae(beta=4.0):
    return BVAE(networks.build_burgess_encoder(1, 4, heads=2), networks.build_burgess_decoder(1, 4), num_classes=3,
                beta_kl=beta)


def test_bvae_encodes_the_mean_trains_and_round_trips(tmp_path):
    model = _bvae()
    model.compile()
    x = _images(8)
    mean, _ = model.posterior(x)
    np.testing.assert_allclose(np.asarray(model.encode(x)), np.asarray(mean), atol=1e-6)
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(8) % 3)).batch(4)
    logs = model.fit(ds, epochs=1, verbose=0).history
    assert {"recon_loss", "kl_loss", "vae_loss", "probe_accuracy"} <= set(logs)
    assert logs["vae_loss"][-1] == pytest.approx(logs["recon_loss"][-1] + 4.0 * logs["kl_loss"][-1], rel=1e-3)
    path = str(tmp_path / "b.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, BVAE) and loaded.beta_kl == 4.0 and loaded.kl_reduction == "mean"
    # The default optimizer of the VAE is the official scripts': Adam beta_1 0.9.
    assert float(model.ae_optimizer.beta_1) == 0.9 and float(model.probe_optimizer.beta_1) == 0.5
    np.testing.assert_allclose(np.asarray(loaded.encode(x)), np.asarray(model.encode(x)), atol=1e-6)


def test_bvae_refuses_a_discriminator_optimizer_and_bad_beta():
    with pytest.raises(ValueError, match="no discriminator"):
        _bvae().compile(d_optimizer="adam")
    with pytest.raises(ValueError, match="beta_kl"):
        _bvae(beta=0.0)


def test_bvae_export_encode_is_the_mean(tmp_path):
    from amr_keras.export import export_model, load_export, load_metadata

    model = _bvae()
    model.compile()
    path = export_model(model, str(tmp_path / "export"), (64, 64, 1), {"dataset": "dsprites_procedural"})
    loaded = load_export(path)
    x01 = (_images(3) + 1) / 2
    mean, _ = model.posterior(x01 * 2 - 1)
    np.testing.assert_allclose(np.asarray(loaded.encode(x01)), np.asarray(mean), atol=1e-5)
    assert loaded.reconstruct(x01).shape == (3, 64, 64, 1)
    meta = load_metadata(path)
    assert meta["code_shape"] == [10] and meta["beta_kl"] == 4.0


def test_dsprites_settings_resolve_to_the_table4_recipe():
    cfg = resolve(Config(dataset="dsprites_procedural"))
    assert (cfg.preset, cfg.arch, cfg.recon, cfg.lamb, cfg.batch_size) == ("dsprites", "burgess", "bce", 1.0, 64)
    assert default_run_name(cfg) == "dsprites_procedural-mixup-k2-lamb1-dsprites-s0"
    bvae = resolve(Config(dataset="dsprites_procedural", model="bvae", beta_kl=100.0))
    assert bvae.mixer == "none"
    assert default_run_name(bvae) == "dsprites_procedural-bvae-beta100-dsprites-s0"
    # The official VAE: KL averaged over the code values, Adam beta_1 0.9; AMR keeps 0.5; the final model scored.
    assert (bvae.kl_reduction, bvae.adam_beta1, cfg.adam_beta1) == ("mean", 0.9, 0.5)
    assert (cfg.score_epoch, cfg.factorvae_curve_votes, cfg.data_version) == ("last", 100, 2)
    anchor = resolve(Config(dataset="dsprites_procedural", model="bvae", beta_kl=4.0, kl_reduction="sum"))
    assert default_run_name(anchor) == "dsprites_procedural-bvae-beta4-klsum-dsprites-s0"
    mnist = resolve(Config(dataset="mnist_sample"))
    assert (mnist.arch, mnist.recon) == ("acai", "l1")


@pytest.mark.parametrize("changes, message", [
    (dict(dataset="mnist_sample", arch="burgess"), "does not fit"),
    (dict(dataset="dsprites_procedural", model="bvae"), "needs --beta-kl"),
    (dict(dataset="dsprites_procedural", beta_kl=4.0), "add --model bvae"),
    (dict(dataset="dsprites_procedural", kl_reduction="sum"), "add --model bvae"),
    (dict(dataset="dsprites_procedural", model="bvae", beta_kl=4.0, kl_reduction="max"), "kl-reduction"),
    (dict(dataset="dsprites_procedural", adam_beta1=1.0), "adam_beta1"),
    (dict(dataset="dsprites_procedural", score_epoch="first"), "score-epoch"),
    (dict(dataset="dsprites_procedural", factorvae_curve_votes=1), "factorvae_curve_votes"),
    (dict(dataset="dsprites_procedural", factorvae_prune=-1.0), "factorvae_prune"),
    (dict(dataset="dsprites_procedural", model="bvae", beta_kl=4.0, mixer="bernoulli"), "no mixing"),
    (dict(dataset="dsprites_procedural", code_channels=16), "flat"),
    (dict(dataset="dsprites_procedural", factorvae_samples=1), "factorvae_samples"),
])
def test_bad_dsprites_settings_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        resolve(dataclasses.replace(Config(), **changes))


@pytest.mark.slow
@pytest.mark.parametrize("model, extra", [("amr", dict(mixer="bernoulli", k=3)), ("bvae", dict(beta_kl=100.0))])
def test_fit_on_procedural_dsprites_trains_scores_and_exports(tmp_path, monkeypatch, capsys, model, extra):
    import json
    import os

    from amr_keras import dsprites, train
    from amr_keras.export import load_export, load_metadata
    from test_fit import load_script

    monkeypatch.setattr(dsprites, "SPLIT_SIZES", {"train": 256, "val": 32, "test": 32})
    cfg = Config(dataset="dsprites_procedural", model=model, epochs=1, steps_per_epoch=3, batch_size=16, depth=4,
                 factorvae_votes=10, factorvae_eval_votes=10, factorvae_samples=20, out=str(tmp_path / "run"),
                 verbose=0, precision="float32", **extra)
    results = train.run(cfg)
    assert results["arch"] == "burgess" and results["model"] == model and results["recon"] == "bce"
    assert 0.0 <= results["factorvae_score"] <= 1.0 and results["factorvae_eval_votes"] == 10
    export = load_export(str(tmp_path / "run" / "export"))
    x = np.zeros((2, 64, 64, 1), "float32")
    assert export.encode(x).shape == (2, 10) and export.reconstruct(x).shape == (2, 64, 64, 1)
    assert load_metadata(str(tmp_path / "run" / "export"))["code_shape"] == [10]
    assert os.path.isfile(tmp_path / "run" / "interpolations.png")
    # scripts/evaluate.py --metric factorvae reads the run folder (a beta-VAE's mean).
    evaluate = load_script("evaluate")
    out_json = str(tmp_path / "fv.json")
    assert evaluate.main([str(tmp_path / "run"), "--dataset", "dsprites_procedural", "--metric", "factorvae",
                          "--votes", "10", "--eval-votes", "10", "--samples", "20", "--json", out_json]) == 0
    printed = capsys.readouterr().out
    assert "FactorVAE score:" in printed and "held-out accuracy per factor held fixed: shape " in printed
    with open(out_json) as f:
        saved = json.load(f)
    assert saved["factorvae_code_dims"] == 10
    assert list(saved["factorvae_per_factor"]) == ["shape", "scale", "orientation", "x", "y"]
    # 10 held-out votes, 2 per factor: the score is the mean of the five per-factor accuracies.
    assert saved["factorvae_score"] == pytest.approx(np.mean(list(saved["factorvae_per_factor"].values())))


@pytest.mark.parametrize("model, trained", [pytest.param("amr", "bernoulli", marks=pytest.mark.slow),
                                            ("bvae", "none")])
def test_bench_runs_the_64x64_step(model, trained):
    from test_fit import load_script

    bench = load_script("bench")
    res = bench.bench_keras(batch_size=4, jit=False, update_g_every=1, steps=1, warmup=1, repeats=1, depth=4,
                            mixer="bernoulli", precision="float32", arch="burgess", model=model)
    assert (res["arch"], res["model"], res["image_size"], res["mixer"]) == ("burgess", model, 64, trained)
    assert res["images_per_second"] > 0 and res["traces_during_timing"] == 0


def test_runs_made_before_the_official_kl_weight_are_not_taken_for_new_ones():
    """A beta-VAE run recorded before kl_reduction (its KL was summed), on the first renderer, with Adam beta_1 0.5
    and scored at its best epoch, differs from today's run of the same name in each of those settings."""
    from amr_keras.config import settings_diff, upgrade_run_settings

    new = resolve(Config(dataset="dsprites_procedural", model="bvae", beta_kl=100.0))
    old = {k: v for k, v in dataclasses.asdict(new).items()
           if k not in ("kl_reduction", "adam_beta1", "score_epoch", "data_version")}
    diffs = " ".join(settings_diff(new, upgrade_run_settings(old)))
    for key in ("kl_reduction: run has 'sum'", "adam_beta1: run has 0.5", "score_epoch: run has 'best'",
                "data_version: run has 1"):
        assert key in diffs
    assert not settings_diff(new, upgrade_run_settings(dataclasses.asdict(new)))

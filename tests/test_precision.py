"""Precision policies and XLA: finite steps, float32 variables and outputs, `auto`, resume, restoring the policy."""

import json
import os

import keras
import numpy as np
import pytest

from amr_keras import precision as prec
from amr_keras.data import synthetic_dataset
from amr_keras.model import AMR
from amr_keras.networks import build_networks


# Eager steps in the default suite (tracing the two step functions of update_g_every=2 takes most of a traced
# run's time); the traced steps, XLA and float16 with -m slow.
@pytest.mark.parametrize("policy, jit, eager", [
    pytest.param("mixed_float16", False, False, id="mixed_float16", marks=pytest.mark.slow),
    pytest.param("mixed_bfloat16", False, True, id="mixed_bfloat16_eager"),
    pytest.param("mixed_bfloat16", False, False, id="mixed_bfloat16", marks=pytest.mark.slow),
    pytest.param("float32", True, False, id="jit_compile", marks=pytest.mark.heavy),
])
def test_three_steps_are_finite_and_float32(policy, jit, eager):
    try:
        with prec.precision_scope(policy):
            keras.utils.set_random_seed(0)
            model = AMR(*build_networks(depth=4), mixer="mixup", update_g_every=2)
            model.compile(jit_compile=jit, run_eagerly=eager)
        history = model.fit(synthetic_dataset(48, batch_size=16), epochs=1, verbose=0)  # 3 steps
        x, y = next(iter(synthetic_dataset(16, batch_size=8, seed=1)))
        forward = model._forward(x, training=False)
        losses = [forward[k] for k in ("recon_loss", "d_loss", "g_loss")]
        losses.append(model._probe_loss(forward["code"], y, training=False)[1])
        outputs = [model(x), model.encode(x), model.decode(model.encode(x)), model.classify(x),
                   model.discriminator(x)]
        optimizer = type(model.ae_optimizer).__name__
    finally:
        assert keras.mixed_precision.global_policy().name == "float32"
    assert all(np.isfinite(v[-1]) for v in history.history.values()), history.history
    assert model.jit_compile == jit and model.run_eagerly == eager
    expected_dtype = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16", "float32": "float32"}[policy]
    # The networks really compute in 16 bits; only float16 needs loss scaling.
    assert prec.compute_dtype(model) == expected_dtype
    assert model.decoder.layers[-1].compute_dtype == expected_dtype
    assert optimizer == ("LossScaleOptimizer" if policy == "mixed_float16" else "Adam")
    # Variables, the probe and the discriminator's logit stay float32.
    assert {v.dtype for v in model.variables if "seed" not in v.path} == {"float32"}
    assert model.probe.compute_dtype == model.probe_norm.compute_dtype == "float32"
    calls = {"ae": 2, "d": 3, "probe": 3}  # update_g_every=2: the autoencoder on steps 1 and 3
    for name, n in calls.items():
        opt = getattr(model, f"{name}_optimizer")
        if policy == "mixed_float16":
            # Dynamic loss scaling skips a step whose scaled gradients overflow and halves the scale.
            skipped = n - int(opt.iterations)
            assert 0 <= skipped <= n and float(opt.dynamic_scale) == opt.initial_scale * 0.5**skipped
        else:
            assert int(opt.iterations) == n
    assert {keras.backend.standardize_dtype(v.dtype) for v in losses + outputs} == {"float32"}
    assert all(np.isfinite(float(v)) for v in losses)


def test_op_determinism_is_left_as_it_was_found():
    from tensorflow.python.framework import config as tf_config

    assert not tf_config.is_op_determinism_enabled()
    with pytest.raises(RuntimeError), prec.op_determinism_restored():
        tf_config.enable_op_determinism()
        raise RuntimeError("boom")
    assert not tf_config.is_op_determinism_enabled()
    # XLA is honoured again (Keras drops jit_compile=True while determinism is on).
    model = AMR(*build_networks(depth=4), mixer="mixup")
    model.compile(jit_compile=True)
    assert model.jit_compile
    tf_config.enable_op_determinism()
    try:
        with prec.op_determinism_restored():
            tf_config.disable_op_determinism()
        assert tf_config.is_op_determinism_enabled()
    finally:
        tf_config.disable_op_determinism()


def test_policy_is_restored_after_an_error():
    with pytest.raises(RuntimeError), prec.precision_scope("mixed_bfloat16"):
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        raise RuntimeError("boom")
    assert keras.mixed_precision.global_policy().name == "float32"


def _cpuinfo(tmp_path, flags, model="Some CPU"):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: fpu sse2 {flags}\n\n"
                    f"processor\t: 1\nmodel name\t: {model}\nflags\t\t: fpu sse2 {flags}\n")
    return str(path)


@pytest.mark.parametrize("flags, expected", [
    ("avx2 avx512f avx512_bf16 amx_tile amx_bf16", "mixed_bfloat16"),
    ("avx2 avx512f avx512_bf16", "mixed_bfloat16"),
    ("avx2 avx512f", "float32"),
    ("avx2", "float32"),
])
def test_auto_picks_bfloat16_only_on_cpus_with_bfloat16_units(tmp_path, monkeypatch, flags, expected):
    monkeypatch.setattr(prec, "_gpu_compute_capabilities", lambda: [])
    path = _cpuinfo(tmp_path, flags)
    assert prec.resolve_precision("auto", cpuinfo_path=path) == expected
    ok, reason = prec.native_bfloat16(path)
    assert ok == (expected == "mixed_bfloat16") and "CPU" in reason
    # An explicit choice is kept whatever the hardware.
    assert prec.resolve_precision("float32", cpuinfo_path=path) == "float32"
    assert prec.resolve_precision("mixed_bfloat16", cpuinfo_path=path) == "mixed_bfloat16"


@pytest.mark.parametrize("caps, expected", [([(8, 0)], "mixed_bfloat16"), ([(9, 0), (8, 6)], "mixed_bfloat16"),
                                            ([(7, 5)], "float32"), ([(8, 0), (7, 0)], "float32")])
def test_auto_follows_the_gpus_when_there_are_some(tmp_path, monkeypatch, caps, expected):
    # GPUs decide even on a CPU with AMX: training runs on them.
    monkeypatch.setattr(prec, "_gpu_compute_capabilities", lambda: caps)
    assert prec.resolve_precision("auto", cpuinfo_path=_cpuinfo(tmp_path, "amx_bf16")) == expected


def test_cpu_info_reads_model_and_flags(tmp_path):
    info = prec.cpu_info(_cpuinfo(tmp_path, "avx2 avx512f amx_bf16", model="Intel(R) Xeon(R) Test"))
    assert info["model"] == "Intel(R) Xeon(R) Test"
    assert info["flags"] == {"avx2": True, "avx512f": True, "avx512_bf16": False, "amx_bf16": True,
                             "amx_tile": False}
    assert prec.cpu_info(str(tmp_path / "missing"))["flags"]["amx_bf16"] is False


def test_unknown_precision_lists_the_choices():
    with pytest.raises(ValueError, match="Unknown precision 'bf16'. Choose one of: auto, float32, mixed_float16"):
        prec.resolve_precision("bf16")


def test_legacy_mixed_precision_setting_is_translated(tmp_path):
    from amr_keras.config import load_config_file, upgrade_legacy_settings
    from amr_keras.parser import config_from_args

    assert upgrade_legacy_settings({"mixed_precision": True}) == {"precision": "mixed_float16"}
    assert upgrade_legacy_settings({"mixed_precision": False, "lamb": 3.0}) == {"precision": "float32", "lamb": 3.0}
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"lamb": 5.0, "mixed_precision": True}))
    assert load_config_file(str(path)) == {"lamb": 5.0, "precision": "mixed_float16"}
    assert config_from_args(["--mixed-precision"]).precision == "mixed_float16"
    assert config_from_args([]).precision == "auto"
    assert config_from_args(["--precision", "mixed_bfloat16"]).precision == "mixed_bfloat16"


@pytest.mark.slow
def test_bfloat16_run_resumes_in_bfloat16_and_records_it(tmp_path, monkeypatch):
    """A run started in bfloat16 continues in bfloat16 under the default --precision auto, even where auto
    would now pick float32 (another machine); an explicit other precision is refused."""
    from test_data import write_mnist_folder
    from test_fit import crash_after_first_epoch, load_script, tiny_args

    data = write_mnist_folder(str(tmp_path / "mnist"), n_train=96, n_test=32)
    out = str(tmp_path / "run")
    fit = load_script("fit")
    args = [a for a in tiny_args(data, out, "--no-export", "--no-linear-eval") if a not in ("--precision", "float32")]
    crash_after_first_epoch(monkeypatch, fit, args + ["--precision", "mixed_bfloat16"])
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["precision"] == "mixed_bfloat16"
    # This "machine" has no bfloat16 units: auto alone would choose float32.
    monkeypatch.setattr(prec, "native_bfloat16", lambda *a: (False, "CPU without amx_bf16 or avx512_bf16"))
    assert fit.main(args + ["--precision", "float32", "--resume"]) == 2
    seen = {}
    original_fit = keras.Model.fit

    def recording_fit(model, *a, **kw):
        seen["compute_dtype"] = prec.compute_dtype(model)
        return original_fit(model, *a, **kw)

    monkeypatch.setattr(keras.Model, "fit", recording_fit)
    assert fit.main(args + ["--resume"]) == 0
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert seen["compute_dtype"] == "bfloat16"
    assert (results["precision"], results["compute_dtype"], results["epochs"]) == ("mixed_bfloat16", "bfloat16", 2)


@pytest.mark.parametrize("env, expected", [
    ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, "float32"),
    ({"ONEDNN_MAX_CPU_ISA": "avx512_core"}, "float32"),
    ({"DNNL_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, "float32"),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, "mixed_bfloat16"),
    ({"ONEDNN_MAX_CPU_ISA": "ALL"}, "mixed_bfloat16"),
    ({"ATEN_CPU_CAPABILITY": "avx2"}, "mixed_bfloat16"),  # PyTorch's own kernels: not TensorFlow's business
    ({}, "mixed_bfloat16"),
])
def test_auto_respects_a_onednn_isa_cap_below_bfloat16(tmp_path, monkeypatch, env, expected):
    monkeypatch.setattr(prec, "_gpu_compute_capabilities", lambda: [])
    for name in prec.ISA_CAP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = _cpuinfo(tmp_path, "avx2 avx512f avx512_bf16 amx_bf16")
    assert prec.resolve_precision("auto", cpuinfo_path=path) == expected
    ok, reason = prec.native_bfloat16(path)
    assert ok == (expected == "mixed_bfloat16")
    if not ok:
        assert "keeps oneDNN off them" in reason and next(iter(env)) in reason
    assert prec.isa_caps() == env

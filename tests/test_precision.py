"""Mixed precision and XLA: a few fit steps give finite losses, outputs stay float32, the policy is restored."""

import keras
import numpy as np
import pytest

from amr_keras.data import synthetic_dataset
from amr_keras.model import AMR
from amr_keras.networks import build_networks
from amr_keras.train import _precision


@pytest.mark.parametrize("mixed, jit", [(True, False), (False, True)], ids=["mixed_float16", "jit_compile"])
def test_three_steps_are_finite_and_float32(mixed, jit):
    try:
        with _precision(mixed):
            keras.utils.set_random_seed(0)
            model = AMR(*build_networks(depth=4), mixer="mixup", update_g_every=2)
            model.compile(jit_compile=jit)
            history = model.fit(synthetic_dataset(48, batch_size=16), epochs=1, verbose=0)  # 3 steps
            x, y = next(iter(synthetic_dataset(16, batch_size=8, seed=1)))
            forward = model._forward(x, training=False)
            losses = [forward[k] for k in ("recon_loss", "d_loss", "g_loss")]
            losses.append(model._probe_loss(forward["code"], y, training=False)[1])
            outputs = [model(x), model.encode(x), model.decode(model.encode(x)), model.classify(x)]
            compute_dtype = model.encoder.layers[-1].compute_dtype
            optimizer = type(model.ae_optimizer).__name__
    finally:
        assert keras.mixed_precision.global_policy().name == "float32"
    assert all(np.isfinite(v[-1]) for v in history.history.values()), history.history
    assert model.jit_compile == jit
    # The networks really compute in float16 under mixed_float16, with loss scaling.
    assert (compute_dtype, optimizer) == (("float16", "LossScaleOptimizer") if mixed else ("float32", "Adam"))
    calls = {"ae": 2, "d": 3, "probe": 3}  # update_g_every=2: the autoencoder on steps 1 and 3
    for name, n in calls.items():
        opt = getattr(model, f"{name}_optimizer")
        if mixed:
            # Dynamic loss scaling skips a step whose scaled gradients overflow and halves the scale.
            skipped = n - int(opt.iterations)
            assert 0 <= skipped <= n and float(opt.dynamic_scale) == opt.initial_scale * 0.5**skipped
        else:
            assert int(opt.iterations) == n
    assert {keras.backend.standardize_dtype(v.dtype) for v in losses + outputs} == {"float32"}
    assert all(np.isfinite(float(v)) for v in losses)


def test_policy_is_restored_after_an_error():
    with pytest.raises(RuntimeError), _precision(True):
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        raise RuntimeError("boom")
    assert keras.mixed_precision.global_policy().name == "float32"

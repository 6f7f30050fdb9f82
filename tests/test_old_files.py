"""Files written by an earlier version still load: checkpoints (with their optimizer states) and a run's settings."""

import json
import pathlib

import keras
import numpy as np
import pytest

from amr_keras.bvae import BVAE
from amr_keras.config import Config, resolve
from amr_keras.model import AMR

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "checkpoints_0.1.0"


@pytest.mark.parametrize("name, cls, labels", [("amr_bernoulli_k3", AMR, 10), ("bvae_beta4_sum", BVAE, 3)])
def test_a_checkpoint_of_0_1_0_loads_encodes_as_it_did_and_trains_on(name, cls, labels):
    model = keras.saving.load_model(FIXTURES / f"{name}.keras")
    assert type(model) is cls
    x = np.load(FIXTURES / f"{name.split('_')[0]}_inputs.npy")
    codes = np.load(FIXTURES / f"{name.split('_')[0]}_codes.npy")
    np.testing.assert_allclose(np.asarray(model.encode(x)), codes, atol=1e-5)
    # The optimizer states came back with the weights: the next step is the second.
    steps = model.d_optimizer if cls is AMR else model.ae_optimizer
    assert int(steps.iterations) == int(model.probe_optimizer.iterations) == 1
    model.run_eagerly = True  # one step: tracing it would cost most of the test
    logs = model.train_on_batch(x, np.arange(len(x)) % labels, return_dict=True)
    assert int(steps.iterations) == int(model.probe_optimizer.iterations) == 2
    assert all(np.isfinite(v) for v in logs.values())
    if cls is AMR:
        assert (model.mixer, model.k, model.lamb, model.probe_kind) == ("bernoulli", 3, 5.0, "whiten")
    else:
        assert (model.beta_kl, model.kl_reduction) == (4.0, "sum")


def test_a_run_folders_settings_of_0_1_0_resolve_to_the_same_run():
    with open(FIXTURES / "config.json") as f:
        saved = json.load(f)
    cfg = resolve(Config(**saved))
    assert (cfg.dataset, cfg.mixer, cfg.k, cfg.preset, cfg.lamb) == ("mnist_sample", "bernoulli", 3, "fast", 100.0)

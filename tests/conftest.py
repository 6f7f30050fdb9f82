"""Shared fixtures: one tiny AMR run folder and its SavedModel export for the whole session."""

import json
import types

import amr_keras  # noqa: F401  (first: it sets TF_ENABLE_ONEDNN_OPTS before TensorFlow is imported)
import keras
import pytest

from amr_keras.model import AMR
from amr_keras.networks import build_networks

SOURCE_SHAPE = (28, 28, 1)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """A run folder (best.keras + results.json) of a tiny random AMR, exported with ``export_run``.

    Exporting takes several seconds, so tests share this one export.
    """
    from amr_keras.export import export_run

    keras.utils.set_random_seed(0)
    model = AMR(*build_networks(depth=4), num_classes=10, mixer="bernoulli", k=2, lamb=5.0)
    model.compile()
    run = tmp_path_factory.mktemp("run")
    model.save(run / "best.keras")
    with open(run / "results.json", "w") as f:
        json.dump({"dataset": "mnist_sample", "image_shape": list(SOURCE_SHAPE), "test_probe_accuracy": 0.1}, f)
    path = export_run(run)
    return types.SimpleNamespace(model=model, run_dir=run, path=path, source_shape=SOURCE_SHAPE)


@pytest.fixture(scope="session")
def loaded_export(tiny_export):
    """``tiny_export`` loaded in this process with ``load_export``."""
    from amr_keras.export import load_export

    return load_export(tiny_export.path)

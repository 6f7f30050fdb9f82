"""Shared fixtures: one tiny AMR run folder and its SavedModel exports (without and with the post-hoc head)."""

import contextlib
import fcntl
import json
import os
import types
import warnings

# TensorFlow's start-up INFO notices would otherwise be printed by every test worker (tests/test_startup_log.py
# checks them in a process of its own).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import amr_keras  # noqa: E402, F401  (first: it sets TF_ENABLE_ONEDNN_OPTS before TensorFlow is imported)
import keras
import numpy as np
import pytest

from amr_keras.model import AMR
from amr_keras.networks import build_networks

SOURCE_SHAPE = (28, 28, 1)


def class_images(n, seed=0, num_classes=10):
    """uint8 28x28 images whose class is the bright row, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    x = rng.integers(0, 100, (n, 28, 28, 1), dtype=np.uint8)
    x[np.arange(n), 2 * y + 4] = 255
    return x, y


def model_input(images_uint8):
    """The model's input made by hand, independently of ``amr_keras.data.preprocess``: 28x28 images padded
    with 2 pixels of black on each side, scaled from [0, 255] to [-1, 1]."""
    x = np.pad(np.asarray(images_uint8, np.float32), ((0, 0), (2, 2), (2, 2), (0, 0)))
    return x / 127.5 - 1.0


def sklearn_fits(train_codes, train_labels, l2_grid=(0.0, 1e-5, 1e-4, 1e-3, 1e-2)):
    """``{l2: fitted classifier}`` of scikit-learn fitted here, independently of ``amr_keras.evaluate``.

    The post-hoc classifier's recipe: ``StandardScaler`` + ``LogisticRegression`` (lbfgs, tol 1e-5, at most
    3000 iterations) minimising ``mean cross-entropy + l2 * ||W||^2``, i.e. ``C = 1 / (2 * l2 * n)``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fits = {}
    for l2 in l2_grid:
        c = np.inf if l2 == 0 else 1.0 / (2.0 * l2 * len(train_codes))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unpenalised fit may stop at the iteration limit
            fits[l2] = make_pipeline(StandardScaler(), LogisticRegression(C=c, tol=1e-5, max_iter=3000)).fit(
                train_codes, train_labels)
    return fits


@contextlib.contextmanager
def shared_folder(tmp_path_factory, name):
    """``(folder, made)``: a folder that the test workers of this pytest run share (each run has its own), held
    exclusively while the block runs; ``made`` says whether an earlier holder finished it (``done`` in it)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-N/, above every worker's popen-gwK/
    folder = base / name
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        made = (folder / "done").exists()
        folder.mkdir(exist_ok=True)
        yield folder, made
        (folder / "done").touch()


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """A run folder (best.keras + results.json) of a tiny random AMR, exported with ``export_run``.

    Exporting takes several seconds, so tests share this one export, made once per pytest run (the other
    workers load its model).
    """
    from amr_keras.export import export_run

    with shared_folder(tmp_path_factory, "tiny_export_run") as (run, made):
        if made:
            model = keras.saving.load_model(run / "best.keras")
        else:
            keras.utils.set_random_seed(0)
            model = AMR(*build_networks(depth=4), num_classes=10, mixer="bernoulli", k=2, lamb=5.0)
            model.compile()
            model.save(run / "best.keras")
            with open(run / "results.json", "w") as f:
                json.dump({"dataset": "mnist_sample", "image_shape": list(SOURCE_SHAPE), "test_probe_accuracy": 0.1},
                          f)
            export_run(run)
    return types.SimpleNamespace(model=model, run_dir=run, path=str(run / "export"), source_shape=SOURCE_SHAPE)


@pytest.fixture(scope="session")
def loaded_export(tiny_export):
    """``tiny_export`` loaded in this process with ``load_export``."""
    from amr_keras.export import load_export

    return load_export(tiny_export.path)


@pytest.fixture(scope="session")
def tiny_linear_export(tiny_export, tmp_path_factory):
    """``tiny_export``'s run exported again with ``classify_linear`` (``export_run(..., linear_head=True)``).

    The post-hoc classifier is fitted on ``arrays``, small synthetic splits that stand in for the dataset;
    ``classifier`` and ``scores`` are the same (deterministic) fit on the eager model's codes.
    """
    from amr_keras import evaluate
    from amr_keras.export import export_run

    x, y = class_images(240, seed=0)
    arrays = {"train": (x[:160], y[:160]), "val": (x[160:200], y[160:200]), "test": (x[200:], y[200:])}
    with shared_folder(tmp_path_factory, "tiny_linear_export") as (folder, made), pytest.MonkeyPatch.context() as mp:
        path = str(folder / "export")
        if not made:
            mp.setattr(evaluate, "load_dataset", lambda name, data_dir=None, batch_size=64, train_size=None:
                       types.SimpleNamespace(arrays=arrays))
            export_run(tiny_export.run_dir, path, linear_head=True)
    scores, classifier = evaluate.evaluate_codes(tiny_export.model.encode, arrays, return_classifier=True)
    return types.SimpleNamespace(path=path, arrays=arrays, scores=scores, classifier=classifier,
                                 model=tiny_export.model, source_shape=SOURCE_SHAPE)


@pytest.fixture(autouse=True)
def _op_determinism_off_after_each_test():
    """A test that turns TensorFlow's process-wide op determinism on (bench.py's in-process runs) must not turn XLA
    off for the tests after it in the same worker (Keras drops ``jit_compile=True`` while it is on)."""
    yield
    from tensorflow.python.framework import config as tf_config

    if tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()

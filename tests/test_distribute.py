"""MirroredStrategy on two logical CPUs takes the same step as one device on the same global batch.

The measurements come from ``tests/distribute_check.py``, run once in a fresh interpreter (two logical
CPU devices must be set up before TensorFlow initialises its devices). Mixer "none" for the comparison:
mixing partners are drawn within each replica's batch, so mixes differ from one device's by design.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
NETWORKS = ("encoder", "decoder", "discriminator", "probe", "probe_norm", "probe_average")
ATOL = 1e-5

# Several processes or devices: run with -m slow.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "distribute_check.py")], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_two_replicas_match_one_device_for_every_network(report):
    assert report["replicas"] == 2
    for step, (diff, update) in enumerate(zip(report["diff"], report["update_single"])):
        for name in NETWORKS:
            # Equal to float tolerance, and the comparison is not vacuous: the weights moved.
            assert diff[name] < ATOL, (step, name, diff[name])
            if name not in ("encoder", "decoder") or step == 0:
                assert update[name] > 1e3 * ATOL, (step, name, update[name])


def test_losses_are_global_batch_means(report):
    # Reported losses (per-replica values / replicas, summed) equal the single-device means.
    for single, mirrored in zip(report["logs_single"], report["logs_mirrored"]):
        assert single.keys() == mirrored.keys()
        for key in single:
            assert mirrored[key] == pytest.approx(single[key], rel=1e-5), key


def test_update_g_every_2_moves_the_autoencoder_on_the_first_step_only(report):
    updates = report["update_mirrored"]
    assert [u["encoder"] > 0 for u in updates] == [True, False]
    assert [u["decoder"] > 0 for u in updates] == [True, False]
    assert all(u["discriminator"] > 0 and u["probe"] > 0 for u in updates)
    assert report["iterations_mirrored"] == report["iterations_single"] == {"ae": 1, "d": 2, "probe": 2}


def test_synchronized_batch_norm_sees_the_global_batch(report):
    mean, variance = report["global_mean_variance"]
    sync_mean, sync_variance = report["norm_mean_variance"]["True"]
    np.testing.assert_allclose(sync_mean, mean, atol=1e-5)
    np.testing.assert_allclose(sync_variance, variance, atol=1e-5)
    # Without synchronisation the statistics are not the global batch's (the halves differ in mean):
    # the reason the probe's BatchNormalization is built with synchronized=True.
    unsync_mean, unsync_variance = report["norm_mean_variance"]["False"]
    assert np.max(np.abs(np.subtract(unsync_variance, variance))) > 0.5


def test_mixup_trains_finite_under_the_strategy(report):
    logs = report["logs_mixup"][0]
    assert set(logs) == {"recon_loss", "d_loss", "g_loss", "probe_loss", "probe_accuracy"}
    assert all(np.isfinite(v) for v in logs.values())
    # Mixes add a second fake group to the discriminator loss: larger than with mixer "none".
    assert logs["d_loss"] > report["logs_single"][0]["d_loss"]

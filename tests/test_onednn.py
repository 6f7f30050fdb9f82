"""amr_keras turns on TensorFlow's oneDNN CPU kernels, respects an explicit setting, and says when it is too late."""

import os
import subprocess
import sys

import pytest

PROBE = """
import os, sys, warnings
warnings.simplefilter("always")
{before}
with warnings.catch_warnings(record=True) as caught:
    import amr_keras
warned = any("oneDNN" in str(w.message) for w in caught)
print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"), amr_keras.onednn_enabled(), warned)
"""

# Several processes or devices: run with -m slow.
pytestmark = pytest.mark.slow


def _run(before, env_value):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["CUDA_VISIBLE_DEVICES"] = ""
    if env_value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    value, enabled, warned = out.stdout.strip().splitlines()[-1].split()
    return value, enabled, warned == "True"


@pytest.mark.parametrize("env_value", [None, "1"])
def test_import_first_turns_onednn_on(env_value):
    value, enabled, warned = _run("", env_value)
    assert value == "1"
    assert enabled == "True"
    assert not warned


def test_explicit_off_is_respected_without_warning():
    value, enabled, warned = _run("", "0")
    assert value == "0"
    assert not warned


def test_tensorflow_imported_first_warns_when_onednn_stays_off():
    value, enabled, warned = _run("import tensorflow", None)
    # TensorFlow turns oneDNN on by itself on some CPUs (AVX-512); then there is nothing to warn about.
    assert warned == (enabled == "False")
    assert enabled in ("True", "False")

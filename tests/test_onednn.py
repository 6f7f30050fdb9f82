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

# The same report from a process that never imports amr_keras.
TENSORFLOW_ALONE = """
import os
from tensorflow.python.util import _pywrap_util_port
print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"), bool(_pywrap_util_port.IsMklEnabled()), False)
"""

# TensorFlow's own start-up notice, printed (once per library that loads) when its oneDNN kernels are on.
ONEDNN_ON_NOTICE = "oneDNN custom operations are on"

# Several processes or devices: run with -m slow.
pytestmark = pytest.mark.slow


def _run(before, env_value, code=PROBE):
    """Run ``code`` (with ``before`` in it) in a fresh interpreter with TF_ENABLE_ONEDNN_OPTS set to ``env_value``
    (None: unset); return (variable after import, onednn_enabled(), whether amr_keras warned, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"  # keep TensorFlow's notice of the oneDNN state
    env["AMR_KERAS_TF_NOTICES"] = "1"  # which amr_keras shows only when asked (--verbose 2 or this variable)
    env["CUDA_VISIBLE_DEVICES"] = ""
    if env_value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = env_value
    out = subprocess.run([sys.executable, "-c", code.format(before=before)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    value, enabled, warned = out.stdout.strip().splitlines()[-1].split()
    return value, enabled, warned == "True", out.stderr


@pytest.mark.parametrize("env_value", [None, "1"])
def test_import_first_turns_onednn_on(env_value):
    value, enabled, warned, stderr = _run("", env_value)
    assert value == "1"
    assert enabled == "True"
    assert not warned
    # TensorFlow itself says so, independently of amr_keras.onednn_enabled().
    assert ONEDNN_ON_NOTICE in stderr, stderr[-2000:]


def test_explicit_off_is_respected_without_warning():
    value, enabled, warned, stderr = _run("", "0")
    assert value == "0"
    # Off for real: TensorFlow runs without oneDNN and prints no notice that it is on (every CPU: the setting
    # overrides TensorFlow's own default, which turns it on where AVX-512 is present).
    assert enabled == "False"
    assert ONEDNN_ON_NOTICE not in stderr, stderr[-2000:]
    assert not warned


def test_tensorflow_imported_first_keeps_its_own_default_and_warns_when_that_is_off():
    # What TensorFlow does alone on this CPU (on by default where AVX-512 is present, off elsewhere) ...
    _, default, _, _ = _run("", None, code=TENSORFLOW_ALONE)
    # ... is what stays when TensorFlow is imported before amr_keras, which warns exactly when that is off.
    value, enabled, warned, _ = _run("import tensorflow", None)
    assert value == "1"
    assert enabled == default
    assert warned == (enabled == "False")


def test_tensorflow_imported_first_with_onednn_off_warns():
    # TensorFlow reads the variable as it loads: set to 0 then and removed afterwards, oneDNN stays off on any CPU
    # although amr_keras then sets the variable to 1; that is the case the warning is for.
    before = ("os.environ['TF_ENABLE_ONEDNN_OPTS'] = '0'\nimport tensorflow\n"
              "del os.environ['TF_ENABLE_ONEDNN_OPTS']")
    value, enabled, warned, _ = _run(before, None)
    assert (value, enabled, warned) == ("1", "False", True)

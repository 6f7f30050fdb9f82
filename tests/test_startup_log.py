"""TensorFlow's start-up output under amr_keras: each notice once, no error lines that are not errors."""

import os
import re
import subprocess
import sys

from amr_keras import filter_startup_log

SAMPLE = """WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1795798492.017434    2492 port.cc:153] oneDNN custom operations are on.
I0000 00:00:1795798492.017992    2492 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1795798494.238090    2492 port.cc:153] oneDNN custom operations are on.
I0000 00:00:1795798494.239095    2492 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
E0000 00:00:1795798496.813274    2492 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error (303)
E0000 00:00:1795798496.900000    2492 some_op.cc:10] a real error
"""


def test_filter_keeps_each_notice_once_and_real_errors():
    shown = filter_startup_log(SAMPLE, nvidia_driver=False).splitlines()
    assert [line.split("] ", 1)[1] for line in shown] == [
        "oneDNN custom operations are on.",
        "Could not find cuda drivers on your machine, GPU will not be used.",
        "a real error",
    ]


def test_failing_cuinit_is_kept_where_an_nvidia_driver_is_installed():
    shown = filter_startup_log(SAMPLE, nvidia_driver=True)
    assert "failed call to cuInit" in shown and "a real error" in shown
    assert "absl::InitializeLog" not in shown


def test_first_import_prints_no_duplicate_and_no_false_error():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "AMR_KERAS_RAW_TF_LOG")}
    env["AMR_KERAS_TF_NOTICES"] = "1"  # the notices shown (as with --verbose 2), each once
    code = "import amr_keras, tensorflow as tf; print(float(tf.constant(1.0) + 1))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "2.0", out.stderr[-2000:]
    messages = [re.sub(r"^[IWEF]\d{4} [\d:.]+\s+\d+ ", "", line) for line in out.stderr.splitlines() if line.strip()]
    assert len(messages) == len(set(messages)), out.stderr
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") == "1":
        assert sum("oneDNN custom operations are on" in m for m in messages) == 1, out.stderr
    assert "absl::InitializeLog" not in out.stderr
    if not (os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")):
        assert not [line for line in out.stderr.splitlines() if line.startswith("E0000")], out.stderr


CPU_NOTICE = """I0000 00:00:1796670567.733240   25472 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.
W0000 00:00:1796670567.800000   25472 some_op.cc:10] a warning
"""


def test_information_notices_and_their_continuations_go_unless_asked_for():
    quiet = filter_startup_log(SAMPLE + CPU_NOTICE, nvidia_driver=False, info=False)
    assert [line.split("] ", 1)[1] for line in quiet.splitlines()] == ["a real error", "a warning"]
    talkative = filter_startup_log(CPU_NOTICE, nvidia_driver=False, info=True)
    assert "To enable the following instructions" in talkative


def test_notices_are_shown_for_verbose_2_or_when_the_environment_asks():
    from amr_keras import _notices_wanted

    assert not _notices_wanted(["fit.py", "--help"], {})
    assert not _notices_wanted(["fit.py", "--verbose", "1"], {})
    assert _notices_wanted(["fit.py", "--epochs", "2", "--verbose", "2"], {})
    assert _notices_wanted(["fit.py", "--verbose=2"], {})
    assert _notices_wanted(["fit.py"], {"AMR_KERAS_TF_NOTICES": "1"})
    assert not _notices_wanted(["fit.py", "--verbose", "2"], {"AMR_KERAS_TF_NOTICES": "0"})


def test_help_is_the_help_alone():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "AMR_KERAS_TF_NOTICES")}
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "fit.py")
    out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("usage: fit.py"), out.stdout[:500]
    assert out.stderr == "", out.stderr

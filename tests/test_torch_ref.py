"""benchmarks/torch_ref.py, the PyTorch reference step of ``scripts/bench.py --torch-ref``: it takes the flags bench.py
passes, and its networks are ours layer for layer (the same parameter counts). Running it needs torch (the
``torch`` extra); the tests that do skip without it."""

import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_REF = os.path.join(ROOT, "benchmarks", "torch_ref.py")


def _flags(path):
    """The option strings of every ``add_argument`` call in the file at ``path``."""
    tree = ast.parse(open(path).read())
    return {arg.value for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "add_argument"
            for arg in node.args if isinstance(arg, ast.Constant) and str(arg.value).startswith("--")}


def test_the_reference_takes_every_flag_that_bench_passes_it(monkeypatch):
    from test_scripts import _script

    bench = _script("bench")
    assert bench.TORCH_REF == TORCH_REF and os.path.isfile(TORCH_REF)
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="stopped here")

    monkeypatch.setattr(bench.subprocess, "run", run)
    assert bench.bench_torch(TORCH_REF, 4, 1, 2, 1, 1, "mixup", 1)["error"] == "stopped here"
    passed = {word for word in calls[0] if word.startswith("--")}
    assert calls[0][1] == TORCH_REF and passed <= _flags(TORCH_REF), passed - _flags(TORCH_REF)


def test_the_reference_step_runs_and_its_networks_have_our_parameter_counts():
    pytest.importorskip("torch")
    from amr_keras.networks import build_networks

    out = subprocess.run([sys.executable, TORCH_REF, "--batch-size", "4", "--steps", "2", "--warmup", "1",
                          "--update-g-every", "1", "--mixer", "bernoulli", "--threads", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["images_per_second"] > 0 and all(np.isfinite(v) for v in result["last_losses"].values())
    encoder, decoder, discriminator = build_networks()

    def count(model):
        return int(sum(np.prod(w.shape) for w in model.trainable_weights))

    assert result["parameters"] == {"encoder": count(encoder), "decoder": count(decoder),
                                    "discriminator": count(discriminator), "probe": 32 * 10 + 10}

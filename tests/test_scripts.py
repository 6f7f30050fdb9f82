"""scripts/bench.py and scripts/reproduce.py on tiny settings."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bench_reports_throughput_no_retracing_and_an_op_profile(tmp_path):
    bench = _script("bench")
    res = bench.bench_keras(batch_size=8, jit=False, update_g_every=2, steps=4, warmup=2, repeats=1, depth=4,
                            mixer="mixup", profile=str(tmp_path))
    assert res["images_per_second"] > 0 and res["peak_rss_mib"] > 0
    # update_g_every=2: one step function with and one without the autoencoder update, traced in warm-up only.
    assert res["traces_during_warmup"] == 2 and res["traces_during_timing"] == 0
    profile = res["profile"]
    ops = [row["name"] for row in profile["top_ops"]]
    assert any("Conv2DBackprop" in op for op in ops), ops  # oneDNN names them _MklNative...
    nets = {row["name"] for row in profile["by_network"]}
    assert {"discriminator (backward)", "encoder (forward)"} <= nets, nets
    assert 0.0 <= profile["input_wait_share_of_step_time"] < 1.0


@pytest.mark.parametrize("bad", ["mixup:4", "cutmix", "mixup:x", "acai:3"])
def test_reproduce_rejects_unknown_grid_settings(bad, tmp_path, capsys):
    reproduce = _script("reproduce")
    assert reproduce.main(["--mixers", bad, "--out", str(tmp_path)]) == 2
    assert "--mixers takes settings among" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_reproduce_takes_acai_as_a_grid_setting(tmp_path):
    reproduce = _script("reproduce")
    assert reproduce.main(["--mixers", "acai", "mixup:2", "--datasets", "mnist_sample", "--seeds", "1",
                           "--table-only", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "table1.json") as f:
        rows = json.load(f)["rows"]
    assert [(r["mixer"], r["k"], r["status"]) for r in rows] == [("acai", 2, "not run"), ("mixup", 2, "not run")]

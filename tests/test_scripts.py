"""scripts/bench.py, scripts/reproduce.py and scripts/evaluate.py on tiny settings."""

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
    # The cost of a mid-epoch checkpoint: the whole model (networks, probe, optimizer states) written whole.
    assert res["checkpoint_seconds"] > 0 and res["checkpoint_mib"] > 0.1
    # update_g_every=2: one step function with and one without the autoencoder update, traced in warm-up only.
    assert res["traces_during_warmup"] == 2 and res["traces_during_timing"] == 0
    profile = res["profile"]
    ops = [row["name"] for row in profile["top_ops"]]
    assert any("Conv2DBackprop" in op for op in ops), ops  # oneDNN names them _MklNative...
    nets = {row["name"] for row in profile["by_network"]}
    assert {"discriminator (backward)", "encoder (forward)"} <= nets, nets
    assert 0.0 <= profile["input_wait_share_of_step_time"] < 1.0


def test_bench_torch_records_the_isa_caps_it_ran_under(tmp_path, monkeypatch):
    # A stand-in reference script that reports the caps its own process saw.
    ref = tmp_path / "ref.py"
    ref.write_text("import json, os\nprint('warming up')\n"
                   "print(json.dumps({'images_per_second': 1.5, 'seen': os.environ.get('ONEDNN_MAX_CPU_ISA')}))\n")
    bench = _script("bench")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    plain = bench.bench_torch(str(ref), 4, 1, 2, 1, 1, "mixup", 1)
    assert plain == {"impl": "torch_ref", "images_per_second": 1.5, "seen": None}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    capped = bench.bench_torch(str(ref), 4, 1, 2, 1, 1, "mixup", 1)
    assert capped["seen"] == "AVX2"
    assert capped["isa_caps"] == {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


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


@pytest.mark.parametrize("converged", [True, False])
def test_evaluate_script_prints_the_scores_and_a_fit_that_hit_its_limit(converged, tmp_path, monkeypatch, capsys):
    script = _script("evaluate")
    scores = {"linear_eval_val_accuracy": 0.9, "linear_eval_test_accuracy": 0.91, "linear_eval_l2": 0.0,
              "linear_eval_C": None, "linear_eval_iterations": 1200 if converged else 3000,
              "linear_eval_converged": converged, "knn_val_accuracy": 0.95, "knn_test_accuracy": None}
    seen = {}

    def fake_evaluate_saved(path, dataset, **kwargs):
        seen.update(path=path, dataset=dataset, **kwargs)
        return scores

    monkeypatch.setattr(script, "evaluate_saved", fake_evaluate_saved)
    out_json = str(tmp_path / "scores.json")
    assert script.main(["runs/x", "--dataset", "mnist", "--train-size", "1000", "--json", out_json,
                        "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert seen["path"] == "runs/x" and seen["dataset"] == "mnist" and seen["train_size"] == 1000
    assert seen["n_jobs"] == 1 and "evaluated in " in out
    assert "C = inf (no penalty)): validation 0.9000, test 0.9100" in out
    assert "k-NN (k = 10, cosine): validation 0.9500, test n/a (no test split)" in out
    assert ("stopped at its iteration limit, 3000 iterations" in out) is (not converged)
    with open(out_json) as f:
        assert json.load(f) == scores


def test_evaluate_script_refuses_no_jobs(capsys):
    with pytest.raises(SystemExit) as e:
        _script("evaluate").main(["runs/x", "--dataset", "mnist", "--jobs", "0"])
    assert e.value.code == 2 and "--jobs must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.heavy
def test_bench_times_each_probe_it_is_given(capsys):
    bench = _script("bench")
    bench.main(["--batch-sizes", "8", "--jit", "off", "--update-g-every", "1", "--steps", "2", "--warmup", "1",
                "--repeats", "1", "--depth", "4", "--precision", "float32", "--probe", "whiten", "batchnorm",
                "--same-process"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["probe"] for r in lines] == ["whiten", "batchnorm"]  # read from the model that was timed
    assert all(r["images_per_second"] > 0 for r in lines)


@pytest.mark.heavy
def test_bench_times_each_setting_in_its_own_process(capsys):
    bench = _script("bench")
    bench.main(["--batch-sizes", "8", "--jit", "off", "--update-g-every", "1", "--steps", "2", "--warmup", "1",
                "--repeats", "1", "--depth", "4", "--precision", "float32", "mixed_bfloat16"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["precision"], r["compute_dtype"]) for r in lines] == [("float32", "float32"),
                                                                      ("mixed_bfloat16", "bfloat16")]
    for r in lines:
        assert "error" not in r and r["images_per_second"] > 0
        assert r["peak_rss_scope"] == "setting" and r["peak_rss_mib"] > 0


def test_fit_help_names_each_default_once_and_none_as_none():
    from amr_keras.parser import build_parser

    text = build_parser().format_help()
    assert "(default: None)" not in text
    # A flag whose help names its default does not get argparse's "(default: ...)" as well.
    assert "(default: False)" not in text and "(default 0.5 as the official AMR code" in " ".join(text.split())
    assert "--checkpoint-every MINUTES" in text and "--kl-reduction" in text

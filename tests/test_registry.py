"""The dataset registry: complete entries, one registration adds a dataset everywhere, and no import circle."""

import ast
import pathlib

import numpy as np
import pytest

from amr_keras import data
from amr_keras.config import PRESETS, Config, ConfigError, default_arch, default_preset, resolve
from amr_keras.data import DatasetSpec, dataset_names, dataset_spec, load_dataset, register_dataset
from amr_keras.networks import ARCHS, BURGESS_SIZE
from amr_keras.parser import build_parser

PACKAGE = pathlib.Path(data.__file__).parent


def test_every_builtin_dataset_has_shapes_splits_preset_and_networks():
    assert dataset_names()[:8] == ("mnist", "kmnist", "fashion_mnist", "svhn", "cifar10", "mnist_sample", "dsprites",
                                   "dsprites_procedural")
    for name in dataset_names():
        spec = dataset_spec(name)
        height, width, channels = spec.source_shape
        assert channels in (1, 3) and height == width, name
        assert 0 < spec.val_fraction < 1 and callable(spec.load) and spec.summary, name
        assert spec.preset in PRESETS and spec.arch in ARCHS, name
        # The burgess networks take 64x64 images (dSprites'), the acai ones 28x28 or 32x32 (padded or resized to
        # 32), or 64x64 colour images (celeb_a).
        assert (spec.arch == "burgess") == (height == BURGESS_SIZE and channels == 1), name
        assert default_preset(name) == spec.preset and default_arch(name) == spec.arch
    assert [n for n in dataset_names() if dataset_spec(n).factors] == ["dsprites", "dsprites_procedural"]


def test_the_views_under_the_old_names_keep_their_values():
    assert data.TFDS_NAMES == {"mnist": "mnist", "kmnist": "kmnist", "fashion_mnist": "fashion_mnist",
                               "svhn": "svhn_cropped", "cifar10": "cifar10", "dsprites": "dsprites",
                               "celeb_a": "celeb_a"}
    assert data.VAL_FRACTION == {"mnist": 1 / 6, "kmnist": 1 / 6, "fashion_mnist": 1 / 6, "svhn": 0.1, "cifar10": 0.1,
                                 "mnist_sample": 0.1, "dsprites": 1 / 13, "dsprites_procedural": 1 / 13,
                                 "images": 0.1, "celeb_a": 0.1}
    assert data.SOURCE_SHAPES["svhn"] == (32, 32, 3) and data.SOURCE_SHAPES["dsprites"] == (64, 64, 1)
    assert data.DSPRITES_DATASETS == ("dsprites", "dsprites_procedural")
    from amr_keras.config import DATASET_ARCHS, DATASET_PRESETS

    assert DATASET_PRESETS == {"mnist": "mnist_full", "dsprites": "dsprites", "dsprites_procedural": "dsprites"}
    assert DATASET_ARCHS == {"dsprites": "burgess", "dsprites_procedural": "burgess"}


@pytest.fixture
def tiny_colour_dataset():
    rng = np.random.default_rng(0)

    def load(data_dir, tfds_data_dir):
        train = (rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8), np.arange(120) % 4)
        test = (rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), np.arange(20) % 4)
        return {"train": train, "test": test}, "made in the test"

    spec = register_dataset(DatasetSpec("tiny_colour", source_shape=(32, 32, 3), val_fraction=0.25, load=load,
                                        summary="random colour images in 4 classes"))
    yield spec
    data._REGISTRY.pop(spec.name)


def test_one_registration_adds_a_dataset_to_the_loader_the_settings_and_the_command_line(tiny_colour_dataset):
    splits = load_dataset("tiny_colour", batch_size=10)
    assert (splits.info.num_train, splits.info.num_val, splits.info.num_test) == (90, 30, 20)
    assert splits.info.image_shape == (32, 32, 3) and splits.info.source == "made in the test"
    x, _ = next(iter(splits.train))
    assert x.shape == (10, 32, 32, 3)
    cfg = resolve(Config(dataset="tiny_colour"))
    assert cfg.preset == "fast" and cfg.arch == "acai"
    assert build_parser().parse_args(["--dataset", "tiny_colour"]).dataset == "tiny_colour"
    with pytest.raises(ConfigError, match="--arch burgess does not fit --dataset tiny_colour"):
        resolve(Config(dataset="tiny_colour", arch="burgess"))


def test_a_second_registration_of_a_name_and_a_malformed_entry_are_refused(tiny_colour_dataset):
    with pytest.raises(ValueError, match="registered already"):
        register_dataset(tiny_colour_dataset)
    assert register_dataset(tiny_colour_dataset, replace=True) is tiny_colour_dataset
    with pytest.raises(ValueError, match="source_shape must be"):
        register_dataset(DatasetSpec("flat", source_shape=(32, 32), val_fraction=0.1, load=lambda d, t: None))
    with pytest.raises(ValueError, match="Unknown dataset 'nope'. Choose one of: mnist, kmnist"):
        dataset_spec("nope")


def _imports(path, modules):
    """The package modules ``path`` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("amr_keras"):
            # "from amr_keras.search import space" reaches the module space, not the package's __init__.
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            names = submodules if all(name in modules for name in submodules) else [node.module, *submodules]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def test_the_package_imports_form_no_circle():
    modules = {".".join(("amr_keras", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__"): p
               for p in PACKAGE.rglob("*.py")}
    # The package itself is left out: importing it imports its models, which is no circle of the code's own.
    graph = {name: _imports(path, modules) - {name, "amr_keras"} for name, path in modules.items()}
    state = {}

    def visit(name, trail):
        state[name] = "open"
        for nxt in sorted(graph[name]):
            assert state.get(nxt) != "open", "import circle: " + " -> ".join([*trail, nxt])
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert len(graph) > 20 and "amr_keras.sources" in graph["amr_keras.dsprites"]


# --------------------------------------------------------------------------- mixers
def test_every_mixer_draws_weights_for_code_maps_and_flat_codes():
    import keras

    from amr_keras.mixers import mix_codes, mixer_names, mixer_spec, mixing_weights

    assert mixer_names()[:4] == ("mixup", "bernoulli", "acai", "none")
    seed = keras.random.SeedGenerator(0)
    for name in mixer_names():
        spec = mixer_spec(name)
        assert spec.summary, name
        if spec.weights is None:
            assert mix_codes(keras.ops.ones((6, 4, 4, 3)), name, 2, seed) is None
            continue
        for k in (2, 3) if spec.max_k is None else (2,):
            for rank, channels in ((4, 3), (2, 10)):
                w = np.asarray(mixing_weights(name, k, 6, channels, seed, rank=rank))
                assert w.shape[:2] == (k, 6) and w.shape[-1] in (1, channels) and w.ndim == rank + 1, (name, k, rank)
                assert (w >= 0).all() and np.allclose(w.sum(axis=0), 1.0, atol=1e-6), (name, k, rank)
            codes = keras.random.normal((6, 4, 4, 3), seed=0)
            assert mix_codes(codes, name, k, seed).shape == (6, 4, 4, 3)
            assert mix_codes(keras.random.normal((6, 10), seed=0), name, k, seed).shape == (6, 10)


@pytest.fixture
def even_mixer():
    import keras

    from amr_keras import mixers
    from amr_keras.mixers import MixerSpec, register_mixer

    def even(k, batch, channels, seed, ones):  # every code weighs 1/k
        return keras.ops.ones((k, batch, *ones, 1)) / k

    spec = register_mixer(MixerSpec("even", even, summary="the mean of k codes"))
    yield spec
    mixers._REGISTRY.pop("even")


def test_one_registration_adds_a_mixer_to_the_model_and_the_settings(even_mixer):
    from amr_keras.data import synthetic_dataset
    from amr_keras.mixers import mix_codes
    from amr_keras.model import AMR
    from amr_keras.networks import build_networks

    model = AMR(*build_networks(depth=4), mixer="even", k=3, recon_gan=False)
    model.compile(run_eagerly=True)  # one eager step: tracing would cost most of the test's time
    x, y = next(iter(synthetic_dataset(16, batch_size=16)))
    mixed, _, weights = mix_codes(model.encode(x), "even", 3, model.seed_generator, return_weights=True)
    assert np.allclose(np.asarray(weights), 1 / 3)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["g_loss"]) and int(model.ae_optimizer.iterations) == 1
    assert resolve(Config(mixer="even", k=3, recon_gan=False)).mixer == "even"
    assert build_parser().parse_args(["--mixer", "even"]).mixer == "even"


def test_a_mixer_that_takes_pairs_only_refuses_k_3(even_mixer):
    from amr_keras.mixers import MixerSpec, check_mixer, register_mixer

    register_mixer(MixerSpec("even", even_mixer.weights, max_k=2, summary="pairs"), replace=True)
    with pytest.raises(ValueError, match="Mixer 'even' mixes at most 2 codes, got k=3"):
        check_mixer("even", 3)
    with pytest.raises(ValueError, match="k must be 2"):
        check_mixer("acai", 3)


# --------------------------------------------------------------------------- moved modules
def _import_warned(old, new):
    """Import the module ``old`` afresh; it must warn that it moved to ``new``."""
    import importlib
    import sys
    import warnings

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught), caught
    return module


def test_the_old_search_module_still_imports_with_a_deprecation_warning():
    from amr_keras import search
    from amr_keras.search import distributed, space

    tuning = _import_warned("amr_keras.tuning", "amr_keras.search")
    # The same objects under the old names, private ones that scripts of users may have reached for included.
    assert tuning.search is search.search and tuning.AMRHyperModel is search.AMRHyperModel
    assert tuning.SearchError is search.SearchError and tuning.Cluster is distributed.Cluster
    assert tuning._check_search_settings is space._check_search_settings and tuning._Chief is distributed._Chief
    assert tuning.MAX_RETRIES_PER_TRIAL == 1 and tuning.WORKERS_FOLDER == "workers"


def test_the_old_settings_module_still_imports_with_a_deprecation_warning():
    from amr_keras import config, parser

    cli = _import_warned("amr_keras.cli", "amr_keras.config")
    assert cli.Config is config.Config and cli.resolve is config.resolve and cli.PRESETS is config.PRESETS
    assert cli.build_parser is parser.build_parser and cli._HelpFormatter is parser._HelpFormatter
    # A run folder's config.json written before the move loads through either path.
    assert cli.Config(dataset="mnist_sample") == config.Config(dataset="mnist_sample")


def test_the_old_table_modules_still_import_with_a_deprecation_warning():
    from amr_keras import tables
    from amr_keras.tables import accuracy, table4

    reproduce = _import_warned("amr_keras.reproduce", "amr_keras.tables")
    assert reproduce.TABLES is accuracy.TABLES and reproduce.plan_runs is accuracy.plan_runs
    assert reproduce.PlannedRun is tables.PlannedRun and reproduce.load_ledger is tables.load_ledger
    assert reproduce.paired_ci95 is tables.paired_ci95 and reproduce._gap is accuracy._gap
    assert reproduce.LEDGER_NAME == "finished_runs.jsonl" and reproduce.GRID_ROWS == accuracy.GRID_ROWS
    old = _import_warned("amr_keras.table4", "amr_keras.tables.table4")
    assert old.plan is table4.plan and old.write_table is table4.write_table and old.ROW_SEEDS == table4.ROW_SEEDS


# --------------------------------------------------------------------------- metrics
@pytest.fixture
def code_norm_metric():
    from amr_keras import metrics
    from amr_keras.metrics import MetricSpec, register_metric

    def code_norm(cfg, model, splits, context):
        from amr_keras.evaluate import encode_arrays

        codes = encode_arrays(model.encode, splits.arrays["val"][0][:64])
        return {"val_code_norm": float(np.mean(np.linalg.norm(codes, axis=-1)))}

    spec = register_metric(MetricSpec("code_norm", code_norm, keys=("val_code_norm",),
                                      applies=lambda cfg: cfg.dataset == "mnist_sample", summary="mean code norm"))
    yield spec
    metrics._METRICS.pop("code_norm")


def test_every_builtin_metric_is_complete_and_the_ledger_keeps_its_keys():
    from amr_keras.metrics import metric_names, metric_spec
    from amr_keras.tables import ledger_entry

    assert metric_names()[:2] == ("linear_eval", "factorvae")
    for name in metric_names():
        spec = metric_spec(name)
        assert spec.keys and spec.summary and callable(spec.compute), name
    # A Table 4 run's scores survive where its folder is gone: the ledger line keeps them.
    results = {"seed": 0, "factorvae_score": 0.7, "factorvae_official_score": 0.4, "factorvae_active_dims": 10,
               "factorvae_per_factor": {"shape": 0.2}, "images_per_second_after_first_epoch": 9.0}
    kept = ledger_entry("run", {}, results)["results"]
    assert kept == {"seed": 0, "factorvae_score": 0.7, "factorvae_official_score": 0.4, "factorvae_active_dims": 10,
                    "factorvae_per_factor": {"shape": 0.2}}
    assert metric_spec("factorvae").applies(Config(dataset="dsprites_procedural"))
    assert not metric_spec("factorvae").applies(Config(dataset="mnist"))
    assert not metric_spec("linear_eval").applies(Config(linear_eval=False))
    with pytest.raises(ValueError, match="Unknown metric 'nope'. Choose one of: linear_eval, factorvae"):
        metric_spec("nope")


def test_one_registration_adds_a_metric_to_every_run_and_to_the_ledger(code_norm_metric):
    from amr_keras.metrics import MetricSpec, register_metric, score_run
    from amr_keras.model import AMR
    from amr_keras.networks import build_networks
    from amr_keras.tables import ledger_entry

    with pytest.raises(ValueError, match="a metric named 'code_norm' is registered already"):
        register_metric(MetricSpec("code_norm", code_norm_metric.compute))
    # train.run scores the model with score_run after training (the linear evaluation of test_fit goes through it).
    splits = load_dataset("mnist_sample", batch_size=16)
    model = AMR(*build_networks(depth=4))
    cfg = Config(dataset="mnist_sample", linear_eval=False)
    results, context = score_run(cfg, model, splits)
    assert set(results) == {"val_code_norm", "code_norm_seconds"} and results["val_code_norm"] > 0
    assert context == {}  # the linear evaluation (off here) would have left its classifier
    assert ledger_entry("r", {}, results)["results"] == {"val_code_norm": results["val_code_norm"]}
    # It applies to mnist_sample only: another dataset's run is not scored by it.
    assert score_run(Config(dataset="mnist", linear_eval=False), model, splits) == ({}, {})


# --------------------------------------------------------------------------- tables
def test_every_table_is_registered_and_one_registration_adds_a_table_to_reproduce(tmp_path, monkeypatch, capsys):
    from amr_keras import tables, train
    from amr_keras.tables import PlannedRun, TableEntry, TablePlan, register_table, table_names
    from test_reproduce import load_script

    assert table_names() == ("1", "lamb", "2", "3", "grid", "4")
    written = []

    def plan(request, ledger):
        runs = [PlannedRun(("mnist_sample", "none", 2, 100.0, None),
                           resolve(Config(dataset="mnist_sample", seed=seed, out=str(tmp_path / f"runs/s{seed}"))))
                for seed in (request.seeds or (0, 1))]

        def write(runs, out_dir, stem, command, unavailable=None):
            written.append((len(runs), stem, command))
            return f"{out_dir}/{stem}.md", f"{out_dir}/{stem}.json"

        return TablePlan(runs, "mine", str(tmp_path / "runs"), write=write,
                         finish=lambda runs, out_dir, stem: ["nothing to draw"])

    register_table(TableEntry("mine", "a table of the test", plan, takes=("epochs",)))
    try:
        trained = []
        monkeypatch.setattr(train, "run", lambda cfg, argv=None, resume_hint=None: trained.append(cfg.seed))
        script = load_script()
        out = str(tmp_path / "results")
        assert script.main(["--table", "mine", "--out", out, "--dry-run"]) == 0
        assert "table mine -> " in capsys.readouterr().out and not trained
        assert script.main(["--table", "mine", "--out", out, "--seeds", "3", "--deterministic"]) == 0
        assert trained == [0, 1, 2] and len(written) == 4  # after each run, then once at the end
        assert written[-1][2].startswith("python scripts/reproduce.py --table mine --deterministic --seeds 3")
        assert "(nothing to draw)" in capsys.readouterr().out
        assert script.main(["--table", "mine", "--out", out, "--lamb", "3"]) == 2
        assert "--table mine does not take --lamb (it takes --epochs)" in capsys.readouterr().err
        with pytest.raises(ValueError, match="a table named 'mine' is registered already"):
            register_table(TableEntry("mine", "again", plan))
    finally:
        tables.registry._TABLES.pop("mine")

"""--image-size 32|64|128 and --channels 1|3: one more downsampling block per doubling (the code stays 4x4xC), the
settings refused where they do not apply, and a folder of 64x64 images trained end to end to an export that serves
at that size."""

import json
import os

import numpy as np
import pytest

from amr_keras.config import Config, ConfigError, network_size, resolve
from amr_keras.data import load_dataset, preprocess
from amr_keras.networks import IMAGE_SIZES, build_arch, build_networks
from test_images import class_folder


@pytest.mark.parametrize("size", IMAGE_SIZES)
@pytest.mark.parametrize("colors", (1, 3))
def test_every_size_gives_a_4x4_code_and_images_of_its_size(size, colors):
    enc, dec, disc = build_networks(colors=colors, depth=4, code_channels=3, image_size=size)
    assert enc.input_shape == (None, size, size, colors) and enc.output_shape == (None, 4, 4, 3)
    assert dec.output_shape == (None, size, size, colors) and disc.output_shape == (None,)
    # One block per doubling: 3 pooling stages at 32, 4 at 64, 5 at 128 (and as many upsamplings).
    blocks = {32: 3, 64: 4, 128: 5}[size]
    assert sum(layer.name.endswith("_pool") for layer in enc.layers) == blocks
    assert sum(layer.name.endswith("_up") for layer in dec.layers) == blocks
    assert sum(layer.name.endswith("_pool") for layer in disc.layers) == blocks


def test_widths_double_per_block_up_to_16_times_depth_and_32_is_unchanged():
    enc, _, _ = build_networks(depth=4, image_size=128)
    widths = [enc.get_layer(f"s{s}_a").filters for s in range(5)] + [enc.get_layer("top").filters]
    assert widths == [4, 8, 16, 32, 64, 64]
    # The 32x32 networks keep the parameter counts they always had (the PyTorch reference's too).
    enc, dec, disc = build_networks()
    assert (enc.count_params(), dec.count_params()) == (150_850, 75_745)
    # The encoders' sizes that docs/own_images.md gives (RGB, depth 16).
    counts = [build_networks(colors=3, image_size=size)[0].count_params() for size in IMAGE_SIZES]
    assert counts == [150_882, 596_706, 1_777_890]


def test_other_sizes_are_refused_with_the_sizes_taken():
    with pytest.raises(ValueError, match="take images of 32, 64, 128 pixels a side, got 48"):
        build_networks(image_size=48)
    with pytest.raises(ValueError, match="burgess networks take 64x64"):
        build_arch("burgess", image_size=32)


def test_preprocess_keeps_the_sizes_the_networks_take():
    for size in IMAGE_SIZES:
        assert preprocess(np.zeros((1, size, size, 3), np.uint8)).shape == (1, size, size, 3)
    assert preprocess(np.zeros((1, 28, 28, 1), np.uint8)).shape == (1, 32, 32, 1)  # padded, as always
    assert preprocess(np.zeros((1, 48, 48, 3), np.uint8)).shape == (1, 32, 32, 3)  # resized, as always


def test_the_settings_reach_the_data_and_the_networks(tmp_path):
    folder = class_folder(tmp_path / "shapes", per_class=4)
    cfg = resolve(Config(dataset="images", data_dir=folder, image_size=64, channels=1))
    assert network_size(cfg) == 64 and os.path.basename(cfg.out).startswith("images-64px-grey-mixup-k2-")
    splits = load_dataset("images", data_dir=folder, batch_size=4, image_size=64, channels=1)
    x, _ = next(iter(splits.train))
    assert x.shape == (4, 64, 64, 1) and splits.info.image_shape == (64, 64, 1)
    # Grey is the luma of the colour: the red square (255, 0, 0) is 0.299 * 255 grey.
    red = splits.arrays["train"][0][splits.arrays["train"][1] == 2]
    assert abs(int(np.median(red[:, 32, 32, 0])) - round(0.299 * 255)) <= 2
    assert network_size(resolve(Config(dataset="images", data_dir=folder))) == 32
    assert network_size(resolve(Config(dataset="dsprites_procedural"))) == 64
    assert network_size(resolve(Config(dataset="mnist_sample"))) == 32


@pytest.mark.parametrize("changes, message", [
    (dict(dataset="mnist_sample", image_size=64), r"^--image-size sets the images of --dataset images; "
                                                  r"--dataset mnist_sample has its own size"),
    (dict(dataset="svhn", image_size=64, channels=1), r"^--image-size and --channels set the images"),
    (dict(dataset="images", data_dir=".", image_size=96), r"^--image-size takes 32, 64, 128"),
    (dict(dataset="images", data_dir=".", channels=2), r"^--channels takes 1 \(grey\) or 3 \(RGB\), got 2"),
    (dict(dataset="images", data_dir=".", arch="burgess"), r"^--arch burgess does not fit --dataset images"),
])
def test_settings_that_do_not_apply_get_one_line(changes, message):
    with pytest.raises(ConfigError, match=message):
        resolve(Config(**changes))


def test_the_burgess_networks_take_a_64_pixel_image_folder_and_the_acai_networks_dsprites():
    cfg = resolve(Config(dataset="images", data_dir=".", image_size=64, arch="burgess"))
    assert cfg.arch == "burgess" and network_size(cfg) == 64
    # dSprites on the acai networks: 64x64 in, a 4x4xC code (the Table 4 recipe keeps the burgess networks).
    cfg = resolve(Config(dataset="dsprites_procedural", arch="acai"))
    assert network_size(cfg) == 64 and os.path.basename(cfg.out).startswith("dsprites_procedural-acai-")


def test_the_flags_parse():
    from amr_keras.parser import config_from_args

    cfg = config_from_args(["--dataset", "images", "--data-dir", ".", "--image-size", "128", "--channels", "1"])
    assert (cfg.image_size, cfg.channels) == (128, 1)
    with pytest.raises(SystemExit):
        config_from_args(["--dataset", "images", "--data-dir", ".", "--image-size", "100"])


def test_fit_trains_a_64_pixel_folder_to_an_export_that_serves_at_64(tmp_path, monkeypatch):
    """fit.py end to end on a folder of images at 64x64 RGB: results, figure, and an export that serves at that
    size, names the classes and serves the post-hoc classifier fitted once (this is the fast tier's one fit.py run
    to an export; tests/test_fit.py runs fit.py on the official files without one)."""
    import tensorflow as tf
    from test_fit import load_script

    from amr_keras import evaluate

    fits = []
    original = evaluate.linear_evaluation
    monkeypatch.setattr(evaluate, "linear_evaluation", lambda *a, **k: fits.append(original(*a, **k)) or fits[-1])
    folder = class_folder(tmp_path / "shapes", per_class=6)
    out = str(tmp_path / "run")
    args = ["--dataset", "images", "--data-dir", folder, "--image-size", "64", "--depth", "4", "--batch-size", "4",
            "--epochs", "1", "--steps-per-epoch", "2", "--no-jit-compile", "--precision", "float32", "--out", out,
            "--verbose", "0"]
    assert load_script("fit").main(args) == 0
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert results["image_shape"] == [64, 64, 3] and results["image_size"] == 64
    assert results["num_classes"] == 3 and results["class_names"] == ["blue", "green", "red"]
    assert results["attribute_groups"] == [{"name": "class", "values": ["blue", "green", "red"]}]
    assert 0.0 <= results["linear_eval_test_accuracy"] <= 1.0
    assert os.path.exists(os.path.join(out, "interpolations.png"))
    served = tf.saved_model.load(os.path.join(out, "export"))
    x = np.random.default_rng(0).random((2, 64, 64, 3)).astype("float32")
    assert served.encode(x).shape == (2, 4, 4, 2) and served.reconstruct(x).shape == (2, 64, 64, 3)
    assert served.classify(x).shape == (2, 3)
    # The export serves the classifier of the linear evaluation, fitted once, and reports both heads' scores.
    assert len(fits) == 1
    codes = served.encode(x).numpy().reshape(2, -1)
    np.testing.assert_allclose(served.classify_linear(x).numpy(), fits[0]["classifier"].predict_proba(codes),
                               atol=1e-4)
    assert served.mix(x, x[::-1], np.ones((2, 2), "float32")).shape == (2, 64, 64, 3)
    with open(os.path.join(out, "export", "metadata.json")) as f:
        meta = json.load(f)
    assert meta["class_names"] == ["blue", "green", "red"] and meta["code_shape"] == [4, 4, 2]
    assert meta["heads"]["classify_linear"]["test_accuracy"] == results["linear_eval_test_accuracy"]
    assert meta["heads"]["classify"]["test_accuracy"] == results["test_probe_accuracy"]


# --------------------------------------------------------------------------- read from the files (--no-cache)
def test_read_from_the_files_the_pipelines_give_the_batches_held_images_give(tmp_path):
    from amr_keras.data import train_pipeline
    from amr_keras.evaluate import encode_arrays
    from amr_keras.images import ImageFiles

    folder = class_folder(tmp_path / "shapes", per_class=10)
    held = load_dataset("images", data_dir=folder, batch_size=4, image_size=64, cache=True)
    read = load_dataset("images", data_dir=folder, batch_size=4, image_size=64, cache=False)
    assert isinstance(read.arrays["train"][0], ImageFiles) and isinstance(held.arrays["train"][0], np.ndarray)
    assert read.info == held.info
    for split in ("train", "val", "test"):
        a, b = getattr(held, split), getattr(read, split)
        for (xa, ya), (xb, yb) in zip(a.take(3), b.take(3)):
            np.testing.assert_array_equal(xa.numpy(), xb.numpy())
            np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    # The endless training pipeline, resumed mid-pass: the same batches too.
    a = train_pipeline(*held.arrays["train"], 4, seed=3, start_step=5)
    b = train_pipeline(*read.arrays["train"], 4, seed=3, start_step=5)
    for (xa, ya), (xb, yb) in zip(a.take(8), b.take(8)):
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())

    def encode(x):
        return np.asarray(x)[:, ::8, ::8, :].reshape(len(x), -1)

    np.testing.assert_array_equal(encode_arrays(encode, held.arrays["train"][0], batch_size=7),
                                  encode_arrays(encode, read.arrays["train"][0], batch_size=7))
    np.testing.assert_array_equal(np.asarray(read.arrays["val"][0]), held.arrays["val"][0])


def test_a_folder_larger_than_the_cache_is_never_read_whole(tmp_path, monkeypatch, capsys):
    from amr_keras import images
    from amr_keras.data import train_pipeline
    from amr_keras.evaluate import evaluate_codes
    from amr_keras.plots import pick_pairs

    folder = class_folder(tmp_path / "shapes", per_class=10)
    monkeypatch.setattr(images, "CACHE_LIMIT", 20_000)  # 30 images of 32x32x3 take 92,160 bytes
    splits = load_dataset("images", data_dir=folder, batch_size=4)
    assert "images: 0.1 MiB decoded, read from the files every epoch (over the 0.0 MiB held by default)" \
        in capsys.readouterr().out
    reads = []

    def read(self, dtype=None, copy=None):
        reads.append(len(self))
        assert len(self) <= 8, f"{len(self)} images read at once"
        return decode(self, dtype)

    decode = images.ImageFiles.__array__
    monkeypatch.setattr(images.ImageFiles, "__array__", read)
    for _ in train_pipeline(*splits.arrays["train"], 4, seed=0).take(12):  # two passes
        pass
    for _ in splits.val:
        pass
    scores = evaluate_codes(lambda x: np.asarray(x)[:, ::4, ::4, :], splits.arrays, batch_size=5)
    assert scores["linear_eval_test_accuracy"] == 1.0  # three colours: a linear readout of the pixels
    a, b = pick_pairs(splits.arrays["train"][0], 3, seed=0)  # a figure reads its six images alone
    assert a.shape == (3, 32, 32, 3) and reads == [6]


def test_the_cache_flags_reach_the_loader_and_are_refused_elsewhere(tmp_path):
    from amr_keras.parser import config_from_args

    assert config_from_args(["--dataset", "images", "--data-dir", ".", "--no-cache"]).cache is False
    assert config_from_args(["--dataset", "images", "--data-dir", ".", "--cache"]).cache is True
    assert config_from_args(["--dataset", "images", "--data-dir", "."]).cache is None
    with pytest.raises(ConfigError, match=r"^--no-cache applies to --dataset images"):
        resolve(Config(dataset="mnist_sample", cache=False))
    from amr_keras.data import DataError

    with pytest.raises(DataError, match=r"^--cache does not apply to --dataset mnist_sample"):
        load_dataset("mnist_sample", cache=True)


def test_bench_times_the_input_pipeline_alone(tmp_path):
    from test_fit import load_script

    folder = class_folder(tmp_path / "shapes", per_class=6)
    res = load_script("bench").bench_pipeline(folder, 64, 1, batch_size=4, cache=False, batches=2, repeats=1)
    assert (res["impl"], res["cache"], res["image_size"], res["channels"]) == ("input_pipeline", False, 64, 1)
    assert res["images_per_second"] > 0 and res["num_train"] == 12


@pytest.mark.slow
def test_bench_times_the_128_pixel_step_and_the_input_pipeline_beside_it(tmp_path, capsys):
    from test_fit import load_script

    folder = class_folder(tmp_path / "shapes", per_class=6)
    bench = load_script("bench")
    bench.main(["--image-size", "128", "--channels", "3", "--batch-sizes", "4", "--jit", "off", "--update-g-every",
                "1", "--depth", "4", "--steps", "1", "--warmup", "1", "--repeats", "1", "--precision", "float32",
                "--same-process", "--image-folder", folder])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    read, held, step = lines
    assert (read["impl"], read["cache"], held["cache"]) == ("input_pipeline", False, True)
    assert read["images_per_second"] > 0 and read["image_size"] == 128 and read["num_train"] == 12
    assert (step["image_size"], step["colors"]) == (128, 3) and step["images_per_second"] > 0
    assert step["pipeline_read_to_step_ratio"] == round(read["images_per_second"] / step["images_per_second"], 1)


@pytest.mark.slow
def test_fit_trains_a_larger_folder_read_from_its_files_at_64(tmp_path):
    """240 images in four classes, of every size and format, read from the files every epoch (--no-cache), one
    epoch at 64x64 RGB, to an export that serves at that size and a post-hoc evaluation above chance."""
    import tensorflow as tf
    from test_fit import load_script

    classes = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 230), "yellow": (230, 230, 30)}
    folder = class_folder(tmp_path / "shapes", per_class=60, classes=classes)
    out = str(tmp_path / "run")
    args = ["--dataset", "images", "--data-dir", folder, "--image-size", "64", "--no-cache", "--depth", "8",
            "--batch-size", "16", "--epochs", "1", "--precision", "float32", "--out", out, "--verbose", "0"]
    assert load_script("fit").main(args) == 0
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert (results["num_train"], results["num_val"], results["num_test"]) == (192, 24, 24)
    assert results["linear_eval_test_accuracy"] > 0.5  # four colours, chance 0.25
    served = tf.saved_model.load(os.path.join(out, "export"))
    x = np.random.default_rng(0).random((2, 64, 64, 3)).astype("float32")
    assert served.reconstruct(x).shape == (2, 64, 64, 3) and served.classify(x).shape == (2, 4)
    # scripts/interpolate.py's figures from the export: the folder decoded at the export's size.
    from amr_keras.plots import make_figures

    interp, recon = make_figures(os.path.join(out, "export"), data_dir=folder, pairs=3, out=str(tmp_path / "figs"))
    assert os.path.getsize(interp) > 0 and os.path.getsize(recon) > 0

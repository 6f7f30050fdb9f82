"""--dataset images: a folder of one's own pictures (class subfolders, or train/val/test), every format and mode
decoded to 32x32 RGB with the aspect ratio kept, a seeded stratified split, and one clear line per problem."""

import os

import numpy as np
import pytest
from PIL import Image

from amr_keras.data import DataError, load_dataset
from amr_keras.images import decode_images, load_image_folder, stratified_split

COLOURS = {"blue": (0, 0, 255), "green": (0, 200, 0), "red": (255, 0, 0)}
FORMATS = (("png", "RGB"), ("jpg", "RGB"), ("bmp", "RGB"), ("gif", "P"), ("png", "RGBA"), ("png", "L"))


def write_image(path, colour, size=(40, 30), mode="RGB"):
    """A picture of ``size`` (width, height): a filled square of ``colour`` in its middle over dark noise."""
    width, height = size
    rng = np.random.default_rng(abs(hash(path)) % 2**32)
    pixels = rng.integers(0, 40, (height, width, 3)).astype(np.uint8)
    side = min(width, height) // 2
    top, left = (height - side) // 2, (width - side) // 2
    pixels[top:top + side, left:left + side] = colour
    image = Image.fromarray(pixels)
    if mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode != "RGB":
        image = image.convert(mode)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path)


def class_folder(root, per_class=10, classes=COLOURS):
    """``root/CLASS/IMAGE`` in every format and mode, of varied sizes and aspect ratios."""
    for name, colour in classes.items():
        for i in range(per_class):
            ext, mode = FORMATS[i % len(FORMATS)]
            write_image(os.path.join(root, name, f"{i}.{ext}"), colour, size=(24 + 7 * i, 20 + 3 * i), mode=mode)
    return str(root)


def test_a_folder_of_class_subfolders_splits_by_class_and_decodes_every_format(tmp_path, capsys):
    folder = class_folder(tmp_path / "shapes")
    arrays, source = load_image_folder(folder)
    assert arrays.pop("class_names") == ["blue", "green", "red"]
    assert "blue 10, green 10, red 10" in capsys.readouterr().out
    # 10 images a class: 1 to validation, 1 to test, 8 to training, the same draw every time.
    assert {name: np.bincount(labels).tolist() for name, (_, labels) in arrays.items()} == {
        "train": [8, 8, 8], "val": [1, 1, 1], "test": [1, 1, 1]}
    again, _ = load_image_folder(folder, verbose=False)
    assert all(np.array_equal(arrays[k][0], again[k][0]) for k in arrays)
    assert "classes: blue, green, red" in source and "seed" in source
    for images, _ in arrays.values():
        assert images.shape[1:] == (32, 32, 3) and images.dtype == np.uint8


@pytest.mark.parametrize("ext, mode", FORMATS)
def test_every_format_and_mode_decodes_to_rgb_at_32(tmp_path, ext, mode):
    colour = (200, 100, 50)
    path = str(tmp_path / f"picture.{ext}")
    write_image(path, colour, size=(45, 29), mode=mode)
    (image,) = decode_images([path])
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    centre = image[12:20, 12:20].reshape(-1, 3).mean(axis=0)
    # Grey pictures come back grey on all three channels (PIL's luminance of the colour); the others in colour.
    expected = np.full(3, (299 * 200 + 587 * 100 + 114 * 50) / 1000) if mode == "L" else np.array(colour)
    assert np.abs(centre - expected).max() < 12, (centre, expected)


def test_the_crop_keeps_the_aspect_ratio(tmp_path):
    # A wide picture: black left and right thirds, a white middle third. The centre square crop is all white;
    # a plain resize would squeeze the black sides in.
    pixels = np.zeros((30, 90, 3), np.uint8)
    pixels[:, 30:60] = 255
    path = str(tmp_path / "wide.png")
    Image.fromarray(pixels).save(path)
    (image,) = decode_images([path])
    assert image.min() >= 250


def test_train_val_test_folders_are_used_as_given(tmp_path):
    root = tmp_path / "given"
    class_folder(root / "train", per_class=6, classes={"a": (255, 0, 0), "b": (0, 0, 255)})
    class_folder(root / "val", per_class=2, classes={"a": (255, 0, 0), "b": (0, 0, 255)})
    class_folder(root / "test", per_class=3, classes={"b": (0, 0, 255)})  # a class may be absent from test
    splits = load_dataset("images", data_dir=str(root), batch_size=4)
    assert (splits.info.num_train, splits.info.num_val, splits.info.num_test) == (12, 4, 3)
    assert splits.info.image_shape == (32, 32, 3)
    assert set(splits.arrays["test"][1].tolist()) == {1}  # labels follow train/'s classes: b is 1
    assert splits.info.class_names == ("a", "b") and splits.info.num_classes == 2
    # Without val/, validation is drawn from train/ by class; without test/, there is none.
    root2 = tmp_path / "train_only"
    class_folder(root2 / "train", per_class=10, classes={"a": (255, 0, 0), "b": (0, 0, 255)})
    arrays, source = load_image_folder(str(root2), verbose=False)
    assert sorted(arrays) == ["class_names", "train", "val"] and len(arrays["val"][0]) == 2 and "drawn from train/" in source


def test_the_split_is_stratified_and_seeded():
    labels = np.repeat([0, 1, 2], [50, 20, 2])
    train, val, test = stratified_split(labels, seed=7)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(72))
    assert np.bincount(labels[val], minlength=3).tolist() == [5, 2, 0]  # a class of 2 stays in training
    assert np.bincount(labels[test], minlength=3).tolist() == [5, 2, 0]
    assert all(np.array_equal(a, b) for a, b in zip(stratified_split(labels, seed=7), (train, val, test)))
    assert not np.array_equal(stratified_split(labels, seed=8)[1], val)


def _problem(tmp_path, make):
    folder = tmp_path / "data"
    folder.mkdir()
    make(folder)
    with pytest.raises(DataError) as caught:
        load_image_folder(str(folder), verbose=False)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("make, expected", [
    (lambda f: None, "has no images (.png, .jpg, .jpeg, .bmp, .gif) in class subfolders"),
    (lambda f: (f / "empty_class").mkdir(), "has no images"),
    (lambda f: class_folder(f, 3, {"only": (255, 0, 0)}), "has one class (only): the probe and the evaluation need"),
    (lambda f: (class_folder(f / "train", 3), write_image(str(f / "val" / "loose.png"), (255, 0, 0))),
     "val holds images without class subfolders, but train/ has classes"),
    (lambda f: (class_folder(f, 3), write_image(str(f / "loose.png"), (255, 0, 0))),
     "holds images (loose.png, ...) beside class subfolders"),
    (lambda f: class_folder(f / "val", 3), "has val/ but no train/"),
    (lambda f: (class_folder(f / "train", 3), class_folder(f / "test", 2, {"purple": (200, 0, 200)})),
     "has classes that train/ does not have: purple"),
])
def test_every_layout_problem_gets_one_line(tmp_path, make, expected):
    assert expected in _problem(tmp_path, make)


def test_a_file_that_cannot_be_decoded_is_named(tmp_path):
    def make(folder):
        class_folder(folder, 4)
        (folder / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        (folder / "blue" / "empty.jpg").write_bytes(b"")

    message = _problem(tmp_path, make)
    assert message.startswith("cannot decode ") and "(and 1 other file)" in message
    assert "broken.png" in message or "empty.jpg" in message


def test_no_folder_and_a_missing_folder_say_what_to_give(tmp_path):
    with pytest.raises(DataError, match="--dataset images reads your own images: give their folder with --data-dir"):
        load_dataset("images")
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        load_dataset("images", data_dir=str(tmp_path / "nowhere"))


@pytest.mark.slow
def test_fit_trains_on_a_folder_of_images_to_an_export_and_a_figure(tmp_path):
    import json

    import tensorflow as tf
    from test_fit import load_script

    folder = class_folder(tmp_path / "shapes", per_class=12)
    out = str(tmp_path / "run")
    args = ["--dataset", "images", "--data-dir", folder, "--depth", "4", "--batch-size", "8", "--epochs", "1",
            "--no-jit-compile", "--precision", "float32", "--out", out, "--verbose", "0"]
    assert load_script("fit").main(args) == 0
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert results["source"].startswith(f"image folder {folder}") and results["num_test"] == 3  # 1 of 12 a class
    assert 0.0 <= results["linear_eval_test_accuracy"] <= 1.0
    assert os.path.exists(os.path.join(out, "interpolations.png"))
    served = tf.saved_model.load(os.path.join(out, "export"))
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    assert served.encode(x).shape == (2, 4, 4, 2) and served.classify(x).shape[0] == 2


def test_skip_bad_images_leaves_the_bad_files_out_and_counts_them(tmp_path, capsys):
    folder = class_folder(tmp_path / "shapes", per_class=10)
    (tmp_path / "shapes" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "shapes" / "blue" / "empty.jpg").write_bytes(b"")
    splits = load_dataset("images", data_dir=folder, batch_size=4, skip_bad_images=True)
    assert "images: skipped 2 files that cannot be decoded (--skip-bad-images), the first" in capsys.readouterr().out
    assert splits.info.num_train + splits.info.num_val + splits.info.num_test == 30  # the 30 good images
    assert "2 files that cannot be decoded skipped" in splits.info.source
    with pytest.raises(DataError, match=r"^--skip-bad-images does not apply to --dataset mnist_sample"):
        load_dataset("mnist_sample", skip_bad_images=True)


def test_the_flag_reaches_the_settings():
    from amr_keras.parser import config_from_args

    assert config_from_args(["--dataset", "images", "--data-dir", ".", "--skip-bad-images"]).skip_bad_images
    assert not config_from_args(["--dataset", "images", "--data-dir", "."]).skip_bad_images


def test_a_folder_of_images_alone_trains_unlabelled(tmp_path, capsys):
    from amr_keras.export import Endpoints
    from amr_keras.model import AMR
    from amr_keras.networks import build_networks

    for i in range(20):
        write_image(str(tmp_path / "faces" / f"{i}.png"), (10 * i, 100, 200), size=(30 + i, 30))
    splits = load_dataset("images", data_dir=str(tmp_path / "faces"), batch_size=4)
    assert "no class subfolders: unlabelled (the online probe and the post-hoc evaluation are skipped" \
        in capsys.readouterr().out
    info = splits.info
    assert not info.labelled and info.class_names is None and info.attributes is None
    assert (info.num_train, info.num_val, info.num_test) == (16, 2, 2) and "unlabelled" in info.source
    assert all(not y.any() for _, y in splits.arrays.values())
    # Its export serves no classifier.
    names = Endpoints(AMR(*build_networks(colors=3, depth=4)), (32, 32, 3), classify=False).names
    assert "classify" not in names and "reconstruct" in names and "mix" in names
    # An attribute table still gives it attributes.
    (tmp_path / "faces" / "attributes.csv").write_text("file,smiling\n" + "".join(
        f"{i}.png,{'yes' if i % 2 else 'no'}\n" for i in range(20)))
    splits = load_dataset("images", data_dir=str(tmp_path / "faces"), batch_size=4)
    assert not splits.info.labelled and splits.info.attributes.describe() == "smiling (2)"


@pytest.mark.slow
def test_fit_trains_an_unlabelled_folder_to_an_export_without_a_classifier(tmp_path):
    import json

    from test_fit import load_script

    for i in range(24):
        write_image(str(tmp_path / "faces" / f"{i}.png"), (10 * i, 100, 200), size=(30 + i, 30))
    out = str(tmp_path / "run")
    args = ["--dataset", "images", "--data-dir", str(tmp_path / "faces"), "--depth", "4", "--batch-size", "8",
            "--epochs", "1", "--precision", "float32", "--out", out, "--verbose", "0"]
    assert load_script("fit").main(args) == 0
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert results["labelled"] is False and results["best_val_probe_accuracy"] is None
    assert results["test_probe_accuracy"] is None and "linear_eval_test_accuracy" not in results
    with open(os.path.join(out, "export", "metadata.json")) as f:
        meta = json.load(f)
    assert "classify" not in meta["endpoints"] and meta["heads"]["classify"]["head"] is None
    assert os.path.exists(os.path.join(out, "interpolations.png"))

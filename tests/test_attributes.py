"""Attributes beside the class label: groups of categorical values, from dSprites' factors, a dataset's class, or a
table beside an image folder (a CSV, or CelebA's list_attr_celeba.txt), carried through the splits and subsets."""


import numpy as np
import pytest

from amr_keras.attributes import DSPRITES_GROUPS, AttributeGroups, dsprites_attributes
from amr_keras.data import DataError, load_dataset
from test_images import class_folder


def test_one_hot_puts_each_group_side_by_side():
    groups = AttributeGroups.of(shape=("square", "ellipse", "heart"), x=("upper", "lower"), hat=("-1", "1"))
    assert (groups.sizes, groups.width, groups.describe()) == ((3, 2, 2), 7, "shape (3), x (2), hat (2)")
    np.testing.assert_array_equal(groups.one_hot(np.array([[2, 0, 1], [0, 1, 0]])),
                                  [[0, 0, 1, 1, 0, 0, 1], [1, 0, 0, 0, 1, 1, 0]])
    assert AttributeGroups.from_json(groups.to_json()) == groups
    with pytest.raises(DataError, match="attribute 'x' takes 0 to 1, got 2"):
        groups.one_hot(np.array([[0, 2, 0]]))
    with pytest.raises(DataError, match=r"expected integer codes of shape \(N, 3\)"):
        groups.one_hot(np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="two or more distinct values"):
        AttributeGroups.of(flat=("one",))


def test_dsprites_attributes_are_its_coarse_factors():
    # shape, scale 0-5, orientation 0-39, x 0-31, y 0-31 -> shape, scale in halves, x and y in halves.
    classes = np.array([[0, 0, 39, 0, 31], [2, 2, 0, 15, 16], [1, 3, 7, 16, 15], [2, 5, 20, 31, 0]])
    assert dsprites_attributes(classes).tolist() == [[0, 0, 0, 1], [2, 0, 0, 1], [1, 1, 1, 0], [2, 1, 1, 0]]
    assert DSPRITES_GROUPS.names == ("shape", "scale", "x", "y")


def test_dsprites_splits_carry_the_attributes_of_their_images():
    from amr_keras import dsprites

    splits = load_dataset("dsprites_procedural", batch_size=64, train_size=600)
    assert splits.info.attributes == DSPRITES_GROUPS
    for split, (images, labels) in splits.arrays.items():
        codes = splits.attributes[split]
        assert codes.shape == (len(images), 4) and codes.dtype == np.int64
        np.testing.assert_array_equal(codes[:, 0], labels)  # the label is the shape
    # Spot-check a few images: rendered from the cell their attributes say (scale and position halves).
    images, codes = splits.arrays["val"][0][:50], splits.attributes["val"][:50]
    rows = np.array([np.flatnonzero(img[..., 0].any(axis=1)).mean() for img in images])
    cols = np.array([np.flatnonzero(img[..., 0].any(axis=0)).mean() for img in images])
    centre = dsprites.CENTRE_FIRST + dsprites.CENTRE_SPAN / 2
    # The extent's middle is the sprite's centre to a few pixels (a heart is not symmetric): judged away from it.
    for measured, code in ((rows, codes[:, 2]), (cols, codes[:, 3])):
        clear = np.abs(measured - centre) > 3
        assert clear.sum() >= 25
        np.testing.assert_array_equal((measured > centre)[clear], code[clear] == 1)


def test_a_dataset_without_attributes_has_its_class_as_one_group():
    splits = load_dataset("mnist_sample", batch_size=64, train_size=500)
    assert splits.info.attributes.describe() == "class (10)"
    for split, (_, labels) in splits.arrays.items():
        np.testing.assert_array_equal(splits.attributes[split][:, 0], labels)


def write_csv(path, rows, header="file,smiling,hair"):
    path.write_text("\n".join([header, *rows]) + "\n")


def test_a_csv_beside_the_images_gives_their_attributes(tmp_path):
    folder = class_folder(tmp_path / "shapes", per_class=10)
    # smiling by class (red smiles), hair by image number; keyed by path below the folder.
    rows = [f"{name}/{i}.{ext},{'yes' if name == 'red' else 'no'},{['dark', 'fair', 'grey'][i % 3]}"
            for name in ("blue", "green", "red") for i, ext in
            ((i, ("png", "jpg", "bmp", "gif", "png", "png")[i % 6]) for i in range(10))]
    write_csv(tmp_path / "shapes" / "attributes.csv", rows)
    splits = load_dataset("images", data_dir=folder, batch_size=4)
    groups = splits.info.attributes
    assert groups.to_json() == [{"name": "smiling", "values": ["no", "yes"]},
                                {"name": "hair", "values": ["dark", "fair", "grey"]}]
    for split, (_, labels) in splits.arrays.items():
        np.testing.assert_array_equal(splits.attributes[split][:, 0], labels == 2)
    assert "attributes from" in splits.info.source and "smiling (2), hair (3)" in splits.info.source


def test_celeba_s_own_file_is_read_and_numbers_sort_as_numbers(tmp_path):
    from test_images import write_image

    folder = class_folder(tmp_path / "faces", per_class=4, classes={"a": (255, 0, 0), "b": (0, 0, 255)})
    write_image(str(tmp_path / "faces" / "a" / "000123.jpg"), (255, 0, 0))
    names = [f"{c}/{i}.{('png', 'jpg', 'bmp', 'gif')[i]}" for c in "ab" for i in range(4)]
    # By path below the folder, and by name alone where no other image has that name (CelebA's own habit).
    lines = [str(len(names) + 1), "Smiling Bald", "000123.jpg  1 -1"]
    lines += [f"{n}  {'1' if n[0] == 'a' else '-1'} {'1' if i % 2 else '-1'}" for i, n in enumerate(names)]
    (tmp_path / "faces" / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    splits = load_dataset("images", data_dir=folder, batch_size=2)
    assert splits.info.attributes.to_json() == [{"name": "Smiling", "values": ["-1", "1"]},
                                                {"name": "Bald", "values": ["-1", "1"]}]
    for split, (_, labels) in splits.arrays.items():
        np.testing.assert_array_equal(splits.attributes[split][:, 0], labels == 0)


@pytest.mark.parametrize("rows, header, message", [
    (["blue/0.png,no,dark"], "file,smiling,hair", r"has no row for 29 of the 30 images \(the first: "),
    (["blue/0.png,no"], "file,smiling,hair", r"attributes.csv:2: expected a file name and 2 values \(smiling, hair\), "
                                             r"got 2 field\(s\)"),
    (["blue/0.png,no,"], "file,smiling,hair", r"attributes.csv:2: .* with an empty one"),
    ([], "file,smiling,hair", "has a header but no row"),
    (["blue/0.png", "blue/1.png"], "file", "names no attribute"),
    (["blue/0.png,no", "blue/0.png,yes"], "file,smiling", r"attributes.csv:3: blue/0.png has a row already"),
])
def test_every_table_problem_gets_one_line(tmp_path, rows, header, message):
    folder = class_folder(tmp_path / "shapes", per_class=10)
    write_csv(tmp_path / "shapes" / "attributes.csv", rows, header)
    with pytest.raises(DataError, match=message):
        load_dataset("images", data_dir=folder, batch_size=4)


def test_a_constant_column_and_a_missing_table_are_named(tmp_path):
    folder = class_folder(tmp_path / "shapes", per_class=3)
    rows = [f"{name}/{i}.{ext},no" for name in ("blue", "green", "red") for i, ext in enumerate(("png", "jpg", "bmp"))]
    table = tmp_path / "table.csv"
    write_csv(table, rows, "file,smiling")
    with pytest.raises(DataError, match="attribute 'smiling' has one value \\(no\\) for every image: drop the column"):
        load_dataset("images", data_dir=folder, batch_size=2, attributes=str(table))
    with pytest.raises(DataError, match="--attributes '.*nowhere.csv' does not exist"):
        load_dataset("images", data_dir=folder, batch_size=2, attributes=str(tmp_path / "nowhere.csv"))


def test_attributes_follow_skipped_files_and_the_flag_is_refused_elsewhere(tmp_path):
    from amr_keras.config import Config, ConfigError, resolve

    folder = class_folder(tmp_path / "shapes", per_class=10)
    (tmp_path / "shapes" / "red" / "broken.png").write_bytes(b"not an image")
    rows = [f"{name}/{i}.{('png', 'jpg', 'bmp', 'gif', 'png', 'png')[i % 6]},{name},{i % 2}"
            for name in ("blue", "green", "red") for i in range(10)] + ["red/broken.png,red,1"]
    write_csv(tmp_path / "shapes" / "attributes.csv", rows, "file,colour,odd")
    splits = load_dataset("images", data_dir=folder, batch_size=4, skip_bad_images=True)
    for split, (_, labels) in splits.arrays.items():
        np.testing.assert_array_equal(splits.attributes[split][:, 0], labels)  # colour names sort as the classes
    with pytest.raises(ConfigError, match=r"^--attributes applies to --dataset images"):
        resolve(Config(dataset="mnist_sample", attributes=str(tmp_path / "shapes" / "attributes.csv")))


def fake_celeba(monkeypatch, tmp_path, prepared=True):
    """tensorflow-datasets' celeb_a stood in for by a few 218x178 faces with two attributes per split."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    folder = tmp_path / "tfds" / "celeb_a"
    folder.mkdir(parents=True)
    if prepared:
        (folder / "dataset_info.json").write_text("{}")
    sizes = {"train": 12, "validation": 4, "test": 4}

    def load(name, split, data_dir=None):
        n = sizes[split]
        rng = np.random.default_rng(len(split))
        images = rng.integers(0, 256, (n, 218, 178, 3)).astype(np.uint8)
        images[:, 20:198, :, 0] = 255  # the centre square of the first channel, saturated
        smiling = np.arange(n) % 2 == 1
        return tf.data.Dataset.from_tensor_slices({"image": images, "attributes": {
            "Smiling": smiling, "Male": np.arange(n) % 3 == 0}})

    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None: type("B", (), {"data_dir": str(folder)})())
    monkeypatch.setattr(tfds, "load", load)


def test_celeb_a_comes_from_tensorflow_datasets_with_its_attributes(tmp_path, monkeypatch):
    fake_celeba(monkeypatch, tmp_path)
    splits = load_dataset("celeb_a", batch_size=4)
    info = splits.info
    assert not info.labelled and info.image_shape == (64, 64, 3)
    assert (info.num_train, info.num_val, info.num_test) == (12, 4, 4)
    assert info.attributes.to_json() == [{"name": "Male", "values": ["no", "yes"]},
                                         {"name": "Smiling", "values": ["no", "yes"]}]
    np.testing.assert_array_equal(splits.attributes["train"][:, 1], np.arange(12) % 2)
    assert (splits.arrays["train"][0][:, :, :, 0] == 255).all()  # the centre crop: rows 20 to 197
    splits = load_dataset("celeb_a", batch_size=4, image_size=32)
    assert splits.info.image_shape == (32, 32, 3)


def test_celeb_a_offline_names_the_folder_route(tmp_path, monkeypatch):
    from amr_keras import sources

    fake_celeba(monkeypatch, tmp_path, prepared=False)
    monkeypatch.setattr(sources, "network_available", lambda: False)
    with pytest.raises(DataError, match="no network.*--dataset images --data-dir DIR/img_align_celeba --attributes "
                                        "DIR/list_attr_celeba.txt"):
        load_dataset("celeb_a")
    with pytest.raises(DataError, match="^--dataset celeb_a reads tensorflow-datasets; for CelebA's own files"):
        load_dataset("celeb_a", data_dir=str(tmp_path))

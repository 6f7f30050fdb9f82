"""The judge of class-conditional mixes (amr_keras.judge): known answers with a judge that reads the pixels
exactly, a judge trained on real images, its cache, and the mixes it compares."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from amr_keras.attributes import AttributeGroups
from amr_keras.judge import Judge, judge_mixes, load_or_train_judge, mix_functions

HALVES = AttributeGroups.of(top=("dark", "bright"), bottom=("dark", "bright"))


def halves_images(n, seed=0):
    """32x32 grey images whose top and bottom halves are each dark or bright: the two attributes."""
    codes = np.random.default_rng(seed).integers(0, 2, (n, 2))
    images = np.zeros((n, 32, 32, 1), np.uint8)
    images[:, :16] = (codes[:, 0] * 255)[:, None, None, None]
    images[:, 16:] = (codes[:, 1] * 255)[:, None, None, None]
    return images, codes


def exact_judge():
    """A judge that reads each half's mean brightness: never wrong on these images."""
    inputs = keras.Input((32, 32, 1))
    top = keras.layers.Lambda(lambda x: tf.reduce_mean(x[:, :16], axis=(1, 2, 3)))(inputs)
    bottom = keras.layers.Lambda(lambda x: tf.reduce_mean(x[:, 16:], axis=(1, 2, 3)))(inputs)
    logits = keras.layers.Lambda(lambda t: tf.stack([-t[0], t[0], -t[1], t[1]], axis=1))([top, bottom])
    return Judge(keras.Model(inputs, logits), HALVES, {"top": 1.0, "bottom": 1.0})


def test_known_answers_of_a_judge_that_reads_the_pixels():
    images, codes = halves_images(400)
    judge = exact_judge()

    def asked_mix(xa, xb, attrs_a, attrs_b, take):  # the mix a perfect mixer would make
        out = xb.copy()
        out[take[:, 0] > 0, :16] = xa[take[:, 0] > 0, :16]
        out[take[:, 1] > 0, 16:] = xa[take[:, 1] > 0, 16:]
        return out

    def copy_a(xa, xb, attrs_a, attrs_b, take):
        return xa

    def inverted(xa, xb, attrs_a, attrs_b, take):
        return asked_mix(xa, xb, attrs_a, attrs_b, 1.0 - take)

    perfect = judge_mixes(judge, asked_mix, images, codes, pairs=2000)
    assert perfect["carried"] == perfect["carried_top"] == perfect["all_right"] == 1.0
    # Copying a carries a group exactly when it was asked of a: half the differing groups.
    copied = judge_mixes(judge, copy_a, images, codes, pairs=2000)
    assert 0.45 < copied["carried"] < 0.55 and 0.45 < copied["carried_bottom"] < 0.55
    assert judge_mixes(judge, inverted, images, codes, pairs=2000)["carried"] == 0.0


def test_a_judge_trained_on_real_images_reads_them(tmp_path, monkeypatch):
    from amr_keras import judge as judge_module
    from amr_keras.data import load_dataset

    splits = load_dataset("mnist_sample", batch_size=64, train_size=2000)
    judge = load_or_train_judge("mnist_sample", splits, folder=str(tmp_path), epochs=2, verbose=False)
    assert judge.groups.describe() == "class (10)"
    assert judge.test_accuracy["class"] > 0.7  # chance 0.1; 2,000 images, 2 epochs, scored on the 10,000 test digits
    # Kept: the next call loads it instead of training.
    monkeypatch.setattr(judge_module, "train_judge", lambda *a, **k: pytest.fail("trained again"))
    again = load_or_train_judge("mnist_sample", splits, folder=str(tmp_path), epochs=2)
    assert again.test_accuracy == judge.test_accuracy
    x = np.asarray(splits.arrays["test"][0][:64], np.float32) / 127.5 - 1.0
    x = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0)
    np.testing.assert_array_equal(again.codes(x), judge.codes(x))


def test_the_mixes_compared_are_the_model_s():
    from amr_keras.model import AMR
    from amr_keras.networks import build_networks

    model = AMR(*build_networks(depth=4), cls_weight=1.0, attribute_groups=HALVES)
    images, codes = halves_images(8)
    x = images.astype(np.float32) / 127.5 - 1.0
    take = np.ones((8, 2), np.float32)
    fns = mix_functions(model)
    assert sorted(fns) == ["bernoulli", "copy_a", "mixer"]
    np.testing.assert_allclose(np.asarray(fns["copy_a"](x, x[::-1], codes, codes[::-1], take)),
                               np.asarray(model(x)), atol=1e-5)
    for name in ("bernoulli", "mixer"):
        assert np.asarray(fns[name](x, x[::-1], codes, codes[::-1], take)).shape == (8, 32, 32, 1)
    assert "mixer" not in mix_functions(AMR(*build_networks(depth=4)))

"""Mixers: convexity, whole feature maps, k-way weights, none, validation, seeding."""

import keras
import numpy as np
import pytest

from amr_keras.mixers import mix_codes, mix_pair


def _codes(batch=16, channels=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, 4, 4, channels)).astype("float32")


def test_mixup_is_convex_combination_of_two_codes():
    codes = _codes()
    mixed, sources, weights = mix_codes(codes, "mixup", 2, keras.random.SeedGenerator(1), return_weights=True)
    w, src = np.asarray(weights), np.asarray(sources)
    assert w.shape == (2, 16, 1, 1, 1)
    assert np.all(w >= 0) and np.all(w <= 1)
    np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(mixed), w[0] * src[0] + w[1] * src[1], atol=1e-6)
    assert np.all(np.asarray(mixed) <= src.max(0) + 1e-6) and np.all(np.asarray(mixed) >= src.min(0) - 1e-6)
    # The first source is the batch itself, the second a permutation of it.
    np.testing.assert_array_equal(src[0], codes)
    assert sorted(map(tuple, src[1].reshape(16, -1))) == sorted(map(tuple, codes.reshape(16, -1)))
    # Weights differ between examples (one draw per example).
    assert len(np.unique(w[0].ravel())) > 1


def test_bernoulli_takes_each_feature_map_whole_from_one_input():
    codes = _codes(batch=32, channels=4)
    mixed, sources, weights = mix_codes(codes, "bernoulli", 2, keras.random.SeedGenerator(3), return_weights=True)
    mixed, src, w = np.asarray(mixed), np.asarray(sources), np.asarray(weights)
    assert w.shape == (2, 32, 1, 1, 4)
    assert set(np.unique(w)) <= {0.0, 1.0}
    np.testing.assert_array_equal(w.sum(0), 1.0)
    for i in range(32):
        for c in range(4):
            from_a = np.array_equal(mixed[i, :, :, c], src[0, i, :, :, c])
            from_b = np.array_equal(mixed[i, :, :, c], src[1, i, :, :, c])
            assert from_a or from_b


@pytest.mark.parametrize("mixer", ["mixup", "bernoulli"])
def test_k_way_weights_sum_to_one(mixer):
    codes = _codes(batch=24, channels=2)
    mixed, sources, weights = mix_codes(codes, mixer, 3, keras.random.SeedGenerator(5), return_weights=True)
    w = np.asarray(weights)
    assert w.shape[0] == 3 and np.asarray(sources).shape[0] == 3
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(mixed), (w * np.asarray(sources)).sum(0), atol=1e-5)
    if mixer == "bernoulli":
        assert set(np.unique(w)) <= {0.0, 1.0}
    else:
        # Dirichlet weights: every code contributes somewhere.
        assert np.all(w.reshape(3, -1).max(1) > 0.3)


def test_none_returns_no_mixes():
    assert mix_codes(_codes(), "none", 2, keras.random.SeedGenerator(0)) is None


def test_same_seed_same_mixes_and_different_seed_differs():
    a = mix_codes(_codes(), "mixup", 2, keras.random.SeedGenerator(7))
    b = mix_codes(_codes(), "mixup", 2, keras.random.SeedGenerator(7))
    c = mix_codes(_codes(), "mixup", 2, keras.random.SeedGenerator(8))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))


def test_acai_mixes_pairs_with_one_uniform_weight_per_example():
    codes = _codes()
    mixed, sources, weights = mix_codes(codes, "acai", 2, keras.random.SeedGenerator(1), return_weights=True)
    w, src = np.asarray(weights), np.asarray(sources)
    assert w.shape == (2, 16, 1, 1, 1) and np.all((w >= 0) & (w <= 1)) and len(np.unique(w[0])) == 16
    np.testing.assert_allclose(np.asarray(mixed), w[0] * src[0] + w[1] * src[1], atol=1e-6)
    # The same draws as mixup with the same seed.
    same = mix_codes(codes, "mixup", 2, keras.random.SeedGenerator(1))
    np.testing.assert_array_equal(np.asarray(mixed), np.asarray(same))


def test_bad_mixer_and_k_are_rejected_with_the_accepted_values():
    with pytest.raises(ValueError, match="mixup, bernoulli, acai, none"):
        mix_codes(_codes(), "cutmix", 2, keras.random.SeedGenerator(0))
    with pytest.raises(ValueError, match=">= 2"):
        mix_codes(_codes(), "mixup", 1, keras.random.SeedGenerator(0))
    with pytest.raises(ValueError, match="'acai' mixes pairs of codes .*: k must be 2, got 3"):
        mix_codes(_codes(), "acai", 3, keras.random.SeedGenerator(0))


def test_mix_pair_weight_one_and_zero_select_inputs():
    a, b = _codes(4, seed=1), _codes(4, seed=2)
    np.testing.assert_allclose(np.asarray(mix_pair(a, b, np.ones(4))), a)
    np.testing.assert_allclose(np.asarray(mix_pair(a, b, np.zeros(4))), b)
    mask = np.array([[1, 0]] * 4, "float32")
    out = np.asarray(mix_pair(a, b, mask))
    np.testing.assert_allclose(out[..., 0], a[..., 0])
    np.testing.assert_allclose(out[..., 1], b[..., 1])

"""The FactorVAE metric on "encoders" whose answer is known (numpy functions of the factors themselves)."""

import numpy as np
import pytest

from amr_keras.disentanglement import factorvae_official_score, factorvae_score
from amr_keras.dsprites import FACTOR_SIZES, FactorSource

SMALL = dict(votes=250, eval_votes=250, samples=60, variance_samples=2000, batch_size=2000)


class FactorsAsImages(FactorSource):
    """A source whose "images" are the factor classes themselves, so that an encoder can read them."""

    def images(self, classes):
        return np.asarray(classes, np.float64)


def _noise(rng, n, dims):
    return rng.normal(size=(n, dims))


def test_factors_themselves_plus_noise_dimensions_score_one():
    rng = np.random.default_rng(0)
    result = factorvae_score(lambda f: np.concatenate([f, _noise(rng, len(f), 3)], axis=1), FactorsAsImages(),
                             **SMALL)
    assert result["factorvae_score"] == 1.0 and result["factorvae_train_score"] == 1.0
    assert result["factorvae_assignment"][:5] == ["shape", "scale", "orientation", "x", "y"]
    assert result["factorvae_active_dims"] == 8
    assert result["factorvae_per_factor"] == dict.fromkeys(("shape", "scale", "orientation", "x", "y"), 1.0)


def test_a_code_that_ignores_the_factors_scores_near_chance():
    rng = np.random.default_rng(1)
    score = factorvae_score(lambda f: _noise(rng, len(f), 10), FactorsAsImages(), **SMALL)["factorvae_score"]
    assert abs(score - 1 / len(FACTOR_SIZES)) < 0.08


def test_a_random_projection_of_noise_and_factors_scores_near_chance():
    # A random rotation of the factors, drowned in noise a hundred times larger: no code value follows a factor.
    rng = np.random.default_rng(2)
    projection = rng.normal(size=(5, 10))
    scales = 1 / np.asarray(FACTOR_SIZES, np.float64)

    def encode(f):
        return (f * scales) @ projection + 100 * _noise(rng, len(f), 10)

    score = factorvae_score(encode, FactorsAsImages(), **SMALL)["factorvae_score"]
    assert abs(score - 0.2) < 0.08


def test_two_factors_mixed_into_one_value_score_in_between():
    rng = np.random.default_rng(3)

    def encode(f):
        # x and y share one code value: whichever of them the classifier gives it to, the other is lost.
        return np.concatenate([f[:, :3], (f[:, 3] + f[:, 4])[:, None], _noise(rng, len(f), 2)], axis=1)

    result = factorvae_score(encode, FactorsAsImages(), **SMALL)
    assert result["factorvae_score"] == pytest.approx(0.8, abs=0.03)
    assert result["factorvae_assignment"][3] in ("x", "y")
    # The factor the shared value went to is always right, the other never (its votes land on that value).
    per_factor = result["factorvae_per_factor"]
    assert [per_factor[name] for name in ("shape", "scale", "orientation")] == [1.0, 1.0, 1.0]
    assert sorted((per_factor["x"], per_factor["y"])) == [0.0, 1.0]


def test_collapsed_values_are_dropped_and_a_dead_code_refused():
    rng = np.random.default_rng(4)

    def encode(f):
        return np.concatenate([f, 1e-9 * _noise(rng, len(f), 2), np.zeros((len(f), 1))], axis=1)

    result = factorvae_score(encode, FactorsAsImages(), **SMALL)
    assert result["factorvae_active_dims"] == 5 and result["factorvae_code_dims"] == 8
    assert result["factorvae_score"] == 1.0
    # Nothing left to vote: 0, as disentanglement_lib scores it.
    dead = factorvae_score(lambda f: np.zeros((len(f), 4)), FactorsAsImages(), **SMALL)
    assert (dead["factorvae_score"], dead["factorvae_active_dims"], dead["factorvae_code_dims"]) == (0.0, 0, 4)
    with pytest.raises(ValueError, match="samples must be"):
        factorvae_score(encode, FactorsAsImages(), samples=1)


def test_the_same_seed_gives_the_same_score():
    def encode(f):
        return f + np.random.default_rng(int(f.sum()) % 1000).normal(size=f.shape) * 3

    a = factorvae_score(encode, FactorsAsImages(), seed=5, **SMALL)
    b = factorvae_score(encode, FactorsAsImages(), seed=5, **SMALL)
    assert a == b and 0.2 < a["factorvae_score"] <= 1.0


def test_prune_threshold_is_absolute_by_default_and_relative_on_request():
    # Values of standard deviation 0.01 and 0.2 beside the factors (class indices: standard deviations 0.8 to 9).
    rng = np.random.default_rng(6)

    def encode(f):
        return np.concatenate([f, 0.01 * _noise(rng, len(f), 1), 0.2 * _noise(rng, len(f), 1)], axis=1)

    absolute = factorvae_score(encode, FactorsAsImages(), **SMALL)
    assert absolute["factorvae_active_dims"] == 6 and absolute["factorvae_prune_relative"] is False
    # Relative to the largest (orientation's, about 11.5): 0.05 of it (0.58) drops the 0.2 value too.
    relative = factorvae_score(encode, FactorsAsImages(), prune_relative=True, **SMALL)
    assert relative["factorvae_active_dims"] == 5
    assert factorvae_score(encode, FactorsAsImages(), prune_threshold=0.0, **SMALL)["factorvae_active_dims"] == 7


def _entangled(rng):
    """One code value that moves with all five factors (each scaled to the same spread), and two noise values."""
    scales = 1 / np.asarray(FACTOR_SIZES, np.float64)
    return lambda f: np.concatenate([(f * scales).sum(axis=1, keepdims=True), _noise(rng, len(f), 2)], axis=1)


def test_official_function_known_answers():
    """The official dsprite_disentanglement_fv never counts its last factor: a perfect code scores 0.8, and so,
    nearly, does a code whose one informative value mixes every factor (0.2 by the FactorVAE score)."""
    rng = np.random.default_rng(7)
    perfect = factorvae_official_score(lambda f: np.concatenate([f, _noise(rng, len(f), 3)], axis=1),
                                       FactorsAsImages(), votes=250, samples=60, batch_size=2000)
    assert perfect["factorvae_official_score"] == pytest.approx(0.8)
    assert perfect["factorvae_official_per_factor"] == dict.fromkeys(("shape", "scale", "orientation", "x", "y"), 1.0)
    assert perfect["factorvae_official_votes"] == 250

    encode = _entangled(np.random.default_rng(8))
    official = factorvae_official_score(encode, FactorsAsImages(), votes=250, samples=400, batch_size=2000)
    assert official["factorvae_official_score"] == pytest.approx(0.8, abs=0.03)
    ours = factorvae_score(encode, FactorsAsImages(), votes=250, eval_votes=250, samples=400, variance_samples=2000,
                           batch_size=2000)
    assert ours["factorvae_score"] == pytest.approx(0.2, abs=0.05)


def test_official_score_is_taken_on_the_training_votes_beside_the_factorvae_score():
    encode = _entangled(np.random.default_rng(9))
    both = factorvae_score(encode, FactorsAsImages(), official=True, **{**SMALL, "samples": 400})
    assert both["factorvae_official_score"] == pytest.approx(0.8, abs=0.03)
    assert both["factorvae_score"] == pytest.approx(0.2, abs=0.05)
    assert set(both["factorvae_official_per_factor"]) == {"shape", "scale", "orientation", "x", "y"}
    assert both["factorvae_official_votes"] == SMALL["votes"]

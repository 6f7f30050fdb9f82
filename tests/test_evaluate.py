"""Post-hoc evaluation of frozen codes: linear probe, k-NN, encoding and loading."""

import threading
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from threadpoolctl import threadpool_info
from conftest import class_images, model_input, sklearn_fits

from amr_keras import evaluate
from amr_keras.evaluate import (
    RESULT_KEYS,
    encode_arrays,
    evaluate_codes,
    knn_accuracy,
    l2_to_C,
    linear_evaluation,
)
from amr_keras.networks import build_encoder, build_networks


def blobs(n, num_classes=10, dim=32, spread=0.3, seed=0, random_labels=False):
    """Gaussian blobs around random unit centres (separable unless ``random_labels``)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, num_classes, n)
    x = centres[y] + spread / np.sqrt(dim) * rng.normal(size=(n, dim))
    if random_labels:
        y = rng.integers(0, num_classes, n)
    return x.astype(np.float32), y


def row_means(x):
    # Encoder stand-in: the 32 row means of the padded image separate the classes linearly.
    return tf.reduce_mean(x, axis=(2, 3))


# --------------------------------------------------------------------------- linear evaluation
def test_linear_evaluation_separable_codes_reach_full_accuracy():
    xt, yt = blobs(1600, seed=1)
    xv, yv, xs, ys = xt[1000:1300], yt[1000:1300], xt[1300:], yt[1300:]
    res = linear_evaluation(xt[:1000], yt[:1000], xv, yv, xs, ys)
    assert res["val_accuracy"] >= 0.98
    assert res["test_accuracy"] >= 0.98
    assert res["l2"] in res["per_l2"]
    assert sorted(res["per_l2"]) == [0.0, 1e-5, 1e-4, 1e-3, 1e-2]
    assert all(entry["converged"] for l2, entry in res["per_l2"].items() if l2 > 0)
    assert res["per_l2"][1e-3]["C"] == pytest.approx(1.0 / (2 * 1e-3 * 1000)) and res["per_l2"][0.0]["C"] == np.inf
    # The returned classifier is the chosen one, fitted on raw (unstandardised) codes.
    assert res["classifier"][-1].C == res["C"] == l2_to_C(res["l2"], 1000)
    assert np.mean(res["classifier"].predict(xs) == ys) == res["test_accuracy"]


def test_l2_to_C_gives_the_mean_loss_objective():
    # At the optimum of mean(cross-entropy) + l2 * ||W||^2 on standardised codes, the gradient
    # (1/n) X^T (P - Y) + 2 * l2 * W vanishes: the fitted sklearn weights must satisfy it for this l2.
    x, y = blobs(600, spread=2.0, seed=3)
    l2 = 1e-2
    res = linear_evaluation(x[:400], y[:400], x[400:], y[400:], l2_grid=(l2,))
    scaler, logistic = res["classifier"]
    xs = scaler.transform(x[:400])
    w = logistic.coef_.T
    probs = logistic.predict_proba(xs)
    grad = xs.T @ (probs - np.eye(10)[y[:400]]) / 400 + 2 * l2 * w
    assert np.abs(grad).max() < 1e-4
    assert np.abs(w).max() > 0.1  # not trivially zero weights
    # A ten times weaker penalty would leave a clear gradient: the check can tell strengths apart.
    assert np.abs(grad - 2 * 0.9 * l2 * w).max() > 1e-3


def test_linear_evaluation_random_labels_stay_near_chance():
    x, y = blobs(5000, random_labels=True, seed=4)
    res = linear_evaluation(x[:3000], y[:3000], x[3000:4000], y[3000:4000], x[4000:], y[4000:])
    # Chance is 0.10; the standard error over 1000 codes is 0.01.
    assert res["val_accuracy"] <= 0.15
    assert res["test_accuracy"] <= 0.15
    # With 330 parameters and 3000 codes the unregularised fit memorises some noise.
    assert res["per_l2"][0.0]["train_accuracy"] > res["per_l2"][0.0]["val_accuracy"]


def test_linear_evaluation_is_deterministic_and_ignores_test_when_choosing():
    x, y = blobs(1500, spread=2.0, seed=5)  # overlapping blobs: a real choice of L2
    a = linear_evaluation(x[:800], y[:800], x[800:1100], y[800:1100], x[1100:], y[1100:], seed=0)
    b = linear_evaluation(x[:800], y[:800], x[800:1100], y[800:1100], x[1100:], y[1100:], seed=0)
    c = linear_evaluation(x[:800], y[:800], x[800:1100], y[800:1100], seed=0)
    for res in (a, b):
        res["coef"] = res.pop("classifier")[-1].coef_
    np.testing.assert_array_equal(a.pop("coef"), b.pop("coef"))
    assert a == b
    assert 0.2 < a["val_accuracy"] < 1.0
    assert (c["l2"], c["val_accuracy"], c["test_accuracy"]) == (a["l2"], a["val_accuracy"], None)
    # Chosen on validation: the best validation accuracy of the grid, whatever the test codes say.
    assert a["val_accuracy"] == max(entry["val_accuracy"] for entry in a["per_l2"].values())
    assert len({entry["val_accuracy"] for entry in a["per_l2"].values()}) > 1


def test_linear_evaluation_in_parallel_threads_matches_one_thread(monkeypatch):
    x, y = blobs(1500, spread=2.0, seed=5)
    splits = (x[:800], y[:800], x[800:1100], y[800:1100], x[1100:], y[1100:])
    serial = linear_evaluation(*splits, n_jobs=1)
    # Every fit, in whichever worker thread, runs with one BLAS thread: the limit is set once around the
    # pool, not per fit (process-wide limits set and restored per thread would race).
    blas_threads, threads, fit = [], set(), evaluate._fit_logistic
    together = threading.Barrier(2, timeout=30)  # the first two fits run at once, or the test fails

    def recording_fit(*args):
        blas_threads.extend(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
        threads.add(threading.get_ident())
        if args[2] in (0.0, 1e-5):
            together.wait()
        return fit(*args)

    monkeypatch.setattr(evaluate, "_fit_logistic", recording_fit)
    parallel = linear_evaluation(*splits, n_jobs=3)
    assert len(threads) > 1 and blas_threads and set(blas_threads) == {1}
    np.testing.assert_array_equal(serial.pop("classifier")[-1].coef_, parallel.pop("classifier")[-1].coef_)
    assert parallel == serial
    assert list(parallel["per_l2"]) == sorted(parallel["per_l2"])


def test_linear_evaluation_rejects_bad_inputs():
    x, y = blobs(100)
    with pytest.raises(ValueError, match="100 codes but 99 labels"):
        linear_evaluation(x, y[:99], x, y)
    with pytest.raises(ValueError, match="both test_codes and test_labels"):
        linear_evaluation(x, y, x, y, test_codes=x)
    with pytest.raises(ValueError, match="l2_grid"):
        linear_evaluation(x, y, x, y, l2_grid=(-1.0,))
    with pytest.raises(ValueError, match="num_classes=3"):
        linear_evaluation(x, y, x, y, num_classes=3)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n_jobs"):
            linear_evaluation(x, y, x, y, n_jobs=bad)


# --------------------------------------------------------------------------- k-NN
def test_knn_separable_and_random_labels():
    x, y = blobs(3000, seed=6)
    assert knn_accuracy(x[:2000], y[:2000], x[2000:], y[2000:]) >= 0.98
    xr, yr = blobs(3000, seed=7, random_labels=True)
    assert knn_accuracy(xr[:2000], yr[:2000], xr[2000:], yr[2000:]) <= 0.15


def test_knn_matches_a_direct_vote_with_many_ties():
    # Three classes and an even k give many tied votes; count them directly.
    x, y = blobs(500, num_classes=3, dim=4, spread=3.0, seed=8)
    train, labels, queries, truth, k = x[:300], y[:300], x[300:], y[300:], 4
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    sims = unit(queries) @ unit(train).T
    top = np.argsort(-sims, axis=1)[:, :k]
    counts = np.stack([(labels[top] == c).sum(1) for c in range(3)], 1)
    summed = np.stack([np.where(labels[top] == c, np.take_along_axis(sims, top, 1), 0).sum(1) for c in range(3)], 1)
    tied = counts == counts.max(1, keepdims=True)
    expected = np.argmax(np.where(tied, summed, -np.inf), axis=1)
    assert tied.sum(1).max() > 1 and (tied.sum(1) > 1).sum() >= 20  # the rule matters here
    assert knn_accuracy(train, labels, queries, truth, k=k) == np.mean(expected == truth)


def test_knn_ties_go_to_larger_summed_similarity_then_lowest_label():
    train = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    labels = np.array([0, 1])
    # Each query has one neighbour of each label (k=2): a 1-1 tie in the vote.
    assert knn_accuracy(train, labels, [[0.6, 0.8]], [1], k=2) == 1.0
    assert knn_accuracy(train, labels, [[0.8, 0.6]], [1], k=2) == 0.0
    assert knn_accuracy(train, labels, [[1.0, 1.0]], [0], k=2) == 1.0


def test_knn_rejects_k_larger_than_training_set():
    x, y = blobs(5)
    with pytest.raises(ValueError, match="k must be an integer between 1 and the 5"):
        knn_accuracy(x, y, x, y, k=10)


# --------------------------------------------------------------------------- encoding
def test_encode_arrays_flattens_codes_batch_by_batch():
    enc = build_encoder(depth=4)
    x = np.random.default_rng(0).integers(0, 256, (7, 28, 28, 1), dtype=np.uint8)
    codes = encode_arrays(lambda b: enc(b, training=False), x, batch_size=3)
    assert codes.shape == (7, 32) and codes.dtype == np.float32
    whole = encode_arrays(lambda b: enc(b, training=False), x, batch_size=512)
    np.testing.assert_allclose(codes, whole, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        encode_arrays(enc, x[0])


def test_evaluate_codes_separable_stand_in_encoder():
    x, y = class_images(700, seed=9)
    arrays = {"train": (x[:400], y[:400]), "val": (x[400:550], y[400:550]), "test": (x[550:], y[550:])}
    res = evaluate_codes(row_means, arrays)
    assert set(res) == set(RESULT_KEYS)
    for key in ("linear_eval_val_accuracy", "linear_eval_test_accuracy", "knn_val_accuracy", "knn_test_accuracy"):
        assert res[key] >= 0.98, key
    again, classifier = evaluate_codes(row_means, arrays, seed=0, return_classifier=True)
    assert again == res
    # Computed here: the stand-in's codes of a hand-made model input, scikit-learn fitted directly.
    codes = {name: model_input(x[part]).mean(axis=(2, 3)) for name, part in
             (("train", slice(0, 400)), ("val", slice(400, 550)), ("test", slice(550, None)))}
    fits = sklearn_fits(codes["train"], y[:400])
    val = {l2: clf.score(codes["val"], y[400:550]) for l2, clf in fits.items()}
    chosen = fits[res["linear_eval_l2"]]
    assert res["linear_eval_val_accuracy"] == val[res["linear_eval_l2"]] == max(val.values())
    assert res["linear_eval_test_accuracy"] == chosen.score(codes["test"], y[550:])
    assert np.mean(classifier.predict(codes["test"]) == y[550:]) == res["linear_eval_test_accuracy"]
    assert res["linear_eval_C"] == (None if res["linear_eval_l2"] == 0 else 1 / (2 * res["linear_eval_l2"] * 400))
    # The chosen strength's fit: its lbfgs iterations and whether it stopped before the limit (3000).
    iterations = int(chosen[-1].n_iter_[0])
    assert res["linear_eval_iterations"] == iterations >= 1
    assert res["linear_eval_converged"] is (iterations < 3000)


def test_evaluate_codes_leaves_encoder_weights_unchanged():
    enc = build_encoder(depth=4)
    before = [w.copy() for w in enc.get_weights()]
    x, y = class_images(60, seed=10)
    arrays = {"train": (x[:40], y[:40]), "val": (x[40:], y[40:])}
    res = evaluate_codes(lambda b: enc(b, training=False), arrays, k=3)
    after = enc.get_weights()
    assert len(before) == len(after)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(b, a)
    assert res["linear_eval_test_accuracy"] is None and res["knn_test_accuracy"] is None
    assert 0.0 <= res["linear_eval_val_accuracy"] <= 1.0
    assert res["linear_eval_l2"] in (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
    assert (res["linear_eval_C"] is None) == (res["linear_eval_l2"] == 0.0)


def test_evaluate_codes_needs_train_and_val():
    with pytest.raises(ValueError, match="lacks the val split"):
        evaluate_codes(row_means, {"train": class_images(10)})


# --------------------------------------------------------------------------- saved encoders
@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A run folder with best.keras and an export/ SavedModel whose encode takes [0, 1] 28x28x1 images."""
    from amr_keras.model import AMR

    enc, dec, disc = build_networks(depth=4)
    model = AMR(enc, dec, disc)
    run = tmp_path_factory.mktemp("run")
    model.save(run / "best.keras")

    def encode01(images01):
        x = tf.pad(images01 * 2.0 - 1.0, [[0, 0], [2, 2], [2, 2], [0, 0]], constant_values=-1.0)
        return model.encode(x)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("encode", encode01, input_signature=[tf.TensorSpec((None, 28, 28, 1), tf.float32)])
    archive.write_out(str(run / "export"), verbose=False)
    return run


def test_keras_file_and_saved_model_give_the_same_codes(saved_run):
    x, _ = class_images(5, seed=11)
    codes = []
    for path in (saved_run, saved_run / "best.keras", saved_run / "export"):
        encode_fn, preprocess_fn, _ = evaluate.load_encoder(str(path))
        codes.append(encode_arrays(encode_fn, x, preprocess_fn=preprocess_fn))
    assert codes[0].shape == (5, 32)
    np.testing.assert_allclose(codes[0], codes[1], atol=1e-6)
    np.testing.assert_allclose(codes[0], codes[2], atol=1e-4)


def test_evaluate_saved_loads_the_dataset_arrays(saved_run, monkeypatch):
    x, y = class_images(120, seed=12)
    calls = []

    def fake_load_dataset(name, data_dir=None, batch_size=64, train_size=None):
        calls.append((name, data_dir, train_size))
        return types.SimpleNamespace(arrays={"train": (x[:80], y[:80]), "val": (x[80:], y[80:])})

    monkeypatch.setattr(evaluate, "load_dataset", fake_load_dataset)
    res = evaluate.evaluate_saved(str(saved_run / "export"), "mnist", data_dir="/raw")
    assert calls == [("mnist", "/raw", None)]
    evaluate.evaluate_saved(str(saved_run / "export"), "mnist", data_dir="/raw", train_size=40)
    assert calls[-1] == ("mnist", "/raw", 40)  # the subset a --train-size run was trained on
    assert set(res) == set(RESULT_KEYS)
    assert res["linear_eval_test_accuracy"] is None
    assert 0.0 <= res["knn_val_accuracy"] <= 1.0


def test_load_encoder_explains_what_it_looks_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="best.keras"):
        evaluate.load_encoder(str(tmp_path))

"""SavedModel export: endpoints reloaded in a fresh process match the eager model; errors speak to the user."""

import json
import pathlib
import runpy
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import tensorflow as tf

from amr_keras import evaluate
from amr_keras.export import (
    ENDPOINTS,
    LINEAR_ENDPOINT,
    Endpoints,
    export_run,
    from_model_output,
    load_export,
    load_metadata,
    to_model_input,
)
from amr_keras.model import AMR
from amr_keras.networks import build_networks

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"
BATCHES = (1, 5)
ATOL = 1e-4

# Runs in a fresh interpreter that imports only numpy and tensorflow (which itself loads parts of keras),
# never amr_keras: the export must not need the package.
CLIENT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf

    model = tf.saved_model.load(sys.argv[1])
    inp = np.load(sys.argv[2])
    out = {}
    for n in BATCHES:
        a, b = inp[f"a{n}"], inp[f"b{n}"]
        out[f"encode{n}"] = model.encode(a).numpy()
        out[f"decode{n}"] = model.decode(inp[f"codes{n}"]).numpy()
        out[f"reconstruct{n}"] = model.reconstruct(a).numpy()
        out[f"mix{n}"] = model.mix(a, b, inp[f"weight{n}"]).numpy()
        out[f"mix_alpha{n}"] = model.mix_alpha(a, b, inp[f"alpha{n}"]).numpy()
        out[f"classify{n}"] = model.classify(a).numpy()
        out[f"classify_linear{n}"] = model.classify_linear(a).numpy()
    out["standalone"] = np.array(not any(m.split(".")[0] == "amr_keras" for m in sys.modules))
    np.savez(sys.argv[3], **out)
    """
).replace("BATCHES", repr(BATCHES))


def _inputs(n, seed, shape=(28, 28, 1), channels=2):
    rng = np.random.default_rng(seed)
    return {
        f"a{n}": rng.random((n, *shape), np.float32),
        f"b{n}": rng.random((n, *shape), np.float32),
        f"codes{n}": rng.normal(size=(n, 4, 4, channels)).astype(np.float32),
        f"weight{n}": (rng.random((n, channels)) < 0.5).astype(np.float32),
        f"alpha{n}": rng.random((n,), np.float32),
    }


def _by_hand(model, inputs, n):
    """What each endpoint should return for ``_inputs(n, ...)``, from the model's networks and NumPy alone
    (independent of ``Endpoints``, ``to_model_input`` and ``from_model_output``): pad 2 px of black, scale to
    [-1, 1], run the networks, map back to [0, 1] and crop; mixes weigh ``f(a)`` by the weight, ``f(b)`` by its
    complement."""
    def model_input(images):
        return np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0))) * 2.0 - 1.0

    def decode(codes):
        raw = np.asarray(model.decoder(codes.astype(np.float32), training=False))
        return np.clip((raw + 1.0) / 2.0, 0.0, 1.0)[:, 2:30, 2:30]

    za, zb = (np.asarray(model.encoder(model_input(inputs[f"{v}{n}"]), training=False)) for v in "ab")
    weight, alpha = inputs[f"weight{n}"][:, None, None, :], inputs[f"alpha{n}"][:, None, None, None]
    return {
        "encode": za,
        "decode": decode(inputs[f"codes{n}"]),
        "reconstruct": decode(za),
        "mix": decode(weight * za + (1 - weight) * zb),
        "mix_alpha": decode(alpha * za + (1 - alpha) * zb),
        "classify": np.asarray(model.classify(model_input(inputs[f"a{n}"]))),
    }


@pytest.mark.slow
def test_fresh_process_matches_eager_model(tiny_linear_export, tmp_path):
    inputs = {}
    for i, n in enumerate(BATCHES):
        inputs.update(_inputs(n, seed=i))
    np.savez(tmp_path / "in.npz", **inputs)
    (tmp_path / "client.py").write_text(CLIENT)
    proc = subprocess.run(
        [sys.executable, "client.py", str(tiny_linear_export.path), "in.npz", "out.npz"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    assert out["standalone"], "loading the export imported amr_keras"

    for n in BATCHES:
        expected = _by_hand(tiny_linear_export.model, inputs, n)
        # scikit-learn's own predict_proba on the same codes: the stored head is that classifier.
        expected[LINEAR_ENDPOINT] = tiny_linear_export.classifier.predict_proba(expected["encode"].reshape(n, -1))
        for name in (*ENDPOINTS, LINEAR_ENDPOINT):
            got = out[f"{name}{n}"]
            assert got.dtype == np.float32, name
            np.testing.assert_allclose(got, np.asarray(expected[name]), atol=ATOL, err_msg=f"{name}, batch {n}")
        assert out[f"encode{n}"].shape == (n, 4, 4, 2)
        assert out[f"classify{n}"].shape == out[f"classify_linear{n}"].shape == (n, 10)
        np.testing.assert_allclose(out[f"classify_linear{n}"].sum(axis=1), np.ones(n), atol=1e-5)
        for name in ("decode", "reconstruct", "mix", "mix_alpha"):
            assert out[f"{name}{n}"].shape == (n, 28, 28, 1), name
            assert out[f"{name}{n}"].min() >= 0.0 and out[f"{name}{n}"].max() <= 1.0, name


def test_eager_endpoints_match_a_computation_by_hand(tiny_export):
    inputs = _inputs(2, seed=3)
    expected = _by_hand(tiny_export.model, inputs, 2)
    eager = Endpoints(tiny_export.model, (28, 28, 1))
    a, b = inputs["a2"], inputs["b2"]
    got = {"encode": eager.encode(a), "decode": eager.decode(inputs["codes2"]), "reconstruct": eager.reconstruct(a),
           "mix": eager.mix(a, b, inputs["weight2"]), "mix_alpha": eager.mix_alpha(a, b, inputs["alpha2"]),
           "classify": eager.classify(a)}
    for name in ENDPOINTS:
        np.testing.assert_allclose(np.asarray(got[name]), expected[name], atol=1e-5, err_msg=name)


def test_mix_with_weight_one_and_zero_reproduces_reconstructions(loaded_export):
    inp = _inputs(4, seed=7)
    a, b = inp["a4"], inp["b4"]
    rec_a, rec_b = loaded_export.reconstruct(a).numpy(), loaded_export.reconstruct(b).numpy()
    ones, zeros = np.ones((4, 2), np.float32), np.zeros((4, 2), np.float32)
    np.testing.assert_allclose(loaded_export.mix(a, b, ones).numpy(), rec_a, atol=1e-5)
    np.testing.assert_allclose(loaded_export.mix(a, b, zeros).numpy(), rec_b, atol=1e-5)
    np.testing.assert_allclose(loaded_export.mix_alpha(a, b, ones[:, 0]).numpy(), rec_a, atol=1e-5)
    np.testing.assert_allclose(loaded_export.mix_alpha(a, b, zeros[:, 0]).numpy(), rec_b, atol=1e-5)
    # A mixup weight repeated over the code channels is mix_alpha.
    alpha = np.array([0.1, 0.3, 0.5, 0.9], np.float32)
    repeated = np.repeat(alpha[:, None], 2, axis=1)
    np.testing.assert_allclose(
        loaded_export.mix(a, b, repeated).numpy(), loaded_export.mix_alpha(a, b, alpha).numpy(), atol=1e-5
    )
    # A half mix is neither endpoint.
    assert np.abs(loaded_export.mix_alpha(a, b, alpha).numpy() - rec_a).max() > 1e-3


def test_classify_rows_sum_to_one(loaded_export):
    probs = loaded_export.classify(_inputs(6, seed=1)["a6"]).numpy()
    assert probs.shape == (6, 10)
    assert probs.min() >= 0.0
    np.testing.assert_allclose(probs.sum(axis=1), np.ones(6), atol=1e-5)


@pytest.mark.parametrize(
    "images, received",
    [
        (np.zeros((1, 32, 32, 1), np.float32), "shape=(1, 32, 32, 1)"),
        (np.zeros((28, 28, 1), np.float32), "shape=(28, 28, 1)"),
        (tf.zeros((2, 28, 28, 1), tf.float64), "dtype=tf.float64"),
    ],
    ids=["wrong-size", "wrong-rank", "float64-tensor"],
)
def test_wrong_input_names_received_and_expected(loaded_export, images, received):
    with pytest.raises(TypeError) as err:
        loaded_export.encode(images)
    first_line = str(err.value).splitlines()[0]
    assert received in first_line
    assert "TensorSpec(shape=(None, 28, 28, 1), dtype=tf.float32, name='images')" in first_line


def test_wrong_weight_shape_names_weight(loaded_export):
    x = np.zeros((3, 28, 28, 1), np.float32)
    with pytest.raises(TypeError, match=r"TensorSpec\(shape=\(None, 2\), dtype=tf.float32, name='weight'\)"):
        loaded_export.mix(x, x, np.ones((3,), np.float32))


def test_uint8_range_images_are_refused(loaded_export):
    # A loaded endpoint converts a numpy uint8 array to float32 silently; the range check catches it.
    x = np.full((2, 28, 28, 1), 255, np.uint8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="divide uint8 images by 255"):
        loaded_export.reconstruct(x)


def test_metadata(tiny_export):
    meta = load_metadata(tiny_export.path)
    assert meta["dataset"] == "mnist_sample"
    assert meta["image_shape"] == [28, 28, 1]
    assert meta["code_shape"] == [4, 4, 2]
    assert meta["num_classes"] == 10
    assert meta["endpoints"] == list(ENDPOINTS)
    assert (meta["mixer"], meta["k"], meta["lamb"]) == ("bernoulli", 2, 5.0)
    assert meta["inputs"]["mix"][2] == {"name": "weight", "shape": [None, 2], "dtype": "float32"}
    assert meta["run_results"]["test_probe_accuracy"] == 0.1
    with open(tiny_export.path + "/metadata.json") as f:
        assert json.load(f) == meta
    # Exported without a post-hoc classifier: no classify_linear, and the metadata says why.
    assert meta["heads"]["classify"]["head"].startswith("online linear probe")
    assert meta["heads"]["classify"]["probe"] == meta["probe"] == "whiten"
    assert meta["heads"]["classify"]["test_accuracy"] == 0.1
    assert meta["heads"][LINEAR_ENDPOINT]["head"] is None and "--linear-head" in meta["heads"][LINEAR_ENDPOINT]["note"]
    assert LINEAR_ENDPOINT not in meta["inputs"]


def test_export_without_linear_head_loads_without_the_endpoint(loaded_export):
    assert not hasattr(loaded_export, LINEAR_ENDPOINT)
    assert LINEAR_ENDPOINT not in loaded_export.signatures
    assert loaded_export.classify(np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 10)


# Builds a second export, with a fitted head (seconds): run with -m slow. The default suite checks a linear
# head's export and metadata in test_image_sizes.py::test_fit_trains_a_64_pixel_folder_to_an_export_that_serves_at_64.
@pytest.mark.slow
def test_linear_export_metadata_names_both_heads(tiny_linear_export):
    meta = load_metadata(tiny_linear_export.path)
    assert meta["endpoints"] == [*ENDPOINTS, LINEAR_ENDPOINT]
    assert meta["inputs"][LINEAR_ENDPOINT] == meta["inputs"]["encode"]
    head, scores = meta["heads"][LINEAR_ENDPOINT], tiny_linear_export.scores
    assert head["head"] == "post-hoc logistic regression on frozen codes"
    assert (head["val_accuracy"], head["test_accuracy"]) == (scores["linear_eval_val_accuracy"],
                                                             scores["linear_eval_test_accuracy"])
    # The accuracies it reports are those of the head it serves, counted here on the splits' images.
    served = load_export(tiny_linear_export.path)
    for split in ("val", "test"):
        x, y = tiny_linear_export.arrays[split]
        predicted = np.argmax(served.classify_linear((x / 255.0).astype(np.float32)).numpy(), axis=1)
        assert head[f"{split}_accuracy"] == np.mean(predicted == y), split
    assert (head["l2"], head["C"]) == (scores["linear_eval_l2"], scores["linear_eval_C"])
    assert meta["heads"]["classify"]["test_accuracy"] == 0.1  # from the run's results.json
    assert meta["linear_eval_dataset"] == "mnist_sample"


@pytest.mark.slow
def test_add_linear_head_keeps_every_endpoint_and_adds_classify_linear(tiny_export, tiny_linear_export, loaded_export,
                                                                       tmp_path, monkeypatch):
    arrays = tiny_linear_export.arrays
    monkeypatch.setattr(evaluate, "load_dataset", lambda name, data_dir=None, batch_size=64, train_size=None: types.SimpleNamespace(
        arrays=arrays))
    out = tmp_path / "with_head"
    main = runpy.run_path(str(SCRIPTS / "export.py"), run_name="export_script")["main"]
    main([tiny_export.path, "--linear-head", "--out", str(out)])
    new = load_export(out)
    inp = _inputs(3, seed=5)
    a, b = inp["a3"], inp["b3"]
    for name, args in [("encode", (a,)), ("decode", (inp["codes3"],)), ("reconstruct", (a,)), ("classify", (a,)),
                       ("mix", (a, b, inp["weight3"])), ("mix_alpha", (a, b, inp["alpha3"]))]:
        np.testing.assert_array_equal(getattr(new, name)(*args).numpy(), getattr(loaded_export, name)(*args).numpy(),
                                      err_msg=name)
    assert sorted(new.signatures) == sorted([*ENDPOINTS, LINEAR_ENDPOINT, "serving_default"])
    # The stored float32 parameters, applied in numpy to the export's own codes.
    head = new.linear_head
    codes = new.encode(a).numpy().reshape(3, -1)
    logits = (codes - head.mean.numpy()) / head.scale.numpy() @ head.kernel.numpy() + head.bias.numpy()
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    probs = new.classify_linear(a).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), np.ones(3), atol=1e-5)
    # ... which is the classifier fitted on these codes (the same fit as the training-time export's).
    np.testing.assert_allclose(probs, tiny_linear_export.classifier.predict_proba(codes), atol=1e-4)
    meta = load_metadata(out)
    assert meta["endpoints"] == [*ENDPOINTS, LINEAR_ENDPOINT]
    assert meta["heads"][LINEAR_ENDPOINT]["val_accuracy"] == tiny_linear_export.scores["linear_eval_val_accuracy"]
    with pytest.raises(TypeError, match=r"TensorSpec\(shape=\(None, 28, 28, 1\), dtype=tf.float32, name='images'\)"):
        new.classify_linear(np.zeros((1, 32, 32, 1), np.float32))


def test_export_script_needs_linear_head_for_a_saved_model(tiny_export, capsys):
    main = runpy.run_path(str(SCRIPTS / "export.py"), run_name="export_script")["main"]
    with pytest.raises(SystemExit) as exit_info:
        main([tiny_export.path])
    assert exit_info.value.code == 2
    assert "already a SavedModel export: pass --linear-head" in capsys.readouterr().err


def test_load_export_of_a_folder_without_savedmodel(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no saved_model.pb"):
        load_export(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_metadata(tmp_path / "nowhere")


def test_export_run_needs_best_keras(tmp_path):
    (tmp_path / "results.json").write_text('{"dataset": "mnist"}')
    with pytest.raises(FileNotFoundError, match="best.keras is missing"):
        export_run(tmp_path)


def test_export_script_reports_missing_run(tmp_path):
    main = runpy.run_path(str(SCRIPTS / "export.py"), run_name="export_script")["main"]
    with pytest.raises(FileNotFoundError, match="best.keras is missing"):
        main([str(tmp_path)])


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (20, 20, 1)])
def test_model_input_and_output_conversions(shape):
    # A smooth image, so that resizing there and back is close to the identity.
    ramp = np.linspace(0.0, 1.0, shape[0], dtype=np.float32)
    x = np.broadcast_to(np.add.outer(ramp, ramp)[None, :, :, None] / 2.0, (2, *shape)).copy()
    model_in = to_model_input(x).numpy()
    assert model_in.shape == (2, 32, 32, shape[-1])
    assert model_in.min() >= -1.0 and model_in.max() <= 1.0
    back = from_model_output(model_in, shape).numpy()
    assert back.shape == x.shape
    # Pad + crop and the 32x32 identity invert exactly; a resize round trip only approximately.
    np.testing.assert_allclose(back, x, atol=1e-6 if shape[0] in (28, 32) else 0.05)


def test_source_shape_must_match_model_channels():
    model = AMR(*build_networks(depth=4), num_classes=10)
    with pytest.raises(ValueError, match="3 channel.*encoder takes 1"):
        Endpoints(model, (32, 32, 3))


@pytest.mark.parametrize("classes", [(0, 1, 2, 3, 4), (1, 3, 4), (2, 4)], ids=["all", "missing", "two"])
def test_linear_head_is_predict_proba_over_all_classes(classes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from amr_keras.export import LinearHead

    rng = np.random.default_rng(0)
    y = np.array(classes)[rng.integers(0, len(classes), 200)]
    codes = rng.normal(size=(200, 4, 4, 2)) + y[:, None, None, None] * 0.3
    flat = codes.reshape(200, -1)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=1.0)).fit(flat, y)
    expected = np.zeros((200, 5))
    expected[:, classifier[-1].classes_] = classifier.predict_proba(flat)
    probs = LinearHead.from_classifier(classifier, num_classes=5)(codes.astype(np.float32)).numpy()
    assert probs.shape == (200, 5) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"knows classes \[.*\], the model 0 to 1"):
        LinearHead.from_classifier(classifier, num_classes=2)

"""Exports (issue 20): each model kind to each format gives predict.py's probabilities when
loaded by plain Keras / TensorFlow / LiteRT (bc_keras never imported), int8 is scored against
float32 with its interval, and bad input gets its one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import bc_keras
from bc_keras import data, models
from bc_keras.errors import DataError, ModelFileError, RunError
from bc_keras.export import formats
from bc_keras.export.check import check_exports, check_markdown
from bc_keras.export.resize import pil_resize
from bc_keras.histology.stain import make_normalizer, read_rgb
from bc_keras.models.resnet import build_resnet18
from bc_keras.models.simclr import build_classifier
from bc_keras.models.transfer import build_transfer_model

# Small windows keep the graphs small: the test images are 48 x 32 px.
MAX_SIDE = 96
PIL_FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
               "lanczos": Image.LANCZOS, "box": Image.BOX}  # fmt: skip


def _spread(model, preprocess: str):
    """Rescales the sigmoid head so that the random model's probabilities spread over (0, 1)
    on images like the tests' (a random network's logits are nearly equal): parity then
    compares probabilities that differ."""
    import keras

    from bc_keras.data.pipeline import apply_preprocess
    from bc_keras.models.classifier import OUTPUT_NAME

    images = np.random.default_rng(0).random((16, 32, 32, 3)).astype("float32") * 255
    head = model.get_layer(OUTPUT_NAME)
    features = keras.Model(model.inputs, head.input)(apply_preprocess(images, preprocess))
    kernel, bias = head.get_weights()
    logits = np.asarray(features) @ kernel + bias
    scale = 1.0 / max(float(logits.std()), 1e-12)
    head.set_weights([kernel * scale, bias * scale - logits.mean() * scale])
    return model


def _save(path, model, **metadata):
    models.save_model(model, path, {"kind": "classifier", "image_size": 32, **metadata})
    return path


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    """A CNN and a SimCLR classifier as the training scripts store them (random weights)."""
    folder = tmp_path_factory.mktemp("classifiers")
    cnn = _spread(models.build_baseline_cnn(32, 8, 0.5, 0.99), "rescale")
    simclr = _spread(build_classifier(build_resnet18(32), 32), "rescale")
    return {
        "cnn": _save(folder / "cnn.h5", cnn, preprocess="rescale", interpolation="nearest",
                     threshold=0.4, tta=False),
        "simclr": _save(folder / "simclr.h5", simclr, preprocess="rescale",
                        interpolation="bilinear", threshold=0.5, tta=False),
    }  # fmt: skip


@pytest.fixture(scope="module")
def mobilenet_classifier(tmp_path_factory, mobilenet_weights):
    """A transfer classifier on the real ImageNet MobileNet 0.25 (a random MobileNet's
    features vanish at 32 px), with its own preprocessing and test-time augmentation."""
    model = build_transfer_model("mobilenet", 32, weights=mobilenet_weights, alpha=0.25,
                                 dense_units=8)  # fmt: skip
    path = tmp_path_factory.mktemp("transfer") / "transfer.h5"
    return _save(path, _spread(model, "mobilenet"), preprocess="mobilenet",
                 interpolation="nearest", threshold=0.5, tta=True)  # fmt: skip


@pytest.mark.parametrize("interpolation", list(PIL_FILTERS))
def test_the_graphs_resize_is_pils_for_every_size_and_order(interpolation):
    rng = np.random.default_rng(0)
    for shape in [(48, 32), (90, 20), (20, 90), (32, 32), (13, 57)]:
        images = rng.integers(0, 256, (2, *shape, 3), dtype=np.uint8)
        got = np.asarray(pil_resize(images, 32, interpolation, max_side=MAX_SIDE))
        want = [np.asarray(Image.fromarray(i).resize((32, 32), PIL_FILTERS[interpolation]))
                for i in images]  # fmt: skip
        np.testing.assert_array_equal(got, want, err_msg=f"{interpolation} {shape}")


def test_nearest_in_float32_is_pils_through_its_table():
    """PIL's nearest indices are a running float64 sum, which float32 misses by a whole pixel
    (64 -> 48 px: 114 grey levels): LiteRT's graph looks them up in a float64-made table."""
    from bc_keras.export.resize import nearest_table

    table = nearest_table(48, 200)
    for side in range(1, 201):
        source = Image.fromarray(np.arange(side, dtype=np.int32)[None, :], mode="I")
        want = np.asarray(source.resize((48, 1), Image.NEAREST))[0]
        np.testing.assert_array_equal(table[side - 1], want, err_msg=str(side))
    images = np.random.default_rng(1).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    want = [np.asarray(Image.fromarray(i).resize((48, 48), Image.NEAREST)) for i in images]
    got = np.asarray(pil_resize(images, 48, "nearest", max_side=200, dtype="float32"))
    np.testing.assert_array_equal(got, want)


PLAIN_RUNTIME = """
import json, sys
import numpy as np
from PIL import Image
jobs, files = json.loads(sys.argv[1]), json.loads(sys.argv[2])
images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
out = {}
for name, fmt, path in jobs:
    if fmt == "keras":
        import keras
        out[name] = keras.models.load_model(path).predict(images, verbose=0)["probability"]
    elif fmt == "savedmodel":
        import tensorflow as tf
        serve = tf.saved_model.load(path).signatures["serving_default"]
        out[name] = serve(images=tf.constant(images))["probability"].numpy()
    else:
        import tensorflow as tf
        runner = tf.lite.Interpreter(model_path=path).get_signature_runner()
        out[name] = runner(images=images)["probability"]
    out[name] = [float(v) for v in out[name]]
out["bc_keras imported"] = any(m.split(".")[0] == "bc_keras" for m in sys.modules)
print(json.dumps(out))
"""


def _parity(classifiers: dict, files, tmp_path):
    """Exports each classifier to each format, runs them in a fresh process with plain Keras,
    TensorFlow and LiteRT (asserting bc_keras is never imported there), and compares with
    `predict.py`'s probabilities (the Predictor's)."""
    jobs, expected = [], {}
    for kind, path in classifiers.items():
        expected[kind] = bc_keras.load_model(path).predict_proba(files)
        assert np.ptp(expected[kind]) > 0.05, kind  # probabilities that differ to compare
        for fmt in formats.FORMATS:
            exported = formats.export_model(path, tmp_path / f"{kind}_{fmt}", fmt,
                                            max_side=MAX_SIDE)  # fmt: skip
            jobs.append((f"{kind} {fmt}", fmt, str(exported)))
    run = subprocess.run(
        [sys.executable, "-c", PLAIN_RUNTIME, json.dumps(jobs), json.dumps(files)],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    )  # fmt: skip
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got.pop("bc_keras imported") is False
    for name, fmt, _ in jobs:
        tolerance = 1e-4 if fmt == "litert" else 1e-5
        np.testing.assert_allclose(got[name], expected[name.split()[0]], atol=tolerance, rtol=0,
                                   err_msg=name)  # fmt: skip


def test_cnn_and_simclr_in_every_format_give_predicts_probabilities_without_bc_keras(
    classifiers, synthetic_split, tmp_path
):
    _parity(classifiers, data.list_split_files(synthetic_split, "test").paths[:12], tmp_path)


def test_transfer_with_tta_in_every_format_gives_predicts_probabilities(
    mobilenet_classifier, synthetic_split, tmp_path
):
    files = data.list_split_files(synthetic_split, "test").paths[:12]
    _parity({"transfer": mobilenet_classifier}, files, tmp_path)


def test_each_export_carries_its_contract(classifiers, tmp_path):
    record = {}
    for fmt in formats.FORMATS:
        path = formats.export_model(classifiers["cnn"], tmp_path / fmt, fmt, max_side=MAX_SIDE)
        beside = json.loads((tmp_path / fmt / formats.EXPORT_FILE).read_text())
        if fmt == "keras":
            inside = formats.read_keras_metadata(path)
        elif fmt == "litert":
            inside = formats.read_litert_metadata(path)
        else:
            import tensorflow as tf

            text = tf.saved_model.load(str(path)).signatures["metadata"]()["json"].numpy()
            inside = json.loads(text)
        assert {k: v for k, v in beside.items() if k != "size_bytes"} == inside
        record[fmt] = inside
    assert record["keras"]["threshold"] == pytest.approx(0.4)
    assert record["litert"]["class_names"] == ["benign", "malignant"]
    assert record["savedmodel"]["input"] == {**record["savedmodel"]["input"], "dtype": "uint8",
                                             "image_size": 32, "interpolation": "nearest"}  # fmt: skip
    assert record["keras"]["model_sha256"] == bc_keras.runs.file_sha256(classifiers["cnn"])


def test_an_image_over_max_side_gets_nan_not_a_wrong_probability(classifiers, tmp_path):
    import keras

    path = formats.export_model(classifiers["simclr"], tmp_path / "k", "keras", max_side=64)
    model = keras.models.load_model(path)
    images = np.full((1, 65, 40, 3), 200, np.uint8)
    assert np.isnan(model.predict(images, verbose=0)["probability"][0])
    assert np.isfinite(model.predict(images[:, :64], verbose=0)["probability"][0])


def test_int8_mobilenet_is_scored_against_float32_with_its_interval(
    mobilenet_classifier, synthetic_split, tmp_path
):
    folder = tmp_path / "int8"
    formats.export_model(mobilenet_classifier, folder, "litert", "int8",
                         calibration=synthetic_split, max_side=MAX_SIDE)  # fmt: skip
    record = json.loads((folder / formats.EXPORT_FILE).read_text())
    assert record["size_bytes"] <= mobilenet_classifier.stat().st_size / 3
    result = check_exports(mobilenet_classifier, [folder], synthetic_split, repeats=2)
    reference, int8 = result["models"]
    for key, entry in int8["differences"].items():
        assert entry["low"] <= entry["difference"] <= entry["high"], key
        assert entry["difference"] == pytest.approx(int8[key] - reference[key])
    # Scored, not compared: quantisation moves probabilities (here by up to ~0.25).
    assert 0 < int8["max_abs_probability_difference"] < 0.5
    assert "| litert int8 |" in check_markdown(result)


def test_a_light_backbone_exports_to_full_integer_litert(synthetic_split, tmp_path):
    """MobileNetV3-Small (hard-swish, squeeze-excite gates, its preprocessing inside the model)
    converts with every network op in int8 (the export refuses a float op left behind), a third
    of the .h5 or less, and predicts one probability in [0, 1] per image."""
    import tensorflow as tf

    model = build_transfer_model("mobilenet_v3_small", 32, weights=None)
    path = _save(tmp_path / "v3.h5", model, preprocess="mobilenet_v3_small")
    folder = tmp_path / "int8"
    exported = formats.export_model(path, folder, "litert", "int8", calibration=synthetic_split,
                                    max_side=MAX_SIDE)  # fmt: skip
    assert exported.stat().st_size <= path.stat().st_size / 3
    interpreter = tf.lite.Interpreter(model_path=str(exported))
    convolutions = [op for op in interpreter._get_ops_details()
                    if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]  # fmt: skip
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    assert len(convolutions) > 20
    assert {details[op["inputs"][1]]["dtype"] for op in convolutions} == {np.int8}
    files = data.list_split_files(synthetic_split, "test").paths[:4]
    interpreter.resize_tensor_input(0, (len(files), 32, 48, 3))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"],
                           np.stack([read_rgb(f) for f in files]))  # fmt: skip
    interpreter.invoke()
    probabilities = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert probabilities.shape == (len(files),)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_a_stain_normalised_model_normalises_inside_the_savedmodel(
    classifiers, synthetic_split, tmp_path
):
    import tensorflow as tf

    train = data.list_split_files(synthetic_split, "train").paths
    fitted = make_normalizer("reinhard").fit(read_rgb(train[0]))
    model, metadata = models.load_model(classifiers["cnn"])
    record = {"method": "reinhard", "target_statistics": fitted.target_statistics()}
    normalised = _save(
        tmp_path / "normalised.h5", model, **{**metadata, "stain_normalizer": record}
    )
    files = data.list_split_files(synthetic_split, "test").paths[:6]
    expected = bc_keras.load_model(normalised).predict_proba(files)
    plain = bc_keras.load_model(classifiers["cnn"]).predict_proba(files)
    assert np.max(np.abs(expected - plain)) > 1e-4  # the normaliser changes the inputs
    path = formats.export_model(normalised, tmp_path / "sm", "savedmodel", max_side=MAX_SIDE)
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    images = np.stack([read_rgb(f) for f in files])
    np.testing.assert_allclose(serve(images=images)["probability"].numpy(), expected, atol=1e-5)
    with pytest.raises(RunError, match="stain normaliser.*savedmodel or litert"):
        formats.export_model(normalised, tmp_path / "k", "keras")
    assert not (tmp_path / "k").exists()


def test_bad_input_is_refused_in_one_line_and_leaves_nothing(
    classifiers, synthetic_split, tmp_path
):
    cnn = classifiers["cnn"]
    with pytest.raises(RunError, match="unknown export format 'onnx'; choose one of keras"):
        formats.export_model(cnn, tmp_path / "a", "onnx")
    with pytest.raises(RunError, match="unknown quantisation 'int4'"):
        formats.export_model(cnn, tmp_path / "a", "litert", "int4")
    with pytest.raises(RunError, match="--quantize int8 applies to --format litert only"):
        formats.export_model(cnn, tmp_path / "a", "keras", "int8")
    not_a_model = tmp_path / "weights.h5"
    not_a_model.write_bytes(b"not hdf5")
    with pytest.raises(ModelFileError, match=r"is neither an HDF5 \(.h5\) nor a .keras model"):
        formats.export_model(not_a_model, tmp_path / "a", "keras")
    encoder = tmp_path / "encoder.h5"
    models.save_model(build_resnet18(32), encoder, {"kind": "encoder", "image_size": 32})
    with pytest.raises(ModelFileError, match="is a encoder model, not a classifier|an encoder"):
        formats.export_model(encoder, tmp_path / "a", "keras")
    with pytest.raises(DataError, match="calibration split .* does not exist"):
        formats.export_model(cnn, tmp_path / "a", "litert", "int8", calibration=tmp_path / "no")
    one_class = tmp_path / "one_class" / "train"
    (one_class / "malignant").mkdir(parents=True)
    (one_class / "benign").mkdir()
    for path in data.list_split_files(synthetic_split, "train").paths[-3:]:
        (one_class / "malignant" / path.rsplit("/", 1)[1]).write_bytes(open(path, "rb").read())
    with pytest.raises(DataError, match="one class only"):
        formats.export_model(cnn, tmp_path / "a", "litert", "int8", calibration=one_class.parent)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="exists and is not a bc_keras export"):
        formats.export_model(cnn, occupied, "keras")
    assert not (tmp_path / "a").exists() and (occupied / "notes.txt").read_text() == "mine"


def test_an_op_int8_cannot_take_is_named(synthetic_split, tmp_path):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.Activation("log_sigmoid")(x)  # -softplus(-x): a NEG with no int8 kernel
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    path = _save(tmp_path / "m.h5", keras.Model(inputs, outputs, name="net"),
                 preprocess="rescale", interpolation="nearest")  # fmt: skip
    with pytest.raises(ModelFileError, match=r"int8 conversion cannot take the NEG op.*float16"):
        formats.export_model(path, tmp_path / "out", "litert", "int8",
                             calibration=synthetic_split, max_side=64, calibration_count=8)  # fmt: skip
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_the_command_exports_checks_and_refuses(classifiers, synthetic_split, tmp_path):
    from bc_keras.commands import export_model

    out = tmp_path / "all"
    code = export_model.main([str(classifiers["cnn"]), "--out", str(out), "--format", "all",
                              "--calibration", str(synthetic_split), "--max-side", "64",
                              "--check", str(synthetic_split), "--calibration-images", "8"])  # fmt: skip
    assert code == 0
    result = json.loads((out / "check.json").read_text())
    names = [row["name"] for row in result["models"]]
    assert names == ["keras .h5 (float32)", "keras", "savedmodel", "litert", "litert float16",
                     "litert int8"]  # fmt: skip
    for row in result["models"][1:4]:
        assert row["max_abs_probability_difference"] < 1e-4
        assert row["differences"]["auc_roc"]["difference"] == pytest.approx(0, abs=1e-9)
    assert (out / "check.md").read_text().count("\n| ") == 7
    run = subprocess.run(
        [sys.executable, "-m", "bc_keras.export", str(classifiers["cnn"]), "--out",
         str(tmp_path / "x"), "--format", "onnx"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "error: unknown export format 'onnx'; choose one of keras, savedmodel, litert, or all "
        "(every format and quantisation)"
    )

"""The robustness benchmark end to end (issue 22 item 1 and its acceptance): a CNN from a
training run and a transfer model write the table and figures, severity 0 equals each run's
metrics.json; a colour-reading model collapses under stain shift while a morphology-reading one
does not; bad input gets one line (item 5)."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import REPO_ROOT, assert_one_line_error, make_split
from PIL import Image
from sklearn.linear_model import LogisticRegression

from bc_keras import cli, data, evaluation, models, runs
from bc_keras.commands import train_cnn
from bc_keras.evaluation.classifier import decoded_images
from bc_keras.models.classifier import OUTPUT_NAME
from bc_keras.models.transfer import build_transfer_model
from bc_keras.robustness import CORRUPTIONS, outputs
from bc_keras.robustness import __main__ as command
from bc_keras.robustness.benchmark import SCORES, evaluate_model

SIZE = 48


def _scores(metrics: dict) -> dict:
    return {key: metrics.get(key) for key in SCORES}


@pytest.fixture(scope="module")
def cnn(synthetic_split, tmp_path_factory):
    """The baseline CNN as train_cnn.py trains, evaluates and saves it (1 epoch, 32 px)."""
    root = tmp_path_factory.mktemp("cnn")
    argv = ["--data", synthetic_split, "--image-size", "32", "--batch-size", "8", "--epochs", "1",
            "--run-dir", root / "run", "--model-out", root / "cnn.h5"]  # fmt: skip
    assert cli.run_script(train_cnn.main, [str(a) for a in argv]) == 0
    return root / "cnn.h5"


@pytest.fixture(scope="module")
def transfer(synthetic_split, tmp_path_factory):
    """A MobileNet 0.25 transfer classifier (random weights, its head spread so that the
    probabilities differ) with test-time augmentation, evaluated by `evaluate_classifier` as a
    training run's end does and saved with its run folder."""
    root = tmp_path_factory.mktemp("transfer")
    model = build_transfer_model("mobilenet", 32, weights=None, alpha=0.25, dense_units=8)
    test = data.build_dataset(synthetic_split, data.SUBSET_TEST, image_size=32, batch_size=8,
                              preprocess="mobilenet", augment=False, shuffle=False)  # fmt: skip
    head = model.get_layer(OUTPUT_NAME)
    features = keras.Model(model.inputs, head.input).predict(test.data, verbose=0)
    kernel, bias = head.get_weights()
    logits = features @ kernel + bias
    scale = 1.0 / max(float(logits.std()), 1e-12)
    head.set_weights([kernel * scale, (bias - logits.mean()) * scale])
    run_dir = root / "run"
    run_dir.mkdir()
    runs.write_json(run_dir / runs.CONFIG_FILE, {"data": str(synthetic_split), "batch_size": 8})
    metrics = evaluation.evaluate_classifier(model, test, run_dir, threshold=0.5, tta=True,
                                             bootstrap_samples=0)  # fmt: skip
    runs.write_json(run_dir / runs.METRICS_FILE, metrics)
    metadata = {"kind": "classifier", "experiment": "transfer", "backbone": "mobilenet",
                "image_size": 32, "preprocess": "mobilenet", "interpolation": "nearest",
                "threshold": 0.5, "tta": True, "run_dir": str(run_dir)}  # fmt: skip
    return models.save_model(model, root / "transfer.h5", metadata)


def test_a_cnn_and_a_transfer_model_write_the_table_and_figures_and_severity_0_is_metrics_json(
    cnn, transfer, synthetic_split, tmp_path, capsys
):
    out = tmp_path / "robustness"
    code = cli.run_script(command.main, [str(cnn), str(transfer), "--data", str(synthetic_split),
                                         "--out", str(out), "--severities", "5"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    result = outputs.read_robustness(out)
    assert result["severities"] == [0, 5] and list(result["corruptions"]) == list(CORRUPTIONS)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [outputs.RESULT_FILE, outputs.MARKDOWN_FILE]
        + [outputs.figure_name(name) for name in CORRUPTIONS]
    )
    assert not list(tmp_path.glob(".robustness.*"))  # no scratch folder left
    for name in CORRUPTIONS:
        with Image.open(out / outputs.figure_name(name)) as figure:
            assert figure.width > 600 and figure.height > 200
    markdown = (out / outputs.MARKDOWN_FILE).read_text()
    assert markdown in printed
    for model, path in zip(result["models"], (cnn, transfer), strict=True):
        run_dir = path.parent / "run"
        recorded = _scores(json.loads((run_dir / runs.METRICS_FILE).read_text()))
        assert model["name"] == path.stem and model["batch_size"] == 8
        assert model["clean"] == recorded and model["metrics_json"]["matches"] is True
        assert model["clean_decoded_max_difference"] < 1e-6
        assert f"{model['name']}: {path}; severity 0 equals its run's metrics.json." in markdown
        for name, rows in model["results"].items():
            assert [row["severity"] for row in rows] == [0, 5]
            assert _scores(rows[0]) == recorded, name
            auc = ["n/a" if r["auc_roc"] is None else f"{r['auc_roc']:.3f}" for r in rows]
            title = result["corruptions"][name]["title"]
            assert f"| {model['name']} | {title} | {' | '.join(auc)} |" in markdown
            assert rows[1]["pixel_change"] > 0 == rows[0]["pixel_change"], name
        # FGSM moves every pixel by epsilon (8 grey levels), except where 0 or 255 clips it.
        assert 0.9 * 8.0 < model["results"]["fgsm"][1]["pixel_change"] <= 8.0
    cnn_entry = result["models"][0]
    assert cnn_entry["input_epsilon_per_grey_level"] == pytest.approx([1 / 255] * 3)
    assert result["models"][1]["input_epsilon_per_grey_level"] == pytest.approx([2 / 255] * 3)
    # The report's Robustness section: the AUC and balanced accuracy tables, every figure.
    from bc_keras.report.analyses import robustness_lines
    from bc_keras.report.figures import Figures

    lines = robustness_lines([tmp_path], Figures(tmp_path / "report"))
    assert lines[0] == "## Robustness" and "### robustness: 2 model(s)" in lines
    for row in outputs.score_table(result, "auc_roc") + outputs.score_table(
        result, "balanced_accuracy"
    ):
        assert row in lines
    figures = [line for line in lines if line.startswith("![")]
    assert len(figures) == len(CORRUPTIONS)
    for line in figures:
        copied = tmp_path / "report" / line.split("](")[1].rstrip(")")
        assert copied.read_bytes() == (out / copied.name).read_bytes()


def _train_inputs(split):
    train = data.build_dataset(split, data.SUBSET_TRAIN, image_size=SIZE, batch_size=32,
                               augment=False, shuffle=False)  # fmt: skip
    images = decoded_images(train, np.arange(len(train.paths)))
    return images.astype("float32") / 255.0, np.asarray(train.labels).astype(int)


def _fit_and_save(inputs, features, split, path):
    """A sigmoid head fitted by logistic regression on `features` of the training images;
    saved as a bc_keras classifier (rescale, 48 px, threshold 0.5)."""
    head = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT_NAME)
    model = keras.Model(inputs, head(features))
    images, labels = _train_inputs(split)
    values = np.asarray(keras.Model(inputs, features).predict(images, verbose=0))
    mean, std = values.mean(0), values.std(0) + 1e-12
    fit = LogisticRegression(C=100.0, max_iter=1000).fit((values - mean) / std, labels)
    weights = fit.coef_ / std
    head.set_weights(
        [weights.T.astype("float32"), (fit.intercept_ - weights @ mean).astype("float32")]
    )
    metadata = {"kind": "classifier", "experiment": "cnn", "image_size": SIZE,
                "preprocess": "rescale", "interpolation": "nearest", "threshold": 0.5,
                "tta": False}  # fmt: skip
    return models.save_model(model, path, metadata)


def colour_model(split, path):
    """Reads the mean colour only: global average pooling, then the logistic head."""
    inputs = keras.Input((SIZE, SIZE, 3))
    return _fit_and_save(inputs, keras.layers.GlobalAveragePooling2D()(inputs), split, path)


def morphology_model(split, path, sigma: float = 2.0):
    """Reads the arrangement of dark structure with colour taken out: grey, standardised over
    the image, blurred at the scale of nuclear nests (malignant nuclei crowd into nests, benign
    ones spread evenly), then that map's energy into the logistic head."""
    inputs = keras.Input((SIZE, SIZE, 3))
    grey = keras.layers.Conv2D(1, 1, use_bias=False, name="grey")
    flat = keras.layers.Reshape((SIZE * SIZE,))(grey(inputs))
    # Over the flattened image: Keras saves LayerNormalization(axis=(1, 2, 3)) as axis [-1].
    flat = keras.layers.LayerNormalization(center=False, scale=False, epsilon=1e-6)(flat)
    radius = int(3 * sigma)
    taps = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    blur = keras.layers.DepthwiseConv2D(2 * radius + 1, padding="same", use_bias=False)
    blurred = blur(keras.layers.Reshape((SIZE, SIZE, 1))(flat))
    energy = keras.layers.GlobalAveragePooling2D()(keras.layers.Multiply()([blurred, blurred]))
    grey.set_weights([np.full((1, 1, 3, 1), 1 / 3, "float32")])
    blur.set_weights([(np.outer(taps, taps) / taps.sum() ** 2)[:, :, None, None].astype("float32")])
    return _fit_and_save(inputs, energy, split, path)


def test_a_colour_reader_collapses_under_stain_shift_and_a_morphology_reader_does_not(
    tmp_path_factory, tmp_path
):
    # `easy`: mean colour separates the classes; `hard`: only morphology does.
    tree = dict(size=(72, 48), patients_per_subtype=3, images_per_patient=3, class_balance="equal")
    easy = make_split(tmp_path_factory, difficulty="easy", **tree)
    hard = make_split(tmp_path_factory, difficulty="hard", **tree)
    colour = evaluate_model(colour_model(easy, tmp_path / "colour.h5"), easy, ["stain_shift"])
    shape = evaluate_model(morphology_model(hard, tmp_path / "shape.h5"), hard, ["stain_shift"])
    colour_rows, shape_rows = colour["results"]["stain_shift"], shape["results"]["stain_shift"]
    auc = {name: [row["auc_roc"] for row in rows]
           for name, rows in (("colour", colour_rows), ("shape", shape_rows))}  # fmt: skip
    balanced = [row["balanced_accuracy"] for row in colour_rows + shape_rows]
    assert colour["test_images"] >= 40 and auc["colour"][0] > 0.85 and auc["shape"][0] > 0.85
    assert max(auc["colour"][1:]) < 0.65 and max(balanced[1:6]) < 0.6  # near chance
    assert min(auc["shape"][1:4]) > auc["shape"][0] - 0.05 and min(auc["shape"][4:]) > 0.75
    assert min(balanced[7:]) > 0.7
    # Deterministic given the seed, and the seed matters.
    again = evaluate_model(tmp_path / "colour.h5", easy, ["stain_shift"], [3])["results"]
    assert again["stain_shift"][1] == colour_rows[3]
    other = evaluate_model(tmp_path / "colour.h5", easy, ["stain_shift"], [3], seed=1)
    assert other["results"]["stain_shift"][1]["pixel_change"] != colour_rows[3]["pixel_change"]


def test_help_names_every_flag_and_corruption_without_tensorflow():
    text = command.build_parser().format_help()
    for flag in ("--data", "--out", "--corruptions", "--severities", "--seed", "--batch-size",
                 "--quiet"):  # fmt: skip
        assert flag in text
    assert all(name in text for name in CORRUPTIONS)
    code = ("import sys\nfrom bc_keras.robustness import __main__ as m\ntry:\n    m.main(['--help'])\n"
            "except SystemExit:\n    pass\nassert 'tensorflow' not in sys.modules\n")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_bad_input_gets_one_line_and_leaves_nothing(cnn, synthetic_split, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    encoder = tmp_path / "encoder.h5"
    inputs = keras.Input((8, 8, 3))
    models.save_model(keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs)),
                      encoder, {"kind": "encoder", "image_size": 8})  # fmt: skip
    split, out = str(synthetic_split), str(tmp_path / "out")
    cases = [
        ([cnn, "--corruptions", "snow"], "unknown corruption 'snow'; choose from gaussian_noise"),
        ([cnn, "--severities", "7"], "severity '7' is out of range; use whole numbers from 1 to 5"),
        ([cnn, "--severities", "1,x"], "severity 'x' is out of range"),
        ([cnn, "--seed", "-1"], "--seed -1 is negative"),
        ([tmp_path / "missing.h5"], "missing.h5 does not exist; pass a classifier"),
        ([cnn, "--data", tmp_path / "nowhere"], "nowhere does not exist; pass a prepared split"),
        ([cnn, "--out", foreign], "is not a robustness benchmark (no robustness.json)"),
        ([encoder], "is a encoder model, not a classifier"),
    ]
    for argv, message in cases:
        argv = [str(a) for a in argv]
        full = (
            argv
            + (["--data", split] if "--data" not in argv else [])
            + (["--out", out] if "--out" not in argv else [])
        )
        code = cli.run_script(command.main, full)
        assert_one_line_error(code, capsys.readouterr().err, message)
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "encoder.h5",
        "foreign",
    ]
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

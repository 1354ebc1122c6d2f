"""train_cnn.py and predict.py end to end on the small synthetic split."""

from __future__ import annotations

import csv
import json
import warnings

import keras
import numpy as np
import pytest
from sklearn import metrics as sk

import bc_keras  # noqa: F401  (registers custom objects, as a user would)
import predict
import train_cnn
from bc_keras import cli, data, runs

FIGURES = runs.CLASSIFIER_RUN_FIGURES


def _args(split, run_dir, model_out, *extra):
    return [
        "--data",
        str(split),
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--bn-momentum",
        "0.9",
        "--run-dir",
        str(run_dir),
        "--model-out",
        str(model_out),
        *extra,
    ]


def _read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def trained(synthetic_split, tmp_path_factory):
    root = tmp_path_factory.mktemp("cnn")
    code = cli.run_script(
        train_cnn.main,
        _args(synthetic_split, root / "run", root / "cnn.h5", "--epochs", "2", "--tune-threshold"),
    )
    assert code == 0
    return root


@pytest.mark.slow
def test_run_folder_holds_config_history_metrics_and_figures(trained, synthetic_split):
    run = trained / "run"
    config = json.loads((run / "config.json").read_text())
    assert (
        config["image_size"] == 32
        and config["dense_units"] == 128
        and config["learning_rate"] == 1e-3
    )
    history = _read_csv(run / "history.csv")
    assert [int(row["epoch"]) for row in history] == [0, 1]
    for name in FIGURES:
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not (run / "backup").exists(), "a finished run leaves no backup"
    test_files = data.list_split_files(synthetic_split, "test").paths
    assert len(_read_csv(run / "predictions.csv")) == len(test_files)


@pytest.mark.slow
def test_metrics_json_equals_sklearn_on_predictions_csv(trained):
    rows = _read_csv(trained / "run" / "predictions.csv")
    labels = np.array([int(r["label"]) for r in rows])
    probabilities = np.array([float(r["probability"]) for r in rows])
    predicted = np.array([int(r["predicted"]) for r in rows])
    np.testing.assert_array_equal(predicted, (probabilities >= 0.5).astype(int))
    result = json.loads((trained / "run" / "metrics.json").read_text())
    assert result["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert result["precision"] == pytest.approx(
        sk.precision_score(labels, predicted, zero_division=0)
    )
    assert result["recall"] == pytest.approx(sk.recall_score(labels, predicted, zero_division=0))
    assert result["f1"] == pytest.approx(sk.f1_score(labels, predicted, zero_division=0))
    assert result["auc_roc"] == pytest.approx(sk.roc_auc_score(labels, probabilities), abs=1e-5)
    assert (
        np.array(result["confusion_matrix"]).tolist()
        == sk.confusion_matrix(labels, predicted).tolist()
    )
    by_patient = {}
    for row in rows:
        by_patient.setdefault(row["patient"], []).append(int(row["label"]) == int(row["predicted"]))
    assert result["patient_recognition_rate"] == pytest.approx(
        np.mean([np.mean(v) for v in by_patient.values()])
    )
    assert set(result["per_magnification"]) == {"40", "100", "200", "400"}
    assert "tuned_on_validation" in result and "bootstrap_95ci_by_patient" in result


@pytest.mark.slow
def test_saved_model_reloads_with_plain_keras_and_predicts_the_same(trained, synthetic_split):
    model = keras.models.load_model(trained / "cnn.h5")
    test = data.build_dataset(synthetic_split, "test", image_size=32, batch_size=8)
    probabilities = model.predict(test.data, verbose=0).reshape(-1)
    stored = np.array(
        [float(r["probability"]) for r in _read_csv(trained / "run" / "predictions.csv")]
    )
    np.testing.assert_allclose(probabilities, stored, atol=1e-5)


@pytest.mark.slow
def test_predict_on_real_images_writes_one_row_per_image(
    trained, real_images_dir, tmp_path, capsys
):
    out = tmp_path / "predictions.csv"
    assert predict.main([str(trained / "cnn.h5"), str(real_images_dir), "--out", str(out)]) == 0
    rows = _read_csv(out)
    assert len(rows) == 16
    assert all(0.0 <= float(r["probability_malignant"]) <= 1.0 for r in rows)
    assert all(
        r["label"] == ("malignant" if float(r["probability_malignant"]) >= 0.5 else "benign")
        for r in rows
    )
    patients = _read_csv(tmp_path / "predictions_patients.csv")
    assert {p["patient"] for p in patients} >= {"SOB_B_A-14-22549CD", "SOB_M_DC-14-2523"}
    assert sum(int(p["images"]) for p in patients) == 16


@pytest.mark.slow
def test_predict_skips_unreadable_images_and_rejects_foreign_models(
    trained, synthetic_split, tmp_path, capsys
):
    folder = tmp_path / "images"
    folder.mkdir()
    good = data.list_split_files(synthetic_split, "test").paths[:3]
    for path in good:
        (folder / path.split("/")[-1]).write_bytes(open(path, "rb").read())
    (folder / "SOB_B_A-14-22549AB-40-999.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out.csv"
    assert (
        cli.run_script(predict.main, [str(trained / "cnn.h5"), str(folder), "--out", str(out)]) == 0
    )
    assert len(_read_csv(out)) == 3
    assert "skipped" in capsys.readouterr().err
    foreign = tmp_path / "plain.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]).save(foreign)
    assert cli.run_script(predict.main, [str(foreign), str(folder)]) == 2
    assert "without bc_keras metadata" in capsys.readouterr().err
    text = tmp_path / "model.h5"
    text.write_text("not a model")
    assert cli.run_script(predict.main, [str(text), str(folder)]) == 2
    assert "is neither an HDF5 (.h5) nor a .keras model file" in capsys.readouterr().err


def test_bad_data_folder_gives_one_line_error(tmp_path, capsys):
    (tmp_path / "not_a_split").mkdir()
    code = cli.run_script(
        train_cnn.main,
        _args(tmp_path / "not_a_split", tmp_path / "run", tmp_path / "m.h5", "--epochs", "1"),
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a prepared split" in err[0] and "prepare_breakhis.py" in err[0]
    assert not (tmp_path / "run").exists(), "a run refused before training leaves nothing"
    assert not (tmp_path / "m.h5").exists()


@pytest.mark.slow
def test_a_label_fraction_too_small_warns_and_records_the_share_used(
    synthetic_split, tmp_path, capsys
):
    run = tmp_path / "run"
    extra = ("--epochs", "1", "--label-fraction", "0.001")
    assert (
        cli.run_script(train_cnn.main, _args(synthetic_split, run, tmp_path / "m.h5", *extra)) == 0
    )
    labelled = (run / "labelled_train_files.txt").read_text().split()
    total = len(data.list_split_files(synthetic_split, "train").paths)
    used = round(len(labelled) / total, 6)
    assert len(labelled) == 12 and total == 96, "one patient (6 images) per class"
    lines = [line for line in capsys.readouterr().err.splitlines() if "label-fraction" in line]
    assert lines == [
        f"warning: --label-fraction 0.001 uses {used:.4g} of the training images (12 of 96: whole "
        "patients per class, at least one each); recorded as label_fraction_used"
    ]
    config = json.loads((run / "config.json").read_text())
    assert used == 0.125
    assert (config["label_fraction"], config["label_fraction_used"]) == (0.001, 0.125)
    assert json.loads((run / "metrics.json").read_text())["label_fraction_used"] == 0.125


def test_a_label_fraction_near_the_share_drawn_does_not_warn(synthetic_split, tmp_path):
    from bc_keras.config import CNNConfig
    from bc_keras.experiments import common

    config = CNNConfig(data=str(synthetic_split), label_fraction=0.5, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning fails the test
        files, used = common.labelled_files(config, tmp_path)
    assert used == round(len(files.paths) / 96, 6)
    assert abs(used - 0.5) <= common.LABEL_FRACTION_TOLERANCE * 0.5

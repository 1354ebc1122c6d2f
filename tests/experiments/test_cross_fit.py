"""--cross-fit K end to end: patient folds of train + val, members selecting on their own fold,
the out-of-fold threshold, the saved ensemble (or refit), and resuming an interrupted member."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import TRAINING_CALLBACKS

import train_cnn
import train_simclr
import train_transfer
from bc_keras import cli, data, models, training
from bc_keras.evaluation import metrics as bc_metrics
from bc_keras.experiments import crossfit
from bc_keras.histology.breakhis import parse_filename

COMMON = ("--image-size", "32", "--batch-size", "8", "--recipe", "robust", "--no-tta")
CNN = ("--bn-momentum", "0.9", "--epochs", "2", "--cross-fit", "3")


def _train(main, split, root, *extra):
    code = cli.run_script(
        main,
        ["--data", str(split), *COMMON, "--run-dir", str(root / "run"),
         "--model-out", str(root / "model.h5"), *extra],
    )  # fmt: skip
    assert code == 0
    return root / "run"


def _rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _slide(path) -> str:
    return parse_filename(os.path.basename(path)).slide_id


def _test_images(split):
    test = data.build_dataset(split, "test", image_size=32, batch_size=8)
    return np.concatenate([images.numpy() for images, _ in test.data])


def _member_mean(run, images, folds):
    members = [
        models.load_model(run / "members" / f"fold{k}" / "model.h5")[0]
        for k in range(1, folds + 1)
    ]
    return np.mean([m.predict(images, verbose=0).reshape(-1) for m in members], axis=0)


def _fresh_process_predictions(model_path, images, tmp_path):
    """The saved model's probabilities, loaded and run in a new Python process."""
    np.save(tmp_path / "images.npy", images)
    code = (
        "import sys, numpy as np; from bc_keras import models; "
        "m, _ = models.load_model(sys.argv[1]); "
        "np.save(sys.argv[3], m.predict(np.load(sys.argv[2]), verbose=0).reshape(-1))"
    )
    out = tmp_path / "fresh.npy"
    subprocess.run(
        [sys.executable, "-c", code, str(model_path), str(tmp_path / "images.npy"), str(out)],
        check=True,
        capture_output=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    return np.load(out)


@pytest.fixture(scope="module")
def cnn_run(synthetic_split, tmp_path_factory):
    return _train(train_cnn.main, synthetic_split, tmp_path_factory.mktemp("cf_cnn"), *CNN)


@pytest.mark.slow
def test_folds_are_patient_grouped_stratified_and_hold_only_train_and_val(
    cnn_run, synthetic_split
):
    config = json.loads((cnn_run / "config.json").read_text())
    assert config["cross_fit"] == 3 and config["cross_fit_final"] == "ensemble"
    assignment = config["cross_fit_assignment"]
    pool = [
        *data.list_split_files(synthetic_split, "train").paths,
        *data.list_split_files(synthetic_split, "val").paths,
    ]
    test = data.list_split_files(synthetic_split, "test").paths
    assert set(assignment) == {_slide(p) for p in pool}
    assert not set(assignment) & {_slide(p) for p in test}
    rows = _rows(cnn_run / "out_of_fold.csv")
    assert sorted(r["path"] for r in rows) == sorted(pool), "every pooled image scored once"
    for row in rows:
        assert int(row["fold"]) == assignment[_slide(row["path"])]
    for fold in (1, 2, 3):
        labels = {r["label"] for r in rows if int(r["fold"]) == fold}
        assert labels == {"0", "1"}, f"fold {fold} holds both classes"


@pytest.mark.slow
def test_out_of_fold_probabilities_are_each_members_and_decide_the_threshold(cnn_run):
    rows = _rows(cnn_run / "out_of_fold.csv")
    for fold in (1, 2, 3):
        member, metadata = models.load_model(cnn_run / "members" / f"fold{fold}" / "model.h5")
        assert metadata["cross_fit_member"] == fold
        mine = [r for r in rows if int(r["fold"]) == fold]
        files = data.SplitFiles([r["path"] for r in mine], np.array([int(r["label"]) for r in mine]))
        images = data.build_dataset(
            "unused", "val", files=files, image_size=32, batch_size=8, check=False
        )
        predicted = member.predict(images.data, verbose=0).reshape(-1)
        # BatchNorm was recalibrated before scoring and saving: the saved member gives them.
        np.testing.assert_allclose(predicted, [float(r["probability"]) for r in mine], atol=1e-5)
        record = json.loads((cnn_run / "members" / f"fold{fold}" / "member.json").read_text())
        assert len(record["selected_epochs"]) == 1 and 1 <= record["selected_epochs"][0] <= 2
    labels = np.array([int(r["label"]) for r in rows])
    scores = np.array([float(r["probability"]) for r in rows])
    metrics = json.loads((cnn_run / "metrics.json").read_text())
    expected = bc_metrics.choose_threshold(labels, scores, "youden")
    assert metrics["threshold"] == pytest.approx(expected, abs=1e-8)
    summary = metrics["cross_fit"]
    folds = np.array([int(r["fold"]) for r in rows])
    per_fold = [bc_metrics.choose_threshold(labels[folds == k], scores[folds == k], "youden")
                for k in (1, 2, 3)]  # fmt: skip
    np.testing.assert_allclose(summary["fold_thresholds"], per_fold, atol=1e-8)
    assert summary["threshold_sd"] == pytest.approx(np.std(per_fold, ddof=1), abs=1e-8)
    assert summary["out_of_fold"]["images"] == len(rows)
    _, metadata = models.load_model(cnn_run.parent / "model.h5")
    assert metadata["threshold"] == metrics["threshold"] and metadata["ensemble_members"] == 3
    assert not (cnn_run / "backup").exists()
    assert not any((cnn_run / "members").glob("*/backup")), "finished members keep no backup"


@pytest.mark.slow
def test_saved_ensemble_predicts_the_mean_of_its_members_in_a_fresh_process(
    cnn_run, synthetic_split, tmp_path
):
    images = _test_images(synthetic_split)
    fresh = _fresh_process_predictions(cnn_run.parent / "model.h5", images, tmp_path)
    np.testing.assert_allclose(fresh, _member_mean(cnn_run, images, 3), atol=1e-6)
    stored = [float(r["probability"]) for r in _rows(cnn_run / "predictions.csv")]
    np.testing.assert_allclose(fresh, stored, atol=1e-5)


@pytest.mark.slow
def test_ensemble_gradcam_is_the_mean_of_its_members_maps(cnn_run, synthetic_split):
    from bc_keras.evaluation import gradcam

    images = _test_images(synthetic_split)[:3]
    ensemble, _ = models.load_model(cnn_run.parent / "model.h5")
    maps, probabilities = gradcam.gradcam(ensemble, images, return_probabilities=True)
    members = [
        models.load_model(cnn_run / "members" / f"fold{k}" / "model.h5")[0] for k in (1, 2, 3)
    ]
    mean = np.mean([gradcam.gradcam(m, images) for m in members], axis=0)
    peaks = mean.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(maps, np.where(peaks > 0, mean / np.maximum(peaks, 1e-30), 0), atol=1e-6)
    np.testing.assert_allclose(
        probabilities, ensemble.predict(images, verbose=0).reshape(-1), atol=1e-5
    )


@pytest.mark.slow
def test_threshold_is_the_same_whatever_the_test_labels_say(cnn_run, synthetic_split, tmp_path):
    swapped = tmp_path / "swapped"
    shutil.copytree(synthetic_split, swapped, symlinks=True)
    test = swapped / "test"
    (test / "benign").rename(test / "was_benign")
    (test / "malignant").rename(test / "benign")
    (test / "was_benign").rename(test / "malignant")
    run = _train(train_cnn.main, swapped, tmp_path, *CNN)
    first = json.loads((cnn_run / "metrics.json").read_text())
    second = json.loads((run / "metrics.json").read_text())
    assert second["threshold"] == first["threshold"]
    assert second["cross_fit"]["fold_thresholds"] == first["cross_fit"]["fold_thresholds"]
    assert second["confusion_matrix"] != first["confusion_matrix"], "the test labels did change"


@pytest.mark.slow
def test_an_interrupted_member_resumes_and_finished_members_are_not_retrained(
    cnn_run, synthetic_split, tmp_path, monkeypatch
):
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    trained_in = []

    def interrupting(*args, **kwargs):
        trained_in.append(os.path.basename(str(args[0])))
        callbacks = TRAINING_CALLBACKS(*args, **kwargs)
        return callbacks + [Interrupt()] if trained_in[-1] == "fold2" else callbacks

    monkeypatch.setattr(training, "training_callbacks", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train_cnn.main(["--data", str(synthetic_split), *COMMON, *CNN,
                        "--run-dir", str(tmp_path / "run"), "--model-out", str(tmp_path / "m.h5")])  # fmt: skip
    assert trained_in == ["fold1", "fold2"]
    assert (tmp_path / "run" / "members" / "fold1" / "member.json").is_file()
    first_member = (tmp_path / "run" / "members" / "fold1" / "model.h5").stat().st_mtime_ns
    trained_in.clear()
    monkeypatch.setattr(training, "training_callbacks", TRAINING_CALLBACKS)
    resumed = _train(train_cnn.main, synthetic_split, tmp_path, *CNN, "--resume")
    assert (resumed / "members" / "fold1" / "model.h5").stat().st_mtime_ns == first_member
    history = _rows(resumed / "members" / "fold2" / "history.csv")
    assert [int(r["epoch"]) for r in history] == [0, 1], "each epoch of member 2 once"
    # Resumed exactly: the same out-of-fold probabilities and threshold as the uninterrupted run.
    expected = {r["path"]: float(r["probability"]) for r in _rows(cnn_run / "out_of_fold.csv")}
    for row in _rows(resumed / "out_of_fold.csv"):
        assert float(row["probability"]) == pytest.approx(expected[row["path"]], abs=1e-6)
    first = json.loads((cnn_run / "metrics.json").read_text())
    assert json.loads((resumed / "metrics.json").read_text())["threshold"] == pytest.approx(
        first["threshold"], abs=1e-6
    )


@pytest.mark.slow
def test_refit_trains_one_model_for_the_median_of_the_members_epochs(synthetic_split, tmp_path):
    run = _train(
        train_cnn.main, synthetic_split, tmp_path, "--bn-momentum", "0.9", "--epochs", "3",
        "--cross-fit", "2", "--cross-fit-final", "refit",
    )  # fmt: skip
    metrics = json.loads((run / "metrics.json").read_text())
    selected = [record[0] for record in metrics["cross_fit"]["selected_epochs"]]
    median = max(1, int(np.floor(np.median(selected) + 0.5)))
    assert len(_rows(run / "history.csv")) == median
    model, metadata = models.load_model(tmp_path / "model.h5")
    assert metadata["cross_fit_final"] == "refit" and "ensemble_members" not in metadata
    assert model.name != "cross_fit_ensemble"
    assert metadata["threshold"] == metrics["cross_fit"]["threshold"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "main, extra, phases",
    [
        (train_transfer.main, ("--backbone", "mobilenet", "--alpha", "0.25", "--weights", "none",
                               "--epochs", "1"), 2),
        (lambda argv: train_simclr.main(["linear", *argv]), ("--encoder", "none", "--epochs", "1"),
         1),
        (lambda argv: train_simclr.main(["finetune", *argv]),
         ("--encoder", "none", "--epochs", "1", "--freeze-epochs", "1"), 2),
    ],
    ids=["transfer", "simclr_linear", "simclr_finetune"],
)  # fmt: skip
def test_every_experiment_cross_fits_into_an_ensemble_of_its_members(
    main, extra, phases, synthetic_split, tmp_path
):
    # Two folds (the CNN's tests above use three): the same ensemble machinery, a third less
    # training.
    run = _train(main, synthetic_split, tmp_path, *extra, "--cross-fit", "2")
    images = _test_images(synthetic_split)
    model, metadata = models.load_model(tmp_path / "model.h5")
    assert metadata["ensemble_members"] == 2
    np.testing.assert_allclose(
        model.predict(images, verbose=0).reshape(-1), _member_mean(run, images, 2), atol=1e-6
    )
    records = [json.loads((run / "members" / f"fold{k}" / "member.json").read_text())
               for k in (1, 2)]  # fmt: skip
    for record in records:
        # Phase 1 ran its one epoch and kept it; a second phase kept its epoch or gave back.
        assert len(record["selected_epochs"]) == phases and record["selected_epochs"][0] == 1
        assert all(epochs in (0, 1) for epochs in record["selected_epochs"][1:])


def test_fold_assignment_keeps_patients_whole_and_both_classes_in_every_fold(synthetic_split):
    files = data.list_split_files(synthetic_split, "train")
    folds = crossfit.assign_folds(files, 3, seed=7)
    np.testing.assert_array_equal(folds, crossfit.assign_folds(files, 3, seed=7))
    by_slide = {}
    for path, fold in zip(files.paths, folds, strict=True):
        by_slide.setdefault(_slide(path), set()).add(int(fold))
    assert all(len(folds_of) == 1 for folds_of in by_slide.values())
    for fold in range(3):
        assert set(files.labels[folds == fold].tolist()) == {0, 1}


def test_median_epochs_rounds_half_up_and_keeps_a_first_phase_epoch():
    records = [{"selected_epochs": e} for e in ([3, 0], [4, 2], [0, 5], [1, 0])]
    assert crossfit.median_epochs(records) == [2, 1]
    assert crossfit.median_epochs([{"selected_epochs": [0]}, {"selected_epochs": [0]}]) == [1]


def test_cross_fit_is_refused_with_one_fold_or_on_a_tfrecord_folder(tmp_path, capsys):
    from bc_keras.config import CNNConfig
    from bc_keras.data import tfrecords
    from bc_keras.errors import ConfigError

    code = cli.run_script(train_cnn.main, ["--data", str(tmp_path), "--cross-fit", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--cross-fit 1 is not a number of folds" in err
    (tmp_path / tfrecords.INDEX_NAME).write_text("{}")  # what marks a TFRecord folder
    with pytest.raises(ConfigError, match="pass the image split it was exported from"):
        crossfit.check_cross_fit(CNNConfig(data=str(tmp_path), cross_fit=3))


@pytest.mark.slow
def test_the_saved_model_carries_its_card_and_metrics_its_hash(cnn_run):
    import hashlib

    model_path = cnn_run.parent / "model.h5"
    _, metadata = models.load_model(model_path)
    metrics = json.loads((cnn_run / "metrics.json").read_text())
    assert metrics["model_sha256"] == hashlib.sha256(model_path.read_bytes()).hexdigest()
    card_text = (cnn_run.parent / "model.card.md").read_text()
    assert metrics["model_card"] == str(cnn_run.parent / "model.card.md")
    fields = metadata["card"]
    results = fields["test results (95% patient-bootstrap intervals)"]
    assert results["AUC"].startswith(f"{metrics['auc_roc']:.3f}")
    assert f"- AUC: {results['AUC']}" in card_text
    assert "cross-fitting" in fields["decision"] and "not a diagnostic device" in card_text
    assert fields["data"]["cross-fitting"] == "train + val pooled into 3 patient folds"

"""End-to-end tests of train_simclr.py on the small synthetic split."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import load_script

from bc_keras import models, runs, training
from bc_keras.experiments import common

REPO_ROOT = Path(__file__).resolve().parents[2]


train_simclr = load_script("train_simclr")
predict = load_script("predict")

# Tiny and quick, with views gentle enough that a few epochs of pretraining measurably help.
# A random start, as before --encoder-init (the report recipe's ImageNet start needs keras-hub's
# preset, which tests have offline only as a local folder: tests/models/test_resnet18_imagenet.py).
PRETRAIN_FLAGS = [
    "--encoder-init",
    "random",
    "--image-size",
    "32",
    "--batch-size",
    "16",
    "--crop-scale-min",
    "0.5",
    "--jitter-strength",
    "0.2",
    "--blur-probability",
    "0",
    "--seed",
    "42",
]
CLASSIFIER_FLAGS = ["--image-size", "32", "--batch-size", "16", "--seed", "42"]


@pytest.fixture(scope="module")
def pretrained(synthetic_split, tmp_path_factory):
    """A short pretraining run: (run folder, encoder .h5)."""
    root = tmp_path_factory.mktemp("simclr_pretrain")
    encoder = root / "encoder.h5"
    argv = ["pretrain", "--data", str(synthetic_split), "--epochs", "6"]
    argv += ["--run-dir", str(root / "run"), "--model-out", str(encoder)] + PRETRAIN_FLAGS
    assert train_simclr.main(argv) == 0
    return root / "run", encoder


def _linear_run(split, encoder, out: Path, *extra: str) -> dict:
    argv = ["linear", "--data", str(split), "--encoder", str(encoder), "--epochs", "3"]
    argv += ["--run-dir", str(out), "--model-out", str(out / "classifier.h5")] + CLASSIFIER_FLAGS
    argv += list(extra)
    assert train_simclr.main(argv) == 0
    return json.loads((out / runs.METRICS_FILE).read_text())


@pytest.mark.parametrize("mode", ["pretrain", "finetune", "linear"])
def test_help_documents_every_mode(mode, capsys):
    with pytest.raises(SystemExit) as stop:
        train_simclr.parse_args([mode, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--data", "--epochs", "--batch-size", "--image-size", "--seed", "--resume"):
        assert flag in text
    assert ("--temperature" in text) == (mode == "pretrain")
    assert ("--freeze-epochs" in text) == (mode == "finetune")


def test_pretrain_defaults_are_the_reports():
    config = train_simclr.parse_args(["pretrain", "--data", "x"])
    assert (config.batch_size, config.learning_rate, config.epochs) == (96, 1e-3, 100)
    assert (config.temperature, config.patience) == (0.5, 15)
    assert config.model_out == "models/simclr_resnet18_encoder.h5"
    assert train_simclr.parse_args(["finetune", "--data", "x"]).model_out == (
        "models/simclr_resnet18_breast_cancer.h5"
    )


@pytest.mark.slow
def test_pretraining_lowers_validation_nt_xent(pretrained):
    run_dir, encoder_path = pretrained
    summary = json.loads((run_dir / runs.METRICS_FILE).read_text())
    assert summary["best_val_loss"] < summary["initial_val_loss"] - 0.02
    for name in ("config.json", "history.csv", "training_curves.png"):
        assert (run_dir / name).is_file()
    for name in ("augmented_pairs.png", "tsne_test_embeddings.png"):
        assert (run_dir / name).stat().st_size > 1000
    assert not (run_dir / runs.BACKUP_DIR).exists()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["experiment"] == "simclr_pretrain" and config["batch_size"] == 16
    encoder, metadata = models.load_model(encoder_path)
    assert metadata["kind"] == "simclr_encoder"
    assert metadata["image_size"] == 32 and metadata["preprocess"] == "rescale"
    assert encoder.output.shape == (None, 512)


@pytest.mark.slow
def test_linear_evaluation_beats_a_random_encoder(pretrained, synthetic_split, tmp_path):
    # Validation AUC (val holds its own patients) averaged over two head seeds: the test split of
    # this tiny tree has few patients, and one seed's test AUC is mostly noise.
    _, encoder_path = pretrained

    def mean_val_auc(encoder, name):
        scores = []
        for seed in ("1", "2"):
            out = tmp_path / f"{name}_{seed}"
            _linear_run(synthetic_split, encoder, out, "--seed", seed)
            scores.append(max(runs.read_history(out)["val_auc"]))
        return sum(scores) / len(scores)

    assert mean_val_auc(encoder_path, "pretrained") > mean_val_auc("none", "random") + 0.05


@pytest.mark.slow
def test_finetune_with_label_fraction_then_predict(pretrained, synthetic_split, tmp_path):
    _, encoder_path = pretrained
    out = tmp_path / "finetune"
    model_path = tmp_path / "simclr_resnet18_breast_cancer.h5"
    argv = ["finetune", "--data", str(synthetic_split), "--encoder", str(encoder_path)]
    argv += ["--epochs", "1", "--freeze-epochs", "1", "--label-fraction", "0.3"]
    argv += ["--run-dir", str(out), "--model-out", str(model_path)] + CLASSIFIER_FLAGS
    assert train_simclr.main(argv) == 0
    history = runs.read_history(out)
    assert history["phase"] == [1.0, 2.0]
    labelled = (out / common.LABELLED_FILES).read_text().split()
    train_images = list((synthetic_split / "train").rglob("*.png"))
    assert 0.15 * len(train_images) <= len(labelled) <= 0.45 * len(train_images)
    with open(out / runs.PREDICTIONS_FILE, newline="") as file:
        expected = {row["filename"]: float(row["probability"]) for row in csv.DictReader(file)}

    # The saved classifier loads with plain Keras and predict.py reproduces the evaluation.
    loaded = keras.models.load_model(model_path)
    assert loaded.output.shape == (None, 1)
    csv_out = tmp_path / "predicted.csv"
    assert (
        predict.main([str(model_path), str(synthetic_split / "test"), "--out", str(csv_out)]) == 0
    )
    with open(csv_out, newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(expected)
    probability_column = next(key for key in rows[0] if "prob" in key)
    for row in rows:
        name = Path(row[next(iter(row))]).name
        assert float(row[probability_column]) == pytest.approx(expected[name], abs=1e-4)


class _Interrupt(keras.callbacks.Callback):
    """Stops training with an error after `epochs` epochs, like a crash or Ctrl-C would."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise RuntimeError("simulated interruption")


@pytest.mark.slow
def test_pretraining_resumes_after_an_interruption(synthetic_split, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    argv = ["pretrain", "--data", str(synthetic_split), "--epochs", "3", "--run-dir", str(run_dir)]
    argv += ["--model-out", str(tmp_path / "encoder.h5")] + PRETRAIN_FLAGS
    original = training.training_callbacks
    monkeypatch.setattr(
        training, "training_callbacks", lambda *a, **k: original(*a, **k) + [_Interrupt(2)]
    )
    with pytest.raises(RuntimeError, match="simulated"):
        train_simclr.main(argv)
    assert runs.has_backup(run_dir)
    assert len(runs.read_history(run_dir)["epoch"]) == 2
    monkeypatch.setattr(training, "training_callbacks", original)
    assert train_simclr.main(argv + ["--resume"]) == 0
    # The third epoch ran alone: the history holds epochs 0, 1 and 2 once each.
    assert runs.read_history(run_dir)["epoch"] == [0.0, 1.0, 2.0]
    assert not runs.has_backup(run_dir)
    assert np.isfinite(json.loads((run_dir / runs.METRICS_FILE).read_text())["best_val_loss"])

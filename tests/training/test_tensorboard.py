"""--tensorboard: the event files hold history.csv's values, the learning rate, the phase and
the hyper-parameters, on one epoch axis across phases."""

from __future__ import annotations

import csv

import pytest
import tensorflow as tf

from bc_keras import experiments
from bc_keras.config import CNNConfig, PretrainConfig
from bc_keras.training import tensorboard


def _history(run_dir):
    with open(run_dir / "history.csv", newline="") as file:
        return list(csv.DictReader(file))


def _config(config_class, split, tmp_path, **values):
    values = {"image_size": 32, "batch_size": 8, "epochs": 2, **values}
    config = config_class(
        data=str(split), run_dir=str(tmp_path / "run"), model_out=str(tmp_path / "model.h5"),
        **values,
    )  # fmt: skip
    config.tensorboard = True
    return config


@pytest.mark.slow
def test_classifier_event_files_equal_history_csv(synthetic_split, tmp_path):
    config = _config(CNNConfig, synthetic_split, tmp_path, batch_norm_momentum=0.9)
    result = experiments.run(config)
    scalars = tensorboard.read_scalars(result.run_dir / "tensorboard")
    rows = _history(result.run_dir)
    assert len(rows) == 2
    for column, tag in (("loss", "train/loss"), ("val_loss", "validation/loss"),
                        ("auc", "train/auc"), ("val_auc", "validation/auc")):  # fmt: skip
        logged = scalars[tag]
        assert [step for step, _ in logged] == [0, 1]
        for (_, value), row in zip(logged, rows, strict=True):
            assert value == pytest.approx(float(row[column]), rel=1e-6), tag
    # The optimizer's rate at each epoch's end (ReduceLROnPlateau did not cut it in 2 epochs).
    assert scalars["train/learning_rate"] == [(0, pytest.approx(1e-3)), (1, pytest.approx(1e-3))]
    texts = []
    for path in (result.run_dir / "tensorboard").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            texts += [v for v in event.summary.value if v.tag.startswith("hyperparameters")]
    assert texts, "the hyper-parameters are logged"
    text = tf.make_ndarray(texts[0].tensor).item().decode()
    assert '"image_size": 32' in text and '"recipe": "report"' in text


@pytest.mark.slow
def test_pretraining_logs_its_loss_and_contrastive_accuracy(synthetic_split, tmp_path):
    config = _config(PretrainConfig, synthetic_split, tmp_path, epochs=1, encoder_init="random")
    result = experiments.run(config)
    scalars = tensorboard.read_scalars(result.run_dir / "tensorboard")
    row = _history(result.run_dir)[0]
    assert scalars["validation/loss"] == [(0, pytest.approx(float(row["val_loss"]), rel=1e-6))]
    assert "train/contrastive_accuracy" in scalars and "train/learning_rate" in scalars


def test_a_later_phase_continues_the_epoch_axis(tmp_path):
    rows = [("0", "1"), ("1", "1"), ("2", "1"), ("0", "2"), ("1", "2")]
    with open(tmp_path / "history.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["epoch", "phase", "loss"])
        writer.writerows([(epoch, phase, "0.5") for epoch, phase in rows])
    assert tensorboard.epochs_logged_before(tmp_path, 1) == 0
    # Phase 2 (resumed after two of its epochs or not) starts after phase 1's three epochs.
    assert tensorboard.epochs_logged_before(tmp_path, 2) == 3
    assert tensorboard.epochs_logged_before(tmp_path, None) == 0
    assert tensorboard.scalar_tag("val_auc") == "validation/auc"
    assert tensorboard.scalar_tag("loss") == "train/loss"

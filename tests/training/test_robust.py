"""The parts of the robust recipe, each checked on its own: BatchNorm recalibration, class
weights, test-time augmentation, the validation threshold stored in the model, the collapse
warning, and a robust run end to end."""

from __future__ import annotations

import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import load_script

from bc_keras import cli, config, models, runs, training
from bc_keras.evaluation import inference, metrics
from bc_keras.experiments import common

train_cnn = load_script("train_cnn")
predict = load_script("predict")


def test_recalibration_sets_moving_statistics_to_the_mean_batch_statistics():
    keras.utils.set_random_seed(0)
    model = models.build_baseline_cnn(16, dense_units=4, batch_norm_momentum=0.99)
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, 1, (5, 16, 16, 3)).astype("float32") for _ in range(3)]
    dataset = tf.data.Dataset.from_tensor_slices(np.concatenate(batches)).batch(5)
    dataset = dataset.map(lambda x: (x, tf.zeros([tf.shape(x)[0]])))
    weights_before = [w.copy() for w in model.get_weights()]
    assert training.recalibrate_batch_norm(model, dataset) == 3
    # NumPy re-derivation for the first BatchNorm layer: its input is conv1(x) (training mode
    # changes nothing before it), and the statistics are the mean of the per-batch ones.
    conv1 = model.get_layer("conv1")
    inputs = [conv1(b).numpy() for b in batches]
    expected_mean = np.mean([x.mean(axis=(0, 1, 2)) for x in inputs], axis=0)
    expected_variance = np.mean([x.var(axis=(0, 1, 2)) for x in inputs], axis=0)
    bn1 = model.get_layer("bn1")
    np.testing.assert_allclose(bn1.moving_mean.numpy(), expected_mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn1.moving_variance.numpy(), expected_variance, rtol=1e-4, atol=1e-6)
    assert bn1.momentum == 0.99, "the momentum is restored"
    trainable = [w.path for w in model.trainable_weights]
    for variable, before in zip(model.weights, weights_before, strict=True):
        if variable.path in trainable:
            np.testing.assert_array_equal(variable.numpy(), before)


def test_frozen_batchnorm_layers_are_left_alone():
    keras.utils.set_random_seed(0)
    model = models.build_baseline_cnn(16, dense_units=4)
    model.get_layer("bn1").trainable = False
    layers = training.trainable_batchnorm_layers(model)
    assert [layer.name for layer in layers] == ["bn2", "bn3"]


def test_balanced_class_weights_follow_the_training_labels():
    parsed = config.CNNConfig(data="d", class_weight="balanced")
    labels = np.array([0] * 30 + [1] * 70)
    weights = common.class_weights(parsed, labels)
    assert weights == pytest.approx({0: 100 / 60, 1: 100 / 140})
    # Each class then carries the same total weight, as sklearn's "balanced" does.
    assert 30 * weights[0] == pytest.approx(70 * weights[1])
    assert common.class_weights(config.CNNConfig(data="d", class_weight="none"), labels) is None


def test_test_time_augmentation_averages_the_eight_symmetries():
    keras.utils.set_random_seed(1)
    model = models.build_baseline_cnn(16, dense_units=4)
    images = np.random.default_rng(1).uniform(0, 1, (6, 16, 16, 3)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(6, "float32"))).batch(4)
    views = [
        np.rot90(images, k, axes=(1, 2))
        if flip == 0
        else np.rot90(images, k, axes=(1, 2))[:, :, ::-1]
        for flip in (0, 1)
        for k in range(4)
    ]
    assert len({v.tobytes() for v in views}) == 8, "eight different views"
    expected = np.mean([model.predict(v, verbose=0).reshape(-1) for v in views], axis=0)
    np.testing.assert_allclose(
        inference.predict_probabilities(model, dataset, tta=True), expected, atol=1e-6
    )
    plain = model.predict(images, verbose=0).reshape(-1)
    np.testing.assert_allclose(inference.predict_probabilities(model, dataset), plain, atol=1e-6)


def test_collapse_warning_after_several_one_class_epochs():
    callback = training.CollapseWarning(epochs=3)
    collapsed = {"val_tp": 70.0, "val_fp": 30.0, "val_tn": 0.0, "val_fn": 0.0}
    healthy = {"val_tp": 60.0, "val_fp": 10.0, "val_tn": 20.0, "val_fn": 10.0}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch, logs in enumerate([collapsed, collapsed, healthy, collapsed, collapsed]):
            callback.on_epoch_end(epoch, logs)
        assert caught == [], "a streak broken by a healthy epoch does not count"
        callback.on_epoch_end(5, collapsed)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "predicted malignant for every validation image for 3 epochs" in message
    assert "--recipe robust" in message and "--class-weight balanced" in message


@pytest.mark.slow
def test_robust_run_stores_the_validation_threshold_and_predict_uses_it(synthetic_split, tmp_path):
    args = ["--data", str(synthetic_split), "--image-size", "32", "--batch-size", "8",
            "--epochs", "2", "--recipe", "robust", "--run-dir", str(tmp_path / "run"),
            "--model-out", str(tmp_path / "cnn.h5")]  # fmt: skip
    assert cli.run_script(train_cnn.main, args) == 0
    saved = json.loads((tmp_path / "run" / runs.CONFIG_FILE).read_text())
    assert saved["recipe"] == "robust" and saved["class_weight"] == "balanced"
    model, metadata = models.load_model(tmp_path / "cnn.h5")
    assert metadata["threshold_method"] == "youden" and metadata["tta"] is True
    assert metadata["recipe"] == "robust"
    # The stored threshold is the one chosen on validation predictions (with TTA).
    sets = common.classifier_data(config.CNNConfig(data=str(synthetic_split), image_size=32,
                                                   batch_size=8, recalibrate_bn=False),
                                  "rescale", "nearest")  # fmt: skip
    validation = inference.predict_probabilities(model, sets.validation.data, tta=True)
    expected = metrics.choose_threshold(sets.validation.labels, validation, "youden")
    assert metadata["threshold"] == pytest.approx(expected, abs=1e-6)
    result = json.loads((tmp_path / "run" / runs.METRICS_FILE).read_text())
    assert result["threshold"] == pytest.approx(expected, abs=1e-6) and result["tta"] is True
    out = tmp_path / "predictions.csv"
    assert (
        predict.main([str(tmp_path / "cnn.h5"), str(synthetic_split / "test"), "--out", str(out)])
        == 0
    )
    import csv

    with open(out, newline="") as file:
        rows = list(csv.DictReader(file))
    with open(tmp_path / "run" / runs.PREDICTIONS_FILE, newline="") as file:
        evaluated = {row["filename"]: row for row in csv.DictReader(file)}
    for row in rows:
        name = row["path"].rsplit("/", 1)[-1]
        assert float(row["probability_malignant"]) == pytest.approx(
            float(evaluated[name]["probability"]), abs=1e-5
        ), "predict.py applies the model's test-time augmentation"
        expected_label = (
            "malignant" if float(row["probability_malignant"]) >= expected else "benign"
        )
        assert row["label"] == expected_label

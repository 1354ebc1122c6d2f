"""Tests of `python -m bc_keras.probe`, the frozen-feature baseline of transfer learning: its
features, its classifier and metrics against an independent keras.applications + scikit-learn
computation with the real ImageNet weights, and its one-line errors."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from helpers import assert_one_line_error
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from bc_keras import cli, probe
from bc_keras.data import build_dataset
from bc_keras.errors import DataError
from bc_keras.models.transfer import build_backbone

SIZE = 32


def _batches(split, subset, preprocess):
    return build_dataset(
        split, subset, image_size=SIZE, batch_size=8, preprocess=preprocess, augment=False,
        shuffle=False,
    )  # fmt: skip


def test_pooled_features_are_the_spatial_mean_of_the_frozen_feature_map(synthetic_split):
    keras.utils.set_random_seed(0)
    backbone = build_backbone("mobilenet", SIZE, weights=None, alpha=0.25)
    dataset = _batches(synthetic_split, "val", "mobilenet")
    features, labels = probe.pooled_features(backbone, dataset.data)
    images = np.concatenate([np.asarray(batch) for batch, _ in dataset.data])
    expected = backbone.predict(images, verbose=0).mean(axis=(1, 2))
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, dataset.labels)


def test_a_probe_needs_both_classes():
    with pytest.raises(DataError, match="one class only"):
        probe.fit_probe(np.zeros((4, 3)), np.ones(4, dtype=int))


def test_the_probe_equals_keras_applications_features_and_sklearn(
    synthetic_split, mobilenet_weights, tmp_path, capsys
):
    argv = ["--data", str(synthetic_split), "--backbone", "mobilenet", "--alpha", "0.25"]
    argv += ["--weights", str(mobilenet_weights), "--image-size", str(SIZE)]
    out = tmp_path / "probe.json"
    assert cli.run_script(probe.main, [*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert f"AUC {result['auc_roc']:.4f}" in capsys.readouterr().out
    # The reference: Keras' own MobileNet with global average pooling and the same weights file,
    # scikit-learn's logistic regression, sklearn's metrics.
    reference = keras.applications.MobileNet(
        input_shape=(SIZE, SIZE, 3), alpha=0.25, include_top=False, pooling="avg", weights=None
    )
    reference.load_weights(str(mobilenet_weights))
    data = {}
    for subset in ("train", "val", "test"):
        dataset = _batches(synthetic_split, subset, "mobilenet")
        images = np.concatenate([np.asarray(batch) for batch, _ in dataset.data])
        data[subset] = (reference.predict(images, verbose=0), dataset.labels.astype(int))
    fitted = LogisticRegression(class_weight="balanced", max_iter=5000).fit(
        np.concatenate([data["train"][0], data["val"][0]]),
        np.concatenate([data["train"][1], data["val"][1]]),
    )
    features, labels = data["test"]
    scores = fitted.predict_proba(features)[:, 1]
    assert result["test_images"] == len(labels)
    assert result["train_images"] + result["val_images"] == len(data["train"][1]) + len(
        data["val"][1]
    )
    # The features agree to float rounding (measured: identical metrics on 24 test images).
    assert result["auc_roc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert result["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(labels, scores >= 0.5), abs=1e-9
    )
    assert result["experiment"] == "linear_probe" and result["preprocess"] == "mobilenet"


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--weights", "missing.h5"], ("missing.h5",)),
        (["--backbone", "resnet50", "--alpha", "0.5", "--weights", "none"], ("alpha", "mobilenet")),
        (["--image-size", "16", "--weights", "none"], ("--image-size must be at least 32",)),
        (["--weights", "none", "--out", "."], ("--out . must be a file in an existing folder",)),
        (["--weights", "none", "--out", "no/such/folder/p.json"], ("an existing folder",)),
    ],
)
def test_bad_settings_are_one_line(synthetic_split, capsys, extra, fragments):
    argv = ["--data", str(synthetic_split), "--backbone", "mobilenet", *extra]
    code = cli.run_script(probe.main, argv)
    assert_one_line_error(code, capsys.readouterr().err, *fragments)


def test_a_missing_data_folder_is_one_line(tmp_path, capsys):
    argv = ["--data", str(tmp_path / "nope"), "--backbone", "mobilenet", "--weights", "none"]
    code = cli.run_script(probe.main, argv)
    assert_one_line_error(code, capsys.readouterr().err, "does not exist", "prepare_breakhis.py")

"""Metrics against sklearn and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from bc_keras import metrics


def test_patient_recognition_rate_hand_computed():
    # Patient A: 3 of 4 right; patient B: 1 of 2 right; patient C: 2 of 3 right.
    labels = [1, 1, 1, 1, 0, 0, 1, 1, 1]
    predicted = [1, 1, 1, 0, 0, 1, 1, 1, 0]
    patients = ["A", "A", "A", "A", "B", "B", "C", "C", "C"]
    expected = (3 / 4 + 1 / 2 + 2 / 3) / 3
    assert metrics.patient_recognition_rate(labels, predicted, patients) == pytest.approx(expected)
    # It differs from the image-level accuracy (6 of 9) because patients weigh equally.
    assert expected != pytest.approx(6 / 9)


def test_compute_metrics_equals_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    probabilities = np.clip(labels * 0.3 + rng.uniform(0, 0.7, 200), 0, 1)
    patients = np.array([f"P{i % 7}" for i in range(200)])
    magnifications = np.array([("40", "100", "200", "400")[i % 4] for i in range(200)])
    result = metrics.compute_metrics(
        labels, probabilities, threshold=0.5, patients=patients, magnifications=magnifications
    )
    predicted = (probabilities >= 0.5).astype(int)
    assert result["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert result["precision"] == pytest.approx(sk.precision_score(labels, predicted))
    assert result["recall"] == pytest.approx(sk.recall_score(labels, predicted))
    assert result["f1"] == pytest.approx(sk.f1_score(labels, predicted))
    assert result["auc_roc"] == pytest.approx(sk.roc_auc_score(labels, probabilities))
    tn, fp, fn, tp = sk.confusion_matrix(labels, predicted).ravel()
    assert result["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert result["counts"] == {
        "images": 200,
        "benign": int((labels == 0).sum()),
        "malignant": int(labels.sum()),
        "patients": 7,
    }
    assert result["classification_report"]["malignant"]["recall"] == pytest.approx(result["recall"])
    mask = magnifications == "100"
    assert result["per_magnification"]["100"]["accuracy"] == pytest.approx(
        sk.accuracy_score(labels[mask], predicted[mask])
    )
    assert result["per_magnification"]["100"]["images"] == int(mask.sum())


def test_auc_is_none_for_a_single_class_and_threshold_choice():
    assert metrics.compute_metrics([1, 1, 1], [0.2, 0.6, 0.9])["auc_roc"] is None
    labels = np.array([0, 0, 0, 1, 1, 1])
    probabilities = np.array([0.1, 0.2, 0.3, 0.35, 0.8, 0.9])
    # Every threshold in (0.3, 0.35] separates the classes perfectly; roc_curve offers 0.35.
    assert metrics.youden_threshold(labels, probabilities) == pytest.approx(0.35)


def test_bootstrap_by_patient_brackets_the_point_estimate():
    rng = np.random.default_rng(1)
    patients = np.repeat([f"P{i}" for i in range(12)], 10)
    labels = np.repeat(rng.integers(0, 2, 12), 10)
    probabilities = np.clip(labels * 0.25 + rng.uniform(0, 0.7, 120), 0, 1)
    intervals = metrics.bootstrap_by_patient(labels, probabilities, patients, samples=300, seed=0)
    point = metrics.compute_metrics(labels, probabilities)
    for key in ("accuracy", "recall", "auc_roc"):
        low, high = intervals[key]
        assert low <= point[key] <= high
        assert low < high


def test_length_mismatch_is_reported():
    with pytest.raises(ValueError, match="same length"):
        metrics.patient_recognition_rate([1, 0], [1], ["A", "B"])

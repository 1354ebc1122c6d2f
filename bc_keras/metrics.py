"""Evaluation metrics: sklearn's, BreaKHis' patient recognition rate, per-magnification views."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as sk

from bc_keras.breakhis import CLASS_NAMES


def patient_recognition_rate(labels, predicted, patients) -> float:
    """BreaKHis' patient-level score: mean over patients of the share of that patient's images
    classified correctly (Spanhol et al., 2016).

    Args:
        labels, predicted: 0/1 arrays of the same length.
        patients: the patient key of each image.
    """
    labels, predicted, patients = np.asarray(labels), np.asarray(predicted), np.asarray(patients)
    if not len(labels) == len(predicted) == len(patients):
        raise ValueError(
            "labels, predicted and patients must have the same length. Received: "
            f"{len(labels)}, {len(predicted)}, {len(patients)}"
        )
    if len(labels) == 0:
        raise ValueError("Cannot score an empty set of images.")
    scores = [
        np.mean(labels[patients == p] == predicted[patients == p]) for p in np.unique(patients)
    ]
    return float(np.mean(scores))


def _auc_or_none(labels, probabilities):
    # AUC is undefined when only one class is present (a tiny or filtered test set).
    if len(np.unique(labels)) < 2:
        return None
    return float(sk.roc_auc_score(labels, probabilities))


def binary_scores(labels, probabilities, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall, F1, AUC-ROC and the confusion matrix, all from sklearn."""
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    predicted = (probabilities >= threshold).astype(int)
    return {
        "accuracy": float(sk.accuracy_score(labels, predicted)),
        "precision": float(sk.precision_score(labels, predicted, zero_division=0)),
        "recall": float(sk.recall_score(labels, predicted, zero_division=0)),
        "f1": float(sk.f1_score(labels, predicted, zero_division=0)),
        "auc_roc": _auc_or_none(labels, probabilities),
        "confusion_matrix": sk.confusion_matrix(labels, predicted, labels=[0, 1]).tolist(),
    }


def compute_metrics(
    labels, probabilities, *, threshold: float = 0.5, patients=None, magnifications=None
) -> dict:
    """Every metric of SPEC section 5 for one set of predictions.

    Args:
        labels: 0/1 true labels (benign 0, malignant 1).
        probabilities: predicted probability of malignant.
        threshold: probability at or above which an image is called malignant.
        patients: optional patient key per image (enables the patient recognition rate).
        magnifications: optional magnification per image (enables the per-magnification view).

    Returns:
        A JSON-ready dict; `confusion_matrix` is `[[tn, fp], [fn, tp]]`.
    """
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    if labels.shape != probabilities.shape:
        raise ValueError(
            f"labels and probabilities differ in shape. Received: {labels.shape} and {probabilities.shape}"
        )
    predicted = (probabilities >= threshold).astype(int)
    result = {"threshold": float(threshold), **binary_scores(labels, probabilities, threshold)}
    result["classification_report"] = sk.classification_report(
        labels,
        predicted,
        labels=[0, 1],
        target_names=list(CLASS_NAMES),
        output_dict=True,
        zero_division=0,
    )
    result["counts"] = {
        "images": int(len(labels)),
        "benign": int(np.sum(labels == 0)),
        "malignant": int(np.sum(labels == 1)),
    }
    if patients is not None:
        patients = np.asarray(patients)
        result["patient_recognition_rate"] = patient_recognition_rate(labels, predicted, patients)
        result["counts"]["patients"] = int(len(np.unique(patients)))
    if magnifications is not None:
        magnifications = np.asarray(magnifications)
        per_magnification = {}
        for magnification in sorted(np.unique(magnifications), key=str):
            mask = magnifications == magnification
            entry = {
                "images": int(mask.sum()),
                **binary_scores(labels[mask], probabilities[mask], threshold),
            }
            if patients is not None:
                entry["patient_recognition_rate"] = patient_recognition_rate(
                    labels[mask], predicted[mask], patients[mask]
                )
            per_magnification[str(magnification)] = entry
        result["per_magnification"] = per_magnification
    return result


def classification_report_text(labels, probabilities, threshold: float = 0.5) -> str:
    """sklearn's text classification report, as the report prints it."""
    predicted = (np.asarray(probabilities) >= threshold).astype(int)
    return sk.classification_report(
        np.asarray(labels).astype(int),
        predicted,
        labels=[0, 1],
        target_names=list(CLASS_NAMES),
        zero_division=0,
    )


def youden_threshold(labels, probabilities) -> float:
    """The threshold maximising sensitivity + specificity - 1 (Youden's J) on the ROC curve;
    meant for the validation split, never the test split."""
    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        return 0.5
    false_positive_rate, true_positive_rate, thresholds = sk.roc_curve(labels, probabilities)
    best = int(np.argmax(true_positive_rate - false_positive_rate))
    return float(np.clip(thresholds[best], 0.0, 1.0))


def bootstrap_by_patient(
    labels, probabilities, patients, *, threshold: float = 0.5, samples: int = 1000, seed: int = 0
) -> dict:
    """95% confidence intervals resampling PATIENTS with replacement (images of one patient
    are not independent, so resampling images would understate the uncertainty).

    Returns:
        `{metric: [low, high]}` for accuracy, recall, precision, f1 and auc_roc.
    """
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    patients = np.asarray(patients)
    unique = np.unique(patients)
    groups = [np.flatnonzero(patients == p) for p in unique]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {
        k: [] for k in ("accuracy", "precision", "recall", "f1", "auc_roc")
    }
    for _ in range(samples):
        chosen = rng.integers(0, len(groups), len(groups))
        index = np.concatenate([groups[i] for i in chosen])
        scores = binary_scores(labels[index], probabilities[index], threshold)
        for key in draws:
            if scores[key] is not None:
                draws[key].append(scores[key])
    return {
        key: [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
        for key, values in draws.items()
        if values
    }

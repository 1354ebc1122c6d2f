"""Evaluation metrics: the metric registry, sklearn's metrics, BreaKHis' patient recognition
rate, patient-level decisions, per-magnification views, degenerate-prediction flags, the
validation-chosen threshold and the patient bootstrap."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn import metrics as sk

from bc_keras.config import THRESHOLD_METHODS, THRESHOLD_YOUDEN
from bc_keras.histology.breakhis import CLASS_NAMES

# Where a metric is shown: the comparison table, the report's results table, the one-line
# summaries.
VIEW_COMPARE, VIEW_TABLE, VIEW_SUMMARY = "compare", "table", "summary"
ALL_VIEWS = frozenset((VIEW_COMPARE, VIEW_TABLE, VIEW_SUMMARY))


@dataclass(frozen=True)
class Metric:
    """One metric of the registry: its metrics.json key, its title, how it prints, which way
    is better, whether the patient bootstrap gives it an interval, and where it is shown."""

    key: str
    title: str
    decimals: int = 3
    higher_is_better: bool = True
    bootstrap: bool = True
    views: frozenset = ALL_VIEWS

    def format(self, value) -> str:
        return "n/a" if value is None else f"{value:.{self.decimals}f}"


# The registry: one row per metric, in the order tables show them. Adding a metric is one row
# here (and its computation in `binary_scores`).
METRICS = (
    Metric("accuracy", "accuracy"),
    Metric("balanced_accuracy", "balanced accuracy"),
    Metric("specificity", "specificity", views=frozenset((VIEW_COMPARE, VIEW_SUMMARY))),
    Metric("precision", "precision", views=frozenset((VIEW_COMPARE, VIEW_TABLE))),
    Metric("recall", "recall"),
    Metric("f1", "F1"),
    Metric("auc_roc", "AUC"),
    Metric("patient_recognition_rate", "patient recognition rate", bootstrap=False),
)
METRICS_BY_KEY = {metric.key: metric for metric in METRICS}


def metrics_in(view: str) -> tuple[Metric, ...]:
    """The registry's metrics shown in `view` (VIEW_COMPARE, VIEW_TABLE or VIEW_SUMMARY)."""
    return tuple(metric for metric in METRICS if view in metric.views)


FLAG_ONLY_BENIGN = "only benign images"
FLAG_ONLY_MALIGNANT = "only malignant images"
FLAG_ALL_PREDICTED_MALIGNANT = "predicts malignant for every image"
FLAG_ALL_PREDICTED_BENIGN = "predicts benign for every image"


def validate_binary_inputs(labels, probabilities) -> tuple[np.ndarray, np.ndarray]:
    """Checks and converts one set of predictions.

    Args:
        labels: 0/1 true labels (benign 0, malignant 1), one per image.
        probabilities: the predicted probability of malignant (any finite score), one per image.

    Returns:
        `(labels, probabilities)` as a 1-D int array and a 1-D float array.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=float)
    if labels.ndim != 1 or labels.shape != probabilities.shape:
        raise ValueError(
            "labels and probabilities must be 1-D and of the same length. Received: "
            f"labels.shape={labels.shape!r}, probabilities.shape={probabilities.shape!r}"
        )
    if len(labels) == 0:
        raise ValueError(f"Cannot score an empty set of images. Received: labels={labels!r}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(
            "labels must be 0 (benign) or 1 (malignant). Received: "
            f"labels with values {sorted(np.unique(labels).tolist())!r}"
        )
    if not np.isfinite(probabilities).all():
        raise ValueError(
            "probabilities must be finite. Received: "
            f"{int(np.sum(~np.isfinite(probabilities)))} NaN or infinite values"
        )
    return labels.astype(int), probabilities


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
    """Accuracy, balanced accuracy, precision, recall, specificity, F1, AUC-ROC and the
    confusion matrix, from sklearn.

    Accuracy alone hides a model that calls every image malignant (70% on BreaKHis); balanced
    accuracy (the mean of recall and specificity) and specificity expose it. Both are None when
    the labels hold no benign image, as AUC-ROC is None for one class: over a single class,
    sklearn's balanced accuracy would be that class's recall and nothing "balanced".
    """
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    predicted = (probabilities >= threshold).astype(int)
    matrix = sk.confusion_matrix(labels, predicted, labels=[0, 1])
    (true_negatives, false_positives), _ = matrix
    both_classes = len(np.unique(labels)) == 2
    benign = true_negatives + false_positives
    return {
        "accuracy": float(sk.accuracy_score(labels, predicted)),
        "balanced_accuracy": (
            float(sk.balanced_accuracy_score(labels, predicted)) if both_classes else None
        ),
        "precision": float(sk.precision_score(labels, predicted, zero_division=0)),
        "recall": float(sk.recall_score(labels, predicted, zero_division=0)),
        "specificity": float(true_negatives / benign) if benign else None,
        "f1": float(sk.f1_score(labels, predicted, zero_division=0)),
        "auc_roc": _auc_or_none(labels, probabilities),
        "confusion_matrix": matrix.tolist(),
    }


def patient_level_scores(labels, probabilities, patients, threshold: float = 0.5) -> dict:
    """`binary_scores` with one decision per patient: the mean of its images' probabilities
    against `threshold`.

    A patient's label is its images' label. BreaKHis gives every image its patient's diagnosis,
    so mixed labels only come from a shared key; such a patient takes its images' majority
    label, and a tie counts as malignant (a missed cancer is the costlier error).

    Returns:
        `binary_scores` of the patient-level arrays (AUC over the mean probabilities) plus
        `"patients"`, `"benign_patients"` and `"malignant_patients"` (counts).
    """
    labels, probabilities = validate_binary_inputs(labels, probabilities)
    index, count = group_index(patients, labels)
    images = np.bincount(index, minlength=count)
    patient_labels = (2 * np.bincount(index, weights=labels, minlength=count) >= images).astype(int)
    mean_probabilities = np.bincount(index, weights=probabilities, minlength=count) / images
    malignant = int(patient_labels.sum())
    return {
        **binary_scores(patient_labels, mean_probabilities, threshold),
        "patients": count,
        "benign_patients": count - malignant,
        "malignant_patients": malignant,
    }


def prediction_flags(labels, probabilities, threshold: float = 0.5) -> list[str]:
    """Human-readable warnings for an evaluation that cannot tell a classifier from a constant.

    Returns:
        A subset of `FLAG_ONLY_BENIGN`, `FLAG_ONLY_MALIGNANT` (about the labels),
        `FLAG_ALL_PREDICTED_MALIGNANT` and `FLAG_ALL_PREDICTED_BENIGN` (about the predictions at
        `threshold`); an empty list when both classes are present and predicted.
    """
    labels, probabilities = validate_binary_inputs(labels, probabilities)
    predicted = probabilities >= threshold
    flags = []
    if not labels.any():
        flags.append(FLAG_ONLY_BENIGN)
    if labels.all():
        flags.append(FLAG_ONLY_MALIGNANT)
    if predicted.all():
        flags.append(FLAG_ALL_PREDICTED_MALIGNANT)
    if not predicted.any():
        flags.append(FLAG_ALL_PREDICTED_BENIGN)
    return flags


def compute_metrics(
    labels, probabilities, *, threshold: float = 0.5, patients=None, magnifications=None
) -> dict:
    """Every metric of SPEC section 5 for one set of predictions.

    Args:
        labels: 0/1 true labels (benign 0, malignant 1).
        probabilities: predicted probability of malignant.
        threshold: probability at or above which an image is called malignant.
        patients: optional patient key per image (enables the patient recognition rate and
            `patient_level`, the scores of one decision per patient: `patient_level_scores`).
        magnifications: optional magnification per image (enables the per-magnification view).

    Returns:
        A JSON-ready dict; `confusion_matrix` is `[[tn, fp], [fn, tp]]`; `flags` lists what makes
        the evaluation degenerate (see `prediction_flags`), empty when nothing does.
    """
    labels, probabilities = validate_binary_inputs(labels, probabilities)
    predicted = (probabilities >= threshold).astype(int)
    result = {"threshold": float(threshold), **binary_scores(labels, probabilities, threshold)}
    result["flags"] = prediction_flags(labels, probabilities, threshold)
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
        result["patient_level"] = patient_level_scores(labels, probabilities, patients, threshold)
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


def choose_threshold(labels, probabilities, method: str = THRESHOLD_YOUDEN) -> float:
    """The decision threshold that maximises a criterion on the validation split (never the
    test split).

    Every distinct probability is a candidate cut (images at or above it are called malignant).
    `"youden"` maximises Youden's J = sensitivity + specificity - 1; `"balanced_accuracy"`
    maximises (sensitivity + specificity) / 2 = (J + 1) / 2, so both select the same cut; the
    second name is there for readers who think in balanced accuracy. Ties go to the highest cut
    (the fewest malignant calls), as `sklearn.metrics.roc_curve` orders them.

    Returns:
        The midpoint between the best cut's probability and the next lower distinct probability
        (0.0 when the best cut is the lowest), so the threshold sits between two validation
        scores instead of on one of them and generalises to unseen images.

    Raises:
        ValueError: when `method` is unknown or the labels hold one class only (no cut can be
            judged then; callers should report that instead of picking a threshold).
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(
            f"method must be one of {THRESHOLD_METHODS!r}. Received: method={method!r}"
        )
    labels, probabilities = validate_binary_inputs(labels, probabilities)
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError(
            "Choosing a threshold needs both benign and malignant validation images. "
            f"Received: labels with the single class {CLASS_NAMES[int(classes[0])]!r}"
        )
    cuts = np.unique(probabilities)[::-1]  # distinct probabilities, highest first
    malignant = int(labels.sum())
    benign = len(labels) - malignant
    # Malignant and benign images at or above each cut, counted once over the sorted scores.
    true_positives = np.searchsorted(np.sort(-probabilities[labels == 1]), -cuts, side="right")
    false_positives = np.searchsorted(np.sort(-probabilities[labels == 0]), -cuts, side="right")
    # Integer scores (the criteria times malignant * benign) so ties are exact for both methods.
    if method == THRESHOLD_YOUDEN:
        score = true_positives * benign - false_positives * malignant
    else:
        score = true_positives * benign + (benign - false_positives) * malignant
    best = int(np.argmax(score))
    lower = cuts[best + 1] if best + 1 < len(cuts) else 0.0
    return float((cuts[best] + lower) / 2)


def youden_threshold(labels, probabilities) -> float:
    """`choose_threshold(labels, probabilities, "youden")`, but 0.5 when the labels hold one
    class (its behaviour before `choose_threshold` existed; it used to return the best cut's
    probability itself rather than the midpoint below it)."""
    if len(np.unique(np.asarray(labels))) < 2:
        return 0.5
    return choose_threshold(labels, probabilities, THRESHOLD_YOUDEN)


BOOTSTRAP_METRICS = tuple(metric.key for metric in METRICS if metric.bootstrap)


def group_index(patients, labels, name: str = "patients") -> tuple[np.ndarray, int]:
    """Each image's patient (or cluster) as an index into the sorted distinct keys, and how
    many there are; `name` is the argument named in the error."""
    patients = np.asarray(patients)
    if patients.shape != labels.shape:
        raise ValueError(
            f"{name} must give one key per image. Received: "
            f"{name}.shape={patients.shape!r} for {len(labels)} images"
        )
    keys, index = np.unique(patients, return_inverse=True)
    return index.reshape(-1), len(keys)


def _resampled_auc(weights, labels, probabilities) -> np.ndarray:
    """Per row of `weights` (samples, images), the AUC of the images counted that many times:
    the weighted Mann-Whitney statistic over the images sorted once by probability, ties
    counting half; NaN where a row has no malignant or no benign weight."""
    order = np.argsort(probabilities, kind="stable")
    ordered = probabilities[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # one group per score
    weights = weights[:, order]
    malignant = np.add.reduceat(weights * labels[order], starts, axis=1)
    benign = np.add.reduceat(weights * (1 - labels[order]), starts, axis=1)
    below = np.cumsum(benign, axis=1) - benign  # benign weight strictly below each score
    wins = np.sum(malignant * (below + benign / 2), axis=1)
    pairs = malignant.sum(axis=1) * benign.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def resampled_scores(multiplicity, index, labels, probabilities, threshold) -> dict:
    """`BOOTSTRAP_METRICS` of every resample at once, NaN where `binary_scores` gives None.

    Args:
        multiplicity: (samples, patients) how often each patient is drawn in each resample.
        index: each image's patient index.
    """
    # Each image's confusion cell: 0 true positive, 1 false negative, 2 false positive, 3 true
    # negative; counted per patient, then per resample, exactly in float64.
    cells = 2 * (labels == 0) + (probabilities < threshold)
    patients = multiplicity.shape[1]
    per_patient = np.bincount(index * 4 + cells, minlength=4 * patients).reshape(patients, 4)
    tp, fn, fp, tn = (multiplicity @ per_patient).T
    positives, negatives = tp + fn, tn + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        # sklearn's zero_division=0: precision, recall and F1 are 0 where undefined; specificity,
        # balanced accuracy and AUC are None (NaN here) as in `binary_scores`.
        recall = np.where(positives > 0, tp / positives, 0.0)
        specificity = np.where(negatives > 0, tn / negatives, np.nan)
        scores = {
            "accuracy": (tp + tn) / (positives + negatives),
            "balanced_accuracy": np.where(positives > 0, (recall + specificity) / 2, np.nan),
            "specificity": specificity,
            "precision": np.where(tp + fp > 0, tp / (tp + fp), 0.0),
            "recall": recall,
            "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0),
        }
    # Chunks of resamples keep the (samples, images) weights near 32 MB whatever the split.
    rows = max(1, 2**22 // len(labels))
    scores["auc_roc"] = np.concatenate(
        [
            _resampled_auc(multiplicity[i : i + rows][:, index], labels, probabilities)
            for i in range(0, len(multiplicity), rows)
        ]
        or [np.empty(0)]
    )
    return scores


def bootstrap_by_patient(
    labels, probabilities, patients, *, threshold: float = 0.5, samples: int = 1000, seed: int = 0
) -> dict:
    """95% confidence intervals resampling PATIENTS with replacement (images of one patient
    are not independent, so resampling images would understate the uncertainty).

    Every resample's scores come from one vectorised pass: per-patient confusion counts times
    how often each patient is drawn, and the AUC as a weighted Mann-Whitney statistic. They
    equal `binary_scores` on the concatenated images of the drawn patients.

    Returns:
        `{metric: [low, high]}` for each of `BOOTSTRAP_METRICS`; a metric undefined in a
        resample (e.g. specificity without a benign patient) is left out of that resample, and
        a metric undefined in every resample is absent.
    """
    labels, probabilities = validate_binary_inputs(labels, probabilities)
    index, count = group_index(patients, labels)
    rng = np.random.default_rng(seed)
    # One (samples, patients) draw is the same stream as one draw of `count` per resample.
    chosen = rng.integers(0, count, (samples, count))
    offsets = (np.arange(samples) * count)[:, None]
    multiplicity = np.bincount((chosen + offsets).ravel(), minlength=samples * count)
    multiplicity = multiplicity.reshape(samples, count).astype(float)
    scores = resampled_scores(multiplicity, index, labels, probabilities, threshold)
    intervals = {}
    for key in BOOTSTRAP_METRICS:
        values = scores[key][~np.isnan(scores[key])]
        if values.size:
            intervals[key] = [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
    return intervals

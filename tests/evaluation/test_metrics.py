"""Metrics against sklearn and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk

from bc_keras.evaluation import metrics


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
    assert result["balanced_accuracy"] == pytest.approx(
        sk.balanced_accuracy_score(labels, predicted)
    )
    # Specificity is the recall of the benign class.
    assert result["specificity"] == pytest.approx(sk.recall_score(labels, predicted, pos_label=0))
    assert result["flags"] == []
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
    assert result["per_magnification"]["100"]["balanced_accuracy"] == pytest.approx(
        sk.balanced_accuracy_score(labels[mask], predicted[mask])
    )
    assert result["per_magnification"]["100"]["specificity"] == pytest.approx(
        sk.recall_score(labels[mask], predicted[mask], pos_label=0)
    )


def test_auc_is_none_for_a_single_class_and_threshold_choice():
    assert metrics.compute_metrics([1, 1, 1], [0.2, 0.6, 0.9])["auc_roc"] is None
    labels = np.array([0, 0, 0, 1, 1, 1])
    probabilities = np.array([0.1, 0.2, 0.3, 0.35, 0.8, 0.9])
    # Every threshold in (0.3, 0.35] separates the classes perfectly; the cut is at 0.35 and the
    # returned threshold is the midpoint down to the next validation score, 0.3.
    assert metrics.youden_threshold(labels, probabilities) == pytest.approx(0.325)
    assert metrics.youden_threshold([1, 1, 1], [0.2, 0.6, 0.9]) == 0.5


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


def test_accuracy_hides_a_majority_class_model():
    # 70 malignant and 30 benign images, every one called malignant.
    labels = np.array([1] * 70 + [0] * 30)
    probabilities = np.full(100, 0.9)
    result = metrics.compute_metrics(labels, probabilities)
    assert result["accuracy"] == pytest.approx(0.70)
    assert result["balanced_accuracy"] == pytest.approx(0.50)
    assert result["specificity"] == 0.0
    assert result["recall"] == 1.0
    assert result["flags"] == [metrics.FLAG_ALL_PREDICTED_MALIGNANT]
    assert result["flags"] == ["predicts malignant for every image"]


def test_one_class_labels_leave_specificity_and_balanced_accuracy_undefined():
    only_malignant = metrics.compute_metrics([1, 1, 1], [0.2, 0.6, 0.9])
    assert only_malignant["specificity"] is None
    assert only_malignant["balanced_accuracy"] is None
    assert only_malignant["recall"] == pytest.approx(2 / 3)
    assert only_malignant["flags"] == ["only malignant images"]
    only_benign = metrics.compute_metrics([0, 0, 0, 0], [0.2, 0.6, 0.1, 0.3])
    assert only_benign["specificity"] == pytest.approx(3 / 4)
    assert only_benign["balanced_accuracy"] is None
    assert only_benign["flags"] == ["only benign images"]


def test_prediction_flags():
    assert metrics.prediction_flags([0, 1, 1], [0.1, 0.7, 0.4]) == []
    assert metrics.prediction_flags([0, 1, 1], [0.1, 0.2, 0.4]) == [
        "predicts benign for every image"
    ]
    # The threshold decides what counts as a malignant call.
    assert metrics.prediction_flags([0, 1, 1], [0.1, 0.2, 0.4], threshold=0.05) == [
        "predicts malignant for every image"
    ]
    assert metrics.prediction_flags([0, 0], [0.1, 0.9]) == ["only benign images"]
    assert metrics.prediction_flags([1], [0.9]) == [
        "only malignant images",
        "predicts malignant for every image",
    ]
    with pytest.raises(ValueError, match="empty"):
        metrics.prediction_flags([], [])


def test_bad_labels_are_reported():
    with pytest.raises(ValueError, match="labels must be 0"):
        metrics.compute_metrics([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="same length"):
        metrics.compute_metrics([0, 1, 1], [0.1, 0.2])


def test_choose_threshold_hand_computed():
    labels = [0, 0, 0, 1, 1, 1]
    probabilities = [0.1, 0.2, 0.3, 0.35, 0.8, 0.9]
    for method in ("youden", "balanced_accuracy"):
        assert metrics.choose_threshold(labels, probabilities, method) == pytest.approx(0.325)
    # J is 1/2 at the cuts 0.8 and 0.4 (0 at 0.6 and 0.2): the tie goes to the higher cut, and
    # the threshold is halfway down to 0.6.
    assert metrics.choose_threshold([0, 1, 0, 1], [0.2, 0.4, 0.6, 0.8]) == pytest.approx(0.7)
    # Scores ranked the wrong way round: only calling everything malignant reaches J = 0 (the
    # cut 0.8 gives J = -1), so the threshold is halfway from the lowest score, 0.2, to 0.
    assert metrics.choose_threshold([0, 1], [0.8, 0.2]) == pytest.approx(0.1)
    # Repeated scores are one candidate: cut 0.6 gives J = 1 - 1/3; the next lower score is 0.3.
    labels = [0, 0, 0, 1, 1]
    assert metrics.choose_threshold(labels, [0.3, 0.3, 0.6, 0.6, 0.6]) == pytest.approx(0.45)


def test_choose_threshold_youden_and_balanced_accuracy_agree_and_are_optimal():
    rng = np.random.default_rng(3)
    for _ in range(5):
        labels = rng.integers(0, 2, 80)
        # Rounded scores make ties, between images and between cuts.
        probabilities = np.round(np.clip(labels * 0.2 + rng.uniform(0, 0.8, 80), 0, 1), 1)
        youden = metrics.choose_threshold(labels, probabilities, "youden")
        balanced = metrics.choose_threshold(labels, probabilities, "balanced_accuracy")
        assert youden == balanced
        # No cut at a validation score beats the chosen one on sklearn's balanced accuracy.
        best = max(
            sk.balanced_accuracy_score(labels, (probabilities >= cut).astype(int))
            for cut in np.unique(probabilities)
        )
        chosen = sk.balanced_accuracy_score(labels, (probabilities >= youden).astype(int))
        assert chosen == pytest.approx(best)
        # The threshold lies strictly between validation scores.
        assert youden not in set(probabilities.tolist())


def test_choose_threshold_rejects_one_class_and_unknown_methods():
    with pytest.raises(ValueError, match="both benign and malignant"):
        metrics.choose_threshold([1, 1, 1], [0.2, 0.6, 0.9])
    with pytest.raises(ValueError, match="method='f1'"):
        metrics.choose_threshold([0, 1], [0.2, 0.6], method="f1")


def test_bootstrap_resamples_patients_not_images():
    # 10 patients of 20 images each; a patient's images are all right (7 patients) or all wrong
    # (3 patients), so the evidence is 10 patients, not 200 independent images.
    patients = np.repeat(np.arange(10), 20)
    labels = np.repeat(np.arange(10) % 2, 20)
    right = np.repeat(np.arange(10) < 7, 20)
    probabilities = np.where(right == (labels == 1), 0.9, 0.1)
    assert metrics.compute_metrics(labels, probabilities)["accuracy"] == pytest.approx(0.7)
    samples = 400
    low, high = metrics.bootstrap_by_patient(
        labels, probabilities, patients, samples=samples, seed=0
    )["accuracy"]

    rng = np.random.default_rng(0)
    correct = (probabilities >= 0.5) == labels
    image_level = [np.mean(correct[rng.integers(0, 200, 200)]) for _ in range(samples)]
    image_low, image_high = np.percentile(image_level, [2.5, 97.5])

    # Patient-level accuracy is a Binomial(10, 0.7) count of right patients over 10, whose
    # central 95% range is 4..10 patients; image-level resampling sees Binomial(200, 0.7) / 200.
    assert stats.binom.ppf(0.025, 10, 0.7) / 10 == pytest.approx(0.4)
    assert low == pytest.approx(0.4, abs=0.1)
    assert high >= 0.9
    assert image_high - image_low < 0.2
    assert high - low > 2.5 * (image_high - image_low)


def test_bootstrap_reports_balanced_accuracy_and_specificity():
    rng = np.random.default_rng(2)
    patients = np.repeat([f"P{i}" for i in range(8)], 6)
    labels = np.repeat([0, 1] * 4, 6)
    probabilities = np.clip(labels * 0.3 + rng.uniform(0, 0.7, 48), 0, 1)
    intervals = metrics.bootstrap_by_patient(labels, probabilities, patients, samples=200)
    assert set(intervals) == set(metrics.BOOTSTRAP_METRICS)
    point = metrics.compute_metrics(labels, probabilities)
    for key in ("balanced_accuracy", "specificity"):
        low, high = intervals[key]
        assert 0 <= low <= point[key] <= high <= 1


def _patient_level_split():
    # Patient: labels, probabilities -> patient label, mean probability (binary fractions, so
    # the means tie exactly where meant to).
    # A malignant (0.875, 0.625, 0.375) -> 1, 0.625;  B benign (0.25, 0.375) -> 0, 0.3125;
    # C malignant (0.125, 0.5) -> 1, 0.3125;  D benign (0.75) -> 0, 0.75;
    # E mixed (1, 0), a tie -> malignant, 0.75;  F mixed (0, 0, 1), majority -> benign, 0.125.
    patients = list("AAABBCCDEEFFF")
    labels = [1, 1, 1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1]
    probabilities = [0.875, 0.625, 0.375, 0.25, 0.375, 0.125, 0.5, 0.75, 0.875, 0.625] + [0.125] * 3
    return labels, probabilities, patients


def test_patient_level_scores_hand_computed():
    labels, probabilities, patients = _patient_level_split()
    # At 0.5 the calls are A 1, B 0, C 0, D 1, E 1, F 0: tp A, E; fn C; fp D; tn B, F.
    result = metrics.patient_level_scores(labels, probabilities, patients)
    assert (result["patients"], result["benign_patients"], result["malignant_patients"]) == (
        6,
        3,
        3,
    )
    assert result["confusion_matrix"] == [[2, 1], [1, 2]]
    assert result["accuracy"] == pytest.approx(4 / 6)
    for key in ("precision", "recall", "specificity", "f1", "balanced_accuracy"):
        assert result[key] == pytest.approx(2 / 3)
    # Malignant means {0.625, 0.3125, 0.75} against benign {0.3125, 0.75, 0.125}: 2 + 1.5 + 2.5
    # of 9 pairs (ties count half).
    assert result["auc_roc"] == pytest.approx(6 / 9)
    # At 0.7 only E and D are called malignant: tp E; fn A, C; fp D; tn B, F.
    strict = metrics.patient_level_scores(labels, probabilities, patients, threshold=0.7)
    assert strict["confusion_matrix"] == [[2, 1], [2, 1]]
    assert strict["accuracy"] == pytest.approx(3 / 6)
    assert strict["recall"] == pytest.approx(1 / 3)
    assert strict["precision"] == pytest.approx(1 / 2)
    assert strict["specificity"] == pytest.approx(2 / 3)
    assert strict["f1"] == pytest.approx(2 / 5)
    assert strict["balanced_accuracy"] == pytest.approx(1 / 2)
    assert strict["auc_roc"] == pytest.approx(6 / 9)


def test_patient_level_scores_one_class_and_bad_patients():
    # Two malignant patients, one right (mean 0.8) and one wrong (mean 0.3): no benign patient.
    result = metrics.patient_level_scores([1, 1, 1], [0.9, 0.7, 0.3], ["a", "a", "b"])
    assert result["recall"] == pytest.approx(0.5)
    assert result["specificity"] is None and result["auc_roc"] is None
    assert (result["benign_patients"], result["malignant_patients"]) == (0, 2)
    with pytest.raises(ValueError, match="one key per image"):
        metrics.patient_level_scores([0, 1], [0.2, 0.8], ["a", "b", "c"])


def test_compute_metrics_adds_the_patient_level_scores_with_patients():
    labels, probabilities, patients = _patient_level_split()
    result = metrics.compute_metrics(labels, probabilities, threshold=0.7, patients=patients)
    assert result["patient_level"] == metrics.patient_level_scores(
        labels, probabilities, patients, threshold=0.7
    )
    assert result["patient_level"]["accuracy"] == pytest.approx(3 / 6)
    # Image-level accuracy at 0.7 differs: 2 of the 7 malignant and 5 of the 6 benign images.
    assert result["accuracy"] == pytest.approx((2 + 5) / 13)
    assert "patient_level" not in metrics.compute_metrics(labels, probabilities)

"""Calibration and significance tests against sklearn, scipy, brute force and hand-computed
values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn import calibration
from sklearn import metrics as sk

from bc_keras.evaluation import statistics


def test_brier_score_hand_computed_and_equals_sklearn():
    # ((0.2 - 0)^2 + (0.6 - 1)^2) / 2 = (0.04 + 0.16) / 2
    assert statistics.brier_score([0, 1], [0.2, 0.6]) == pytest.approx(0.1)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 100)
    probabilities = rng.uniform(0, 1, 100)
    assert statistics.brier_score(labels, probabilities) == pytest.approx(
        sk.brier_score_loss(labels, probabilities)
    )


def test_reliability_curve_and_ece_hand_computed():
    labels = [0, 0, 1, 1, 1, 0]
    probabilities = [0.05, 0.15, 0.12, 0.95, 1.0, 0.5]
    curve = statistics.reliability_curve(labels, probabilities, bins=10)
    # Bins [0, .1): {0.05}; [.1, .2): {0.15, 0.12}; [.5, .6): {0.5}; [.9, 1]: {0.95, 1.0}.
    assert curve["counts"] == [1, 2, 1, 2]
    assert curve["mean_predicted"] == pytest.approx([0.05, 0.135, 0.5, 0.975])
    assert curve["fraction_positive"] == pytest.approx([0.0, 0.5, 0.0, 1.0])
    assert np.allclose(curve["bin_edges"], [[0, 0.1], [0.1, 0.2], [0.5, 0.6], [0.9, 1.0]])
    expected = (1 * 0.05 + 2 * (0.5 - 0.135) + 1 * 0.5 + 2 * 0.025) / 6
    assert statistics.expected_calibration_error(labels, probabilities) == pytest.approx(expected)
    # Two bins: [0, .5) holds 0.05, 0.15, 0.12 (one malignant), [.5, 1] the other three.
    coarse = statistics.reliability_curve(labels, probabilities, bins=2)
    assert coarse["counts"] == [3, 3]
    assert coarse["fraction_positive"] == pytest.approx([1 / 3, 2 / 3])
    assert coarse["mean_predicted"] == pytest.approx([0.32 / 3, 2.45 / 3])


def test_reliability_curve_equals_sklearn_calibration_curve():
    rng = np.random.default_rng(1)
    probabilities = rng.beta(2, 5, 300)
    labels = (rng.uniform(0, 1, 300) < probabilities).astype(int)
    curve = statistics.reliability_curve(labels, probabilities, bins=8)
    fraction_positive, mean_predicted = calibration.calibration_curve(
        labels, probabilities, n_bins=8, strategy="uniform"
    )
    assert curve["fraction_positive"] == pytest.approx(fraction_positive)
    assert curve["mean_predicted"] == pytest.approx(mean_predicted)
    assert sum(curve["counts"]) == 300


def test_perfect_calibration_has_zero_ece_and_bad_input_is_reported():
    # Every bin's mean prediction equals its malignant share.
    labels = [0, 0, 0, 1, 1, 1, 1, 0]
    probabilities = [0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75]
    assert statistics.expected_calibration_error(labels, probabilities) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        statistics.reliability_curve([0, 1], [0.2, 1.2])
    with pytest.raises(ValueError, match="bins=0"):
        statistics.reliability_curve([0, 1], [0.2, 0.8], bins=0)


def _brute_force_delong(labels, scores_a, scores_b):
    """DeLong et al. (1988) with explicit loops over every (malignant, benign) pair."""
    labels = np.asarray(labels)
    positive = [np.asarray(s)[labels == 1] for s in (scores_a, scores_b)]
    negative = [np.asarray(s)[labels == 0] for s in (scores_a, scores_b)]
    m, n = len(positive[0]), len(negative[0])

    def psi(x, y):
        return 1.0 if x > y else 0.5 if x == y else 0.0

    v10 = np.zeros((2, m))
    v01 = np.zeros((2, n))
    for k in range(2):
        for i in range(m):
            v10[k, i] = sum(psi(positive[k][i], negative[k][j]) for j in range(n)) / n
        for j in range(n):
            v01[k, j] = sum(psi(positive[k][i], negative[k][j]) for i in range(m)) / m
    aucs = v10.mean(axis=1)
    s10, s01 = np.cov(v10), np.cov(v01)
    variance = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m
    variance += (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    return aucs, math.sqrt(variance)


def test_delong_agrees_with_sklearn_and_brute_force():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 60)
    # Rounded scores put ties within and across classes, which the midranks must handle.
    scores_a = np.round(np.clip(labels * 0.3 + rng.uniform(0, 0.7, 60), 0, 1), 1)
    scores_b = np.round(np.clip(labels * 0.1 + rng.uniform(0, 0.9, 60), 0, 1), 1)
    result = statistics.delong_test(labels, scores_a, scores_b)
    assert result["auc_a"] == pytest.approx(sk.roc_auc_score(labels, scores_a))
    assert result["auc_b"] == pytest.approx(sk.roc_auc_score(labels, scores_b))
    assert result["difference"] == pytest.approx(result["auc_a"] - result["auc_b"])
    aucs, standard_error = _brute_force_delong(labels, scores_a, scores_b)
    assert [result["auc_a"], result["auc_b"]] == pytest.approx(aucs)
    assert result["standard_error"] == pytest.approx(standard_error)
    z = (aucs[0] - aucs[1]) / standard_error
    assert result["z"] == pytest.approx(z)
    assert result["p_value"] == pytest.approx(2 * scipy_stats.norm.sf(abs(z)))
    swapped = statistics.delong_test(labels, scores_b, scores_a)
    assert swapped["z"] == pytest.approx(-result["z"])
    assert swapped["p_value"] == pytest.approx(result["p_value"])


def test_delong_hand_computed():
    # Model a separates the classes (AUC 1). Model b: malignant 0.9 outscores both benign
    # images, malignant 0.2 only the benign 0.1, so AUC 3/4. Differences of the placement
    # values: malignant [0, 1/2], benign [1/2, 0]; each has sample variance 1/8, so the
    # variance of the AUC difference is 1/8 / 2 + 1/8 / 2 = 1/8 and z = (1/4) / sqrt(1/8).
    labels = [1, 1, 0, 0]
    result = statistics.delong_test(labels, [0.9, 0.8, 0.3, 0.1], [0.9, 0.2, 0.3, 0.1])
    assert result["auc_a"] == pytest.approx(1.0)
    assert result["auc_b"] == pytest.approx(0.75)
    assert result["standard_error"] == pytest.approx(math.sqrt(1 / 8))
    assert result["z"] == pytest.approx(1 / math.sqrt(2))
    assert result["p_value"] == pytest.approx(2 * (1 - scipy_stats.norm.cdf(1 / math.sqrt(2))))


def test_delong_identical_and_clearly_different_models():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 200)
    good = np.clip(labels * 0.5 + rng.uniform(0, 0.5, 200), 0, 1)
    weak = np.clip(labels * 0.05 + rng.uniform(0, 0.95, 200), 0, 1)
    same = statistics.delong_test(labels, good, good)
    assert same["difference"] == 0.0
    assert same["z"] == 0.0
    assert same["p_value"] == 1.0
    better = statistics.delong_test(labels, good, weak)
    assert better["difference"] > 0.2
    assert better["p_value"] < 0.01
    with pytest.raises(ValueError, match="two benign and two malignant"):
        statistics.delong_test([1, 1, 0], [0.9, 0.8, 0.1], [0.7, 0.6, 0.2])


def test_paired_fold_test_equals_scipy():
    values_a = [0.81, 0.84, 0.79, 0.88, 0.83]
    values_b = [0.78, 0.80, 0.80, 0.82, 0.79]
    result = statistics.paired_fold_test(values_a, values_b)
    expected = scipy_stats.ttest_rel(values_a, values_b)
    differences = np.subtract(values_a, values_b)
    assert result["n"] == 5
    assert result["mean_difference"] == pytest.approx(0.032)
    assert result["sd_difference"] == pytest.approx(np.std(differences, ddof=1))
    assert result["t"] == pytest.approx(expected.statistic)
    assert result["p_value"] == pytest.approx(expected.pvalue)
    # t = mean / (sd / sqrt(n)) by hand.
    assert result["t"] == pytest.approx(0.032 / (np.std(differences, ddof=1) / math.sqrt(5)))


def test_paired_fold_test_degenerate_cases():
    single = statistics.paired_fold_test([0.8], [0.7])
    assert single["mean_difference"] == pytest.approx(0.1)
    assert single["n"] == 1
    assert single["sd_difference"] is None and single["t"] is None and single["p_value"] is None
    identical = statistics.paired_fold_test([0.8, 0.7, 0.9], [0.8, 0.7, 0.9])
    assert identical["t"] == 0.0 and identical["p_value"] == 1.0
    with pytest.raises(ValueError, match="one value per fold"):
        statistics.paired_fold_test([0.8, 0.7], [0.8])


def test_mean_and_sd():
    assert statistics.mean_and_sd([2, 4, 6]) == pytest.approx((4.0, 2.0))
    assert statistics.mean_and_sd([0.7]) == (0.7, None)
    with pytest.raises(ValueError, match="non-empty"):
        statistics.mean_and_sd([])


def _loop_clustered_covariance(labels, scores, clusters):
    """Obuchowski (1997), section 2, written from the paper with loops over clusters: the 2 x 2
    covariance matrix of the two models' AUCs."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    keys = sorted(set(clusters.tolist()))
    positive, negative = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    big_m, big_n, big_i = len(positive), len(negative), len(keys)
    i10 = len({clusters[j] for j in positive})
    i01 = len({clusters[k] for k in negative})

    def psi(x, y):
        return 1.0 if x > y else 0.5 if x == y else 0.0

    def dot(u, v):
        return sum(a * b for a, b in zip(u, v, strict=True))

    theta, x_parts, y_parts = [], [], []
    for score in scores:
        score = np.asarray(score, dtype=float)
        v10 = {j: sum(psi(score[j], score[k]) for k in negative) / big_n for j in positive}
        v01 = {k: sum(psi(score[j], score[k]) for j in positive) / big_m for k in negative}
        auc = sum(v10.values()) / big_m
        x, y = [], []
        for key in keys:
            members = np.flatnonzero(clusters == key)
            mine_positive = [j for j in members if labels[j] == 1]
            mine_negative = [k for k in members if labels[k] == 0]
            x.append(sum(v10[j] for j in mine_positive) - len(mine_positive) * auc)
            y.append(sum(v01[k] for k in mine_negative) - len(mine_negative) * auc)
        theta.append(auc)
        x_parts.append(x)
        y_parts.append(y)
    covariance = np.zeros((2, 2))
    for r in range(2):
        for s in range(2):
            s10 = i10 / ((i10 - 1) * big_m) * dot(x_parts[r], x_parts[s])
            s01 = i01 / ((i01 - 1) * big_n) * dot(y_parts[r], y_parts[s])
            s11_rs = big_i / (big_i - 1) * dot(x_parts[r], y_parts[s])
            s11_sr = big_i / (big_i - 1) * dot(x_parts[s], y_parts[r])
            covariance[r, s] = s10 / big_m + s01 / big_n + (s11_rs + s11_sr) / (big_m * big_n)
    return np.array(theta), covariance


def test_clustered_delong_equals_a_loop_over_clusters_from_the_paper():
    # Six patients: mixed labels within a patient, a patient with benign images only, one with
    # a single image, and tied scores within and across classes and patients.
    clusters = ["p1"] * 4 + ["p2"] * 3 + ["p3"] * 2 + ["p4"] + ["p5"] * 3 + ["p6"] * 2
    labels = [1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 1, 0, 1, 0, 1]
    scores_a = [0.9, 0.7, 0.4, 0.7, 0.2, 0.3, 0.4, 0.6, 0.8, 0.5, 0.5, 0.1, 0.6, 0.3, 0.95]
    scores_b = [0.6, 0.8, 0.5, 0.4, 0.3, 0.3, 0.2, 0.7, 0.5, 0.6, 0.4, 0.2, 0.9, 0.5, 0.7]
    result = statistics.clustered_delong_test(labels, scores_a, scores_b, clusters)
    theta, covariance = _loop_clustered_covariance(labels, [scores_a, scores_b], clusters)
    np.testing.assert_allclose([result["auc_a"], result["auc_b"]], theta, rtol=1e-12)
    assert result["auc_a"] == pytest.approx(sk.roc_auc_score(labels, scores_a))
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    np.testing.assert_allclose(result["standard_error"], math.sqrt(variance), rtol=1e-10)
    z = (theta[0] - theta[1]) / math.sqrt(variance)
    np.testing.assert_allclose(result["z"], z, rtol=1e-10)
    assert result["p_value"] == pytest.approx(2 * scipy_stats.norm.sf(abs(z)), rel=1e-9)
    assert result["clusters"] == 6 and result["method"] == "obuchowski"
    # The clusters matter: the same images as independent images give another variance.
    assert statistics.delong_test(labels, scores_a, scores_b)["standard_error"] != pytest.approx(
        result["standard_error"]
    )


def test_clustered_delong_with_one_image_per_patient_is_delong():
    # With one image per cluster S11 vanishes and I10 / ((I10 - 1) M) = 1 / (M - 1), the sample
    # covariance's factor: the variance is DeLong's exactly, up to rounding.
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 2, 50)
    scores_a = np.round(np.clip(labels * 0.3 + rng.uniform(0, 0.7, 50), 0, 1), 1)
    scores_b = np.round(np.clip(labels * 0.1 + rng.uniform(0, 0.9, 50), 0, 1), 1)
    patients = [f"P{i}" for i in range(50)]
    delong = statistics.delong_test(labels, scores_a, scores_b)
    clustered = statistics.clustered_delong_test(labels, scores_a, scores_b, patients)
    assert clustered["auc_a"] == delong["auc_a"] and clustered["auc_b"] == delong["auc_b"]
    for key in ("difference", "standard_error", "z", "p_value"):
        np.testing.assert_allclose(clustered[key], delong[key], rtol=1e-12, err_msg=key)
    assert clustered["clusters"] == 50
    # auc_difference_test uses the image-level test for such patients, and without patients.
    for given in (patients, None):
        chosen = statistics.auc_difference_test(labels, scores_a, scores_b, patients=given)
        assert chosen == {**delong, "method": "delong", "clusters": None}


def test_patient_clusters_widen_the_auc_comparison():
    # Ten patients of 30 near-identical images each (the patient's score plus noise far below
    # the gaps between patients). A outranks B on two more of the 25 benign-malignant patient
    # pairs (AUC 23/25 against 21/25): 300 "independent" images make that look certain, ten
    # patients do not.
    rng = np.random.default_rng(8)
    patient_labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    patient_a = np.array([0.2, 0.3, 0.4, 0.5, 0.6, 0.45, 0.65, 0.7, 0.8, 0.9])
    patient_b = np.array([0.2, 0.3, 0.4, 0.5, 0.6, 0.35, 0.55, 0.7, 0.8, 0.9])
    patients, labels = np.repeat(np.arange(10), 30), np.repeat(patient_labels, 30)
    scores_a = np.repeat(patient_a, 30) + rng.normal(0, 0.005, 300)
    scores_b = np.repeat(patient_b, 30) + rng.normal(0, 0.005, 300)
    image_level = statistics.auc_difference_test(labels, scores_a, scores_b)
    clustered = statistics.auc_difference_test(labels, scores_a, scores_b, patients=patients)
    assert image_level["method"] == "delong" and clustered["method"] == "obuchowski"
    assert clustered["clusters"] == 10
    assert clustered["auc_a"] == pytest.approx(23 / 25) and clustered["auc_b"] == pytest.approx(
        0.84
    )
    assert clustered["difference"] == image_level["difference"]
    assert image_level["p_value"] < 0.05
    assert clustered["p_value"] > 0.05
    assert clustered["standard_error"] > 3 * image_level["standard_error"]


def test_clustered_delong_reports_bad_input():
    labels, scores = [1, 0, 1, 0], [0.9, 0.2, 0.7, 0.4]
    with pytest.raises(ValueError, match="one key per image"):
        statistics.clustered_delong_test(labels, scores, scores, ["a", "b", "c"])
    with pytest.raises(ValueError, match="same length"):
        statistics.clustered_delong_test(labels, scores, scores[:3], list("abcd"))
    with pytest.raises(ValueError, match="labels must be 0"):
        statistics.clustered_delong_test([1, 0, 2, 0], scores, scores, list("abcd"))
    # Both malignant images in one patient: one cluster with a malignant image.
    with pytest.raises(ValueError, match="1 with a malignant image"):
        statistics.clustered_delong_test(labels, scores, scores, ["a", "b", "a", "c"])
    with pytest.raises(ValueError, match="1 patients with a benign image"):
        statistics.clustered_delong_test(labels, scores, scores, ["a", "b", "c", "b"])
    # auc_difference_test sends a mismatched patient list to the clustered test's check.
    with pytest.raises(ValueError, match="one key per image"):
        statistics.auc_difference_test(labels, scores, scores, patients=["a", "b"])


def test_holm_adjust_hand_computed():
    # Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> max 0.06.
    assert statistics.holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx(
        [0.03, 0.06, 0.06, 0.02]
    )
    # None is passed through and not counted: the family is still the same four tests.
    adjusted = statistics.holm_adjust([0.01, None, 0.04, 0.03, 0.005, None])
    assert adjusted[1] is None and adjusted[5] is None
    assert [adjusted[i] for i in (0, 2, 3, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # Capped at 1: 0.5 * 2 = 1.0, then 0.6 * 1 stays under the running maximum.
    assert statistics.holm_adjust([0.6, 0.5]) == [1.0, 1.0]
    assert statistics.holm_adjust([0.2, 0.7]) == pytest.approx([0.4, 0.7])
    assert statistics.holm_adjust([]) == [] and statistics.holm_adjust([None]) == [None]
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        statistics.holm_adjust([0.1, 1.5])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        statistics.holm_adjust([0.1, float("nan")])


def _statsmodels_holm(p_values):
    """statsmodels' `multipletests(method="holm")` p-values, re-derived: sort, multiply by
    m, m - 1, ..., 1, running maximum, cap at 1, unsort."""
    p_values = np.asarray(p_values, dtype=float)
    order = np.argsort(p_values)
    corrected = np.maximum.accumulate(p_values[order] * np.arange(len(p_values), 0, -1))
    corrected[corrected > 1] = 1
    unsorted = np.empty_like(corrected)
    unsorted[order] = corrected
    return unsorted


def test_holm_adjust_equals_statsmodels_and_the_step_down_procedure():
    rng = np.random.default_rng(9)
    for size in (1, 2, 5, 12):
        # Rounded p-values tie; some are large enough to reach the cap.
        p_values = np.round(rng.uniform(0, 0.3, size) ** 2 * 5, 3)
        adjusted = np.array(statistics.holm_adjust(p_values.tolist()))
        np.testing.assert_allclose(adjusted, _statsmodels_holm(p_values), rtol=1e-12)
        # Holm's step-down test at level alpha: walk the sorted p-values, rejecting while
        # p_(k) <= alpha / (m - k + 1); the adjusted p-value is at most alpha exactly then.
        for alpha in (0.01, 0.05, 0.1, 0.5):
            rejected = np.zeros(size, dtype=bool)
            for k, i in enumerate(np.argsort(p_values, kind="stable")):
                if p_values[i] > alpha / (size - k):
                    break
                rejected[i] = True
            np.testing.assert_array_equal(adjusted <= alpha, rejected)

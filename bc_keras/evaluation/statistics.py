"""Calibration (Brier score, reliability curve, ECE) and significance tests for comparing models
on BreaKHis: DeLong's test of two ROC AUCs, its patient-clustered form (Obuchowski, 1997), a
paired t-test over folds and Holm's adjustment of a family of p-values."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from sklearn import metrics as sk

from bc_keras.evaluation.metrics import group_index, validate_binary_inputs

# `auc_difference_test`'s "method": image-level DeLong, or Obuchowski's clustered form.
METHOD_DELONG, METHOD_OBUCHOWSKI = "delong", "obuchowski"


def _probabilities_in_unit_interval(labels, probabilities):
    labels, probabilities = validate_binary_inputs(labels, probabilities)
    if probabilities.min() < 0.0 or probabilities.max() > 1.0:
        raise ValueError(
            "Calibration needs probabilities in [0, 1]. Received: probabilities from "
            f"{probabilities.min()!r} to {probabilities.max()!r}"
        )
    return labels, probabilities


def brier_score(labels, probabilities) -> float:
    """Mean squared difference between the malignant probability and the 0/1 label (lower is
    better; 0.25 for a constant 0.5), as `sklearn.metrics.brier_score_loss`."""
    labels, probabilities = _probabilities_in_unit_interval(labels, probabilities)
    return float(sk.brier_score_loss(labels, probabilities, pos_label=1))


def reliability_curve(labels, probabilities, bins: int = 10) -> dict:
    """Observed malignant share against mean predicted probability over equal-width bins.

    Bin i covers [i / bins, (i + 1) / bins); the last bin also holds 1.0. Empty bins are left
    out, so every list below has one entry per non-empty bin, lowest bin first.

    Returns:
        `{"mean_predicted": [...], "fraction_positive": [...], "counts": [...],
        "bin_edges": [[low, high], ...]}`.
    """
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be a positive integer. Received: bins={bins!r}")
    labels, probabilities = _probabilities_in_unit_interval(labels, probabilities)
    edges = np.arange(bins + 1) / bins
    # side="right" puts a probability equal to an edge in the bin that starts there.
    index = np.minimum(np.searchsorted(edges, probabilities, side="right") - 1, bins - 1)
    counts = np.bincount(index, minlength=bins)
    predicted_sums = np.bincount(index, weights=probabilities, minlength=bins)
    positive_sums = np.bincount(index, weights=labels, minlength=bins)
    filled = np.flatnonzero(counts)
    return {
        "mean_predicted": (predicted_sums[filled] / counts[filled]).tolist(),
        "fraction_positive": (positive_sums[filled] / counts[filled]).tolist(),
        "counts": counts[filled].tolist(),
        "bin_edges": [[float(edges[i]), float(edges[i + 1])] for i in filled],
    }


def expected_calibration_error(labels, probabilities, bins: int = 10) -> float:
    """Sum over the bins of `reliability_curve` of (count / N) * |fraction_positive -
    mean_predicted|: 0 for a calibrated model."""
    curve = reliability_curve(labels, probabilities, bins)
    counts = np.asarray(curve["counts"], dtype=float)
    gaps = np.abs(np.subtract(curve["fraction_positive"], curve["mean_predicted"]))
    return float(np.sum(counts / counts.sum() * gaps))


def _placement_values(positives, negatives):
    """DeLong's structural components by the midrank algorithm of Sun & Xu (2014).

    Args:
        positives: (models, m) scores of the malignant images.
        negatives: (models, n) scores of the benign images.

    Returns:
        `(aucs, v10, v01)`: per model the AUC, per malignant image the share of benign images
        it outscores (ties count half), per benign image the share of malignant images that
        outscore it.
    """
    m, n = positives.shape[1], negatives.shape[1]
    combined = stats.rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    within_positives = stats.rankdata(positives, axis=1)
    within_negatives = stats.rankdata(negatives, axis=1)
    v10 = (combined[:, :m] - within_positives) / n
    v01 = 1.0 - (combined[:, m:] - within_negatives) / m
    aucs = (combined[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    return aucs, v10, v01


def delong_test(labels, probabilities_a, probabilities_b) -> dict:
    """DeLong's test (DeLong et al., 1988) that two models scored on the same images have the
    same ROC AUC, with the O(n log n) midrank algorithm of Sun & Xu (2014).

    Returns:
        `{"auc_a", "auc_b", "difference" (auc_a - auc_b), "z", "p_value" (two-sided),
        "standard_error" (of the difference)}`. Identical predictions give z 0 and p_value 1;
        a non-zero difference with zero standard error gives an infinite z and p_value 0.
    """
    labels, probabilities_a = validate_binary_inputs(labels, probabilities_a)
    _, probabilities_b = validate_binary_inputs(labels, probabilities_b)
    malignant = int(labels.sum())
    if min(malignant, len(labels) - malignant) < 2:
        # The variance of the placement values needs two images of each class.
        raise ValueError(
            "The DeLong test needs at least two benign and two malignant images. Received: "
            f"benign={len(labels) - malignant!r}, malignant={malignant!r}"
        )
    scores = np.stack([probabilities_a, probabilities_b])
    aucs, v10, v01 = _placement_values(scores[:, labels == 1], scores[:, labels == 0])
    covariance = np.cov(v10) / v10.shape[1] + np.cov(v01) / v01.shape[1]
    return _z_test(aucs, covariance)


def _z_test(aucs, covariance) -> dict:
    """The two-sided z-test of `aucs[0] - aucs[1]` given the AUCs' 2 x 2 covariance matrix."""
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    standard_error = math.sqrt(max(float(variance), 0.0))
    difference = float(aucs[0] - aucs[1])
    if standard_error > 0:
        z = difference / standard_error
        p_value = float(2 * stats.norm.sf(abs(z)))
    elif difference == 0:
        z, p_value = 0.0, 1.0
    else:
        z, p_value = math.copysign(math.inf, difference), 0.0
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "difference": difference,
        "z": float(z),
        "p_value": p_value,
        "standard_error": standard_error,
    }


def clustered_delong_test(labels, probabilities_a, probabilities_b, clusters) -> dict:
    """DeLong's test of two ROC AUCs when images come in clusters (the patients): Obuchowski's
    nonparametric analysis of clustered ROC data (Biometrics 53:567-578, 1997).

    The AUCs are DeLong's; their (co)variances come from the variability between clusters of
    the structural components summed per cluster. With I clusters, I10 of them holding a
    malignant image and I01 a benign one, M malignant and N benign images, and per cluster and
    model X = (sum of V10 over its m malignant images) - m AUC and Y = (sum of V01 over its
    n benign images) - n AUC, the covariance of the AUCs of models r and s is
    S10 / M + S01 / N + (S11[r, s] + S11[s, r]) / (M N), where, summing over clusters,
    S10 = I10 / ((I10 - 1) M) sum X_r X_s, S01 = I01 / ((I01 - 1) N) sum Y_r Y_s and
    S11[r, s] = I / (I - 1) sum X_r Y_s. With one image per cluster this is DeLong's variance
    exactly (S11 vanishes and the factors become the sample covariances' 1 / (M - 1) and
    1 / (N - 1)), so the two tests agree to rounding.

    Args:
        labels: 0/1 true labels (benign 0, malignant 1), one per image.
        probabilities_a, probabilities_b: the two models' scores of the same images.
        clusters: the cluster (patient) key of each image.

    Returns:
        `delong_test`'s keys plus `"clusters"` (the number of clusters) and `"method"`
        (`"obuchowski"`).
    """
    labels, probabilities_a = validate_binary_inputs(labels, probabilities_a)
    _, probabilities_b = validate_binary_inputs(labels, probabilities_b)
    index, count = group_index(clusters, labels, "clusters")
    malignant = labels == 1
    with_malignant = len(np.unique(index[malignant]))
    with_benign = len(np.unique(index[~malignant]))
    if min(with_malignant, with_benign) < 2:
        # The between-cluster variances need two clusters holding each class.
        raise ValueError(
            "The clustered DeLong test needs at least two patients with a benign image and two "
            f"with a malignant image. Received: {with_benign!r} patients with a benign image, "
            f"{with_malignant!r} with a malignant image"
        )
    scores = np.stack([probabilities_a, probabilities_b])
    aucs, v10, v01 = _placement_values(scores[:, malignant], scores[:, ~malignant])

    def centred_cluster_sums(components, mask):
        # Per model and cluster, the summed components minus the cluster's images times the AUC.
        images = np.bincount(index[mask], minlength=count)
        sums = [np.bincount(index[mask], weights=row, minlength=count) for row in components]
        return np.stack(sums) - images * aucs[:, None], images.sum()

    x, total_malignant = centred_cluster_sums(v10, malignant)
    y, total_benign = centred_cluster_sums(v01, ~malignant)
    s10 = with_malignant / ((with_malignant - 1) * total_malignant) * (x @ x.T)
    s01 = with_benign / ((with_benign - 1) * total_benign) * (y @ y.T)
    s11 = count / (count - 1) * (x @ y.T)
    covariance = (
        s10 / total_malignant
        + s01 / total_benign
        + (s11 + s11.T) / (total_malignant * total_benign)
    )
    return {**_z_test(aucs, covariance), "clusters": count, "method": METHOD_OBUCHOWSKI}


def auc_difference_test(labels, probabilities_a, probabilities_b, patients=None) -> dict:
    """The test of two models' ROC AUCs on the same images that their dependence calls for.

    Images of one patient are not independent: with `patients` given and some patient holding
    more than one image, `clustered_delong_test` over the patients; otherwise (no patients, or
    one image each) the image-level `delong_test`.

    Returns:
        `delong_test`'s keys plus `"method"` (`"delong"` or `"obuchowski"`) and `"clusters"`
        (the number of patients for `"obuchowski"`, None for `"delong"`).
    """
    if patients is not None:
        patients = np.asarray(patients)
        _, images = np.unique(patients, return_counts=True)
        if patients.shape != np.shape(labels) or images.max(initial=0) > 1:
            return clustered_delong_test(labels, probabilities_a, probabilities_b, patients)
    result = delong_test(labels, probabilities_a, probabilities_b)
    return {**result, "clusters": None, "method": METHOD_DELONG}


def holm_adjust(p_values) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values of a family of tests (Holm, 1979).

    Sorted ascending, the k-th smallest of m p-values becomes the running maximum of
    (m - j + 1) p_(j) over j <= k, capped at 1, so the adjusted values keep the raw order and
    a test is rejected at level alpha exactly when Holm's step-down procedure rejects it.

    Args:
        p_values: p-values in [0, 1]; None entries (tests that could not be run) are passed
            through and not counted in the family size m.

    Returns:
        The adjusted p-values as floats, in the input order, None where the input is None.
    """
    values = list(p_values)
    present = [i for i, value in enumerate(values) if value is not None]
    raw = np.array([values[i] for i in present], dtype=float)
    if not np.all((raw >= 0) & (raw <= 1)):  # also refuses NaN
        raise ValueError(
            f"p_values must lie in [0, 1] (None for a test not run). Received: p_values={values!r}"
        )
    order = np.argsort(raw, kind="stable")
    steps = len(raw) - np.arange(len(raw))  # m, m - 1, ..., 1
    adjusted = np.empty(len(raw))
    adjusted[order] = np.minimum(np.maximum.accumulate(steps * raw[order]), 1.0)
    result: list[float | None] = [None] * len(values)
    for i, value in zip(present, adjusted, strict=True):
        result[i] = float(value)
    return result


def mean_and_sd(values) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1) of per-fold values; sd is None for one
    value."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence. Received: values={values!r}")
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(np.mean(values)), sd


def paired_fold_test(values_a, values_b) -> dict:
    """Paired t-test (`scipy.stats.ttest_rel`) of two models' metric over the same folds.

    Returns:
        `{"mean_difference" (a - b), "sd_difference", "t", "p_value" (two-sided), "n"}`; with
        fewer than two folds `sd_difference`, `t` and `p_value` are None. Equal values in every
        fold give t 0 and p_value 1; the same non-zero difference in every fold gives an
        infinite t and p_value 0.
    """
    values_a = np.asarray(values_a, dtype=float)
    values_b = np.asarray(values_b, dtype=float)
    if values_a.ndim != 1 or values_a.shape != values_b.shape or len(values_a) == 0:
        raise ValueError(
            "values_a and values_b must be non-empty and give one value per fold each. "
            f"Received: values_a={values_a!r}, values_b={values_b!r}"
        )
    mean_difference, sd_difference = mean_and_sd(values_a - values_b)
    result = {
        "mean_difference": mean_difference,
        "sd_difference": sd_difference,
        "t": None,
        "p_value": None,
        "n": len(values_a),
    }
    if sd_difference is None:
        return result
    if sd_difference > 0:
        test = stats.ttest_rel(values_a, values_b)
        result["t"], result["p_value"] = float(test.statistic), float(test.pvalue)
    elif mean_difference == 0:
        result["t"], result["p_value"] = 0.0, 1.0
    else:
        result["t"], result["p_value"] = math.copysign(math.inf, mean_difference), 0.0
    return result

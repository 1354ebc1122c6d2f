"""What makes a run folder's metrics.json or config.json unusable for the study report (run
folders are untrusted input): each check returns the reason, or None."""

from __future__ import annotations

import math

from bc_keras.errors import shorten

# The scores the report shows from metrics.json (numbers, or null where undefined).
SCORES = ("accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "auc_roc",
          "patient_recognition_rate", "threshold", "initial_val_loss", "best_val_loss",
          "best_val_contrastive_accuracy")  # fmt: skip
LABEL_FRACTION_USED = "label_fraction_used"
# Cross-fitting (config.json "cross_fit": K folds of the training patients, 0 or absent for a
# single split) and what the final model is: the K fold models averaged, or one model refit.
CROSS_FIT_ENSEMBLE = "ensemble"
CROSS_FIT_REFIT = "refit"
CROSS_FIT_FINALS = (CROSS_FIT_ENSEMBLE, CROSS_FIT_REFIT)
_FINALS_TEXT = " or ".join(map(repr, CROSS_FIT_FINALS))
# metrics.json "patient_level": the binary scores of each patient's mean probability.
PATIENT_LEVEL = "patient_level"
PATIENT_SCORES = ("accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1",
                  "auc_roc")  # fmt: skip
PATIENT_COUNTS = ("patients", "benign_patients", "malignant_patients")


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite(value) -> bool:
    return is_number(value) and math.isfinite(value)


def malformed_metrics(metrics: dict) -> str | None:
    """What makes a metrics.json unusable for the tables, or None. Every score must be a
    finite number or null (undefined): NaN, infinity, text or booleans are refused."""
    for key in (*SCORES, LABEL_FRACTION_USED):
        if metrics.get(key) is not None and not _is_finite(metrics[key]):
            return f"{key} is {metrics[key]!r}, not a finite number"
    intervals = metrics.get("bootstrap_95ci_by_patient", {})
    if not isinstance(intervals, dict) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(map(_is_finite, pair))
        for pair in intervals.values()
    ):
        return "bootstrap_95ci_by_patient is not {metric: [low, high]} of finite numbers"
    for key in ("counts", "per_magnification", "classification_report"):
        if not isinstance(metrics.get(key, {}), dict):
            return f"{key} is not an object"
    counts = metrics.get("counts", {})
    for key, value in counts.items():
        if not _is_count(value):
            return f"counts.{key} is {value!r}, not a count"
    for name, entry in metrics.get("per_magnification", {}).items():
        if not isinstance(entry, dict):
            return f"per_magnification.{name} is not an object"
        for key in SCORES:
            if entry.get(key) is not None and not _is_finite(entry[key]):
                return f"per_magnification.{name}.{key} is {entry[key]!r}, not a finite number"
    flags = metrics.get("flags", [])
    if not isinstance(flags, list) or not all(isinstance(flag, str) for flag in flags):
        return "flags is not a list of texts"
    return (
        _malformed_patient_level(metrics.get(PATIENT_LEVEL))
        or _malformed_cross_fit(metrics.get("cross_fit"))
        or _bad_share(metrics, (LABEL_FRACTION_USED,))
    )


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _bad_scores(entry: dict, keys, where: str) -> str | None:
    for key in keys:
        if entry.get(key) is not None and not _is_finite(entry[key]):
            return f"{where}.{key} is {shorten(repr(entry[key]), 40)}, not a finite number"
    return None


def _malformed_patient_level(entry) -> str | None:
    """metrics.json "patient_level" (absent in older runs): binary scores, a 2x2 confusion
    matrix of counts and the number of patients."""
    if entry is None:
        return None
    if not isinstance(entry, dict):
        return f"{PATIENT_LEVEL} is not an object"
    matrix = entry.get("confusion_matrix")
    if matrix is not None and not (
        isinstance(matrix, list)
        and len(matrix) == 2
        and all(
            isinstance(row, list) and len(row) == 2 and all(map(_is_count, row)) for row in matrix
        )
    ):
        return f"{PATIENT_LEVEL}.confusion_matrix is not [[tn, fp], [fn, tp]] of counts"
    for key in PATIENT_COUNTS:
        if entry.get(key) is not None and not _is_count(entry[key]):
            return f"{PATIENT_LEVEL}.{key} is {shorten(repr(entry[key]), 40)}, not a count"
    return _bad_scores(entry, PATIENT_SCORES, PATIENT_LEVEL)


def _malformed_cross_fit(entry) -> str | None:
    """metrics.json "cross_fit" (absent for a single split): K, the final model, each fold's
    threshold, their sd and the out-of-fold scores."""
    if entry is None:
        return None
    if not isinstance(entry, dict):
        return "cross_fit is not an object"
    k = entry.get("k")
    if not (_is_count(k) and k >= 2):
        return f"cross_fit.k is {shorten(repr(k), 40)}, not a fold count of 2 or more"
    if entry.get("final") not in (None, *CROSS_FIT_FINALS):
        return f"cross_fit.final is {shorten(repr(entry['final']), 40)}, not {_FINALS_TEXT}"
    thresholds = entry.get("fold_thresholds", [])
    if not isinstance(thresholds, list) or not all(map(_is_finite, thresholds)):
        return "cross_fit.fold_thresholds is not a list of finite numbers"
    problem = _bad_scores(entry, ("threshold_sd",), "cross_fit")
    out_of_fold = entry.get("out_of_fold", {})
    if problem or not isinstance(out_of_fold, dict):
        return problem or "cross_fit.out_of_fold is not an object"
    for key in ("images", "patients"):
        if out_of_fold.get(key) is not None and not _is_count(out_of_fold[key]):
            return (
                f"cross_fit.out_of_fold.{key} is {shorten(repr(out_of_fold[key]), 40)}, not a count"
            )
    return _bad_scores(out_of_fold, ("auc_roc", "balanced_accuracy"), "cross_fit.out_of_fold")


# config.json keys the report reads as text (null where unset) and as a share of the labels.
CONFIG_TEXTS = ("experiment", "recipe", "data", "model_out", "backbone", "weights", "encoder")
CONFIG_SHARES = ("label_fraction", LABEL_FRACTION_USED)


def _bad_share(record: dict, keys) -> str | None:
    for key in keys:
        value = record.get(key)
        if value is not None and not (_is_finite(value) and 0 < value <= 1):
            return f"{key} is {value!r}, not a share in (0, 1]"
    return None


def malformed_config(config: dict) -> str | None:
    """What makes a config.json unusable (a key the report reads of the wrong type), or None:
    a share read as 1.0 or a list shown as an experiment would be silently wrong."""
    for key in CONFIG_TEXTS:
        if config.get(key) is not None and not isinstance(config[key], str):
            return f"{key} is {shorten(repr(config[key]), 40)}, not a text"
    folds = config.get("cross_fit")
    if folds is not None and not (_is_count(folds) and folds != 1):
        return f"cross_fit is {shorten(repr(folds), 40)}, not 0 (a single split) or a fold count"
    final = config.get("cross_fit_final")
    if final is not None and final not in CROSS_FIT_FINALS:
        return f"cross_fit_final is {shorten(repr(final), 40)}, not {_FINALS_TEXT}"
    return _bad_share(config, CONFIG_SHARES)

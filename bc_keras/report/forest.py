"""The forest plot's rows: each model's AUC and balanced accuracy with its interval, read from
metrics.json as the results table reads them (one run: its patient-bootstrap 95% interval;
cross-validation: the mean over folds with mean -/+ sd)."""

from __future__ import annotations

from bc_keras.evaluation import statistics
from bc_keras.evaluation.metrics import METRICS_BY_KEY
from bc_keras.report.sets import EvaluationSet, Model

FOREST_METRICS = ("auc_roc", "balanced_accuracy")
FOREST_TITLE = (
    "AUC and balanced accuracy per model; bars: patient-bootstrap 95% interval "
    "(cross-validation: mean ± sd over folds); dotted: 0.5 (chance)"
)


def score(model: Model, metric: str) -> tuple[float | None, float | None, float | None]:
    """`(value, low, high)` of `model`'s `metric`; None where metrics.json has none."""
    if model.cross_validation:
        values = [value for _, value in model.fold_values(metric)]
        if not values:
            return None, None, None
        mean, sd = statistics.mean_and_sd(values)
        return (mean, None, None) if sd is None else (mean, mean - sd, mean + sd)
    metrics = model.runs[0].metrics
    pair = (metrics.get("bootstrap_95ci_by_patient") or {}).get(metric)
    low, high = pair if pair else (None, None)
    if low is not None and low > high:
        low, high = None, None  # metrics.json is untrusted: an inverted interval is not drawn
    return metrics.get(metric), low, high


def set_name(each: EvaluationSet) -> str:
    """The set's title up to its colon: "Test set 1", "Cross-validation 1"."""
    return each.title.partition(":")[0]


def forest_rows(sets: list[EvaluationSet]) -> list[tuple]:
    """`(label, metric title, value, low, high)` of every model of every set, for
    `plots.plot_forest`; labels start with the set's name when there are several sets."""
    rows = []
    for each in sets:
        prefix = f"{set_name(each)}: " if len(sets) > 1 else ""
        for model in each.models:
            for metric in FOREST_METRICS:
                title = METRICS_BY_KEY[metric].title
                rows.append((prefix + model.label, title, *score(model, metric)))
    return rows

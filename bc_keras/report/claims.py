"""The study report's significance tests (DeLong, paired over folds) and the report's three
claims (patient leak, linear evaluation, label efficiency), measured where their runs exist."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from bc_keras.evaluation import statistics
from bc_keras.prepare.folds import FOLD_KIND_OFFICIAL
from bc_keras.prepare.split import SPLIT_IMAGE, SPLIT_PATIENT
from bc_keras.report.figures import Figures, label_efficiency
from bc_keras.report.runs import (
    ENCODER_PRETRAINED,
    ENCODER_RANDOM,
    KIND_CLASSIFIER,
    ModelKey,
    Run,
)
from bc_keras.report.sets import EvaluationSet, Model, shared_predictions
from bc_keras.report.tables import (
    PUBLISHED,
    PUBLISHED_DROP_AT_10_PERCENT,
    PUBLISHED_LINEAR,
    markdown_table,
    number,
    p_value,
    published_for,
    with_interval,
)

ALPHA = 0.05
FRACTIONS_NEEDED = (0.1, 0.25, 0.5, 1.0)
DELONG_MEANING = (
    "DeLong's test asks whether two ROC AUCs measured on the same images differ by more than "
    "chance would make them differ; p < 0.05 means a difference at least this large would arise "
    "less than 5% of the time if the AUCs were equal. It treats images as independent, but "
    "images of one patient are not, so its p-values are optimistic: read them beside the "
    "patient-bootstrap intervals of the results table."
)
PAIRED_MEANING = (
    "The paired test over folds (a paired t-test of the per-fold AUCs) treats each fold as one "
    "observation, so it respects patients; with few folds it has little power, and p >= 0.05 is "
    "no evidence that the models are equal."
)


@dataclass
class Estimate:
    """A model's score: one run's value with its patient-bootstrap interval, or the mean over
    folds with mean -/+ sd as the bar."""

    value: float | None
    low: float | None
    high: float | None
    text: str


def estimate(model: Model, metric: str) -> Estimate:
    """`model`'s `metric` as read from its metrics.json (mean and sd over its folds)."""
    if model.cross_validation:
        values = [value for _, value in model.fold_values(metric)]
        if not values:
            return Estimate(None, None, None, "n/a")
        mean, sd = statistics.mean_and_sd(values)
        if sd is None:
            return Estimate(mean, None, None, f"{number(mean)} (1 fold)")
        return Estimate(mean, mean - sd, mean + sd, f"{number(mean)} ± {number(sd)}")
    metrics = model.runs[0].metrics
    pair = (metrics.get("bootstrap_95ci_by_patient") or {}).get(metric)
    low, high = pair if pair else (None, None)
    return Estimate(metrics.get(metric), low, high, with_interval(metrics.get(metric), pair))


def verdict(p) -> str:
    if p is None:
        return "no test"
    return f"significant (p < {ALPHA:g})" if p < ALPHA else f"not significant (p ≥ {ALPHA:g})"


def compare(each: EvaluationSet, model_a: Model, model_b: Model) -> dict:
    """DeLong on the shared (pooled) predictions and, for cross-validation, the paired test
    over folds of per-fold AUC. Each result is None with a reason when it does not apply."""
    result = {"delong": None, "delong_note": "", "paired": None, "paired_note": ""}
    shared = shared_predictions(model_a, model_b)
    if each.cross_validation and each.fold_kind == FOLD_KIND_OFFICIAL:
        result["delong_note"] = "n/a: the official folds' test sets overlap"
    elif shared is None:
        result["delong_note"] = "n/a: not the same test images"
    else:
        try:
            result["delong"] = statistics.delong_test(*shared)
        except ValueError:
            result["delong_note"] = "n/a: needs two images of each class"
    if each.cross_validation:
        aucs_a, aucs_b = dict(model_a.fold_values("auc_roc")), dict(model_b.fold_values("auc_roc"))
        folds = sorted(set(aucs_a) & set(aucs_b))
        if len(folds) >= 2:
            result["paired"] = statistics.paired_fold_test(
                [aucs_a[k] for k in folds], [aucs_b[k] for k in folds]
            )
        else:
            result["paired_note"] = f"n/a: {len(folds)} shared fold(s), the test needs 2"
    return result


def comparison_lines(each: EvaluationSet) -> list[str]:
    """The significance table of every pair of models in the set, and what the tests mean."""
    models = list(each.models)
    if len(models) < 2:
        return ["One model only: nothing to compare.", ""]
    pairs = list(itertools.combinations(models, 2))
    header = ["model A", "model B", "AUC A", "AUC B"]
    if each.cross_validation:
        header += ["mean AUC difference over folds (A - B)", "paired t", "p (paired, folds)"]
    header += ["DeLong z", "p (DeLong)", "verdict"]
    rows = []
    for model_a, model_b in pairs:
        result = compare(each, model_a, model_b)
        delong, paired = result["delong"], result["paired"]
        row = [
            model_a.label,
            model_b.label,
            estimate(model_a, "auc_roc").text,
            estimate(model_b, "auc_roc").text,
        ]
        verdicts = []
        if each.cross_validation:
            if paired:
                row += [
                    f"{paired['mean_difference']:+.3f}",
                    _statistic(paired["t"]),
                    p_value(paired["p_value"]),
                ]
                verdicts.append(f"paired: {verdict(paired['p_value'])}")
            else:
                row += [result["paired_note"], "", ""]
        if delong:
            row += [_statistic(delong["z"]), p_value(delong["p_value"])]
            verdicts.append(f"DeLong: {verdict(delong['p_value'])}")
        else:
            row += [result["delong_note"], ""]
        row.append("; ".join(verdicts) or "no test applies")
        rows.append(row)
    lines = [markdown_table(header, rows), ""]
    if each.cross_validation:
        lines += [
            f"AUC A/B: mean ± sd over folds. {PAIRED_MEANING} DeLong here uses the pooled "
            f"out-of-fold predictions. {DELONG_MEANING}",
            "",
        ]
    else:
        lines += [f"AUC A/B: with 95% patient-bootstrap intervals. {DELONG_MEANING}", ""]
    if len(pairs) > 1:
        lines += [
            f"{len(pairs)} comparisons: with a Bonferroni correction a difference is "
            f"significant only below p = {ALPHA / len(pairs):.3g}.",
            "",
        ]
    return lines


def _statistic(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _overlap(low_a, high_a, low_b, high_b) -> bool | None:
    if None in (low_a, high_a, low_b, high_b):
        return None
    return low_a <= high_b and low_b <= high_a


def _same_images(run_a: Run, run_b: Run) -> bool | None:
    """Whether two splits were prepared from the same images (None when unknown)."""
    keys = ("source", "magnifications")
    if not all(key in run.prepare for key in keys for run in (run_a, run_b)):
        return None
    return all(run_a.prepare[key] == run_b.prepare[key] for key in keys)


def leak_lines(runs: list[Run]) -> list[str]:
    """Claim 1: the same model on an image split and on a patient split of the same images."""
    classifiers = [run for run in runs if run.kind == KIND_CLASSIFIER]
    pairs = [
        (image, patient)
        for image in classifiers
        if image.protocol == SPLIT_IMAGE
        for patient in classifiers
        if patient.protocol == SPLIT_PATIENT
        and patient.model_key == image.model_key
        and _same_images(image, patient) is not False
    ]
    if not pairs:
        return [
            "Needs the same model trained on an image split and on a patient split of the "
            "same images (`prepare_breakhis.py --split image` and `--split patient`, then the "
            "same training command on each); no such pair of runs was found.",
            "",
        ]
    rows, lines = [], []
    for image, patient in pairs:
        cells = [image.model_key.name(), f"`{image.name}`", f"`{patient.name}`"]
        for metric in ("accuracy", "auc_roc"):
            values = [run.metrics.get(metric) for run in (image, patient)]
            intervals = [
                (run.metrics.get("bootstrap_95ci_by_patient") or {}).get(metric)
                for run in (image, patient)
            ]
            cells += [with_interval(v, i) for v, i in zip(values, intervals, strict=True)]
            cells.append("n/a" if None in values else f"{values[0] - values[1]:+.3f}")
            overlap = _overlap(*(intervals[0] or (None, None)), *(intervals[1] or (None, None)))
            if overlap is not None and metric == "accuracy":
                lines.append(
                    f"- {image.model_key.name()}: the 95% patient-bootstrap intervals of accuracy "
                    + (
                        "overlap, so the inflation is within the uncertainty of the estimates."
                        if overlap
                        else "do not overlap: the inflation exceeds the uncertainty "
                        "of either estimate."
                    )
                )
        published = published_for(image.model_key)
        cells.append(f"{published['accuracy']:g}" if published else "")
        if _same_images(image, patient) is None:
            lines.append(
                f"- `{image.name}` / `{patient.name}`: prepare.json does not say both "
                "splits come from the same images; checked by model only."
            )
        rows.append(cells)
    header = [
        "model",
        "image-split run",
        "patient-split run",
        "accuracy (image split)",
        "accuracy (patient split)",
        "accuracy inflation",
        "AUC (image split)",
        "AUC (patient split)",
        "AUC inflation",
        "report's accuracy (image split)",
    ]
    return [
        "The report split BreaKHis by image, so images of one patient were in both train and "
        "test. Inflation = image-split score minus patient-split score.",
        "",
        markdown_table(header, rows),
        "",
        *lines,
        "",
        "The two splits have different test images, so DeLong's test (which needs the same "
        "images) does not apply; the intervals are the comparison.",
        "",
    ]


def linear_lines(sets: list[EvaluationSet]) -> list[str]:
    """Claim 2: linear evaluation on the SimCLR encoder vs on a random encoder."""
    rows, notes = [], []
    for each in sets:
        for pretrained in each.models:
            key = pretrained.key
            if key.experiment != "simclr_linear" or key.encoder != ENCODER_PRETRAINED:
                continue
            for random in each.models:
                other = random.key
                if other.experiment != "simclr_linear" or other.encoder != ENCODER_RANDOM:
                    continue
                if (other.recipe, other.label_fraction) != (key.recipe, key.label_fraction):
                    continue
                a, b = estimate(pretrained, "accuracy"), estimate(random, "accuracy")
                gap = "n/a" if None in (a.value, b.value) else f"{a.value - b.value:+.3f}"
                result = compare(each, pretrained, random)
                test = result["paired"] or result["delong"]
                name = "paired over folds" if result["paired"] else "DeLong"
                rows.append(
                    [
                        each.slug,
                        pretrained.label,
                        a.text,
                        random.label,
                        b.text,
                        gap,
                        estimate(pretrained, "auc_roc").text,
                        estimate(random, "auc_roc").text,
                        f"{name}: p = {p_value(test['p_value'])}, {verdict(test['p_value'])}"
                        if test
                        else result["delong_note"] or result["paired_note"],
                    ]
                )
    if not rows:
        return [
            "Needs `train_simclr.py linear --encoder ENCODER.h5` and `train_simclr.py linear "
            "--encoder none` (same recipe and label fraction) on the same split; no such "
            "pair of runs was found.",
            "",
        ]
    header = [
        "test set",
        "SimCLR encoder",
        "accuracy",
        "random encoder",
        "accuracy",
        "difference",
        "AUC (SimCLR)",
        "AUC (random)",
        "AUC test",
    ]
    return [
        f"Report: ~{PUBLISHED_LINEAR['pretrained']:g}% accuracy with the frozen SimCLR encoder "
        f"vs ~{PUBLISHED_LINEAR['random']:g}% with a random one (a "
        f"{PUBLISHED_LINEAR['pretrained'] - PUBLISHED_LINEAR['random']:g}-point gain).",
        "",
        markdown_table(header, rows),
        "",
        *notes,
        "Accuracy with 95% patient-bootstrap intervals (single split) or mean ± sd over folds.",
        "",
    ]


def _claimed(key: ModelKey) -> str | None:
    """Which of the report's label-efficiency claims a model speaks to ("cnn"/"simclr")."""
    if key.experiment == "cnn":
        return "cnn"
    if key.experiment == "simclr_finetune" and key.encoder == ENCODER_PRETRAINED:
        return "simclr"
    return None


def _series(each: EvaluationSet) -> dict:
    """Model (all labels) -> {fraction: model}, for models run with at least two fractions
    (the first run of each fraction)."""
    families: dict = {}
    for model in each.models:
        family = families.setdefault(model.key.family(), {})
        family.setdefault(model.key.label_fraction, model)
    ordered = sorted(families.items(), key=lambda item: item[0].order())
    return {key: fractions for key, fractions in ordered if len(fractions) >= 2}


def _efficiency_table(families: dict) -> tuple[str, list[str]]:
    """The fractions table and one line per model on its accuracy change at 10% labels."""
    rows, lines = [], []
    for key, fractions in families.items():
        full = fractions.get(1.0)
        for fraction in sorted(fractions, reverse=True):
            model = fractions[fraction]
            runs = f"{len(model.runs)} folds" if model.cross_validation else model.runs[0].name
            cells = [key.name(), f"{fraction:g}", runs]
            for metric in ("accuracy", "balanced_accuracy"):
                value = estimate(model, metric)
                base = estimate(full, metric).value if full else None
                drop = None if None in (value.value, base) else (base - value.value) * 100
                cells += [value.text, "" if drop is None else f"{drop:+.1f}"]
                if metric == "accuracy" and abs(fraction - 0.1) < 1e-9 and drop is not None:
                    lines.append(_drop_line(key, drop))
            rows.append(cells)
    header = [
        "model",
        "label fraction",
        "run",
        "accuracy",
        "accuracy drop from all labels (points)",
        "balanced accuracy",
        "balanced accuracy drop (points)",
    ]
    return markdown_table(header, rows), lines


def _drop_line(key: ModelKey, drop: float) -> str:
    claim = _claimed(key)
    reported = PUBLISHED_DROP_AT_10_PERCENT.get(claim) if claim else None
    note = f" (report: ~{reported:g} points)" if reported is not None else ""
    change = f"drops {drop:.1f}" if drop >= 0 else f"rises {-drop:.1f}"
    return f"- {key.name()}: at 10% labels accuracy {change} points{note}."


def label_efficiency_lines(sets: list[EvaluationSet], figures: Figures) -> list[str]:
    """Claim 3: accuracy and balanced accuracy against the share of training labels, with
    the drop from all labels, for the CNN and SimCLR fine-tuning (and any other model run
    with several fractions)."""
    lines, found = [], set()
    for each in sets:
        families = _series(each)
        if not families:
            continue
        found |= {_claimed(key) for key in families}
        table, drops = _efficiency_table(families)
        lines += [f"**{each.title}**", "", table, "", *drops, ""]
        for metric in ("accuracy", "balanced_accuracy"):
            series = {}
            for key, fractions in families.items():
                points = [
                    (fraction, *_point(estimate(model, metric)))
                    for fraction, model in sorted(fractions.items())
                ]
                points = [point for point in points if point[1] is not None]
                if points:
                    series[key.name()] = points
            if series:
                link = label_efficiency(figures, each, series, metric)
                lines += [f"![{metric.replace('_', ' ')} vs label fraction]({link})", ""]
    claim = (
        f"Report: with 10% of the labels SimCLR fine-tuning lost "
        f"~{PUBLISHED_DROP_AT_10_PERCENT['simclr']:g} points of accuracy and the CNN "
        f"~{PUBLISHED_DROP_AT_10_PERCENT['cnn']:g}."
    )
    if not lines:
        return [f"Not measured: {_fractions_needed()}", ""]
    lines.append(
        "Error bars: 95% patient-bootstrap intervals (single split) or ± 1 sd over folds "
        "(cross-validation). Whether two drops differ beyond chance is not tested here: "
        "compare the intervals."
    )
    missing = [
        name
        for name, kind in (("the CNN", "cnn"), ("SimCLR fine-tuning", "simclr"))
        if kind not in found
    ]
    if missing:
        lines += ["", f"Not measured for {' and '.join(missing)}: {_fractions_needed()}"]
    return [claim, "", *lines, ""]


def _point(value: Estimate) -> tuple:
    return value.value, value.low, value.high


def _fractions_needed() -> str:
    fractions = ", ".join(f"{f:g}" for f in FRACTIONS_NEEDED)
    return (
        f"needs `train_cnn.py` and `train_simclr.py finetune --encoder ENCODER.h5` with "
        f"`--label-fraction` {fractions} on the same split; no such series of runs was "
        "found."
    )


def published_reference() -> str:
    """One line on where the published numbers come from."""
    cnn = PUBLISHED["cnn"]
    return (
        "Published: the report's test-set numbers (its 'Comparisons' section; the CNN's accuracy "
        f"{cnn['accuracy']:g} is from its classification report, while its Conclusion says ~68%). "
        "They come from a random split by image, which put images of the same patients in train "
        "and test (a patient leak): they are not comparable with patient-split results."
    )

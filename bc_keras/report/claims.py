"""The report's three claims (the patient leak, linear evaluation, label efficiency), measured
where their runs exist and the runs' models can answer them, balanced accuracy and AUC first."""

from __future__ import annotations

from dataclasses import replace

from bc_keras.prepare.split import SPLIT_IMAGE, SPLIT_PATIENT
from bc_keras.report.figures import Figures, label_efficiency
from bc_keras.report.runs import (
    ENCODER_PRETRAINED,
    ENCODER_RANDOM,
    KIND_CLASSIFIER,
    ModelKey,
    Run,
)
from bc_keras.report.sets import EvaluationSet, Model
from bc_keras.report.significance import Comparison, Family, estimate, verdict
from bc_keras.report.tables import (
    PUBLISHED,
    PUBLISHED_DROP_AT_10_PERCENT,
    PUBLISHED_LINEAR,
    markdown_table,
    p_value,
    published_for,
    with_interval,
)

RECIPE_REPORT = "report"
# A claim's measures, primary first: accuracy rewards a model that calls more images malignant
# on mostly malignant test sets, balanced accuracy and AUC do not.
CLAIM_METRICS = (("balanced_accuracy", "balanced accuracy"), ("auc_roc", "AUC"),
                 ("accuracy", "accuracy"))  # fmt: skip
NOT_MEASURABLE = "not measurable with this model (it predicts one class for every test image)"
NOT_MEASURABLE_CELL = "not measurable"


def degenerate_line(name: str, runs) -> str:
    """The line saying a claim is not measurable, naming the runs that predict one class."""
    flagged = "; ".join(f"`{run.name}` {run.degenerate}" for run in runs if run.degenerate)
    return f"- {name}: {NOT_MEASURABLE}: {flagged}."


def claim_test_text(comparison: Comparison | None) -> str:
    """A claim's test cell: the test, its raw and Holm-adjusted p and the verdict."""
    test = comparison.claim_test() if comparison else None
    if test is None:
        return (comparison.auc_note or comparison.paired_note) if comparison else "no test"
    name, raw, adjusted = test
    return f"{name}: p = {p_value(raw)}, Holm p = {p_value(adjusted)}, {verdict(adjusted)}"


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


def _leak_pairs(runs: list[Run]) -> list[tuple[Run, Run]]:
    classifiers = [run for run in runs if run.kind == KIND_CLASSIFIER]
    return [
        (image, patient)
        for image in classifiers
        if image.protocol == SPLIT_IMAGE
        for patient in classifiers
        if patient.protocol == SPLIT_PATIENT
        and patient.model_key == image.model_key
        and _same_images(image, patient) is not False
    ]


def _leak_row(image: Run, patient: Run) -> tuple[list[str], list[str]]:
    """A pair's table cells and its lines (not measurable, intervals, unknown images)."""
    name, degenerate = image.model_key.name(), image.degenerate or patient.degenerate
    cells, lines = [name, f"`{image.name}`", f"`{patient.name}`"], []
    for metric, _ in CLAIM_METRICS:
        values = [run.metrics.get(metric) for run in (image, patient)]
        intervals = [
            (run.metrics.get("bootstrap_95ci_by_patient") or {}).get(metric)
            for run in (image, patient)
        ]
        cells += [with_interval(v, i) for v, i in zip(values, intervals, strict=True)]
        if degenerate:
            cells.append(NOT_MEASURABLE_CELL)
            continue
        cells.append("n/a" if None in values else f"{values[0] - values[1]:+.3f}")
        overlap = _overlap(*(intervals[0] or (None, None)), *(intervals[1] or (None, None)))
        if overlap is not None and metric == CLAIM_METRICS[0][0]:
            lines.append(
                f"- {name}: the 95% patient-bootstrap intervals of balanced accuracy "
                + (
                    "overlap, so the inflation is within the uncertainty of the estimates."
                    if overlap
                    else "do not overlap: the inflation exceeds the uncertainty of either estimate."
                )
            )
    published = published_for(image.model_key)
    cells.append(f"{published['accuracy']:g}" if published else "")
    if degenerate:
        lines.append(degenerate_line(name, (image, patient)))
    if _same_images(image, patient) is None:
        lines.append(
            f"- `{image.name}` / `{patient.name}`: prepare.json does not say both "
            "splits come from the same images; checked by model only."
        )
    return cells, lines


def preferred_lines(measured: dict, claim: str) -> list[str]:
    """When the report recipe's model cannot answer a claim and another recipe's can, a line
    saying the claim is read from that one. `measured`: model key -> whether it answers."""
    lines = []
    for key, answers in measured.items():
        if key.recipe != RECIPE_REPORT or answers:
            continue
        others = [
            other
            for other, ok in measured.items()
            if ok and other.recipe != RECIPE_REPORT and replace(other, recipe=RECIPE_REPORT) == key
        ]
        if others:
            names = ", ".join(other.name() for other in others)
            lines.append(
                f"- The report recipe's {key.name()} predicts one class for every test image, "
                f"so {claim} is read from {names} (marked measured above)."
            )
    return lines


def leak_lines(runs: list[Run]) -> list[str]:
    """Claim 1: the same model on an image split and on a patient split of the same images."""
    pairs = _leak_pairs(runs)
    if not pairs:
        return [
            "Needs the same model trained on an image split and on a patient split of the "
            "same images (`prepare_breakhis.py --split image` and `--split patient`, then the "
            "same training command on each); no such pair of runs was found.",
            "",
        ]
    rows, lines, measured = [], [], {}
    for image, patient in pairs:
        cells, notes = _leak_row(image, patient)
        answers = not (image.degenerate or patient.degenerate)
        measured[image.model_key] = measured.get(image.model_key, False) or answers
        rows.append([*cells, "measured" if answers else NOT_MEASURABLE_CELL])
        lines += notes
    lines += preferred_lines(measured, "the leak")
    header = ["model", "image-split run", "patient-split run"]
    for _, title in CLAIM_METRICS:
        header += [f"{title} (image split)", f"{title} (patient split)", f"{title} inflation"]
    header += ["report's accuracy (image split)", "claim"]
    return [
        "The report split BreaKHis by image, so images of one patient were in both train and "
        "test. Inflation = image-split score minus patient-split score; balanced accuracy and "
        "AUC first (accuracy, the report's metric, rewards a model that calls more images "
        "malignant on mostly malignant test images).",
        "",
        markdown_table(header, rows),
        "",
        *lines,
        "",
        "The two splits have different test images, so an AUC test (which needs the same "
        "images) does not apply; the intervals are the comparison.",
        "",
    ]


def linear_pairs(each: EvaluationSet) -> list[tuple[Model, Model]]:
    """(SimCLR encoder, random encoder) linear models of the set at the same recipe, label
    fraction and cross-fitting."""
    return [
        (pretrained, random)
        for pretrained in each.models
        if pretrained.key.experiment == "simclr_linear"
        and pretrained.key.encoder == ENCODER_PRETRAINED
        for random in each.models
        if random.key.experiment == "simclr_linear"
        and random.key.encoder == ENCODER_RANDOM
        and replace(random.key, encoder=ENCODER_PRETRAINED) == pretrained.key
    ]


def pair_row(each: EvaluationSet, model_a: Model, model_b: Model, tests: Family, metrics):
    """A claim table's row comparing two models of `each`: the set, both labels, each metric of
    `metrics` for both and their difference, and the pair's test; with the note saying the
    pair is not measurable (None when it is)."""
    answers = not (model_a.degenerate or model_b.degenerate)
    cells = [each.slug, model_a.label, model_b.label]
    for metric, _ in metrics:
        a, b = estimate(model_a, metric), estimate(model_b, metric)
        gap = "n/a" if None in (a.value, b.value) else f"{a.value - b.value:+.3f}"
        cells += [a.text, b.text, gap if answers else NOT_MEASURABLE_CELL]
    comparison = tests.pair(each, model_a, model_b)
    cells.append(claim_test_text(comparison) if answers else NOT_MEASURABLE_CELL)
    if answers:
        return cells, None
    return cells, degenerate_line(model_a.label, (*model_a.runs, *model_b.runs))


def linear_lines(sets: list[EvaluationSet], tests: Family) -> list[str]:
    """Claim 2: linear evaluation on the SimCLR encoder vs on a random encoder."""
    rows, notes, measured = [], [], {}
    for each in sets:
        for pretrained, random in linear_pairs(each):
            cells, note = pair_row(each, pretrained, random, tests, CLAIM_METRICS)
            measured[pretrained.key] = measured.get(pretrained.key, False) or note is None
            rows.append(cells)
            notes += [note] if note else []
    if not rows:
        return [
            "Needs `train_simclr.py linear --encoder ENCODER.h5` and `train_simclr.py linear "
            "--encoder none` (same recipe and label fraction) on the same split; no such "
            "pair of runs was found.",
            "",
        ]
    notes += preferred_lines(measured, "linear evaluation")
    header = ["test set", "SimCLR encoder", "random encoder"]
    for _, title in CLAIM_METRICS:
        header += [f"{title} (SimCLR)", f"{title} (random)", f"{title} difference"]
    header.append("AUC test")
    return [
        f"Report: ~{PUBLISHED_LINEAR['pretrained']:g}% accuracy with the frozen SimCLR encoder "
        f"vs ~{PUBLISHED_LINEAR['random']:g}% with a random one (a "
        f"{PUBLISHED_LINEAR['pretrained'] - PUBLISHED_LINEAR['random']:g}-point gain).",
        "",
        markdown_table(header, rows),
        "",
        *notes,
        *([""] if notes else []),
        "Scores with 95% patient-bootstrap intervals (single split) or mean ± sd over folds; "
        "balanced accuracy and AUC first, the report's accuracy beside them. The AUC test is "
        "the pair's test of the Model comparison (Holm-adjusted over the report's family).",
        "",
    ]


FRACTIONS_NEEDED = (0.1, 0.25, 0.5, 1.0)


def _claimed(key: ModelKey) -> str | None:
    """Which of the report's label-efficiency claims a model speaks to ("cnn"/"simclr")."""
    if key.experiment == "cnn":
        return "cnn"
    if (
        key.experiment == "simclr_finetune"
        and key.encoder == ENCODER_PRETRAINED
        and not (key.backbone or key.pretrain_batch)
    ):  # the report's SimCLR ResNet-18, not a registry encoder's
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


def _drops(model: Model, full: Model | None) -> dict:
    """metric -> drop from all labels in points (None where a value is missing)."""
    drops = {}
    for metric, _ in CLAIM_METRICS:
        value = estimate(model, metric).value
        base = estimate(full, metric).value if full else None
        drops[metric] = None if None in (value, base) else (base - value) * 100
    return drops


def _efficiency_table(each: EvaluationSet, families: dict, tests: Family) -> tuple:
    """The fractions table, one line per model on its change at 10% labels, and which models
    answer the claim (none of the runs compared predicts one class)."""
    rows, lines, measured = [], [], {}
    for key, fractions in families.items():
        full = fractions.get(1.0)
        answers = full is not None and not full.degenerate
        for fraction in sorted(fractions, reverse=True):
            model = fractions[fraction]
            usable = full is not None and not (model.degenerate or full.degenerate)
            answers = answers and usable
            runs = f"{len(model.runs)} folds" if model.cross_validation else model.runs[0].name
            cells = [key.name(), f"{fraction:g}", runs]
            drops = _drops(model, full)
            for metric, _ in CLAIM_METRICS:
                drop = drops[metric]
                text = "" if drop is None or fraction == 1.0 else f"{drop:+.1f}"
                cells += [estimate(model, metric).text, text if usable else NOT_MEASURABLE_CELL]
            comparison = tests.pair(each, model, full) if full and model is not full else None
            test = claim_test_text(comparison) if comparison else ""
            cells.append(test if usable or not comparison else NOT_MEASURABLE_CELL)
            rows.append(cells)
            if abs(fraction - 0.1) < 1e-9:
                runs = (*model.runs, *(full.runs if full else ()))
                lines.append(
                    _drop_line(key, drops) if usable else degenerate_line(key.name(), runs)
                )
        measured[key] = answers
    header = ["model", "label fraction", "run"]
    for _, title in CLAIM_METRICS:
        header += [title, f"{title} drop from all labels (points)"]
    header.append("AUC test vs all labels")
    return markdown_table(header, rows), lines, measured


def _change(drop: float) -> str:
    return f"drops {drop:.1f}" if drop >= 0 else f"rises {-drop:.1f}"


def _drop_line(key: ModelKey, drops: dict) -> str:
    parts = [
        f"{title} {_change(drops[metric])} points"
        for metric, title in CLAIM_METRICS
        if drops[metric] is not None
    ]
    claim = _claimed(key)
    reported = PUBLISHED_DROP_AT_10_PERCENT.get(claim) if claim else None
    note = f" (report: ~{reported:g} points of accuracy)" if reported is not None else ""
    return f"- {key.name()}: at 10% labels {', '.join(parts) or 'no score'}{note}."


def _figures(figures: Figures, each: EvaluationSet, families: dict) -> list[str]:
    lines = []
    for metric, title in CLAIM_METRICS:
        series = {}
        for key, fractions in families.items():
            points = [
                (fraction, *_point(estimate(model, metric)))
                for fraction, model in sorted(fractions.items())
                if not model.degenerate
            ]
            points = [point for point in points if point[1] is not None]
            if points:
                series[key.name()] = points
        if series:
            link = label_efficiency(figures, each, series, metric)
            lines += [f"![{title} vs label fraction]({link})", ""]
    return lines


def label_efficiency_lines(sets: list[EvaluationSet], figures: Figures, tests: Family) -> list:
    """Claim 3: balanced accuracy and AUC (accuracy beside them) against the share of
    training labels, with the drop from all labels and the AUC test against all labels, for
    the CNN and SimCLR fine-tuning (and any other model run with several fractions)."""
    lines, found, measured = [], set(), {}
    for each in sets:
        families = _series(each)
        if not families:
            continue
        found |= {_claimed(key) for key in families}
        table, drops, answers = _efficiency_table(each, families, tests)
        for key, ok in answers.items():
            measured[key] = measured.get(key, False) or ok
        lines += [
            f"**{each.title}**",
            "",
            table,
            "",
            *drops,
            "",
            *_figures(figures, each, families),
        ]
    if not lines:
        return [f"Not measured: {_fractions_needed()}", ""]
    preferred = preferred_lines(measured, "label efficiency")
    lines += [*preferred, *([""] if preferred else [])]
    lines.append(
        "Error bars: 95% patient-bootstrap intervals (single split) or ± 1 sd over folds "
        "(cross-validation); a model that predicts one class for every test image is left out "
        "of the figures. The AUC test vs all labels is the pair's test of the Model comparison "
        "(Holm-adjusted over the report's family)."
    )
    missing = [
        name
        for name, kind in (("the CNN", "cnn"), ("SimCLR fine-tuning", "simclr"))
        if kind not in found
    ]
    if missing:
        lines += ["", f"Not measured for {' and '.join(missing)}: {_fractions_needed()}"]
    claim = (
        f"Report: with 10% of the labels SimCLR fine-tuning lost "
        f"~{PUBLISHED_DROP_AT_10_PERCENT['simclr']:g} points of accuracy and the CNN "
        f"~{PUBLISHED_DROP_AT_10_PERCENT['cnn']:g}. Measured here with balanced accuracy and "
        "AUC first: accuracy can rise as labels are removed, because a model that calls more "
        "images malignant gains accuracy on mostly malignant test images."
    )
    return [claim, "", *lines, ""]


def _point(value) -> tuple:
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

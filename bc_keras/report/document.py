"""The study report from saved run folders alone (it never trains): `python -m bc_keras.report
RUNS_DIR... --out DIR` -> DIR/REPORT.md, DIR/results.csv, DIR/figures/; same runs, same bytes."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from bc_keras import cli
from bc_keras.console import Progress
from bc_keras.errors import DataError, RunError
from bc_keras.evaluation.metrics import VIEW_SUMMARY, metrics_in
from bc_keras.report import figures as figures_module
from bc_keras.report.analyses import analysis_lines
from bc_keras.report.batchsize import batch_size_lines
from bc_keras.report.claims import (
    label_efficiency_lines,
    leak_lines,
    linear_lines,
    published_reference,
)
from bc_keras.report.figures import (
    CLASSIFIER_FIGURES,
    FIGURES_DIR,
    PRETRAIN_FIGURES,
    Figures,
    explanation_panels,
    gradcam_panel,
    overlays,
    reliability,
)
from bc_keras.report.runs import KIND_PRETRAIN, Run, find_runs
from bc_keras.report.sets import EvaluationSet, Model, evaluation_sets
from bc_keras.report.significance import (
    Family,
    appendix_lines,
    comparison_intro,
    comparison_lines,
    family,
)
from bc_keras.report.sslclaims import ssl_claim_lines
from bc_keras.report.tables import (
    CALIBRATION_BINS,
    calibration_table,
    classification_report_text,
    cross_validation_table,
    magnification_table,
    number,
    patient_level,
    published_table,
    results_table,
    threshold_text,
    write_results_csv,
)
from bc_keras.report.validation import PATIENT_LEVEL, PATIENT_SCORES

REPORT_FILE = "REPORT.md"
RESULTS_FILE = "results.csv"
OUTPUTS = (REPORT_FILE, RESULTS_FILE, FIGURES_DIR)
STAGING = ".report-staging"
SUMMARY_METRICS = tuple((metric.key, metric.title) for metric in metrics_in(VIEW_SUMMARY))
PRETRAIN_SUMMARY = (
    ("initial_val_loss", "validation NT-Xent, untrained encoder"),
    ("best_val_loss", "best validation NT-Xent"),
    ("best_epoch", "best epoch"),
    ("best_val_contrastive_accuracy", "validation contrastive accuracy at the best epoch"),
    ("epochs_run", "epochs run"),
)


def _images(links) -> list[str]:
    return [f"![{caption}]({link})" for caption, link in links]


def _run_header(run: Run) -> list[str]:
    """What the run was and its headline scores, one paragraph each."""
    metrics = run.metrics
    fold = f", fold {run.fold.index} of {run.fold.count}" if run.fold else ""
    first = f"Run folder `{run.name}`; split `{run.data}` ({run.protocol} split{fold})."
    paragraphs = [first]
    if run.kind != KIND_PRETRAIN:
        method = metrics.get("threshold_method", "fixed")
        tta = ", test-time augmentation" if metrics.get("tta") else ""
        paragraphs[0] += f" Threshold {number(metrics.get('threshold'), 4)} ({method}){tta}."
        paragraphs += _cross_fit_lines(run)
        scores = ", ".join(f"{title} {number(metrics.get(key))}" for key, title in SUMMARY_METRICS)
        paragraphs.append(f"Test scores: {scores}.")
        if isinstance(metrics.get(PATIENT_LEVEL), dict):
            scores = ", ".join(
                f"{title} {number(patient_level(run, key))}"
                for key, title in SUMMARY_METRICS
                if key in PATIENT_SCORES
            )
            patients = metrics[PATIENT_LEVEL].get("patients")
            paragraphs.append(
                f"Patient level ({patients if patients is not None else '?'} patients, each "
                f"patient's mean probability against the threshold): {scores}."
            )
        if metrics.get("flags"):
            paragraphs.append(f"**⚠ Flagged: {'; '.join(metrics['flags'])}.**")
    paragraphs += [f"Note: {note}." for note in run.notes]
    return [line for paragraph in paragraphs for line in (paragraph, "")]


def _cross_fit_lines(run: Run) -> list[str]:
    """A cross-fitted run's folds, final model, threshold spread and out-of-fold scores."""
    cross_fit = run.metrics.get("cross_fit")
    folds, final = run.model_key.cross_fit, run.model_key.cross_fit_final
    if not isinstance(cross_fit, dict):
        return (
            [f"Cross-fitted over {folds} folds ({final or 'final model unknown'})."]
            if folds
            else []
        )
    out_of_fold = cross_fit.get("out_of_fold") or {}
    scores = (
        f"out-of-fold AUC {number(out_of_fold.get('auc_roc'))}, balanced accuracy "
        f"{number(out_of_fold.get('balanced_accuracy'))} ({out_of_fold.get('images', '?')} images, "
        f"{out_of_fold.get('patients', '?')} patients)"
    )
    thresholds = ", ".join(number(value) for value in cross_fit.get("fold_thresholds") or [])
    return [
        f"Cross-fitted over {cross_fit['k']} folds of the training patients, final model: "
        f"{cross_fit.get('final') or final or 'unknown'}; threshold {threshold_text(run)}"
        + (f" (per fold: {thresholds})" if thresholds else "")
        + f"; {scores}."
    ]


def _classifier_details(run: Run) -> list[str]:
    lines = []
    report = run.metrics.get("classification_report")
    if isinstance(report, dict):
        try:
            text = classification_report_text(report)
        except (KeyError, TypeError, ValueError):
            text = None
        if text:
            threshold = number(run.metrics.get("threshold"), 4)
            lines += [
                f"Classification report on the test set (threshold {threshold}):",
                "",
                "```text",
                text.rstrip("\n"),
                "```",
                "",
            ]
    table = magnification_table(run)
    if table:
        lines += ["Per magnification:", "", table, ""]
    return lines


def _gradcam_lines(figures: Figures, run: Run) -> tuple[list[str], bool]:
    panels, reason = explanation_panels(figures, run)
    if not panels:
        figures.skipped_gradcam.append(f"`{run.name}`: {reason}")
        return [f"Grad-CAM skipped: {reason}.", ""], False
    lines = []
    for title, link, caption in panels:
        lines += [f"{caption}:", "", f"![{title}]({link})", ""]
    return lines, True


def _run_section(figures: Figures, run: Run) -> list[str]:
    lines = _run_header(run)
    figure_set = PRETRAIN_FIGURES if run.kind == KIND_PRETRAIN else CLASSIFIER_FIGURES
    links, notes = figures.run_figures(run, figure_set)
    lines += [*_images(links), ""] if links else []
    lines += [f"Figure {note}." for note in notes] + ([""] if notes else [])
    if run.kind == KIND_PRETRAIN:
        rows = [f"| {title} | {_value(run.metrics.get(key))} |" for key, title in PRETRAIN_SUMMARY]
        lines += ["| pretraining | value |", "|---|---|", *rows, ""]
    else:
        lines += _classifier_details(run)
    return lines


def _value(value) -> str:
    return str(value) if isinstance(value, int) or value is None else number(value, 4)


def _model_section(figures: Figures, model: Model, slug: str) -> list[str]:
    """A model's section: its run's figures, report and Grad-CAM; for a cross-validated model
    each fold's, with Grad-CAM of the first fold whose saved model is still its own."""
    if not model.cross_validation:
        run = model.runs[0]
        lines = [f"### {model.label}: `{run.name}`", "", *_run_section(figures, run)]
        return lines + _gradcam_lines(figures, run)[0]
    count = model.runs[0].fold.count
    lines = [f"### {model.label}: {count}-fold cross-validation ({slug})", ""]
    lines += [f"Note: {note}." for note in model.notes] + ([""] if model.notes else [])
    panel, reasons = None, {}
    for run in model.runs:
        link, caption = gradcam_panel(figures, run)
        if link is not None:
            panel = (run, link, caption)
            break
        reasons.setdefault(caption, []).append(str(run.fold.index))
    if panel is None:
        why = "; ".join(f"fold {', '.join(folds)}: {reason}" for reason, folds in reasons.items())
        lines += [f"Grad-CAM skipped ({why}).", ""]
        figures.skipped_gradcam.append(f"{model.label} ({slug}): {why}")
    for run in model.runs:
        lines += [f"#### Fold {run.fold.index}: `{run.name}`", "", *_run_section(figures, run)]
        if panel is not None and panel[0] is run:
            lines += [f"{panel[2]}:", "", f"![Grad-CAM]({panel[1]})", ""]
    return lines


def _set_sections(
    figures: Figures, sets: list[EvaluationSet], tests: Family
) -> tuple[list[str], list[str]]:
    """The comparison section (curves and tests per evaluation set) and the calibration
    section (reliability diagram, Brier and ECE per evaluation set)."""
    comparison, calibration = [], []
    for each in sets:
        comparison += [f"### {each.title}", ""]
        if each.cross_validation:
            comparison += [
                "Mean ± sd over folds; pooled AUC: the AUC of the out-of-fold "
                "predictions of all folds together.",
                "",
                cross_validation_table(each),
                "",
            ]
        notes = [f"{model.label}: {note}" for model in each.models for note in model.notes]
        links, skipped = overlays(figures, each)
        comparison += _images(links) + ([""] if links else [])
        notes += [f"left out of the curves: {note}" for note in skipped]
        comparison += [f"Note: {note}." for note in notes] + ([""] if notes else [])
        comparison += comparison_lines(each, tests)
        calibration += [f"### {each.title}", ""]
        link = reliability(figures, each)
        calibration += [f"![reliability diagram]({link})", ""] if link else []
        calibration += [calibration_table(each), ""]
    return comparison, calibration


def report_markdown(
    runs: list[Run],
    sets: list[EvaluationSet],
    left_out: list[str],
    figures: Figures,
    analyses: list[str] | None = None,
) -> str:
    """REPORT.md, writing its figures through `figures` on the way. Every significance test
    is computed first (one family, Holm-adjusted together), then rendered. `analyses`: the
    lines of the analysis sections (Deployment, ...), placed before the model sections."""
    tests = family(sets)
    classifiers = sum(len(model.runs) for each in sets for model in each.models)
    pretraining = [run for run in runs if run.kind == KIND_PRETRAIN]
    lines = [
        "# BreaKHis benign vs malignant: the study report",
        "",
        f"Regenerated by `python -m bc_keras.report` from {len(runs)} run folder(s): "
        f"{classifiers} classifier(s) and {len(pretraining)} SimCLR pretraining run(s); "
        f"{len(left_out)} left out (listed at the end). Every score below is read from the "
        "runs' metrics.json; calibration and significance tests from their predictions.csv.",
        "",
        "## Results",
        "",
        "Test-set scores with their 95% patient-bootstrap intervals (metrics.json), three "
        "decimals. Split: how the run's data were split (an image split puts one patient's "
        "images in train and test). Patient-level: each patient's mean probability against "
        "the threshold (n/a for runs that do not record it). Threshold: a cross-fitted run's "
        "with its sd over the folds. ⚠ marks a run whose predictions are degenerate.",
        "",
    ]
    lines += [results_table(sets) if sets else "No finished classifier run.", ""]
    # The forest plot is drawn by figures.forest where that exists.
    forest = getattr(figures_module, "forest", None)
    link = forest(figures, sets) if forest is not None and sets else None
    lines += [f"![forest plot]({link})", ""] if link else []
    lines += [
        "The report's published numbers:",
        "",
        published_table(),
        "",
        published_reference(),
        "",
    ]
    comparison, calibration = _set_sections(figures, sets, tests)
    lines += [
        "## Model comparison",
        "",
        "Models evaluated on the same test images (or the same cross-validation folds), "
        "their curves and the tests of the differences the claims need; every test of every "
        "pair is one family, Holm-adjusted together, the rest in the appendix.",
        "",
        *(comparison_intro(tests) if comparison else []),
        *(comparison or ["No finished classifier run.", ""]),
    ]
    lines += [
        "## Calibration",
        "",
        f"Brier score (lower is better) and expected calibration error over "
        f"{CALIBRATION_BINS} equal-width bins, from the test predictions (pooled over "
        "folds for cross-validation).",
        "",
        *(calibration or ["No finished classifier run.", ""]),
    ]
    lines += [
        "## The report's claims",
        "",
        "### 1. The patient leak",
        "",
        *leak_lines(runs),
        "### 2. Linear evaluation: SimCLR encoder vs random encoder",
        "",
        *linear_lines(sets, tests),
        "### 3. Label efficiency: balanced accuracy and AUC with 10%-100% of the labels",
        "",
        *label_efficiency_lines(sets, figures, tests),
        *batch_size_lines(runs, figures),
        *ssl_claim_lines(sets, tests),
    ]
    lines += analyses or []
    lines += ["## Models", ""]
    # The model sections draw the Grad-CAM panels: the long part of a report.
    with Progress("model sections", sum(len(e.models) for e in sets), unit="models") as progress:
        for each in sets:
            for model in each.models:
                lines += _model_section(figures, model, each.slug)
                progress.advance()
    for run in pretraining:
        lines += [f"### SimCLR pretraining: `{run.name}`", "", *_run_section(figures, run)]
    lines += ["## Left out", ""]
    lines += [f"Run folders left out: {len(left_out)}.", ""]
    lines += [f"- {note}" for note in left_out] + ([""] if left_out else [])
    skipped = figures.skipped_gradcam
    lines += [f"Grad-CAM panels left out: {len(skipped)}.", ""]
    lines += [f"- {note}" for note in skipped] + ([""] if skipped else [])
    lines += appendix_lines(sets, tests)
    return "\n".join(lines).rstrip("\n") + "\n"


# The explanations beside Grad-CAM (bc_keras.evaluation.explain's, spelled here TF-free).
EXPLANATIONS = ("occlusion", "lime")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; pass a folder for the report")
    if (out / FIGURES_DIR).exists() and not (out / REPORT_FILE).exists():
        raise RunError(
            f"--out {out} holds a {FIGURES_DIR} folder that no report wrote; choose a new or "
            "empty --out folder"
        )


def build_report(runs_dirs, out, explain: tuple[str, ...] = ()) -> Path:
    """Writes REPORT.md, results.csv and figures/ into `out` from the runs under `runs_dirs`;
    `explain` names the explanations drawn beside each model's Grad-CAM ("occlusion", "lime").

    Everything is written to a staging folder inside `out` first and moved into place at the
    end, replacing an earlier report's files; an interrupted report leaves those untouched.

    Returns:
        The path of REPORT.md.

    Raises:
        DataError: if a RUNS_DIR is missing or holds no run folder.
        RunError: if `out` cannot take the report.
    """
    runs, left_out = find_runs(runs_dirs)
    if not runs and not left_out:
        raise DataError(
            f"no run folder (a folder with config.json) under {', '.join(map(str, runs_dirs))}; "
            "pass the folder your training runs were written to"
        )
    out = Path(out)
    _check_out(out)
    created = not out.exists()
    staging = out / STAGING
    try:
        try:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        except OSError as error:
            raise RunError(
                f"cannot write to --out {out} ({error.strerror}); choose a writable folder"
            ) from error
        sets = evaluation_sets(runs)
        figures = Figures(staging, explain)
        text = report_markdown(runs, sets, left_out, figures, analysis_lines(runs_dirs, figures))
        (staging / REPORT_FILE).write_text(text)
        write_results_csv(sets, staging / RESULTS_FILE)
        for name in OUTPUTS:
            old = out / name
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
            if (staging / name).exists():
                os.replace(staging / name, old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return out / REPORT_FILE


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bc_keras.report",
        description="Regenerate the study report (REPORT.md with figures, and results.csv) from "
        "saved run folders alone: per-model figures, the results table with patient-bootstrap "
        "intervals and the report's published numbers, ROC/PR overlays, calibration, "
        "significance tests, cross-validation, the report's claims and Grad-CAM panels.",
    )
    parser.add_argument(
        "runs_dirs", nargs="+", metavar="RUNS_DIR", help="folders searched for run folders"
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="folder for REPORT.md, results.csv, figures/"
    )
    parser.add_argument(
        "--explain",
        nargs="+",
        choices=EXPLANATIONS,
        default=[],
        metavar="METHOD",
        help="also draw these explanations of each model's Grad-CAM images: occlusion "
        "(the probability's drop under a sliding patch) and/or lime (a linear surrogate over "
        "superpixels); LIME costs ~1000 model calls per image (default: Grad-CAM only)",
    )
    cli.add_quiet_flag(parser)
    args = cli.apply_quiet(parser.parse_args(argv))
    path = build_report(args.runs_dirs, args.out, tuple(args.explain))
    print(f"wrote {path}, {Path(args.out) / RESULTS_FILE} and {Path(args.out) / FIGURES_DIR}/")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_script(main, interrupted=cli.NOTHING_WRITTEN))

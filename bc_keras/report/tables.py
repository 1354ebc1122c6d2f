"""The study report's tables: results with patient-bootstrap intervals and the report's published
numbers, per magnification, classification reports, cross-validation and calibration."""

from __future__ import annotations

import csv
from pathlib import Path

from bc_keras.backbones import BACKBONES
from bc_keras.evaluation import statistics
from bc_keras.evaluation.metrics import BOOTSTRAP_METRICS, VIEW_TABLE, metrics_in
from bc_keras.prepare.split import SPLIT_IMAGE
from bc_keras.report.runs import ENCODER_PRETRAINED, ModelKey, Run
from bc_keras.report.sets import EvaluationSet
from bc_keras.report.validation import PATIENT_LEVEL

DECIMALS = 3
CALIBRATION_BINS = 10
# (metrics.json key, column title); the results table shows each with its 95% interval.
TABLE_METRICS = tuple((metric.key, metric.title) for metric in metrics_in(VIEW_TABLE))
# metrics.json "patient_level" scores shown beside the image-level ones (each patient's mean
# probability against the threshold); "n/a" for older runs that do not record them.
PATIENT_METRICS = (("balanced_accuracy", "patient-level balanced accuracy"),
                   ("auc_roc", "patient-level AUC"))  # fmt: skip
PUBLISHED_METRICS = ("accuracy", "precision", "recall", "f1", "auc_roc")

# The report's own test-set numbers (the original project report, "Results" -> "Comparisons":
# each model's classification report and printed precision/recall/F1/AUC-ROC; 1187 test images,
# 372 benign and 815 malignant). The CNN's accuracy is its classification report's 0.91; its
# "Conclusion" ("2. Basic CNN") says instead that it "plateaued at ~68% accuracy". All come from
# a random 70/15/15 split of the images ("Experimental Setup" -> "Dataset Restructuring"; the
# SimCLR "Data Preparation" step: "using a fixed random seed"), not of the patients, so images of
# one patient sit in train and test: the numbers are inflated by that patient leak, which the
# report's claims section measures.
PUBLISHED = {
    "cnn": {
        "model": "baseline CNN",
        "accuracy": 0.91,
        "precision": 0.93,
        "recall": 0.94,
        "f1": 0.9345,
        "auc_roc": 0.9659,
        "note": "the report's Conclusion says ~68% accuracy instead",
    },
    "transfer": {
        "model": "ResNet50 transfer",
        "accuracy": 0.98,
        "precision": 0.9889,
        "recall": 0.9877,
        "f1": 0.9883,
        "auc_roc": 0.9986,
        "note": "",
    },
    "simclr": {
        "model": "SimCLR + ResNet-18 fine-tuned",
        "accuracy": 0.8484,
        "precision": 0.8516,
        "recall": 0.9436,
        "f1": 0.8952,
        "auc_roc": 0.9129,
        "note": "",
    },
}
PUBLISHED_TEST_IMAGES = 1187
# The report's Conclusion: linear evaluation and label efficiency (accuracy, percent).
PUBLISHED_LINEAR = {"pretrained": 75.0, "random": 65.0}
PUBLISHED_DROP_AT_10_PERCENT = {"cnn": 15.0, "simclr": 5.0}

RESULT_COLUMNS = (
    "run",
    "model",
    "experiment",
    "backbone",
    "recipe",
    "encoder",
    "label_fraction",
    "split",
    "fold",
    "fold_count",
    "data",
    "test_set",
    "test_images",
    "test_patients",
    *(f"{m}{s}" for m, _ in TABLE_METRICS for s in ("", "_low", "_high")),
    "specificity",
    "specificity_low",
    "specificity_high",
    "threshold",
    "threshold_method",
    *(f"patient_{m}" for m, _ in PATIENT_METRICS),
    "cross_fit",
    "cross_fit_final",
    "threshold_sd",
    "brier_score",
    "expected_calibration_error",
    "flags",
    *(f"published_{m}" for m in PUBLISHED_METRICS),
)


def number(value, decimals: int = DECIMALS) -> str:
    """A score to a fixed number of decimals ("n/a" when undefined or not a number)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "n/a"
    return f"{value:.{decimals}f}"


def interval(pair) -> str:
    return "" if not pair else f"[{number(pair[0])}, {number(pair[1])}]"


def with_interval(value, pair) -> str:
    """`0.912 [0.870, 0.950]`, or the value alone without an interval."""
    if value is None or not pair:
        return number(value)
    return f"{number(value)} {interval(pair)}"


def p_value(value) -> str:
    if value is None:
        return "n/a"
    return "< 1e-16" if value < 1e-16 else f"{value:.3g}"


def markdown_table(header, rows) -> str:
    """A markdown table; a "|" inside a cell (e.g. in a run's name) is escaped."""

    def line(cells):
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(row) for row in rows)])


def published_for(key: ModelKey) -> dict | None:
    """The report's published numbers for the model `key` trains, when it trained one."""
    if key.label_fraction != 1.0:
        return None
    if key.experiment == "cnn":
        return PUBLISHED["cnn"]
    backbone = BACKBONES.get(key.backbone)
    if key.experiment == "transfer" and backbone and backbone.in_report and not key.weights:
        return PUBLISHED["transfer"]
    if (
        key.experiment == "simclr_finetune"
        and key.encoder == ENCODER_PRETRAINED
        and not (key.backbone or key.pretrain_batch)
    ):  # the report's SimCLR ResNet-18, not a registry encoder's
        return PUBLISHED["simclr"]
    return None


def protocol_text(run: Run) -> str:
    protocol = run.protocol
    return f"{protocol} (leaks patients)" if protocol == SPLIT_IMAGE else protocol


def fold_text(run: Run) -> str:
    fold = run.fold
    return "" if fold is None else f"{fold.index}/{fold.count}"


def size_text(run: Run) -> str:
    counts = run.count
    return f"{counts.get('images', '?')} / {counts.get('patients', '?')}"


def flags_text(run: Run) -> str:
    flags = run.metrics.get("flags") or []
    return f"**⚠ {'; '.join(flags)}**" if flags else ""


def patient_level(run: Run, metric: str):
    """The run's patient-level `metric` (metrics.json "patient_level"), None when absent."""
    entry = run.metrics.get(PATIENT_LEVEL)
    return entry.get(metric) if isinstance(entry, dict) else None


def threshold_text(run: Run) -> str:
    """The run's threshold; for a cross-fitted run with its spread over the folds, e.g.
    "0.410, sd 0.080 over 5 folds"."""
    threshold = number(run.metrics.get("threshold"))
    cross_fit = run.metrics.get("cross_fit")
    if not isinstance(cross_fit, dict):
        return threshold
    return f"{threshold}, sd {number(cross_fit.get('threshold_sd'))} over {cross_fit['k']} folds"


def calibration(labels, probabilities) -> tuple[float, float]:
    """(Brier score, expected calibration error over CALIBRATION_BINS bins)."""
    return (
        statistics.brier_score(labels, probabilities),
        statistics.expected_calibration_error(labels, probabilities, CALIBRATION_BINS),
    )


def results_rows(sets: list[EvaluationSet]) -> list[tuple[EvaluationSet, Run]]:
    """Every classifier run in report order: by evaluation set, model, then fold."""
    return [(each, run) for each in sets for model in each.models for run in model.runs]


def results_table(sets: list[EvaluationSet]) -> str:
    """The markdown results table: one row per classifier run."""
    header = [
        "run",
        "model",
        "split",
        "fold",
        "test images / patients",
        *(title for _, title in TABLE_METRICS),
        *(title for _, title in PATIENT_METRICS),
        "threshold",
        "report (acc / prec / rec / F1 / AUC)",
        "flags",
    ]
    rows = []
    for _, run in results_rows(sets):
        intervals = run.metrics.get("bootstrap_95ci_by_patient") or {}
        published = published_for(run.model_key)
        reference = " / ".join(f"{published[m]:g}" for m in PUBLISHED_METRICS) if published else ""
        rows.append(
            [
                run.name,
                run.model_key.name(),
                protocol_text(run),
                fold_text(run),
                size_text(run),
                *(with_interval(run.metrics.get(m), intervals.get(m)) for m, _ in TABLE_METRICS),
                *(number(patient_level(run, m)) for m, _ in PATIENT_METRICS),
                threshold_text(run),
                reference,
                flags_text(run),
            ]
        )
    return markdown_table(header, rows)


def published_table() -> str:
    """The report's published numbers, as it printed them."""
    header = ["model (report)", "test images", *PUBLISHED_METRICS, "note"]
    rows = [
        [
            entry["model"],
            PUBLISHED_TEST_IMAGES,
            *(f"{entry[m]:g}" for m in PUBLISHED_METRICS),
            entry["note"],
        ]  # fmt: skip
        for entry in PUBLISHED.values()
    ]
    return markdown_table(header, rows)


def write_results_csv(sets: list[EvaluationSet], path: Path) -> Path:
    """results.csv: the results table's rows with full-precision values, intervals as
    _low/_high columns, calibration and the report's published numbers."""
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=RESULT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for each, run in results_rows(sets):
            writer.writerow(result_record(each, run))
    return path


def result_record(each: EvaluationSet, run: Run) -> dict:
    metrics, key, fold = run.metrics, run.model_key, run.fold
    intervals = metrics.get("bootstrap_95ci_by_patient") or {}
    record = {
        "run": run.name,
        "model": key.name(),
        "experiment": key.experiment,
        "backbone": key.backbone,
        "recipe": key.recipe,
        "encoder": key.encoder,
        "label_fraction": key.label_fraction,
        "split": run.protocol,
        "fold": fold.index if fold else "",
        "fold_count": fold.count if fold else "",
        "data": run.data,
        "test_set": each.slug,
        "test_images": run.count.get("images"),
        "test_patients": run.count.get("patients"),
        "threshold": metrics.get("threshold"),
        "threshold_method": metrics.get("threshold_method"),
        "flags": "; ".join(metrics.get("flags") or []),
        "cross_fit": key.cross_fit,
        "cross_fit_final": key.cross_fit_final,
    }
    cross_fit = metrics.get("cross_fit")
    if isinstance(cross_fit, dict):
        record["threshold_sd"] = cross_fit.get("threshold_sd")
    for metric, _ in PATIENT_METRICS:
        record[f"patient_{metric}"] = patient_level(run, metric)
    for metric in (*(m for m, _ in TABLE_METRICS), "specificity"):
        record[metric] = metrics.get(metric)
        low_high = intervals.get(metric) or (None, None)
        record[f"{metric}_low"], record[f"{metric}_high"] = low_high
    if run.predictions is not None:
        brier, error = calibration(run.predictions["label"], run.predictions["probability"])
        record["brier_score"], record["expected_calibration_error"] = brier, error
    published = published_for(key) or {}
    for metric in PUBLISHED_METRICS:
        record[f"published_{metric}"] = published.get(metric)
    return record


def magnification_table(run: Run) -> str:
    """Scores per magnification (metrics.json "per_magnification"); "" when there are none."""
    per_magnification = run.metrics.get("per_magnification") or {}
    if not per_magnification:
        return ""
    metrics = (*BOOTSTRAP_METRICS, "patient_recognition_rate")
    header = ["magnification", "images", *(m.replace("_", " ") for m in metrics)]

    def order(name):
        return (0, int(name), name) if name.isdigit() else (1, 0, name)

    rows = [
        [
            f"{name}X" if name.isdigit() else name,
            entry.get("images", ""),
            *(number(entry.get(m)) for m in metrics),
        ]
        for name, entry in sorted(per_magnification.items(), key=lambda item: order(item[0]))
    ]
    return markdown_table(header, rows)


def classification_report_text(report: dict, digits: int = 2) -> str:
    """sklearn's text classification report rebuilt from its dict form (metrics.json
    "classification_report"), laid out exactly as `sklearn.metrics.classification_report`."""
    headers = ("precision", "recall", "f1-score", "support")
    classes = [
        name
        for name, value in report.items()
        if isinstance(value, dict) and not name.endswith(" avg")
    ]
    width = max([len(name) for name in classes] + [len("weighted avg"), digits])
    text = ("{:>{width}s} " + " {:>9}" * 4).format("", *headers, width=width) + "\n\n"
    row = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"

    def values(entry):
        return [entry["precision"], entry["recall"], entry["f1-score"], int(entry["support"])]

    for name in classes:
        text += row.format(name, *values(report[name]), width=width, digits=digits)
    text += "\n"
    total = int(report.get("macro avg", {}).get("support", 0))
    for name, value in report.items():
        if name == "accuracy":
            accuracy = "{:>{width}s} " + " {:>9.{digits}}" * 2 + " {:>9.{digits}f} {:>9}\n"
            text += accuracy.format(name, "", "", value, total, width=width, digits=digits)
        elif name.endswith(" avg"):
            text += row.format(name, *values(value), width=width, digits=digits)
    return text


def mean_sd_text(values) -> str:
    if not values:
        return "n/a"
    mean, sd = statistics.mean_and_sd(values)
    return f"{number(mean)} ± {number(sd)}" if sd is not None else f"{number(mean)} (1 fold)"


def cross_validation_table(each: EvaluationSet) -> str:
    """Mean ± sd over folds per model, and the AUC of its pooled out-of-fold predictions."""
    header = ["model", "folds", *(title for _, title in TABLE_METRICS), "pooled AUC"]
    rows = []
    for model in each.models:
        folds = ", ".join(str(run.fold.index) for run in model.runs)
        cells = [mean_sd_text([v for _, v in model.fold_values(m)]) for m, _ in TABLE_METRICS]
        rows.append([model.label, folds, *cells, number(pooled_auc(model))])
    return markdown_table(header, rows)


def pooled_auc(model) -> float | None:
    from sklearn.metrics import roc_auc_score

    if model.pooled is None or len(set(model.pooled["label"].tolist())) < 2:
        return None
    return float(roc_auc_score(model.pooled["label"], model.pooled["probability"]))


def calibration_table(each: EvaluationSet) -> str:
    header = ["model", "images", "Brier score", f"ECE ({CALIBRATION_BINS} bins)"]
    rows = []
    for model in each.models:
        if model.pooled is None:
            rows.append([model.label, "", "n/a", "n/a"])
            continue
        brier, error = calibration(model.pooled["label"], model.pooled["probability"])
        rows.append([model.label, len(model.pooled["label"]), number(brier), number(error)])
    return markdown_table(header, rows)

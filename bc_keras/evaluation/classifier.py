"""Evaluation of a trained classifier: the decision threshold, test predictions ->
predictions.csv -> metrics.json -> figures, and the console summary."""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np

from bc_keras import runs
from bc_keras.config import THRESHOLD_METHODS
from bc_keras.data import ImageDataset, SplitFiles, decoded_dataset
from bc_keras.evaluation import metrics as bc_metrics
from bc_keras.evaluation import plots
from bc_keras.evaluation.inference import predict_probabilities
from bc_keras.histology.breakhis import UNKNOWN, describe_files
from bc_keras.runs import METRICS_FILE, PREDICTIONS_FILE, read_history, write_json

PREDICTION_COLUMNS = ("filename", "patient", "magnification", "label", "probability", "predicted")
FIXED_THRESHOLD = "fixed"


def decide_threshold(model, config, validation: ImageDataset, tta: bool = False):
    """The decision threshold stored in the model: the configured number, or the one the
    configured method ('youden' / 'balanced_accuracy', the same cut) picks on validation.

    Returns:
        `(threshold, method)`; with one class in validation the choice is impossible, so 0.5
        is kept and a warning says so.
    """
    if config.threshold not in THRESHOLD_METHODS:
        return float(config.threshold), FIXED_THRESHOLD
    labels = validation.labels
    if len(np.unique(labels)) < 2:
        warnings.warn(
            "cannot choose the threshold on the validation split: it holds one class only; "
            "keeping 0.5 (prepare a split with both classes in val)",
            stacklevel=2,
        )
        return 0.5, FIXED_THRESHOLD
    probabilities = predict_probabilities(model, validation.data, tta=tta)
    threshold = bc_metrics.choose_threshold(labels, probabilities, config.threshold)
    print(f"threshold chosen on validation ({config.threshold}): {threshold:.4f}")
    return float(threshold), config.threshold


def write_predictions(path, paths, labels, probabilities, threshold: float) -> Path:
    """predictions.csv: filename, patient, magnification, label, probability, predicted."""
    patients, magnifications = describe_files(paths)
    with runs.atomic_write(path, newline="") as file:
        writer = csv.writer(file)
        writer.writerow(PREDICTION_COLUMNS)
        for row in zip(paths, patients, magnifications, labels, probabilities, strict=True):
            name, patient, magnification, label, probability = row
            writer.writerow(
                [
                    os.path.basename(name),
                    patient,
                    magnification,
                    int(label),
                    f"{probability:.6f}",
                    int(probability >= threshold),
                ]
            )
    return Path(path)


def evaluate_classifier(
    model,
    test: ImageDataset,
    run_dir,
    *,
    threshold: float = 0.5,
    threshold_method: str = FIXED_THRESHOLD,
    validation: ImageDataset | None = None,
    tune_threshold: bool = False,
    tuned_threshold: float | None = None,
    tta: bool = False,
    title: str = "",
    bootstrap_samples: int = 1000,
    seed: int = 0,
    extra: dict | None = None,
    write_metrics: bool = True,
) -> dict:
    """Predicts the test split (a tf.data `ImageDataset`) and writes predictions.csv,
    metrics.json and the figures.

    With `tune_threshold`, a second set of metrics uses the threshold that maximises Youden's J
    on the validation split (never chosen on the test split), or `tuned_threshold` when the
    caller chose it already (a cross-fitted run: on its out-of-fold probabilities). A test
    split with one class, or
    a model that predicts one class for every test image, is warned about and flagged.
    `extra` keys (e.g. `label_fraction_used`) are recorded in metrics.json too.

    Returns:
        The metrics dict written to metrics.json.
    """
    run_dir = Path(run_dir)
    probabilities = predict_probabilities(model, test.data, tta=tta)
    labels = test.labels
    patients, magnifications = describe_files(test.paths)
    known = all(p != UNKNOWN for p in patients)
    patient_keys = patients if known else None
    magnification_keys = magnifications if known else None
    write_predictions(run_dir / PREDICTIONS_FILE, test.paths, labels, probabilities, threshold)
    result = bc_metrics.compute_metrics(
        labels,
        probabilities,
        threshold=threshold,
        patients=patient_keys,
        magnifications=magnification_keys,
    )
    result["threshold_method"] = threshold_method
    result["tta"] = tta
    for flag in result["flags"]:
        warnings.warn(f"test evaluation: {flag} (see metrics.json 'flags')", stacklevel=2)
    if patient_keys is not None and bootstrap_samples > 0 and len(set(patient_keys)) > 1:
        result["bootstrap_95ci_by_patient"] = bc_metrics.bootstrap_by_patient(
            labels,
            probabilities,
            patient_keys,
            threshold=threshold,
            samples=bootstrap_samples,
            seed=seed,
        )
    tuned = tuned_threshold
    if tune_threshold and tuned is None:
        if validation is None:
            raise ValueError("tune_threshold needs the validation split.")
        if len(np.unique(validation.labels)) < 2:
            warnings.warn(
                "--tune-threshold: the validation split holds one class only, so no threshold "
                "can be tuned on it; the tuned metrics are left out",
                stacklevel=2,
            )
        else:
            tuned = bc_metrics.youden_threshold(
                validation.labels, predict_probabilities(model, validation.data, tta=tta)
            )
    if tune_threshold and tuned is not None:
        result["tuned_on_validation"] = bc_metrics.compute_metrics(
            labels,
            probabilities,
            threshold=tuned,
            patients=patient_keys,
            magnifications=magnification_keys,
        )
    result.update(extra or {})
    if write_metrics:  # else the caller writes it last (metrics.json means a finished run)
        write_json(run_dir / METRICS_FILE, result)
    _figures(result, labels, probabilities, test, run_dir, title, threshold, seed)
    print(f"\nClassification report ({len(labels)} test images, threshold {threshold:.4g}):")
    print(bc_metrics.classification_report_text(labels, probabilities, threshold))
    print(summary_line(result))
    return result


def summary_line(result: dict) -> str:
    """The summary metrics of the registry (accuracy, balanced accuracy, specificity, recall,
    F1, AUC and the patient recognition rate, when present), four decimals each."""
    parts = [
        f"{metric.title} {'n/a' if result.get(metric.key) is None else f'{result[metric.key]:.4f}'}"
        for metric in bc_metrics.metrics_in(bc_metrics.VIEW_SUMMARY)
        if metric.key in result
    ]
    return "  ".join(parts)


def decoded_images(dataset: ImageDataset, indices) -> np.ndarray:
    """The uint8 `[k, size, size, 3]` images at `indices` (positions in `dataset.paths`),
    decoded and resized as the model saw them, from image files or a TFRecord folder's shards
    alike (whose paths name no file)."""
    from bc_keras.data import tfrecords  # TensorFlow only when a figure is drawn

    indices = np.asarray(indices, dtype=np.int64)
    order = np.unique(indices)  # sorted: a TFRecord folder is read in its own order
    files = SplitFiles([dataset.paths[i] for i in order], np.asarray(dataset.labels)[order])
    size, interpolation = dataset.image_size, dataset.interpolation
    if dataset.source is not None and tfrecords.is_tfrecord_folder(dataset.source):
        decoded = tfrecords.decoded_record_dataset(
            dataset.source, dataset.subset, files, size, interpolation, cache=False
        )
    else:
        decoded = decoded_dataset(files.paths, files.labels, size, interpolation, cache=False)
    images = [image.numpy() for image, _ in decoded]
    position = {int(index): i for i, index in enumerate(order)}
    return np.stack([images[position[int(index)]] for index in indices])


def _figures(result, labels, probabilities, test, run_dir, title, threshold, seed):
    label = f"{title} " if title else ""
    plots.plot_confusion_matrix(
        result["confusion_matrix"], run_dir / runs.CONFUSION_MATRIX_FIGURE, f"{label}confusion matrix"
    )
    if len(np.unique(labels)) > 1:
        plots.plot_roc_curve(labels, probabilities, run_dir / runs.ROC_FIGURE, f"{label}ROC curve")
        plots.plot_precision_recall_curve(
            labels,
            probabilities,
            run_dir / runs.PRECISION_RECALL_FIGURE,
            f"{label}precision-recall",
        )
    # From the decoded tensors, not the files: a TFRecord folder's paths name no file.
    plots.plot_sample_predictions(
        test.paths,
        labels,
        probabilities,
        run_dir / runs.SAMPLE_PREDICTIONS_FIGURE,
        threshold=threshold,
        seed=seed,
        images=lambda indices: decoded_images(test, indices),
    )


def plot_run_history(run_dir, title: str = "") -> Path:
    """training_curves.png from the run's history.csv (a cross-fitted ensemble's holds its
    members' epochs one after another, marked where the next fold's member starts)."""
    history = read_history(run_dir)
    return plots.plot_history(
        history,
        Path(run_dir) / runs.TRAINING_CURVES_FIGURE,
        title=title,
        phase_key="fold" if "fold" in history else "phase",
    )


def read_predictions(run_dir) -> dict:
    """A run's predictions.csv as arrays: filename, patient, magnification, label, probability."""
    with open(Path(run_dir) / PREDICTIONS_FILE, newline="") as file:
        rows = list(csv.DictReader(file))
    return {
        "filename": [row["filename"] for row in rows],
        "patient": [row["patient"] for row in rows],
        "magnification": [row["magnification"] for row in rows],
        "label": np.array([int(row["label"]) for row in rows]),
        "probability": np.array([float(row["probability"]) for row in rows]),
    }

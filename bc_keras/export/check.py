"""The cost of each export, measured on a test split: AUC, balanced accuracy and the patient
recognition rate of the exports against the Keras float32 model, with patient-bootstrap
intervals of each difference, the largest probability difference, the file size and the CPU
latency at batch 1 and 32."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bc_keras import runs
from bc_keras.console import Progress
from bc_keras.evaluation.metrics import (
    binary_scores,
    group_index,
    patient_recognition_rate,
    resampled_scores,
)
from bc_keras.export.markdown import CHECK_JSON, CHECK_MARKDOWN, REFERENCE, check_markdown
from bc_keras.export.runtime import load_export, predict_arrays, read_export

__all__ = ["CHECK_JSON", "CHECK_MARKDOWN", "REFERENCE", "check_exports", "check_markdown",
           "write_check"]  # fmt: skip

DIFFERENCES = ("auc_roc", "balanced_accuracy", "patient_recognition_rate")
LATENCY_BATCHES = (1, 32)


def file_size(path) -> int:
    """Bytes of a file, or of every file under a folder (a SavedModel)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def scores(labels, probabilities, patients, threshold: float) -> dict:
    """The three headline scores of one model at its threshold."""
    predicted = (probabilities >= threshold).astype(int)
    binary = binary_scores(labels, probabilities, threshold)
    return {
        "auc_roc": binary["auc_roc"],
        "balanced_accuracy": binary["balanced_accuracy"],
        "patient_recognition_rate": patient_recognition_rate(labels, predicted, patients),
    }


def paired_differences(
    labels, reference, other, patients, threshold: float, samples: int = 1000, seed: int = 0
) -> dict:
    """`other - reference` of each score with its 95% interval, both models scored on the SAME
    resampled patients (a paired bootstrap: the patients' own difficulty cancels out).

    Returns:
        `{score: {"difference", "low", "high"}}` (interval None where the score is undefined
        in every resample).
    """
    labels = np.asarray(labels).astype(int)
    index, count = group_index(patients, labels)
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, count, (samples, count))
    offsets = (np.arange(samples) * count)[:, None]
    multiplicity = np.bincount((chosen + offsets).ravel(), minlength=samples * count)
    multiplicity = multiplicity.reshape(samples, count).astype(float)
    resampled = {}
    for name, probabilities in (("reference", reference), ("other", other)):
        values = resampled_scores(multiplicity, index, labels, probabilities, threshold)
        correct = ((probabilities >= threshold).astype(int) == labels).astype(float)
        per_patient = np.bincount(index, correct, count) / np.bincount(index, minlength=count)
        values["patient_recognition_rate"] = multiplicity @ per_patient / multiplicity.sum(1)
        resampled[name] = values
    point_reference = scores(labels, reference, patients, threshold)
    point_other = scores(labels, other, patients, threshold)
    result = {}
    for key in DIFFERENCES:
        difference = resampled["other"][key] - resampled["reference"][key]
        difference = difference[~np.isnan(difference)]
        low, high = (
            (float(np.percentile(difference, 2.5)), float(np.percentile(difference, 97.5)))
            if difference.size
            else (None, None)
        )
        point = (
            None
            if point_other[key] is None or point_reference[key] is None
            else point_other[key] - point_reference[key]
        )
        result[key] = {"difference": point, "low": low, "high": high}
    return result


def latency_ms(run, image: np.ndarray, batch: int, repeats: int = 10) -> float:
    """Median wall time (ms) of `run` on `batch` copies of `image`, after two warm-up calls."""
    images = np.stack([image] * batch)
    for _ in range(2):
        run(images)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def export_name(record: dict) -> str:
    """How tables name an export: `litert int8`, `savedmodel`."""
    quantize = record.get("quantize", "none")
    return record["format"] + ("" if quantize == "none" else f" {quantize}")


def check_exports(
    model_path, folders, split, batch_size: int = 32, samples: int = 1000, seed: int = 0,
    repeats: int = 10,
) -> dict:  # fmt: skip
    """Scores the source model and each export folder on `split`'s test images (see the
    module docstring); returns the JSON-ready result."""
    import bc_keras
    from bc_keras.data.files import list_folder_files
    from bc_keras.histology.stain import read_rgb
    from bc_keras.prepare.subsets import patients_of_paths

    records = [read_export(folder) for folder in folders]
    files = list_folder_files(split, "test")
    labels = files.labels.astype(int)
    patients = patients_of_paths(files.paths) or list(files.paths)
    images = [read_rgb(path) for path in files.paths]
    predictor = bc_keras.load_model(model_path)
    threshold = predictor.threshold
    reference = predictor.predict_proba(files.paths, batch_size=batch_size)

    def reference_run(batch):
        return predictor.predict_proba(batch, batch_size=batch_size)

    rows = [
        {
            "name": REFERENCE,
            "path": str(model_path),
            "size_bytes": file_size(model_path),
            **scores(labels, reference, patients, threshold),
            "latency_ms": {
                str(b): latency_ms(reference_run, images[0], b, repeats) for b in LATENCY_BATCHES
            },  # fmt: skip
        }
    ]
    progress = Progress("checked", len(records), unit="exports")
    for folder, record in zip(folders, records, strict=True):
        run = load_export(folder)
        probabilities = predict_arrays(run, images, batch_size)
        rows.append(
            {
                "name": export_name(record),
                "path": str(folder),
                "size_bytes": record.get("size_bytes") or file_size(Path(folder)),
                **scores(labels, probabilities, patients, threshold),
                "max_abs_probability_difference": float(np.max(np.abs(probabilities - reference))),
                "differences": paired_differences(
                    labels, reference, probabilities, patients, threshold, samples, seed
                ),
                "latency_ms": {
                    str(b): latency_ms(run, images[0], b, repeats) for b in LATENCY_BATCHES
                },  # fmt: skip
            }
        )
        progress.advance(1)
    progress.close()
    return {
        "model": str(model_path),
        "split": str(split),
        "images": len(labels),
        "patients": len(set(patients)),
        "threshold": threshold,
        "image_shape": list(images[0].shape),
        "bootstrap_samples": samples,
        "models": rows,
    }


def write_check(result: dict, out_dir) -> tuple[Path, Path]:
    """check.json and check.md in `out_dir`."""
    out_dir = Path(out_dir)
    json_path = runs.write_json(out_dir / CHECK_JSON, result)
    with runs.atomic_write(out_dir / CHECK_MARKDOWN) as file:
        file.write(check_markdown(result))
    return json_path, out_dir / CHECK_MARKDOWN

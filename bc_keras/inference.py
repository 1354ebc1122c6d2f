"""Inference with a saved bc_keras model: image files or folders -> probabilities per image and patient."""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import tensorflow as tf

from bc_keras.breakhis import CLASS_NAMES
from bc_keras.data import DEFAULT_INTERPOLATION, apply_preprocess, decode_and_resize
from bc_keras.errors import DataError
from bc_keras.images import IMAGE_EXTENSIONS, check_images
from bc_keras.runs import describe_files

IMAGE_COLUMNS = ("path", "probability_malignant", "label")
PATIENT_COLUMNS = (
    "patient",
    "images",
    "mean_probability",
    "mean_label",
    "majority_label",
    "malignant_images",
)


def collect_images(paths) -> list[str]:
    """Image files named directly or found (recursively, sorted) in the folders given.

    Raises:
        DataError: if a path does not exist or nothing to predict is found.
    """
    found: list[str] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(
                str(p)
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
        elif path.is_file():
            found.append(str(path))
        else:
            raise DataError(f"{path} does not exist; pass image files or folders of images.")
    if not found:
        raise DataError(
            f"No image ({', '.join(IMAGE_EXTENSIONS)}) found in {', '.join(map(str, paths))}."
        )
    return found


def predict_files(
    model, metadata: dict, files, batch_size: int = 32
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Predicts every readable file with the preprocessing the model was trained with.

    Returns:
        `(rows, skipped)`: one row per readable image (path, probability_malignant, label) and
        `(path, reason)` for each image that could not be read.
    """
    image_size = int(metadata["image_size"])
    preprocess = metadata.get("preprocess", "rescale")
    interpolation = metadata.get("interpolation", DEFAULT_INTERPOLATION)
    threshold = float(metadata.get("threshold", 0.5))
    scan = check_images(files)
    good, skipped = scan.good, scan.skipped
    if not good:
        return [], skipped
    dataset = (
        tf.data.Dataset.from_tensor_slices(good)
        .map(
            lambda path: decode_and_resize(path, image_size, interpolation),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .batch(batch_size)
        .map(lambda images: apply_preprocess(tf.cast(images, tf.float32), preprocess))
        .prefetch(tf.data.AUTOTUNE)
    )
    probabilities = np.asarray(model.predict(dataset, verbose=0), dtype=np.float64).reshape(-1)
    rows = [
        {"path": path, "probability_malignant": float(p), "label": CLASS_NAMES[int(p >= threshold)]}
        for path, p in zip(good, probabilities, strict=True)
    ]
    return rows, skipped


def summarise_patients(rows, threshold: float = 0.5) -> list[dict]:
    """Per patient (for BreaKHis file names): mean probability, and the label by mean and by
    majority vote of the images."""
    patients, _ = describe_files([row["path"] for row in rows])
    grouped: dict[str, list[float]] = defaultdict(list)
    for patient, row in zip(patients, rows, strict=True):
        if patient != "unknown":
            grouped[patient].append(row["probability_malignant"])
    summary = []
    for patient in sorted(grouped):
        values = np.asarray(grouped[patient])
        malignant = int(np.sum(values >= threshold))
        summary.append(
            {
                "patient": patient,
                "images": len(values),
                "mean_probability": float(values.mean()),
                "mean_label": CLASS_NAMES[int(values.mean() >= threshold)],
                "majority_label": CLASS_NAMES[int(malignant * 2 > len(values))],
                "malignant_images": malignant,
            }
        )
    return summary


def write_csv(path, columns, rows) -> Path:
    """Writes rows (dicts) as CSV atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    key: (f"{value:.6f}" if isinstance(value, float) else value)
                    for key, value in row.items()
                }
            )
    os.replace(temporary, path)
    return path

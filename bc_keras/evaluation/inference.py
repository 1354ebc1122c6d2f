"""Inference with a saved bc_keras model: image files or folders -> probabilities per image and
patient, with optional test-time augmentation."""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from bc_keras import runs
from bc_keras.console import Progress
from bc_keras.data import DEFAULT_INTERPOLATION, PREPROCESS_RESCALE, files_dataset
from bc_keras.errors import DataError, ModelFileError
from bc_keras.histology.breakhis import CLASS_NAMES, UNKNOWN, describe_files
from bc_keras.histology.images import IMAGE_EXTENSIONS, check_images

IMAGE_COLUMNS = ("path", "probability_malignant", "label")
# The .h5 metadata key of the stain normaliser a model was trained behind.
STAIN_NORMALIZER_KEY = "stain_normalizer"
# Beside the Grad-CAM overlays: which image each overlay shows (names may carry a hash).
OVERLAY_INDEX = "gradcam.csv"
OVERLAY_COLUMNS = ("path", "overlay")
PATIENT_COLUMNS = (
    "patient",
    "images",
    "mean_probability",
    "mean_label",
    "majority_label",
    "malignant_images",
)
# The 8 symmetries of the square (4 rotations, each with and without a mirror): histology has
# no preferred orientation, so averaging over them removes orientation noise from a prediction.
DIHEDRAL_VIEWS = 8


def dihedral_view(images, index: int):
    """View `index` (0-7) of a batch `[b, h, w, c]`: rotation by 90 * (index % 4) degrees,
    mirrored left-right when index >= 4. View 0 is the identity."""
    rotated = tf.image.rot90(images, k=index % 4)
    return tf.image.flip_left_right(rotated) if index >= 4 else rotated


def predict_probabilities(model, dataset, tta: bool = False, progress=None) -> np.ndarray:
    """Probability of malignant for every image of an unshuffled `tf.data` dataset of
    `images` or `(images, labels)` batches, in order; with `tta`, the mean over the 8
    dihedral views. `progress` (a `console.Progress`) advances by each batch's images."""
    views = range(DIHEDRAL_VIEWS) if tta else range(1)
    # One pass over the data: every batch is decoded once and all its views are scored
    # while the next batch is decoded in the background (`model.predict` per view would
    # decode every image once per view).
    images = dataset.map(lambda *batch: batch[0]).prefetch(tf.data.AUTOTUNE)
    chunks = []
    for batch in images:
        total = 0.0
        for index in views:
            outputs = model.predict_on_batch(dihedral_view(batch, index))
            total = total + np.asarray(outputs, dtype=np.float64).reshape(-1)
        chunks.append(total)
        if progress is not None:
            progress.advance(len(total))
    if not chunks:
        return np.zeros(0, dtype=np.float64)
    total = np.concatenate(chunks)
    probabilities = total / len(views)
    if not np.all(np.isfinite(probabilities)):
        raise ModelFileError(
            f"the model gives non-finite probabilities for {int(np.sum(~np.isfinite(probabilities)))} "
            "image(s): its weights are broken (a diverged training run); retrain it"
        )
    return probabilities


def stain_normalizer_of(metadata: dict):
    """The stain normaliser a model was trained behind (a split from normalize_stains.py), or
    None: raw images must be normalised the same way before the model sees them."""
    record = metadata.get(STAIN_NORMALIZER_KEY)
    if not record:
        return None
    from bc_keras.histology.stain import restore_normalizer

    return restore_normalizer(record)


def _normalized_image(path, normalizer, size: int, interpolation: str):
    from bc_keras.data.decode import resize_like_pil

    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.numpy_function(normalizer.transform, [image], tf.uint8, stateful=False)
    image.set_shape([None, None, 3])
    return resize_like_pil(image, size, interpolation)


def model_inputs(files, metadata: dict, batch_size: int = 32):
    """The inputs a saved model expects for image files, in file order, as `(images, zeros)`
    batches: decoded, stain-normalised first when the model was trained on a normalised split
    (at full size, as normalize_stains.py did, so a raw image gives what its normalised copy
    gives), resized and preprocessed as stored in the model."""
    size = int(metadata["image_size"])
    preprocess = metadata.get("preprocess", PREPROCESS_RESCALE)
    interpolation = metadata.get("interpolation", DEFAULT_INTERPOLATION)
    normalizer = stain_normalizer_of(metadata)
    if normalizer is None:
        return files_dataset(
            files, image_size=size, batch_size=batch_size, preprocess=preprocess,
            interpolation=interpolation,
        )  # fmt: skip
    from bc_keras.data.pipeline import apply_preprocess

    def load(path):
        image = tf.cast(_normalized_image(path, normalizer, size, interpolation), tf.float32)
        return image, tf.constant(0.0)

    dataset = tf.data.Dataset.from_tensor_slices([str(f) for f in files]).map(load)
    dataset = dataset.batch(batch_size).map(lambda x, y: (apply_preprocess(x, preprocess), y))
    return dataset.prefetch(tf.data.AUTOTUNE)


def collect_images(paths) -> tuple[list[str], list[str]]:
    """Image files named directly or found (recursively, sorted) in the folders given, each
    once: an image named twice (twice on the command line, or as a file and inside a folder
    given too) is predicted once, so that every prediction row is a different image.

    Returns:
        `(files, repeated)`: the images in the order found, and the names given again
        (two names are the same image when their absolute paths are equal; links are
        distinct names and kept).

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
    files, repeated, seen = [], [], set()
    for name in found:
        key = os.path.normcase(os.path.abspath(name))
        if key in seen:
            repeated.append(name)
        else:
            seen.add(key)
            files.append(name)
    return files, repeated


def predict_files(
    model, metadata: dict, files, batch_size: int = 32, tta: bool = False
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Predicts every readable file with the preprocessing the model was trained with.

    Returns:
        `(rows, skipped)`: one row per readable image (path, probability_malignant, label) and
        `(path, reason)` for each image that could not be read.
    """
    threshold = float(metadata.get("threshold", 0.5))
    scan = check_images(files)
    if not scan.good:
        return [], scan.skipped
    dataset = model_inputs(scan.good, metadata, batch_size)
    with Progress("predicted", len(scan.good)) as progress:
        probabilities = predict_probabilities(model, dataset, tta=tta, progress=progress)
    rows = [
        {"path": path, "probability_malignant": float(p), "label": CLASS_NAMES[int(p >= threshold)]}
        for path, p in zip(scan.good, probabilities, strict=True)
    ]
    return rows, scan.skipped


def summarise_patients(rows, threshold: float = 0.5) -> list[dict]:
    """Per patient (for BreaKHis file names): mean probability, and the label by mean and by
    majority vote of the images."""
    patients, _ = describe_files([row["path"] for row in rows])
    grouped: dict[str, list[float]] = defaultdict(list)
    for patient, row in zip(patients, rows, strict=True):
        if patient != UNKNOWN:
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
    with runs.atomic_write(path, newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    key: (f"{value:.6f}" if isinstance(value, float) else value)
                    for key, value in row.items()
                }
            )
    return path


def overlay_names(files) -> tuple[list[str], int]:
    """The overlay file name of every image, `<stem>_gradcam.png`; images whose stem another
    image shares (same name in other folders, or another extension) get `<stem>_<hash>_gradcam
    .png` instead, the hash being the first 8 hex digits of the SHA-1 of the absolute path, so
    that no overlay replaces another (a further `-2`, `-3` should two hashes ever agree).

    Returns:
        `(names, disambiguated)`: the names, in order, and how many carry a hash.
    """
    stems = [Path(path).stem for path in files]
    # Lower case: on a case-insensitive file system A.png and a.png are one file.
    counts = Counter(stem.lower() for stem in stems)
    taken = {f"{stem}_gradcam.png".lower() for stem in stems if counts[stem.lower()] == 1}
    names = []
    for path, stem in zip(files, stems, strict=True):
        if counts[stem.lower()] > 1:
            # The absolute path, not the resolved one: two links to one file are two inputs.
            digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]
            stem = candidate = f"{stem}_{digest}"
            number = 1
            while f"{candidate}_gradcam.png".lower() in taken:
                number += 1
                candidate = f"{stem}-{number}"
            stem = candidate
            taken.add(f"{stem}_gradcam.png".lower())
        names.append(f"{stem}_gradcam.png")
    return names, sum(count for count in counts.values() if count > 1)


def write_gradcam_overlays(
    model, metadata: dict, files, out_dir, batch_size: int = 32
) -> tuple[list[Path], int]:
    """Grad-CAM of the malignant class for every image, written as overlays (the image at the
    model's input size under its heat map) in `out_dir`, named by `overlay_names`.

    Returns:
        `(written, disambiguated)`: the overlay paths in the order of `files`, and how many
        names carry a hash because images share a file name. `out_dir/gradcam.csv`
        (`OVERLAY_INDEX`) maps each image's path to its overlay.
    """
    from bc_keras.data.decode import decode_and_resize
    from bc_keras.evaluation import gradcam

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names, disambiguated = overlay_names(files)
    size = int(metadata["image_size"])
    interpolation = metadata.get("interpolation", DEFAULT_INTERPOLATION)
    dataset = model_inputs(files, metadata, batch_size)
    normalizer = stain_normalizer_of(metadata)
    written, start = [], 0
    progress = Progress("Grad-CAM overlays", len(files))
    for inputs, _ in dataset:
        heatmaps = gradcam.gradcam(model, inputs.numpy())
        progress.advance(len(heatmaps))
        batch = range(start, start + len(heatmaps))
        for heatmap, index in zip(heatmaps, batch, strict=True):
            if normalizer is None:
                image = decode_and_resize(files[index], size, interpolation).numpy()
            else:  # the overlay shows the colours the model saw
                image = _normalized_image(tf.constant(files[index]), normalizer, size, interpolation)
                image = image.numpy()
            target = out_dir / names[index]
            Image.fromarray(gradcam.overlay(image, heatmap)).save(target)
            written.append(target)
        start += len(heatmaps)
    progress.close()
    pairs = zip(files, written, strict=True)
    index = [{"path": path, "overlay": target.name} for path, target in pairs]
    write_csv(out_dir / OVERLAY_INDEX, OVERLAY_COLUMNS, index)
    return written, disambiguated

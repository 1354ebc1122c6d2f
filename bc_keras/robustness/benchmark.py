"""The robustness benchmark: saved classifiers scored on a split's test images under each
corruption at each severity, with the test evaluation's own code (`data.build_dataset`,
`predict_probabilities` and the metric functions of `metrics.compute_metrics`), so that
severity 0 is the run's metrics.json; `run_robustness` writes the folder (JSON, markdown, figures)."""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from bc_keras import data, models, runs
from bc_keras.console import Progress
from bc_keras.data.pipeline import apply_preprocess
from bc_keras.errors import DataError, RunError
from bc_keras.evaluation import metrics as bc_metrics
from bc_keras.evaluation.classifier import decoded_images
from bc_keras.evaluation.inference import STAIN_NORMALIZER_KEY, predict_probabilities
from bc_keras.evaluation.predictor import Predictor
from bc_keras.histology.breakhis import UNKNOWN, describe_files
from bc_keras.robustness import adversarial
from bc_keras.robustness.corruptions import (
    CLEAN,
    KIND_IMAGE,
    check_corruption_names,
    check_severities,
    corrupt,
    corruption_of,
)

SCORES = ("auc_roc", "balanced_accuracy", "patient_recognition_rate")
DEFAULT_BATCH_SIZE = 32
# Severity 0 recomputed through the corrupted images' path must give the file pipeline's
# probabilities to within this (both feed the same uint8 pixels to the same model).
CLEAN_TOLERANCE = 1e-5


def scores(labels, probabilities, threshold: float, patients) -> dict:
    """AUC, balanced accuracy and the patient recognition rate of one set of predictions, by
    the functions `compute_metrics` computes them with (None where undefined, as there; the
    patient rate without patient keys)."""
    binary = bc_metrics.binary_scores(labels, probabilities, threshold)
    rate = None
    if patients is not None:
        predicted = (np.asarray(probabilities) >= threshold).astype(int)
        rate = bc_metrics.patient_recognition_rate(labels, predicted, np.asarray(patients))
    return {"auc_roc": binary["auc_roc"], "balanced_accuracy": binary["balanced_accuracy"],
            "patient_recognition_rate": rate}  # fmt: skip


def pixel_dataset(pixels: np.ndarray, preprocess: str, batch_size: int):
    """Float pixels `[n, h, w, 3]` (0-255) as the test pipeline's batches of model inputs."""
    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(pixels, dtype=np.float32))
    return dataset.batch(batch_size).map(lambda x: apply_preprocess(x, preprocess))


def training_batch_size(metadata: dict) -> int:
    """The batch size the model's run evaluated its test split with (its config.json), else
    DEFAULT_BATCH_SIZE: the same batches give the same float32 sums."""
    try:
        config = json.loads((Path(metadata["run_dir"]) / runs.CONFIG_FILE).read_text())
        return int(config["batch_size"])
    except (OSError, KeyError, TypeError, ValueError):
        return DEFAULT_BATCH_SIZE


def recorded_metrics(metadata: dict, split, clean: dict) -> dict:
    """The run's metrics.json beside the model (from its run folder), whether the benchmark's
    split is the one the run was trained on, and whether severity 0 gives its scores."""
    run_dir = Path(metadata.get("run_dir", ""))
    record = {"path": str(run_dir / runs.METRICS_FILE), "same_split": None, "matches": None}
    try:
        recorded = json.loads((run_dir / runs.METRICS_FILE).read_text())
        trained_on = json.loads((run_dir / runs.CONFIG_FILE).read_text()).get("data")
    except (OSError, ValueError):
        return record
    record["same_split"] = (
        trained_on is not None and Path(trained_on).resolve() == Path(split).resolve()
    )
    record["matches"] = all(recorded.get(key) == value for key, value in clean.items())
    return record


def _check_split(split, metadata: dict, path) -> None:
    split = Path(split)
    if not split.is_dir():
        raise DataError(f"--data {split} does not exist; pass a prepared split folder")
    from bc_keras.prepare.normalize import NORMALIZE_NAME

    if metadata.get(STAIN_NORMALIZER_KEY) and not (split / NORMALIZE_NAME).is_file():
        raise DataError(
            f"{path} was trained behind a stain normaliser and {split} is not a normalised split "
            f"(no {NORMALIZE_NAME}); pass the normalised split it was trained on"
        )


def evaluate_model(path, split, corruptions=None, severities=None, seed: int = 0,
                   batch_size: int | None = None, progress: Progress | None = None) -> dict:  # fmt: skip
    """One model's benchmark (see the module docstring).

    Args:
        path: a classifier .h5 (or .keras) saved by a bc_keras training script.
        split: a prepared split (folder or TFRecord folder) with a test subset.
        corruptions: names of `CORRUPTIONS` (default all); severities: 1-5 (default all).
        seed: keys every random draw (`corruptions.image_rng`).
        batch_size: default: the one its run used (`training_batch_size`).
        progress: advanced by one per corruption and severity.

    Returns:
        The model's JSON-ready record: its settings, `clean` scores, `metrics_json` (the run's
        file and whether severity 0 matches it) and per corruption one row per severity
        (0 first): severity, parameter value, mean absolute pixel change, scores.
    """
    corruptions = check_corruption_names(corruptions)
    severities = check_severities(severities)
    model, metadata = models.load_model(path)
    predictor = Predictor(model, metadata, path)  # refuses a model that is not a classifier
    _check_split(split, metadata, path)
    batch_size = batch_size or training_batch_size(metadata)
    preprocess, threshold, tta = predictor.preprocess, predictor.threshold, predictor.tta
    # The test evaluation of a training run (experiments.common.ClassifierData.dataset).
    test = data.build_dataset(
        split, data.SUBSET_TEST, image_size=predictor.image_size, batch_size=batch_size,
        preprocess=preprocess, interpolation=predictor.interpolation, augment=False,
        shuffle=False,
    )  # fmt: skip
    if not len(test.paths):
        raise DataError(f"{split} has no test images; prepare a split with a test subset")
    labels = np.asarray(test.labels).astype(int)
    patients, _ = describe_files(test.paths)
    known = all(patient != UNKNOWN for patient in patients)
    keys = patients if known else None
    clean_probabilities = predict_probabilities(model, test.data, tta=tta)
    clean = scores(labels, clean_probabilities, threshold, keys)
    images = decoded_images(test, np.arange(len(labels)))
    again = predict_probabilities(model, pixel_dataset(images, preprocess, batch_size), tta=tta)
    difference = float(np.max(np.abs(again - clean_probabilities)))
    if difference > CLEAN_TOLERANCE:
        warnings.warn(f"{path}: the decoded test images give probabilities up to {difference:.3g} "
                      "from the test pipeline's; the corrupted scores may be off by as much",
                      stacklevel=2)  # fmt: skip
    gradient = None
    results = {}
    for name in corruptions:
        corruption = corruption_of(name)
        rows = [{"severity": CLEAN, "value": None, "pixel_change": 0.0, **clean}]
        for severity in severities:
            value = corruption.value(severity)
            if corruption.kind == KIND_IMAGE:
                pixels = corrupt(name, images, severity, seed).astype(np.float32)
            else:
                gradient = gradient or adversarial.loss_gradient(model, preprocess, tta)
                attack = adversarial.fgsm if name == "fgsm" else adversarial.pgd
                options = {} if name == "fgsm" else {"seed": seed}
                pixels = attack(model, images, labels, value, preprocess, tta,
                                batch_size=batch_size, gradient=gradient, **options)  # fmt: skip
            probabilities = predict_probabilities(
                model, pixel_dataset(pixels, preprocess, batch_size), tta=tta
            )
            change = float(np.mean(np.abs(pixels - images.astype(np.float32))))
            rows.append({"severity": severity, "value": value, "pixel_change": change,
                         **scores(labels, probabilities, threshold, keys)})  # fmt: skip
            if progress is not None:
                progress.advance(1)
        results[name] = rows
    return {
        "path": str(path),
        "experiment": metadata.get("experiment"),
        "backbone": metadata.get("backbone"),
        "image_size": predictor.image_size,
        "preprocess": preprocess,
        "interpolation": predictor.interpolation,
        "threshold": threshold,
        "tta": tta,
        "batch_size": batch_size,
        "input_epsilon_per_grey_level": adversarial.input_epsilon(preprocess),
        "clean": clean,
        "clean_decoded_max_difference": difference,
        "metrics_json": recorded_metrics(metadata, split, clean),
        "results": results,
        "test_images": len(labels),
        "patients": len(set(patients)) if known else None,
    }


def model_names(paths) -> list[str]:
    """How tables name each model: its file name without suffix, with its folder when two
    models share a name (and a number should two still agree)."""
    paths = [Path(p) for p in paths]
    names = [p.stem for p in paths]
    names = [f"{p.parent.name}/{p.stem}" if names.count(p.stem) > 1 else n
             for p, n in zip(paths, names, strict=True)]  # fmt: skip
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return unique


def benchmark(model_paths, split, corruptions=None, severities=None, seed: int = 0,
              batch_size: int | None = None) -> dict:  # fmt: skip
    """Every model's `evaluate_model` on `split`, as robustness.json holds it."""
    if not model_paths:
        raise RunError("no model given; pass one or more classifier .h5 files")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise RunError(f"--seed {seed} must be a non-negative whole number")
    corruptions = check_corruption_names(corruptions)
    severities = check_severities(severities)
    for path in model_paths:
        if not Path(path).is_file():
            raise RunError(f"{path} does not exist; pass a classifier saved by a training script")
    if not Path(split).is_dir():
        raise DataError(f"--data {split} does not exist; pass a prepared split folder")
    progress = Progress("robustness", len(model_paths) * len(corruptions) * len(severities),
                        unit="evaluations")  # fmt: skip
    entries = []
    with progress:
        for name, path in zip(model_names(model_paths), model_paths, strict=True):
            entries.append({"name": name, **evaluate_model(
                path, split, corruptions, severities, seed, batch_size, progress)})  # fmt: skip
    return {
        "split": str(split),
        "seed": seed,
        "severities": [CLEAN, *severities],
        "scores": {key: bc_metrics.METRICS_BY_KEY[key].title for key in SCORES},
        "corruptions": {
            name: {
                "title": corruption_of(name).title,
                "parameter": corruption_of(name).parameter,
                "kind": corruption_of(name).kind,
                "values": {str(s): corruption_of(name).value(s) for s in severities},
            }
            for name in corruptions
        },
        "models": entries,
    }


def check_out_dir(out_dir) -> Path:
    """An output folder that does not exist, is empty, or holds an earlier benchmark
    (replaced)."""
    from bc_keras.robustness.outputs import RESULT_FILE

    return runs.replaceable_out_dir(out_dir, RESULT_FILE, "robustness benchmark")


def run_robustness(model_paths, split, out_dir, corruptions=None, severities=None,
                   seed: int = 0, batch_size: int | None = None) -> dict:  # fmt: skip
    """The benchmark of `model_paths` on `split`, written to `out_dir`: robustness.json,
    robustness.md and one robustness_<corruption>.png per corruption. The folder appears
    complete or not at all (written beside it, then moved in); an earlier benchmark there is
    replaced.

    Returns:
        The result (robustness.json's content).
    """
    from bc_keras.robustness.outputs import write_outputs

    out_dir = check_out_dir(out_dir)
    result = benchmark(model_paths, split, corruptions, severities, seed, batch_size)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write_outputs(result, scratch)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        scratch.rename(out_dir)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)
    return result

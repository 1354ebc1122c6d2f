"""One round of active learning with a saved classifier: the pool's images read as the model
was trained to read them (its `Predictor`), scored by a strategy, and the chosen images written
as a CSV (path, patient, score, rank)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bc_keras.active import STRATEGY_CORESET, STRATEGY_ENTROPY, STRATEGY_MARGIN, strategies
from bc_keras.console import Progress
from bc_keras.errors import ConfigError, DataError
from bc_keras.histology.breakhis import UNKNOWN, slide_id_of
from bc_keras.histology.images import IMAGE_EXTENSIONS, check_images

SELECTION_COLUMNS = ("path", "patient", "score", "rank")


@dataclass
class Selection:
    """A round's choice: one row per chosen image in rank order (path, patient, score, rank),
    the patient cap that held, and how many images the pool offered."""

    rows: list[dict]
    cap: int
    pool_size: int


def _same_image_key(path) -> str:
    # The file itself: a prepared split's link and the archive image it points to are one image.
    return os.path.normcase(os.path.realpath(path))


def pool_images(pool, labelled=()) -> list[str]:
    """The readable images below `pool` (recursively, sorted) less those in `labelled`
    (files or folders of images already annotated; compared as the files they resolve to).

    Raises:
        DataError: if the pool is missing, holds no image, or holds an unreadable one.
    """
    from bc_keras.evaluation.inference import collect_images

    pool = Path(pool)
    if not pool.is_dir():
        raise DataError(f"--pool {pool} is not a folder; pass the folder of unlabelled images")
    found = sorted(
        str(p) for p in pool.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not found:
        raise DataError(
            f"--pool {pool} holds no image ({', '.join(IMAGE_EXTENSIONS)}, searched in its "
            "subfolders too); pass the folder of unlabelled images to choose from"
        )
    if labelled:
        known = {_same_image_key(path) for path in collect_images(list(labelled))[0]}
        found = [path for path in found if _same_image_key(path) not in known]
        if not found:
            raise DataError(
                f"every image of --pool {pool} is already in --labelled; nothing is left to "
                "choose from"
            )
    scan = check_images(found)
    if scan.skipped:
        shown = "; ".join(f"{Path(p).name}: {reason}" for p, reason in scan.skipped[:3])
        raise DataError(
            f"{len(scan.skipped)} pool image(s) cannot be read ({shown}); remove or convert them"
        )
    return scan.good


def check_budget(budget: int, pool_size: int, where: str) -> None:
    """A budget of 1 to the pool's size, else a ConfigError naming the largest possible."""
    if budget < 1:
        raise ConfigError(f"--budget {budget} must be 1 or more")
    if budget > pool_size:
        raise ConfigError(
            f"--budget {budget} is more than the {pool_size} images of {where}; pass "
            f"--budget {pool_size} or less, or a larger pool"
        )


def feature_model(keras_model):
    """The classifier cut before its output layer: its penultimate features (the input of
    the Dense(1, sigmoid) every bc_keras classifier ends with, e.g. the CNN's Dense(128) after
    dropout, the transfer head's Dense, the SimCLR encoder's 512-d embedding; a cross-fitted
    ensemble's members' features side by side)."""
    import keras

    from bc_keras.models import OUTPUT_NAME

    try:
        output = keras_model.get_layer(OUTPUT_NAME)
    except ValueError:
        raise DataError(
            f"the model {keras_model.name} has no {OUTPUT_NAME!r} output layer, so its "
            "features cannot be found; use a classifier saved by a bc_keras training script"
        ) from None
    features = output.input
    if isinstance(features, list | tuple):
        features = keras.layers.Concatenate(name="member_features")(
            [keras.layers.Flatten()(tensor) for tensor in features]
        )
    return keras.Model(keras_model.inputs, features, name=f"{keras_model.name}_features")


def image_features(predictor, files, batch_size: int = 32, label: str = "features:") -> np.ndarray:
    """`[images, dim]` float64 penultimate features of image files, read as `predictor` reads
    them (size, resize, stain normaliser, preprocessing), no test-time augmentation."""
    if not len(files):
        return np.zeros((0, 0))
    model = feature_model(predictor.keras_model)
    dataset, total = predictor.inputs(list(files), batch_size)
    chunks = []
    with Progress(label, total) as progress:
        for batch in dataset:
            images = batch[0] if isinstance(batch, tuple) else batch
            values = np.asarray(model.predict_on_batch(images), dtype=np.float64)
            chunks.append(values.reshape(len(values), -1))
            progress.advance(len(values))
    return np.concatenate(chunks)


def select_images(
    predictor,
    files,
    budget: int,
    strategy: str,
    *,
    labelled_files=(),
    seed: int = 0,
    cap: int | None = None,
    batch_size: int = 32,
) -> Selection:
    """Chooses `budget` of the pool `files` with `strategy` (see `strategies.choose`).

    Args:
        predictor: the classifier (`bc_keras.load_model(path)`), whose probabilities, threshold
            and features the strategies use.
        files: the pool's image files.
        labelled_files: images already labelled: the coreset's starting centres.
        seed, cap: seeds `random`; the most images one patient may give (None: the default).
    """
    strategies.check_strategy(strategy)
    check_budget(budget, len(files), "the pool")
    keys = strategies.patient_keys(files)
    options: dict = {"seed": seed, "cap": cap}
    if strategy in (STRATEGY_ENTROPY, STRATEGY_MARGIN):
        with Progress("scored:", len(files)) as progress:
            dataset, _ = predictor.inputs(list(files), batch_size)
            from bc_keras.evaluation.inference import predict_probabilities

            probabilities = predict_probabilities(
                predictor.keras_model, dataset, tta=predictor.tta, progress=progress
            )
        options.update(probabilities=probabilities, threshold=predictor.threshold)
    elif strategy == STRATEGY_CORESET:
        options["features"] = image_features(predictor, files, batch_size, "pool features:")
        labelled = list(labelled_files)
        if labelled:
            options["labelled_features"] = image_features(
                predictor, labelled, batch_size, "labelled features:"
            )
    indices, scores, used_cap = strategies.choose(strategy, budget, keys, **options)
    rows = [
        {"path": str(files[index]), "patient": slide_id_of(files[index]), "score": float(score),
         "rank": rank}
        for rank, (index, score) in enumerate(zip(indices, scores, strict=True), start=1)
    ]  # fmt: skip
    return Selection(rows, used_cap, len(files))


def write_selection(path, rows) -> Path:
    """The selection CSV (`SELECTION_COLUMNS`), written atomically."""
    from bc_keras import runs

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with runs.atomic_write(path, newline="") as file:
        writer = csv.DictWriter(file, fieldnames=SELECTION_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "score": f"{row['score']:.8g}"})
    return path


def read_selection(path) -> list[dict]:
    """A selection CSV as rows (score float, rank int)."""
    with open(path, newline="") as file:
        return [
            {"path": row["path"], "patient": row["patient"], "score": float(row["score"]),
             "rank": int(row["rank"])}
            for row in csv.DictReader(file)
        ]  # fmt: skip


def patients_in(rows) -> dict:
    """How many images each (known) patient gives a selection."""
    counts: dict = {}
    for row in rows:
        if row["patient"] != UNKNOWN:
            counts[row["patient"]] = counts.get(row["patient"], 0) + 1
    return counts

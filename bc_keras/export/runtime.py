"""Running an export the way a service would, with plain Keras, TensorFlow or the LiteRT
interpreter (no bc_keras model code): what `--check` and `bench export` measure."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bc_keras.errors import ModelFileError
from bc_keras.export.formats import (
    EXPORT_FILE,
    FORMAT_KERAS,
    FORMAT_SAVEDMODEL,
    MODEL_FILES,
    SERVING_SIGNATURE,
)
from bc_keras.export.graph import INPUT_NAME, OUTPUT_NAME


def read_export(folder) -> dict:
    """The `export.json` of an export folder; `ModelFileError` if it is not one."""
    folder = Path(folder)
    record_file = folder / EXPORT_FILE
    if not record_file.is_file():
        raise ModelFileError(
            f"{folder} is not a bc_keras export (no {EXPORT_FILE}); make one with "
            "`python -m bc_keras.export MODEL.h5 --out DIR`"
        )
    return json.loads(record_file.read_text())


def load_export(folder) -> Callable[[np.ndarray], np.ndarray]:
    """A function from uint8 `[n, h, w, 3]` images (one size) to their malignant probability
    `[n]` (float64), running the export in its own runtime."""
    folder = Path(folder)
    record = read_export(folder)
    path = folder / MODEL_FILES[record["format"]]
    if record["format"] == FORMAT_KERAS:
        import keras

        model = keras.models.load_model(path)
        return lambda images: np.asarray(
            model.predict_on_batch(images)[OUTPUT_NAME], dtype=np.float64
        )
    if record["format"] == FORMAT_SAVEDMODEL:
        import tensorflow as tf

        serve = tf.saved_model.load(str(path)).signatures[SERVING_SIGNATURE]
        return lambda images: serve(**{INPUT_NAME: tf.constant(images)})[OUTPUT_NAME].numpy()
    return litert_runner(path)


def litert_runner(path) -> Callable[[np.ndarray], np.ndarray]:
    """The LiteRT interpreter on a `.tflite` export, resized to each call's batch shape."""
    import tensorflow as tf

    with warnings.catch_warnings():  # TF's interpreter says ai_edge_litert is its successor
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner(SERVING_SIGNATURE)

    def run(images):
        return np.asarray(runner(**{INPUT_NAME: images})[OUTPUT_NAME], dtype=np.float64)

    return run


def predict_arrays(run: Callable, images: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """`run` over a list of uint8 images of any sizes: batched by size, in the given order."""
    probabilities = np.empty(len(images), dtype=np.float64)
    by_shape: dict[tuple, list[int]] = {}
    for index, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(index)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chosen = indices[start : start + batch_size]
            probabilities[chosen] = run(np.stack([images[i] for i in chosen]))
    return probabilities

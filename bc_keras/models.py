"""Model builders, the scope every model is built and compiled in, and .h5 save/load."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

STRATEGY_DEFAULT = "default"
STRATEGY_MIRRORED = "mirrored"
STRATEGIES = (STRATEGY_DEFAULT, STRATEGY_MIRRORED)
# The name of the HDF5 attribute holding what inference needs to know about a saved model.
METADATA_ATTRIBUTE = "bc_keras_metadata"
OUTPUT_NAME = "malignant_probability"


def get_strategy(name: str = STRATEGY_DEFAULT) -> tf.distribute.Strategy:
    """A `tf.distribute` strategy by name: "default" (one device) or "mirrored" (all GPUs)."""
    if name == STRATEGY_DEFAULT:
        return tf.distribute.get_strategy()
    if name == STRATEGY_MIRRORED:
        return tf.distribute.MirroredStrategy()
    raise ValueError(f"strategy must be one of {STRATEGIES}. Received: strategy={name!r}")


@contextlib.contextmanager
def model_scope(strategy: tf.distribute.Strategy | None = None, mixed_precision: bool = False):
    """The one place models are built and compiled: a strategy scope and a precision policy.

    Keras' dtype policy is process-wide, so the previous policy is restored on exit. Builders
    keep the sigmoid output in float32 so that mixed precision never rounds probabilities.
    """
    previous = keras.config.dtype_policy()
    if mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        with (strategy or tf.distribute.get_strategy()).scope():
            yield
    finally:
        keras.config.set_dtype_policy(previous)


def sigmoid_output(x, name: str = OUTPUT_NAME):
    """The binary head's last layer: Dense(1, sigmoid), always float32."""
    return keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=name)(x)


def build_baseline_cnn(
    image_size: int = 224,
    dense_units: int = 128,
    dropout: float = 0.5,
    batch_norm_momentum: float = 0.99,
    name: str = "baseline_cnn",
) -> keras.Model:
    """The report's baseline: 3 x [Conv 3x3 same -> BatchNorm -> ReLU -> MaxPool 2x2] with
    32/64/128 filters, Flatten, Dense(dense_units, ReLU), Dropout, Dense(1, sigmoid).

    `batch_norm_momentum` is Keras' default, 0.99, as in the report. On a small dataset (few
    steps per epoch) the moving statistics then lag the weights for several epochs and the
    validation predictions are miscalibrated; 0.9 (PyTorch's default) fixes that.
    """
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8. Received: image_size={image_size}")
    if dense_units < 1:
        raise ValueError(f"dense_units must be positive. Received: dense_units={dense_units}")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    for index, filters in enumerate((32, 64, 128), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"conv{index}")(x)
        x = keras.layers.BatchNormalization(momentum=batch_norm_momentum, name=f"bn{index}")(x)
        x = keras.layers.ReLU(name=f"relu{index}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{index}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, sigmoid_output(x), name=name)


def classifier_metrics() -> list:
    """The report's metrics: accuracy, AUC, precision and recall."""
    return [
        keras.metrics.BinaryAccuracy(name="accuracy"),
        keras.metrics.AUC(name="auc"),
        keras.metrics.Precision(name="precision"),
        keras.metrics.Recall(name="recall"),
    ]


def compile_classifier(model: keras.Model, learning_rate: float) -> keras.Model:
    """Binary cross-entropy, Adam(learning_rate) and the report's metrics."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=classifier_metrics(),
    )
    return model


def save_model(model: keras.Model, path, metadata: dict) -> Path:
    """Saves `model` as .h5 with `metadata` (JSON) inside the file, atomically.

    The metadata says how inputs were prepared (image size, preprocessing) so that
    `predict.py` never has to be told. The file appears only once it is complete.
    """
    import h5py

    path = Path(path)
    if path.suffix != ".h5":
        raise ValueError(f"Models are saved as .h5 files. Received: path={str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".h5", dir=path.parent, prefix=f".{path.stem}.")
    os.close(handle)
    try:
        model.save(temporary)
        with h5py.File(temporary, "a") as file:
            file.attrs[METADATA_ATTRIBUTE] = json.dumps(metadata)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


class ModelFileError(ValueError):
    """A model file that cannot be used, with a message that says why."""


def read_metadata(path) -> dict:
    """The bc_keras metadata stored in a saved .h5 model.

    Raises:
        ModelFileError: if the file is missing, not HDF5, or not saved by bc_keras.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(
            f"Model file {path} does not exist; pass the .h5 a training script saved."
        )
    if not h5py.is_hdf5(path):
        raise ModelFileError(
            f"{path} is not an HDF5 (.h5) model file; pass a .h5 saved by train_cnn.py, "
            "train_transfer.py or train_simclr.py."
        )
    with h5py.File(path, "r") as file:
        raw = file.attrs.get(METADATA_ATTRIBUTE)
        has_model = "model_config" in file.attrs
    if raw is None:
        kind = "a Keras model" if has_model else "an HDF5 file"
        raise ModelFileError(
            f"{path} is {kind} without bc_keras metadata, so its input size and preprocessing "
            "are unknown; use a model saved by a bc_keras training script."
        )
    return json.loads(raw)


def load_model(path, compile: bool = False) -> tuple[keras.Model, dict]:
    """Loads a bc_keras .h5 model and its metadata (see `read_metadata` for the errors)."""
    metadata = read_metadata(path)
    import bc_keras  # noqa: F401  (registers the custom objects)

    model = keras.models.load_model(path, compile=compile)
    return model, metadata

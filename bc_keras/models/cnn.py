"""The report's baseline CNN (SPEC 4)."""

from __future__ import annotations

import keras

from bc_keras.models.classifier import sigmoid_output


def build_baseline_cnn(
    image_size: int = 224,
    dense_units: int = 128,
    dropout: float = 0.5,
    batch_norm_momentum: float = 0.99,
    name: str = "baseline_cnn",
    synchronized_batch_norm: bool = False,
) -> keras.Model:
    """The report's baseline: 3 x [Conv 3x3 same -> BatchNorm -> ReLU -> MaxPool 2x2] with
    32/64/128 filters, Flatten, Dense(dense_units, ReLU), Dropout, Dense(1, sigmoid).

    `batch_norm_momentum` is Keras' default, 0.99, as in the report. On a small dataset (few
    steps per epoch) the moving statistics then lag the weights for several epochs and the
    validation predictions are miscalibrated; 0.9 (PyTorch's default) fixes that.
    `synchronized_batch_norm` normalises with the statistics of the global batch when training
    on several replicas, so that the result does not depend on how the batch is split.
    """
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8. Received: image_size={image_size}")
    if dense_units < 1:
        raise ValueError(f"dense_units must be positive. Received: dense_units={dense_units}")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    for index, filters in enumerate((32, 64, 128), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"conv{index}")(x)
        x = keras.layers.BatchNormalization(
            momentum=batch_norm_momentum, synchronized=synchronized_batch_norm, name=f"bn{index}"
        )(x)
        x = keras.layers.ReLU(name=f"relu{index}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{index}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, sigmoid_output(x), name=name)

"""The binary classifier's head and compile: the float32 sigmoid output, the report's metrics
(plus confusion counts), BCE and Adam."""

from __future__ import annotations

import keras

OUTPUT_NAME = "malignant_probability"


def sigmoid_output(x, name: str = OUTPUT_NAME):
    """The binary head's last layer: Dense(1, sigmoid), always float32."""
    return keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=name)(x)


def classifier_metrics() -> list:
    """The report's metrics (accuracy, AUC, precision, recall) plus the confusion counts at
    0.5, from which the history shows a model that predicts one class for everything."""
    return [
        keras.metrics.BinaryAccuracy(name="accuracy"),
        keras.metrics.AUC(name="auc"),
        keras.metrics.Precision(name="precision"),
        keras.metrics.Recall(name="recall"),
        keras.metrics.TruePositives(name="tp"),
        keras.metrics.FalsePositives(name="fp"),
        keras.metrics.TrueNegatives(name="tn"),
        keras.metrics.FalseNegatives(name="fn"),
    ]


def classifier_loss(label_smoothing: float = 0.0) -> keras.losses.Loss:
    """Binary cross-entropy; with `label_smoothing` eps in [0, 1) its targets are
    `y (1 - eps) + eps / 2` (Keras' binary form of Szegedy et al.'s smoothing)."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(
            f"label_smoothing must be in [0, 1). Received: label_smoothing={label_smoothing}"
        )
    return keras.losses.BinaryCrossentropy(label_smoothing=float(label_smoothing))


def compile_classifier(
    model: keras.Model,
    learning_rate: float,
    jit_compile: bool = False,
    label_smoothing: float = 0.0,
) -> keras.Model:
    """Binary cross-entropy (smoothed by `label_smoothing`, see `classifier_loss`),
    Adam(learning_rate) and the report's metrics; `jit_compile` compiles the training step
    with XLA."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=classifier_loss(label_smoothing),
        metrics=classifier_metrics(),
        jit_compile=jit_compile,
    )
    return model

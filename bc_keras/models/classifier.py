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


def compile_classifier(
    model: keras.Model, learning_rate: float, jit_compile: bool = False
) -> keras.Model:
    """Binary cross-entropy, Adam(learning_rate) and the report's metrics; `jit_compile`
    compiles the training step with XLA."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=classifier_metrics(),
        jit_compile=jit_compile,
    )
    return model

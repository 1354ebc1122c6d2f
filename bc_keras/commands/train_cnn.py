"""Baseline CNN of the report (SPEC 4): train, evaluate on the test split, save the .h5."""

from __future__ import annotations

from bc_keras import cli
from bc_keras.config import CNNConfig

DESCRIPTION = """\
Train the report's baseline CNN on a prepared BreaKHis split, evaluate it on the test split
and save it.

Defaults are the report's: 3 x [Conv 3x3 -> BatchNorm -> ReLU -> MaxPool], Dense 128,
Dropout 0.5, Adam 1e-3, batch 32, up to 100 epochs, EarlyStopping(val_loss, 5),
ReduceLROnPlateau(0.5, 3, min 1e-6). --recipe robust adds what the README's "Two recipes"
section justifies (balanced class weights, BatchNorm recalibration, H&E stain augmentation,
selection on validation AUC, a validation-chosen threshold, test-time augmentation)."""


parse_args, main = cli.experiment_entry(CNNConfig, DESCRIPTION)

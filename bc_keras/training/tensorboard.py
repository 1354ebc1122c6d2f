"""TensorBoard logs of a run (`--tensorboard`): every epoch's training and validation values
(the columns of history.csv), the learning rate and the phase, on one epoch axis across
phases, plus the run's hyper-parameters — written under `<run>/tensorboard/`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from bc_keras.runs import HISTORY_FILE

TENSORBOARD_DIR = "tensorboard"
HPARAMS_TAG = "hyperparameters"
# Scalars by split: "train/loss", "validation/loss", "train/learning_rate", "train/phase".
TRAIN, VALIDATION = "train", "validation"
# TensorBoard's plugins by the name in each summary's metadata. Summaries are written with
# TensorFlow's own `tf.summary.write` and this metadata (what the tensorboard package's
# scalar and text summaries write), so logs need no extra package; viewing them needs
# `pip install "bc_keras[tensorboard]"`.
SCALARS_PLUGIN, TEXT_PLUGIN = "scalars", "text"


def _metadata(plugin: str):
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin)
    )


def write_scalar(tag: str, value: float, step: int) -> None:
    tf.summary.write(
        tag, tf.constant(value, tf.float32), step=step, metadata=_metadata(SCALARS_PLUGIN)
    )


def write_text(tag: str, text: str, step: int) -> None:
    tf.summary.write(tag, tf.constant(text), step=step, metadata=_metadata(TEXT_PLUGIN))


def epochs_logged_before(run_dir, phase: int | None) -> int:
    """The first global step of a fit: the epochs of earlier phases in history.csv (a single
    phase, or the first, starts at 0; Keras numbers a resumed fit's epochs from where it
    stopped, so the current phase's own rows do not count)."""
    path = Path(run_dir) / HISTORY_FILE
    if phase is None or not path.is_file():
        return 0
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    return sum(
        1 for row in rows if row.get("phase") not in (None, "") and float(row["phase"]) < phase
    )


def scalar_tag(key: str) -> str:
    """history.csv's column -> its TensorBoard tag: `val_auc` -> `validation/auc`."""
    if key.startswith("val_"):
        return f"{VALIDATION}/{key.removeprefix('val_')}"
    return f"{TRAIN}/{key}"


def _hparams(config_values: dict) -> dict:
    """The run's settings that TensorBoard's hparams plugin can show (numbers, text, flags)."""
    return {
        key: value
        for key, value in config_values.items()
        if not key.startswith("_") and isinstance(value, bool | int | float | str)
    }


class TensorBoardLogger(keras.callbacks.Callback):
    """Writes each epoch's logs, the optimizer's learning rate and the phase as scalars at the
    global epoch `first_step + epoch`, and the hyper-parameters once (as JSON text, and for the
    hparams dashboard when the `tensorboard` package is installed).

    Put it after the callbacks that add to the logs (the phase value, ReduceLROnPlateau).
    """

    def __init__(self, log_dir, first_step: int = 0, phase: int | None = None,
                 config_values: dict | None = None):  # fmt: skip
        super().__init__()
        self.log_dir = Path(log_dir)
        self.first_step = first_step
        self.phase = phase
        self.config_values = config_values or {}
        self.writer = None

    def on_train_begin(self, logs=None):
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = tf.summary.create_file_writer(str(self.log_dir))
        if self.first_step == 0 and self.config_values:
            self._write_hparams()

    def _write_hparams(self):
        values = _hparams(self.config_values)
        with self.writer.as_default():
            write_text(HPARAMS_TAG, json.dumps(values, indent=2, sort_keys=True), step=0)
            try:
                from tensorboard.plugins.hparams import api as hparams_api
            except ImportError:
                pass  # the hparams dashboard needs the tensorboard package (an extra)
            else:
                hparams_api.hparams(values, trial_id=str(self.config_values.get("run_dir", "")))
        self.writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        step = self.first_step + epoch
        values = dict(logs or {})
        optimizer = getattr(self.model, "optimizer", None)
        if "learning_rate" not in values and optimizer is not None:
            values["learning_rate"] = float(np.asarray(optimizer.learning_rate))
        if self.phase is not None:
            values["phase"] = float(self.phase)
        with self.writer.as_default():
            for key, value in sorted(values.items()):
                number = float(np.asarray(value))
                if math.isfinite(number):
                    write_scalar(scalar_tag(key), number, step)
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.close()


def read_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run's event files: tag -> [(step, value)] in step order (to check or
    plot logs without TensorBoard)."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != SCALARS_PLUGIN:
                    continue
                number = float(tf.make_ndarray(value.tensor))
                scalars.setdefault(value.tag, []).append((int(event.step), number))
    return {tag: sorted(points) for tag, points in scalars.items()}

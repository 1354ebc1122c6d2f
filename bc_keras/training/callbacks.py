"""Callbacks of every training run: early stopping that keeps the best over phases, backups
that restore every piece of state, and guards against divergence, collapse and stale BatchNorm."""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from pathlib import Path

import keras
import numpy as np

from bc_keras.errors import TrainingError
from bc_keras.runs import HISTORY_FILE, write_json

# Above this, a loss is divergence: Keras' BCE is at most -log(1e-7) = 16.1 per image (times a
# class weight), and NT-Xent at most 2 / temperature + log(2N - 1).
DIVERGED_LOSS = 1e3
# Epochs of one-class validation predictions before the collapse warning.
COLLAPSE_EPOCHS = 3
# How many training batches re-estimate the BatchNorm statistics.
RECALIBRATION_BATCHES = 100


class LogValue(keras.callbacks.Callback):
    """Adds a constant (for example the training phase) to each epoch's logs; put it first so
    that the CSV logger records it."""

    def __init__(self, name: str, value: float):
        super().__init__()
        self.name, self.value = name, value

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[self.name] = self.value


class BestOverPhasesEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping (restore best weights) that starts from an earlier phase's best.

    Phase 2 of a two-phase run must beat what phase 1 handed over: it starts with phase 1's
    best value and weights, so if it never improves on them, phase 1's weights are restored.
    """

    def __init__(self, *args, initial_best=None, initial_weights=None, restore=True, **kwargs):
        super().__init__(*args, restore_best_weights=restore, **kwargs)
        self.initial_best = initial_best
        self.initial_weights = initial_weights

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.initial_best is not None:
            self.best = self.initial_best
            self.best_weights = self.initial_weights
            self.best_epoch = -1  # before this phase


class CallbackStateBackup(keras.callbacks.Callback):
    """Saves and restores what BackupAndRestore does not: the state of early stopping and
    the learning-rate schedule (counters, best value, best weights) and the random-seed
    state of dropout layers, so that a resumed run continues exactly where it stopped.

    Put it after the callbacks it watches.
    """

    STATE_KEYS = ("wait", "best", "best_epoch", "stopped_epoch", "cooldown_counter")

    def __init__(self, state_dir, callbacks, restore_dir=None):
        super().__init__()
        self.state_dir = Path(state_dir)
        self.restore_dir = Path(restore_dir or state_dir)
        self.watched = [
            c
            for c in callbacks
            if isinstance(c, (keras.callbacks.EarlyStopping, keras.callbacks.ReduceLROnPlateau))
        ]

    STATE_FILE = "callback_state.json"

    def _seed_states(self) -> list:
        return [v for v in self.model.variables if "seed_generator_state" in v.path]

    def on_train_begin(self, logs=None):
        state_file = self.restore_dir / self.STATE_FILE
        if not state_file.exists():
            return
        states = json.loads(state_file.read_text())
        for index, callback in enumerate(self.watched):
            state = states.get(str(index), {})
            for key in self.STATE_KEYS:
                if key in state:
                    setattr(callback, key, state[key])
            if state.get("has_best_weights"):
                with np.load(self.restore_dir / f"best_weights_{index}.npz") as stored:
                    callback.best_weights = [stored[f"w{i}"] for i in range(len(stored.files))]
        for variable, value in zip(self._seed_states(), states.get("seeds", []), strict=False):
            variable.assign(np.asarray(value, dtype=variable.dtype))

    def on_epoch_end(self, epoch, logs=None):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        states = {}
        for index, callback in enumerate(self.watched):
            state = {
                k: _plain(getattr(callback, k)) for k in self.STATE_KEYS if hasattr(callback, k)
            }
            best_weights = getattr(callback, "best_weights", None)
            state["has_best_weights"] = best_weights is not None
            if best_weights is not None:
                np.savez(
                    self.state_dir / f"best_weights_{index}.npz",
                    **{f"w{i}": w for i, w in enumerate(best_weights)},
                )
            states[str(index)] = state
        states["seeds"] = [v.numpy().tolist() for v in self._seed_states()]
        write_json(self.state_dir / self.STATE_FILE, states)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training with a `TrainingError` when the loss becomes non-finite or absurd, so a
    diverged model is never saved or evaluated."""

    def __init__(self, learning_rate: float, limit: float = DIVERGED_LOSS):
        super().__init__()
        self.learning_rate, self.limit = learning_rate, limit
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _check(self, loss, where: str):
        if loss is None:
            return
        loss = float(loss)
        if not math.isfinite(loss) or loss > self.limit:
            raise TrainingError(
                f"training diverged: the loss reached {loss:.4g} {where} (epoch {self.epoch + 1}); "
                f"start a new run with a lower --lr (it was {self.learning_rate:g}, e.g. "
                f"{self.learning_rate / 10:g}); no model was saved"
            )

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._check(loss, f"at batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check((logs or {}).get("loss"), "in the epoch's mean")


class CollapseWarning(keras.callbacks.Callback):
    """Warns when the model has predicted one class for every validation image for several
    epochs in a row (read from the validation confusion counts at threshold 0.5)."""

    def __init__(self, epochs: int = COLLAPSE_EPOCHS):
        super().__init__()
        self.epochs = epochs
        self.streak = 0
        self.warned = False

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        counts = [logs.get(f"val_{name}") for name in ("tp", "fp", "tn", "fn")]
        if any(c is None for c in counts):
            return
        true_positive, false_positive, true_negative, false_negative = counts
        predicted_positive = true_positive + false_positive
        predicted_negative = true_negative + false_negative
        one_class = predicted_positive == 0 or predicted_negative == 0
        self.streak = self.streak + 1 if one_class else 0
        if self.streak >= self.epochs and not self.warned:
            self.warned = True
            label = "malignant" if predicted_negative == 0 else "benign"
            warnings.warn(
                f"the model has predicted {label} for every validation image for {self.streak} "
                "epochs (a majority-class collapse); try --recipe robust or --class-weight "
                "balanced --recalibrate-bn",
                stacklevel=2,
            )


class PhaseCompleteMarker(keras.callbacks.Callback):
    """Writes the phase-complete marker at the end of a fit that ran to its end: the weights
    kept (early stopping has restored the best ones: put this after it) and the best value,
    weights first, so `state_path` existing means both are whole. Written inside `fit`, while
    the epoch backup still exists, a crash at any moment after training resumes either from the
    marker (the phase is skipped) or from the last epoch's backup (no epoch is trained again)."""

    def __init__(self, weights_path, state_path, stopping: keras.callbacks.EarlyStopping):
        super().__init__()
        self.weights_path, self.state_path = Path(weights_path), Path(state_path)
        self.stopping = stopping

    def on_train_end(self, logs=None):
        self.weights_path.parent.mkdir(parents=True, exist_ok=True)
        self.model.save_weights(self.weights_path)
        # best_epoch: the epoch (0-based) whose weights were kept, -1 if an earlier phase's.
        state = {"best": _plain(self.stopping.best), "best_epoch": int(self.stopping.best_epoch)}
        write_json(self.state_path, state)


def trim_history(path, start_epoch: int, phase: int | None = None) -> int:
    """Drops the rows of a CSV history that a resumed fit writes again: those of `phase` (or
    of every phase when None) from `start_epoch` on. A crash after an epoch's row was written
    but before its backup was saved would otherwise leave that epoch twice.

    Returns:
        How many rows were dropped.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        fields, rows = reader.fieldnames, list(reader)
    if not fields or "epoch" not in fields:
        return 0

    def rewritten(row) -> bool:
        same_phase = phase is None or "phase" not in fields or _number(row.get("phase")) == phase
        return same_phase and _number(row.get("epoch")) >= start_epoch

    kept = [row for row in rows if not rewritten(row)]
    if len(kept) == len(rows):
        return 0
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    os.replace(temporary, path)
    return len(rows) - len(kept)


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def resumed_epoch(backup_dir) -> int:
    """The epoch an interrupted fit resumes at (BackupAndRestore's record), else 0."""
    record = Path(backup_dir) / "training_metadata.json"
    return int(json.loads(record.read_text())["epoch"]) if record.is_file() else 0


def stopped_early(backup_dir) -> bool:
    """Whether the interrupted fit backed up in `backup_dir` had already stopped early (it was
    killed between its last epoch and the end of `fit`): resuming trains no further epoch."""
    record = Path(backup_dir) / "callbacks" / CallbackStateBackup.STATE_FILE
    if not record.is_file():
        return False
    state = json.loads(record.read_text()).get("0", {})  # the early stopping, first watched
    return (state.get("stopped_epoch") or 0) > 0


class SharedBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that writes its backups to `backup_dir` but restores from
    `restore_dir`: every worker of a multi-worker run resumes from the chief's backup (on a
    shared folder) while only the chief writes there."""

    def __init__(self, backup_dir, restore_dir=None, **kwargs):
        super().__init__(str(backup_dir), **kwargs)
        self.restore_dir = str(restore_dir or backup_dir)

    def on_train_begin(self, logs=None):
        names = ("_weights_path", "_training_metadata_path")
        own = {name: getattr(self, name) for name in names}
        for name, path in own.items():
            setattr(self, name, path.replace(self.backup_dir, self.restore_dir, 1))
        self._prev_weights_path = f"{self._weights_path}.bkp"
        self._prev_training_metadata_path = f"{self._training_metadata_path}.bkp"
        try:
            super().on_train_begin(logs)
        finally:
            for name, path in own.items():
                setattr(self, name, path)
            self._prev_weights_path = f"{self._weights_path}.bkp"
            self._prev_training_metadata_path = f"{self._training_metadata_path}.bkp"


def trainable_batchnorm_layers(model) -> list:
    """The BatchNormalization layers that train (frozen ones run in inference mode and keep
    their statistics), searching nested models."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            if layer.trainable:
                found += trainable_batchnorm_layers(layer)
        elif isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            found.append(layer)
    return found


def recalibrate_batch_norm(model, dataset, max_batches: int = RECALIBRATION_BATCHES) -> int:
    """Re-estimates the moving statistics of the model's trainable BatchNorm layers.

    The moving averages lag the weights on small data (few steps per epoch), so evaluation
    normalises with statistics of older weights ("precise BN", Wu & Johnson 2021). This runs
    the model in training mode over up to `max_batches` batches of `dataset` (a `tf.data`
    dataset of un-augmented training images) with each layer's momentum set to give the plain
    mean of the batch statistics; weights are untouched.

    Returns:
        The number of batches used (0 when the model has no trainable BatchNorm layer).
    """
    layers = trainable_batchnorm_layers(model)
    if not layers:
        return 0
    saved = [layer.momentum for layer in layers]
    for layer in layers:
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape))
        layer.moving_variance.assign(np.zeros(layer.moving_variance.shape))
    used = 0
    try:
        for images, *_ in dataset.take(max_batches):
            used += 1
            for layer in layers:
                # moving = moving * m + batch * (1 - m) with m = 1 - 1/k: the running mean.
                layer.momentum = 1.0 - 1.0 / used
            model(images, training=True)
    finally:
        for layer, momentum in zip(layers, saved, strict=True):
            layer.momentum = momentum
    return used


class BatchNormRecalibration(keras.callbacks.Callback):
    """Re-estimates BatchNorm statistics before every validation pass of `fit` (see
    `recalibrate_batch_norm`), so the validation metrics judge the weights as they will be
    saved."""

    def __init__(self, dataset, max_batches: int = RECALIBRATION_BATCHES):
        super().__init__()
        self.dataset, self.max_batches = dataset, max_batches
        self.fitting = False

    def on_train_begin(self, logs=None):
        self.fitting = True

    def on_train_end(self, logs=None):
        self.fitting = False

    def on_test_begin(self, logs=None):
        if self.fitting:
            recalibrate_batch_norm(self.model, self.dataset, self.max_batches)


def training_callbacks(
    run_dir,
    *,
    patience: int,
    monitor: str = "val_loss",
    learning_rate: float,
    reduce_lr_patience: int | None = None,
    reduce_lr_factor: float = 0.5,
    min_learning_rate: float = 1e-6,
    resume: bool = False,
    phase: int | None = None,
    backup_name: str = "backup",
    initial_best=None,
    initial_weights=None,
    recalibration_data=None,
    collapse_warning: bool = True,
    restore_dir=None,
    complete_marker: tuple | None = None,
    select: bool = True,
) -> list:
    """The report's callbacks plus what a long, trustworthy run needs.

    EarlyStopping on `monitor` (restore best weights; starting from `initial_best` in a later
    phase), ReduceLROnPlateau (when `reduce_lr_patience` is set), BatchNorm recalibration
    (when `recalibration_data` is given), a CSV history (appended on resume or in a later
    phase), the divergence guard, the collapse warning, and BackupAndRestore with the
    callbacks' own state so that `resume` continues from the last completed epoch.

    With `select=False` (a refit on all labelled images, which has no validation split) the
    fit runs its epochs to the end with the learning rate fixed: nothing stops it early,
    and the weights kept are the last epoch's.
    """
    run_dir = Path(run_dir)
    backup = run_dir / backup_name
    restore = Path(restore_dir or run_dir) / backup_name
    if resume:
        trim_history(run_dir / HISTORY_FILE, resumed_epoch(restore), phase)
    mode = "max" if monitor.endswith("auc") else "min"
    callbacks: list = []
    if phase is not None:
        callbacks.append(LogValue("phase", phase))
    if recalibration_data is not None:
        # First: validation must see the recalibrated statistics.
        callbacks.insert(0, BatchNormRecalibration(recalibration_data))
    append = resume or (phase is not None and phase > 1)
    callbacks.append(keras.callbacks.CSVLogger(str(run_dir / HISTORY_FILE), append=append))
    if not select:
        monitor, mode, patience, reduce_lr_patience = "loss", "min", 2**31 - 1, None
        initial_best = initial_weights = None
    watched = [
        BestOverPhasesEarlyStopping(
            monitor=monitor,
            mode=mode,
            patience=patience,
            verbose=1 if select else 0,
            initial_best=initial_best,
            initial_weights=initial_weights,
            restore=select,
        )
    ]
    if reduce_lr_patience is not None:
        watched.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor,
                mode=mode,
                factor=reduce_lr_factor,
                patience=reduce_lr_patience,
                min_lr=min_learning_rate,
                verbose=1,
            )
        )
    callbacks += watched
    if complete_marker is not None:
        # Right after early stopping: its on_train_end has restored the best weights.
        callbacks.append(PhaseCompleteMarker(*complete_marker, watched[0]))
    callbacks.append(DivergenceGuard(learning_rate))
    if collapse_warning:
        callbacks.append(CollapseWarning())
    callbacks.append(CallbackStateBackup(backup / "callbacks", watched, restore / "callbacks"))
    # Kept at the end of fit: a crash before the run's outputs exist resumes from it.
    callbacks.append(SharedBackupAndRestore(backup, restore, delete_checkpoint=False))
    return callbacks


def early_stopping_of(callbacks) -> BestOverPhasesEarlyStopping:
    """The early-stopping callback of a `training_callbacks` list."""
    return next(c for c in callbacks if isinstance(c, BestOverPhasesEarlyStopping))

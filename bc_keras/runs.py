"""Run folders: config first, callbacks that survive an interruption, evaluation outputs."""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os
import platform
import shutil
from pathlib import Path

import keras
import numpy as np

from bc_keras import metrics as bc_metrics
from bc_keras import plots
from bc_keras.breakhis import try_parse_filename
from bc_keras.data import ImageDataset

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
BACKUP_DIR = "backup"
PREDICTION_COLUMNS = ("filename", "patient", "magnification", "label", "probability", "predicted")


class RunError(ValueError):
    """A run folder that cannot be used as asked, with the fix in the message."""


def timestamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def has_backup(run_dir) -> bool:
    """Whether an interrupted run left a backup to resume from."""
    backup = Path(run_dir) / BACKUP_DIR
    return backup.is_dir() and any(backup.rglob("*"))


def resolve_run_dir(run_dir, experiment: str, resume: bool, runs_root="runs") -> Path:
    """The run folder to use.

    A new run gets `runs_root/<experiment>/<timestamp>` unless `run_dir` is given. With
    `resume`, `run_dir` (or, if None, the newest interrupted run of the experiment) must hold
    a backup. Starting afresh in a folder that holds an interrupted run is refused, so that a
    forgotten `--resume` never silently throws the backup away.
    """
    if resume:
        if run_dir is None:
            candidates = sorted(
                (p for p in Path(runs_root, experiment).glob("*") if has_backup(p)),
                key=lambda p: p.stat().st_mtime,
            )
            if not candidates:
                raise RunError(
                    f"--resume found no interrupted run under {Path(runs_root, experiment)}; "
                    "pass --run-dir of the run to continue, or drop --resume."
                )
            return candidates[-1]
        if not has_backup(run_dir):
            raise RunError(
                f"--resume: {run_dir} holds no backup of an interrupted run (it finished, or never "
                "started); drop --resume to start a new run."
            )
        return Path(run_dir)
    path = Path(run_dir) if run_dir is not None else Path(runs_root, experiment, timestamp())
    if has_backup(path):
        raise RunError(
            f"{path} holds an interrupted run; pass --resume to continue it, or choose another --run-dir."
        )
    if path.is_dir() and (path / METRICS_FILE).exists():
        raise RunError(f"{path} already holds a finished run; choose another --run-dir.")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_config(run_dir, config, extra: dict | None = None) -> Path:
    """Writes config.json before training, so that even a crashed run says what it was."""
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    import tensorflow as tf

    values = {
        **{
            key: (str(value) if isinstance(value, Path) else value) for key, value in values.items()
        },
        "_environment": {
            "bc_keras": __import__("bc_keras").__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
        },
        **(extra or {}),
    }
    return write_json(Path(run_dir) / CONFIG_FILE, values)


def write_json(path, values) -> Path:
    """Writes JSON atomically (a reader never sees half a file)."""
    path = Path(path)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(values, indent=2, default=_json_default) + "\n")
    os.replace(temporary, path)
    return path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Not JSON serialisable: {type(value).__name__}")


class LogValue(keras.callbacks.Callback):
    """Adds a constant (for example the training phase) to each epoch's logs; put it first so
    that the CSV logger records it."""

    def __init__(self, name: str, value: float):
        super().__init__()
        self.name, self.value = name, value

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[self.name] = self.value


class CallbackStateBackup(keras.callbacks.Callback):
    """Saves and restores the state of EarlyStopping and ReduceLROnPlateau with the backup.

    BackupAndRestore brings back the weights, the optimizer and the epoch, but the early
    stopping patience, its best weights and the plateau counters would start again from
    nothing after an interruption. Put this after the callbacks it watches.
    """

    def __init__(self, state_dir, callbacks):
        super().__init__()
        self.state_dir = Path(state_dir)
        self.watched = [
            c
            for c in callbacks
            if isinstance(c, (keras.callbacks.EarlyStopping, keras.callbacks.ReduceLROnPlateau))
        ]

    @property
    def _state_file(self):
        return self.state_dir / "callback_state.json"

    def on_train_begin(self, logs=None):
        if not self._state_file.exists():
            return
        states = json.loads(self._state_file.read_text())
        for index, callback in enumerate(self.watched):
            state = states.get(str(index), {})
            for key, value in state.items():
                if key != "has_best_weights":
                    setattr(callback, key, value)
            if state.get("has_best_weights"):
                with np.load(self.state_dir / f"best_weights_{index}.npz") as stored:
                    callback.best_weights = [stored[f"w{i}"] for i in range(len(stored.files))]

    def on_epoch_end(self, epoch, logs=None):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        states = {}
        for index, callback in enumerate(self.watched):
            keys = ("wait", "best", "best_epoch", "stopped_epoch", "cooldown_counter")
            state = {key: _plain(getattr(callback, key)) for key in keys if hasattr(callback, key)}
            best_weights = getattr(callback, "best_weights", None)
            state["has_best_weights"] = best_weights is not None
            if best_weights is not None:
                np.savez(
                    self.state_dir / f"best_weights_{index}.npz",
                    **{f"w{i}": w for i, w in enumerate(best_weights)},
                )
            states[str(index)] = state
        write_json(self._state_file, states)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def training_callbacks(
    run_dir,
    *,
    patience: int,
    reduce_lr_patience: int | None = None,
    reduce_lr_factor: float = 0.5,
    min_learning_rate: float = 1e-6,
    resume: bool = False,
    phase: int | None = None,
    backup_name: str = BACKUP_DIR,
) -> list:
    """The report's callbacks plus what a long run needs.

    EarlyStopping(val_loss, patience, restore best weights), ReduceLROnPlateau (when
    `reduce_lr_patience` is set), a CSV history (appended on resume or in a later phase),
    TerminateOnNaN, and BackupAndRestore with the callbacks' own state so `resume` continues
    from the last completed epoch.
    """
    run_dir = Path(run_dir)
    history = run_dir / HISTORY_FILE
    # A resumed run, or a later phase, continues the same CSV.
    append = resume or (phase is not None and phase > 1)
    callbacks: list = []
    if phase is not None:
        callbacks.append(LogValue("phase", phase))
    callbacks.append(keras.callbacks.CSVLogger(str(history), append=append))
    watched = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience, restore_best_weights=True, verbose=1
        )
    ]
    if reduce_lr_patience is not None:
        watched.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss",
                factor=reduce_lr_factor,
                patience=reduce_lr_patience,
                min_lr=min_learning_rate,
                verbose=1,
            )
        )
    backup = run_dir / backup_name
    callbacks += watched
    callbacks.append(keras.callbacks.TerminateOnNaN())
    callbacks.append(CallbackStateBackup(backup / "callbacks", watched))
    callbacks.append(keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=True))
    return callbacks


def finish_backup(run_dir, backup_name: str = BACKUP_DIR) -> None:
    """Removes what is left of the backup once training has completed."""
    shutil.rmtree(Path(run_dir) / backup_name, ignore_errors=True)


def read_history(run_dir) -> dict:
    """The CSV history as column -> list of floats (phase included when present)."""
    path = Path(run_dir) / HISTORY_FILE
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    columns: dict[str, list] = {}
    for row in rows:
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                columns.setdefault(key, []).append(value)
    return columns


def predict_probabilities(model, dataset: ImageDataset) -> np.ndarray:
    """Probability of malignant for every file of an unshuffled dataset, in file order."""
    if dataset.pipeline == "generator":
        dataset.data.reset()
        outputs = model.predict(dataset.data, steps=dataset.steps, verbose=0)
    else:
        outputs = model.predict(dataset.data, verbose=0)
    probabilities = np.asarray(outputs, dtype=np.float64).reshape(-1)
    if len(probabilities) != len(dataset.paths):
        raise RuntimeError(f"Got {len(probabilities)} predictions for {len(dataset.paths)} images.")
    return probabilities


def describe_files(paths) -> tuple[list[str], list[str]]:
    """Patient key and magnification of each file, from BreaKHis names ("unknown" otherwise)."""
    patients, magnifications = [], []
    for path in paths:
        parsed = try_parse_filename(os.path.basename(path))
        patients.append(parsed.patient if parsed else "unknown")
        magnifications.append(str(parsed.magnification) if parsed else "unknown")
    return patients, magnifications


def write_predictions(path, paths, labels, probabilities, threshold: float) -> Path:
    """predictions.csv: filename, patient, magnification, label, probability, predicted."""
    patients, magnifications = describe_files(paths)
    temporary = Path(str(path) + ".tmp")
    with open(temporary, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(PREDICTION_COLUMNS)
        for row in zip(paths, patients, magnifications, labels, probabilities, strict=True):
            name, patient, magnification, label, probability = row
            writer.writerow(
                [
                    os.path.basename(name),
                    patient,
                    magnification,
                    int(label),
                    f"{probability:.6f}",
                    int(probability >= threshold),
                ]
            )
    os.replace(temporary, path)
    return Path(path)


def evaluate_classifier(
    model,
    test: ImageDataset,
    run_dir,
    *,
    threshold: float = 0.5,
    validation: ImageDataset | None = None,
    tune_threshold: bool = False,
    title: str = "",
    bootstrap_samples: int = 1000,
    seed: int = 0,
) -> dict:
    """Predicts the test split and writes predictions.csv, metrics.json and the figures.

    With `tune_threshold`, a second set of metrics uses the threshold that maximises Youden's J
    on the validation split (never chosen on the test split).

    Returns:
        The metrics dict written to metrics.json.
    """
    run_dir = Path(run_dir)
    probabilities = predict_probabilities(model, test)
    labels = test.labels
    patients, magnifications = describe_files(test.paths)
    known = [p != "unknown" for p in patients]
    patient_keys = patients if all(known) else None
    magnification_keys = magnifications if all(known) else None
    write_predictions(run_dir / PREDICTIONS_FILE, test.paths, labels, probabilities, threshold)
    result = bc_metrics.compute_metrics(
        labels,
        probabilities,
        threshold=threshold,
        patients=patient_keys,
        magnifications=magnification_keys,
    )
    if patient_keys is not None and bootstrap_samples > 0 and len(set(patient_keys)) > 1:
        result["bootstrap_95ci_by_patient"] = bc_metrics.bootstrap_by_patient(
            labels,
            probabilities,
            patient_keys,
            threshold=threshold,
            samples=bootstrap_samples,
            seed=seed,
        )
    if tune_threshold:
        if validation is None:
            raise ValueError("tune_threshold needs the validation split.")
        tuned = bc_metrics.youden_threshold(
            validation.labels, predict_probabilities(model, validation)
        )
        result["tuned_on_validation"] = bc_metrics.compute_metrics(
            labels,
            probabilities,
            threshold=tuned,
            patients=patient_keys,
            magnifications=magnification_keys,
        )
    write_json(run_dir / METRICS_FILE, result)
    label = f"{title} " if title else ""
    plots.plot_confusion_matrix(
        result["confusion_matrix"], run_dir / "confusion_matrix.png", f"{label}confusion matrix"
    )
    if len(np.unique(labels)) > 1:
        plots.plot_roc_curve(labels, probabilities, run_dir / "roc_curve.png", f"{label}ROC curve")
        plots.plot_precision_recall_curve(
            labels,
            probabilities,
            run_dir / "precision_recall_curve.png",
            f"{label}precision-recall",
        )
    plots.plot_sample_predictions(
        test.paths,
        labels,
        probabilities,
        run_dir / "sample_predictions.png",
        threshold=threshold,
        seed=seed,
    )
    print(f"\nClassification report ({len(labels)} test images, threshold {threshold}):")
    print(bc_metrics.classification_report_text(labels, probabilities, threshold))
    summary = f"accuracy {result['accuracy']:.4f}  F1 {result['f1']:.4f}"
    if result["auc_roc"] is not None:
        summary += f"  AUC-ROC {result['auc_roc']:.4f}"
    if "patient_recognition_rate" in result:
        summary += f"  patient recognition rate {result['patient_recognition_rate']:.4f}"
    print(summary)
    return result


def plot_run_history(run_dir, title: str = "") -> Path:
    """training_curves.png from the run's history.csv."""
    return plots.plot_history(
        read_history(run_dir), Path(run_dir) / "training_curves.png", title=title
    )

"""Run folders: where a run writes, config.json first, and the files a finished run holds."""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import shutil
from pathlib import Path

import numpy as np

from bc_keras.config import config_values
from bc_keras.errors import RunError

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
BACKUP_DIR = "backup"


def timestamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def has_backup(run_dir) -> bool:
    """Whether an interrupted run left a backup to resume from."""
    backup = Path(run_dir) / BACKUP_DIR
    return backup.is_dir() and any(backup.rglob("*"))


def resolve_run_dir(run_dir, name: str, resume: bool, runs_root="runs") -> Path:
    """The run folder to use.

    A new run gets `runs_root/<name>/<timestamp>` unless `run_dir` is given. With `resume`,
    `run_dir` (or, if None, the newest interrupted run of that name) must hold a backup.
    Starting afresh in a folder that holds an interrupted run is refused, so that a forgotten
    `--resume` never silently throws the backup away.
    """
    if resume:
        if run_dir is None:
            candidates = sorted(
                (p for p in Path(runs_root, name).glob("*") if has_backup(p)),
                key=lambda p: p.stat().st_mtime,
            )
            if not candidates:
                raise RunError(
                    f"--resume found no interrupted run under {Path(runs_root, name)}; pass "
                    "--run-dir of the run to continue, or drop --resume."
                )
            return candidates[-1]
        if not has_backup(run_dir):
            raise RunError(
                f"--resume: {run_dir} holds no backup of an interrupted run (it finished, or "
                "never started); drop --resume to start a new run."
            )
        return Path(run_dir)
    path = Path(run_dir) if run_dir is not None else Path(runs_root, name, timestamp())
    if has_backup(path):
        raise RunError(
            f"{path} holds an interrupted run; pass --resume to continue it, or choose another "
            "--run-dir."
        )
    if path.is_dir() and (path / METRICS_FILE).exists():
        raise RunError(f"{path} already holds a finished run; choose another --run-dir.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(
            f"cannot create the run folder {path} ({error.strerror}); choose a writable --run-dir."
        ) from error
    return path


def environment() -> dict:
    """Versions and start time recorded beside a run's config."""
    import keras
    import tensorflow as tf

    from bc_keras import __version__

    return {
        "bc_keras": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def write_config(run_dir, config) -> Path:
    """Writes config.json before training, so that even a crashed run says what it was."""
    values = {**config_values(config), "_environment": environment()}
    return write_json(Path(run_dir) / CONFIG_FILE, values)


def read_config(run_dir) -> dict:
    """A run's config.json ({} when there is none)."""
    path = Path(run_dir) / CONFIG_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_json(path, values) -> Path:
    """Writes JSON atomically (a reader never sees half a file)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(values, indent=2, default=_json_default) + "\n")
    os.replace(temporary, path)
    return path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Not JSON serialisable: {type(value).__name__}")


def finish_backup(run_dir) -> None:
    """Removes what is left of the backup once the model and metrics are written."""
    shutil.rmtree(Path(run_dir) / BACKUP_DIR, ignore_errors=True)


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

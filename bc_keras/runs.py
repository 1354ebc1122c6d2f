"""Run folders: where a run writes, config.json first, and the files a finished run holds."""

from __future__ import annotations

import contextlib
import csv
import datetime
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np

from bc_keras.config import config_values
from bc_keras.errors import RunError
from bc_keras.prepare.output import process_alive

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
BACKUP_DIR = "backup"
LOCK_FILE = "run.lock"
# The figures of a run folder (written by evaluation and the experiments, read by the report).
TRAINING_CURVES_FIGURE = "training_curves.png"
CONFUSION_MATRIX_FIGURE = "confusion_matrix.png"
ROC_FIGURE = "roc_curve.png"
PRECISION_RECALL_FIGURE = "precision_recall_curve.png"
SAMPLE_PREDICTIONS_FIGURE = "sample_predictions.png"
TSNE_FIGURE = "tsne_test_embeddings.png"
AUGMENTED_PAIRS_FIGURE = "augmented_pairs.png"
# Every classifier run's figures.
CLASSIFIER_RUN_FIGURES = (
    TRAINING_CURVES_FIGURE,
    CONFUSION_MATRIX_FIGURE,
    ROC_FIGURE,
    PRECISION_RECALL_FIGURE,
    SAMPLE_PREDICTIONS_FIGURE,
)


def timestamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def has_backup(run_dir) -> bool:
    """Whether an interrupted run left a backup to resume from."""
    backup = Path(run_dir) / BACKUP_DIR
    return backup.is_dir() and any(backup.rglob("*"))


def resolve_run_dir(run_dir, name: str, resume: bool, runs_root="runs") -> Path:
    """The run folder to use (not yet checked; see `check_run_dir`).

    A new run gets `runs_root/<name>/<timestamp>` unless `run_dir` is given. With `resume` and
    no `run_dir`, the newest interrupted run of that name.
    """
    if run_dir is not None:
        return Path(run_dir)
    if not resume:
        return Path(runs_root, name, timestamp())
    candidates = sorted(
        (p for p in Path(runs_root, name).glob("*") if has_backup(p)),
        key=lambda p: p.stat().st_mtime,
    )
    if not candidates:
        raise RunError(
            f"--resume found no interrupted run under {Path(runs_root, name)}; pass --run-dir of "
            "the run to continue, or drop --resume."
        )
    return candidates[-1]


def claim_run_dir(run_dir, name: str, resume: bool, runs_root="runs") -> tuple[Path, Path | None]:
    """Creates the run folder `resolve_run_dir` names and returns it with the outermost folder
    this call created (None when the folder existed).

    A new run's automatic folder is created atomically, so two runs started in the same
    second never share one: the later gets `<timestamp>-2` (then -3, ...), with a note.
    """
    path = resolve_run_dir(run_dir, name, resume, runs_root)
    try:
        if run_dir is not None or resume:
            created = _outermost_missing(path)
            path.mkdir(parents=True, exist_ok=True)
            return path, created
        created = _outermost_missing(path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        wanted = path
        for number in range(2, 10_000):
            try:
                path.mkdir()
                break
            except FileExistsError:
                path = wanted.with_name(f"{wanted.name}-{number}")
        else:
            raise FileExistsError(17, "too many runs started in the same second", str(wanted))
    except OSError as error:
        raise RunError(
            f"cannot create the run folder {path} ({error.strerror}); choose a writable --run-dir"
        ) from error
    if path != wanted:
        print(f"note: {wanted} is another run's folder (started the same second); using {path}")
    return path, created or path


def _outermost_missing(path: Path) -> Path | None:
    missing = None
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing = folder
    return missing


def remove_run_dir(run_dir, created, allowed) -> bool:
    """Removes `run_dir` if it holds only files named in `allowed` (what starting a run
    writes), then the folders above it up to `created` that are left empty; nothing else is
    ever removed. Returns whether `run_dir` was removed."""
    run_dir, created = Path(run_dir), Path(created)
    if run_dir != created and created not in run_dir.parents:
        return False
    try:
        entries = list(run_dir.iterdir())
        if any(entry.name not in allowed or not entry.is_file() for entry in entries):
            return False
        for entry in entries:
            entry.unlink()
        run_dir.rmdir()
        for folder in run_dir.parents:
            if folder == created.parent:
                break
            folder.rmdir()  # only an empty folder; one that is not stops here
    except OSError:
        pass
    return not run_dir.exists()


def check_run_dir(path: Path, resume: bool) -> None:
    """Refuses a folder that cannot be used as asked. Starting afresh in a folder holding an
    interrupted run is refused, so that a forgotten `--resume` never throws its backup away."""
    if resume and not has_backup(path):
        raise RunError(
            f"--resume: {path} holds no backup of an interrupted run (it finished, or never "
            "started); drop --resume to start a new run."
        )
    if not resume and has_backup(path):
        raise RunError(
            f"{path} holds an interrupted run; pass --resume to continue it, or choose another "
            "--run-dir."
        )
    if not resume and (path / METRICS_FILE).exists():
        raise RunError(f"{path} already holds a finished run; choose another --run-dir.")


class RunLock:
    """An exclusive lock on a run folder: a lock file holding the owner's PID and host.

    A second run on the same folder stops before writing anything; the lock of a process that
    no longer exists is taken over with a note.
    """

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_FILE
        self.held = False

    def acquire(self) -> RunLock:
        owner = f"{os.getpid()} {socket.gethostname()} {timestamp()}\n"
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except OSError as error:
                raise RunError(
                    f"cannot write to the run folder {self.path.parent} ({error.strerror}); "
                    "choose a writable --run-dir"
                ) from error
            with os.fdopen(descriptor, "w") as file:
                file.write(owner)
            self.held = True
            return self
        raise RunError(f"could not lock {self.path.parent}; try again")

    def _take_over_if_stale(self) -> None:
        try:
            pid, host, started = (self.path.read_text().split() + ["?", "?", "?"])[:3]
        except OSError:
            return
        alive = host != socket.gethostname() or process_alive(int(pid) if pid.isdigit() else -1)
        if alive:
            raise RunError(
                f"{self.path.parent} is in use by another run (process {pid} on {host}, started "
                f"{started}); wait for it to finish or choose another --run-dir"
            )
        print(f"note: took over the lock of {self.path.parent} from process {pid}, which is gone")
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


# Config keys a resumed run may change: they do not change what is trained.
RESUMABLE_CHANGES = ("resume", "run_dir", "model_out", "tune_threshold", "_environment")
# Keys a run adds to its config.json once it knows them (see `record_in_config`).
RECORDED_KEYS = ("label_fraction_used", "cross_fit_assignment")


def check_resume_config(run_dir, config) -> None:
    """Refuses to resume with settings that change the run (data, sizes, model, learning rates,
    recipe, ...), listing every difference; the run's config.json is left as it was."""
    stored = read_config(run_dir)
    current = json.loads(json.dumps(config_values(config), default=_json_default))
    ignored = RESUMABLE_CHANGES + RECORDED_KEYS
    # A setting added to bc_keras after the run started is absent from its config.json: the
    # run goes on with the setting's current value, said once, rather than being refused.
    added = sorted(key for key in set(current) - set(stored) if key not in ignored)
    if added and stored:
        print(
            f"note: {CONFIG_FILE} of {run_dir} predates "
            + ", ".join(f"{key} (resuming with {current[key]!r})" for key in added)
        )
    differences = [
        f"{key} {stored.get(key)!r} -> {current.get(key)!r}"
        for key in sorted(set(stored) | set(current))
        if key not in ignored and key not in added and stored.get(key) != current.get(key)
    ]
    if differences:
        raise RunError(
            f"--resume with other settings than the interrupted run in {run_dir}: "
            f"{'; '.join(differences)}; resume with the original flags (see its {CONFIG_FILE}) "
            "or start a new run"
        )


def environment(split_dir=None, precision_policy: str | None = None) -> dict:
    """Versions, commit, devices, precision, split fingerprint and start time recorded beside
    a run's config (`bc_keras.provenance`)."""
    from bc_keras import provenance

    return provenance.environment(split_dir, precision_policy)


def write_config(run_dir, config) -> Path:
    """Writes config.json before training, so that even a crashed run says what it was."""
    policy = "mixed_float16" if getattr(config, "mixed_precision", False) else "float32"
    values = {
        **config_values(config),
        "_environment": environment(getattr(config, "data", None), policy),
    }
    return write_json(Path(run_dir) / CONFIG_FILE, values)


def record_in_config(run_dir, **values) -> Path:
    """Adds what the run learnt once started (e.g. `label_fraction_used`, one of
    `RECORDED_KEYS`) to its config.json, keeping everything else."""
    return write_json(Path(run_dir) / CONFIG_FILE, {**read_config(run_dir), **values})


def read_config(run_dir) -> dict:
    """A run's config.json ({} when there is none)."""
    path = Path(run_dir) / CONFIG_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


@contextlib.contextmanager
def atomic_path(path, keep_suffix: bool = False):
    """A temporary path beside `path`, moved onto `path` once the block ends without an error
    (a reader never sees half a file; on an error nothing is left). `keep_suffix` keeps the
    extension for writers that choose the format by it (Keras' `.h5`). The one way bc_keras
    writes an output file; files get the user's usual permissions."""
    path = Path(path)
    name = f".{path.stem}.tmp{path.suffix}" if keep_suffix else f".{path.name}.tmp"
    temporary = path.with_name(name)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", **open_options):
    """`atomic_path` opened as a file: `with atomic_write(path) as file: ...`."""
    with atomic_path(path) as temporary, open(temporary, mode, **open_options) as file:
        yield file


def write_json(path, values) -> Path:
    """Writes JSON atomically (a reader never sees half a file)."""
    with atomic_write(path) as file:
        file.write(json.dumps(values, indent=2, default=_json_default) + "\n")
    return Path(path)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Not JSON serialisable: {type(value).__name__}")


# metrics.json: the SHA-256 of the saved model, by which the report finds a moved model.
MODEL_HASH_KEY = "model_sha256"


def replaceable_out_dir(out_dir, marker: str, what: str) -> Path:
    """An output folder that does not exist, is empty, or holds an earlier `what` (its `marker`
    file: it is then replaced); a folder holding anything else is refused rather than
    overwritten, and a file in its place too."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RunError(f"--out {out_dir} is a file; name a folder for the {what}")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / marker).is_file():
        raise RunError(
            f"--out {out_dir} exists and is not a {what} (no {marker}); choose a new folder or "
            "empty it"
        )
    return out_dir


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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

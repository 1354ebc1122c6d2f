"""The run object every experiment starts: its folder (claimed, locked, config.json first),
distribution strategy, seed and callbacks, and the clean-up of a run refused before training."""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bc_keras import models, runs
from bc_keras.config import RunConfig
from bc_keras.errors import ConfigError, UserError
from bc_keras.training import distribute
from bc_keras.training.seeds import set_seed

LABELLED_FILES = "labelled_train_files.txt"
@dataclass
class Run:
    """A started run: its config, folder, lock and distribution strategy. A context manager:
    the folder stays locked until the block ends.

    Only the chief writes to `run_dir`; another worker of a multi-worker run writes its logs
    and backups to a private `write_dir` (removed at the end) and reads the chief's backup
    from `run_dir` (a shared folder) when resuming.
    """

    config: RunConfig
    run_dir: Path
    strategy: object
    lock: runs.RunLock | None
    chief: bool = True
    write_dir: Path | None = None
    # The outermost folder this run created (None: it existed), and whether training began:
    # a run refused before training removes what it made (see `__exit__`).
    created: Path | None = None
    training_started: bool = False

    def __post_init__(self):
        self.write_dir = self.write_dir or self.run_dir

    def scope(self):
        """The one place models are built and compiled (strategy + precision policy)."""
        return models.model_scope(self.strategy, self.config.mixed_precision)

    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def callbacks(self, learning_rate: float, **options) -> list:
        """`training.training_callbacks` of this run: written to its `write_dir`, restored
        from its run folder, with the config's patience and resume; with `--tensorboard`,
        followed by the TensorBoard logger (after the callbacks that add to the logs)."""
        callbacks = _training_callbacks(
            self.write_dir,
            restore_dir=self.run_dir,
            patience=self.config.patience,
            resume=self.config.resume,
            learning_rate=learning_rate,
            **options,
        )
        if getattr(self.config, "tensorboard", False):
            from bc_keras.config import config_values
            from bc_keras.training import tensorboard

            callbacks.append(
                tensorboard.TensorBoardLogger(
                    self.write_dir / tensorboard.TENSORBOARD_DIR,
                    # Earlier phases' epochs first: one epoch axis across phases.
                    first_step=tensorboard.epochs_logged_before(
                        self.write_dir, options.get("phase")
                    ),
                    phase=options.get("phase"),
                    config_values=config_values(self.config),
                )
            )
        return callbacks

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, error, traceback) -> None:
        if self.lock is not None:
            self.lock.release()
        if not self.chief:
            shutil.rmtree(self.write_dir, ignore_errors=True)
        elif isinstance(error, UserError) and not self.training_started:
            discard_refused_run(self.run_dir, self.created)


# What starting a run writes before training: a refused run made of these alone is removed.
STARTING_FILES = (runs.CONFIG_FILE, f".{runs.CONFIG_FILE}.tmp", runs.LOCK_FILE, LABELLED_FILES)


def discard_refused_run(run_dir: Path, created: Path | None) -> None:
    """Removes the folder of a run refused before training, if this run created it (never on
    --resume, never a folder that existed) and it holds only `STARTING_FILES`."""
    if created is not None and runs.remove_run_dir(run_dir, created, STARTING_FILES):
        print(f"nothing kept: the refused run's folder {run_dir} was removed")


def verbosity() -> int:
    """A live progress bar on a terminal; one line per epoch in log files."""
    return 1 if sys.stdout.isatty() else 2


def start_run(config: RunConfig) -> Run:
    """Creates the distribution strategy (first: a multi-worker one must precede any other
    TensorFlow work), then, on the chief, creates the run folder (a new one never shared with
    another run), locks it, checks a resume against the interrupted run's settings, writes
    config.json (so a run that crashes says what it was), and seeds. A `UserError` before
    training removes the folder again if this run made it (see `Run.__exit__`). Use it as
    `with start_run(config) as run:`."""
    strategy = distribute.get_strategy(config.strategy)
    if distribute.is_multi_worker(strategy) and config.run_dir is None:
        raise ConfigError(
            "--strategy multiworker needs --run-dir, the same shared folder on every worker"
        )
    if not distribute.is_chief(strategy):
        set_seed(config.seed)
        write_dir = Path(tempfile.mkdtemp(prefix="bc_keras_worker_"))
        print(f"worker of a multi-worker run: the chief writes {config.run_dir}")
        return Run(config, Path(config.run_dir), strategy, None, False, write_dir)
    models.check_model_out(config.model_out)
    run_dir, created = runs.claim_run_dir(config.run_dir, config.run_name(), config.resume)
    try:
        lock = runs.RunLock(run_dir).acquire()
    except UserError:
        discard_refused_run(run_dir, created)
        raise
    try:
        runs.check_run_dir(run_dir, config.resume)
        config.run_dir = str(run_dir)
        if config.resume:
            runs.check_resume_config(run_dir, config)
        runs.write_config(run_dir, config)
        set_seed(config.seed)
        print(f"run folder: {run_dir}")
        return Run(config, run_dir, strategy, lock, created=created)
    except BaseException as error:
        lock.release()
        if isinstance(error, UserError):
            discard_refused_run(run_dir, created)
        raise




def _training_callbacks(*args, **options):
    # Looked up on the package at call time, so that tests can wrap it there.
    from bc_keras import training

    return training.training_callbacks(*args, **options)

"""The label-efficiency simulation of active learning on a prepared split: start from a share
of the training labels (whole patients per class), then per round and strategy choose images
with the last model, "annotate" them from the known labels and retrain.

Every model is an ordinary bc_keras run (`bc_keras.experiments.run` with a CNNConfig or
LinearConfig) on a prepared split of the labelled images: `train/` holds links to the chosen
training images, `val/` and `test/` link to the split's own, so validation and test are those
of every other run. The work folder keeps each round's selection CSV and run: running the same
command again skips what finished and resumes an interrupted run. active.json, the figure and
active.md are written last, each atomically.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bc_keras import runs
from bc_keras.active import STRATEGIES, results, strategies
from bc_keras.active import select as selection
from bc_keras.console import Progress
from bc_keras.errors import ConfigError, RunError

EXPERIMENT_CNN, EXPERIMENT_LINEAR = "cnn", "linear"
EXPERIMENTS = (EXPERIMENT_CNN, EXPERIMENT_LINEAR)
SETTINGS_FILE = "simulation.json"
RESULT_FILE = "active.json"
FIGURE_FILE = "active_auc.png"
SUMMARY_FILE = "active.md"
WORK_DIR = "work"
START = "start"
SELECTION_FILE = "selection.csv"


@dataclass
class SimulationSettings:
    """Everything that decides a simulation (a resume must match it)."""

    data: str
    experiment: str = EXPERIMENT_CNN
    encoder: str | None = None
    start_fraction: float = 0.1
    rounds: int = 3
    budget: int = 20
    strategies: list[str] = field(default_factory=lambda: ["entropy", "random"])
    seed: int = 42
    recipe: str = "report"
    epochs: int = 100
    image_size: int = 224
    batch_size: int = 32
    patient_cap: int | None = None
    bootstrap_samples: int = 1000


def check_settings(settings: SimulationSettings) -> None:
    """Refuses settings that cannot run, before anything is trained (one-line ConfigErrors)."""
    from bc_keras.data import tfrecords

    if settings.experiment not in EXPERIMENTS:
        raise ConfigError(
            f"unknown --experiment {settings.experiment!r}; choose one of {', '.join(EXPERIMENTS)}"
        )
    if settings.experiment == EXPERIMENT_LINEAR and not settings.encoder:
        raise ConfigError(
            "--experiment linear needs --encoder ENC.h5 (an encoder from `train_simclr.py "
            "pretrain`, or 'none' for a random one)"
        )
    if settings.experiment == EXPERIMENT_CNN and settings.encoder:
        raise ConfigError("--encoder is for --experiment linear; drop it for the CNN")
    if not settings.strategies:
        raise ConfigError(f"--strategies names none; choose from {', '.join(STRATEGIES)}")
    for name in settings.strategies:
        strategies.check_strategy(name)
    if len(set(settings.strategies)) != len(settings.strategies):
        raise ConfigError(f"--strategies names one twice: {','.join(settings.strategies)}")
    if not 0 < settings.start_fraction < 1:
        raise ConfigError(f"--start-fraction {settings.start_fraction} must lie in (0, 1)")
    for flag, value in (("--rounds", settings.rounds), ("--budget", settings.budget)):
        if value < 1:
            raise ConfigError(f"{flag} {value} must be 1 or more")
    if not Path(settings.data).is_dir():
        raise ConfigError(f"--data {settings.data} does not exist; pass a prepared split folder")
    if tfrecords.is_tfrecord_folder(settings.data):
        raise ConfigError(
            f"--data {settings.data} is a TFRecord folder; the simulation links chosen image "
            "files, so pass the prepared split of image folders it was exported from"
        )


def claim_out(out: Path, settings: SimulationSettings) -> bool:
    """Makes `out` the simulation's folder; returns whether it resumes an earlier one.

    Raises:
        RunError: if `out` holds another simulation or something else.
    """
    record = out / SETTINGS_FILE
    if record.is_file():
        import json

        stored = json.loads(record.read_text())
        if stored != asdict(settings):
            changed = sorted(k for k in asdict(settings) if stored.get(k) != asdict(settings)[k])
            raise RunError(
                f"--out {out} holds a simulation with other settings ({', '.join(changed)}); "
                "run it with the same settings to resume, or choose a new --out"
            )
        return True
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(
            f"--out {out} exists and is not a simulation folder (no {SETTINGS_FILE}); choose a "
            "new --out or empty it"
        )
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(record, asdict(settings))
    return False


def labelled_split(split: Path, train_files, folder: Path) -> Path:
    """A prepared split at `folder` whose train/ links exactly `train_files` (kept at their
    place below the split's train/, so class folders and BreaKHis names stay) and whose val/
    and test/ (and normalize.json, if any) link to the split's. Made beside and moved in."""
    from bc_keras.prepare.normalize import NORMALIZE_NAME

    if folder.is_dir():
        return folder
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    train_root = (split / "train").resolve()
    for path in train_files:
        relative = Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(split / "train")))
        target = staging / "train" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(train_root / relative)
    for name in ("val", "test", NORMALIZE_NAME):
        if (split / name).exists():
            (staging / name).symlink_to((split / name).resolve())
    os.replace(staging, folder)
    return folder


def run_config(settings: SimulationSettings, data: Path, run_dir: Path, resume: bool):
    """The experiment's config of one round's model (saved as run_dir/model.h5)."""
    from bc_keras import config as configs

    values = dict(
        data=str(data), run_dir=str(run_dir), model_out=str(run_dir / "model.h5"),
        resume=resume, recipe=settings.recipe, seed=settings.seed, epochs=settings.epochs,
        image_size=settings.image_size, batch_size=settings.batch_size,
    )  # fmt: skip
    if settings.experiment == EXPERIMENT_LINEAR:
        return configs.LinearConfig(encoder=settings.encoder, **values)
    return configs.CNNConfig(**values)


def train_round(settings: SimulationSettings, data: Path, folder: Path) -> Path:
    """Trains (or resumes, or skips when finished) the model of one round in folder/run; its
    output goes to folder/train.log. Returns the run folder."""
    import keras

    from bc_keras import experiments

    run_dir = folder / "run"
    if (run_dir / runs.METRICS_FILE).is_file():
        return run_dir
    resume = runs.has_backup(run_dir)
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)  # started but never reached an epoch: start again
    config = run_config(settings, data, run_dir, resume)
    with open(folder / "train.log", "a") as log, contextlib.redirect_stdout(log):
        with contextlib.redirect_stderr(log):
            try:
                experiments.run(config)
            finally:
                keras.backend.clear_session()
    return run_dir


def _choose(settings, strategy, number, model_path, pool_files, labelled_files, folder: Path):
    """The round's selection CSV (read back when an earlier, interrupted attempt wrote it)."""
    from bc_keras.evaluation.predictor import load_model

    path = folder / SELECTION_FILE
    if path.is_file():
        return selection.read_selection(path)
    with open(folder / "select.log", "a") as log, contextlib.redirect_stdout(log):
        chosen = selection.select_images(
            load_model(model_path), pool_files, settings.budget, strategy,
            labelled_files=labelled_files, seed=settings.seed + number,
            cap=settings.patient_cap, batch_size=settings.batch_size,
        )  # fmt: skip
    selection.write_selection(path, chosen.rows)
    return chosen.rows


def _record(number, labelled, run_dir, rows, settings) -> tuple[dict, dict]:
    """A round's record for active.json and its test predictions."""
    predictions = results.read_test_predictions(run_dir)
    scores = results.auc_with_interval(predictions, settings.bootstrap_samples, settings.seed)
    record = {"round": number, "labels": len(labelled), "run_dir": str(run_dir), **scores}
    if rows is not None:
        counts = selection.patients_in(rows)
        record.update(
            patients_chosen=len(counts),
            most_images_of_one_patient=max(counts.values(), default=0),
            selected=[row["path"] for row in rows],
        )
    return record, predictions


def simulate(settings: SimulationSettings, out, log=print) -> dict:
    """Runs the simulation into `out` (resuming one there with the same settings) and writes
    out/active.json, out/active_auc.png and out/active.md.

    Returns:
        active.json's content: settings, per strategy the rounds (labels, test AUC and its
        patient-bootstrap interval, patients chosen, run folder), and per uncertainty strategy
        the paired AUC difference from random at equal labels with the verdict line.
    """
    from bc_keras import data

    check_settings(settings)
    out, split = Path(out), Path(settings.data)
    train = data.list_split_files(split, data.SUBSET_TRAIN)
    start = start_indices(train, settings.start_fraction, settings.seed)
    unlabelled = len(train.paths) - len(start)
    if settings.rounds * settings.budget > unlabelled:
        raise ConfigError(
            f"--rounds {settings.rounds} x --budget {settings.budget} is more than the "
            f"{unlabelled} training images left unlabelled after --start-fraction "
            f"{settings.start_fraction:g}; lower --budget or --rounds"
        )
    if claim_out(out, settings):
        log(f"resuming the simulation in {out}")
    work = out / WORK_DIR
    total = 1 + settings.rounds * len(settings.strategies)
    progress = Progress("active learning: trained", total, log=log, unit="models", every=1)

    def train_on(indices, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        split_dir = labelled_split(split, [train.paths[i] for i in indices], folder / "split")
        run_dir = train_round(settings, split_dir, folder)
        progress.advance()
        return run_dir

    start_dir = train_on(start, work / START)
    first, first_predictions = _record(0, start, start_dir, None, settings)
    log(f"start: {len(start)} labels, test AUC {_auc(first)}")
    curves = {strategy: [first] for strategy in settings.strategies}
    predictions = {(strategy, 0): first_predictions for strategy in settings.strategies}
    labelled = {strategy: [int(i) for i in start] for strategy in settings.strategies}
    for number in range(1, settings.rounds + 1):
        for strategy in settings.strategies:
            folder = work / strategy / f"round_{number}"
            folder.mkdir(parents=True, exist_ok=True)
            taken = set(labelled[strategy])
            pool = [i for i in range(len(train.paths)) if i not in taken]
            previous = Path(curves[strategy][-1]["run_dir"]) / "model.h5"
            rows = _choose(settings, strategy, number, previous, [train.paths[i] for i in pool],
                           [train.paths[i] for i in labelled[strategy]], folder)  # fmt: skip
            index_of = {train.paths[i]: i for i in pool}
            labelled[strategy] += [index_of[row["path"]] for row in rows]
            run_dir = train_on(labelled[strategy], folder)
            record, predictions[strategy, number] = _record(
                number, labelled[strategy], run_dir, rows, settings
            )
            curves[strategy].append(record)
            log(f"{strategy} round {number}: {record['labels']} labels, test AUC {_auc(record)}")
    progress.close()
    return write_outputs(out, settings, curves, predictions)


def _auc(record: dict) -> str:
    return "n/a" if record["auc_roc"] is None else f"{record['auc_roc']:.3f}"


def write_outputs(out: Path, settings: SimulationSettings, curves: dict, predictions: dict) -> dict:
    """The figure, active.md and active.json (last: its presence means a finished simulation)."""
    samples, seed = settings.bootstrap_samples, settings.seed
    versus = results.compare_with_random(curves, predictions, samples, seed)
    cap = settings.patient_cap
    result = {
        "settings": asdict(settings),
        "patient_cap_rule": (
            f"{cap} images per patient per round"
            if cap
            else f"ceil(budget / {strategies.PATIENTS_PER_ROUND}) images per patient per round, "
            "raised only when the pool's patients cannot fill the budget"
        ),  # fmt: skip
        "curves": curves,
        "versus_random": versus,
        "verdicts": [comparison["verdict"] for comparison in versus.values()],
        "figure": FIGURE_FILE,
    }
    title = f"Active learning ({settings.experiment}): test AUC against labels"
    results.plot_curves(curves, out / FIGURE_FILE, title)
    with runs.atomic_write(out / SUMMARY_FILE) as file:
        file.write(results.markdown(result))
    runs.write_json(out / RESULT_FILE, result)
    return result


def start_indices(train, start_fraction: float, seed: int) -> np.ndarray:
    """The training images labelled from the start: `start_fraction` of them drawn by whole
    patients per class (`label_fraction_indices`, as --label-fraction draws them)."""
    from bc_keras.prepare.subsets import label_fraction_indices, patients_of_paths

    patients = patients_of_paths(train.paths)
    return label_fraction_indices(train.labels, patients, start_fraction, seed=seed)


def round_budget(split, rounds: int, start_fraction: float = 0.1, share: float = 0.05,
                 seed: int = 42) -> int:  # fmt: skip
    """A per-round budget for a split of any size (the study's): `share` of its training
    images, lowered so that `rounds` rounds fit in the images the start leaves unlabelled."""
    from bc_keras import data

    train = data.list_split_files(split, data.SUBSET_TRAIN)
    left = len(train.paths) - len(start_indices(train, start_fraction, seed))
    return max(1, min(round(share * len(train.paths)), left // max(1, rounds)))


def selected_labels(result: dict, strategy: str) -> np.ndarray:
    """The label count after each round of `strategy` (for tests and the report)."""
    return np.array([record["labels"] for record in result["curves"][strategy]])

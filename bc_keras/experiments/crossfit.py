"""Cross-fitting (`--cross-fit K`, issue 18): decisions made on every labelled patient.

Train + validation are pooled and dealt to K patient-grouped, class-stratified folds (the
project's own fold code). Member k trains on the other folds and keeps its epoch and phase by
fold k, which it then scores: every pooled image gets one out-of-fold probability. The
threshold is chosen on those probabilities, and the model kept is the mean of the K members
(`ensemble`) or one model refitted on the whole pool for the members' median epochs (`refit`).
The test split is scored once, by that final model (`common.finish_classifier`).

Each member is a sub-run under `members/fold<k>/` with its own history and backups: an
interrupted member resumes with `--resume`, and a finished one is never trained again.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bc_keras import data, models, runs, training
from bc_keras.config import CROSS_FIT_ENSEMBLE, CROSS_FIT_REFIT, THRESHOLD_METHODS
from bc_keras.errors import ConfigError
from bc_keras.evaluation import metrics as bc_metrics
from bc_keras.evaluation.inference import predict_probabilities
from bc_keras.histology.breakhis import CLASS_NAMES, try_parse_filename
from bc_keras.models.ensemble import build_ensemble
from bc_keras.prepare.index import ImageRecord
from bc_keras.prepare.kfold import patient_folds
from bc_keras.training.run import Run
from bc_keras.training.seeds import set_seed

MEMBERS_DIR = "members"
MEMBER_DIR = "fold{index}"
MEMBER_MODEL = "model.h5"
# Written last in a member's folder: its presence means the member is complete.
MEMBER_RECORD = "member.json"
OUT_OF_FOLD_FILE = "out_of_fold.csv"
OUT_OF_FOLD_COLUMNS = ("path", "fold", "label", "probability")
# config.json: slide id (or image, for names that are not BreaKHis') -> its fold, 1-based.
ASSIGNMENT_KEY = "cross_fit_assignment"
FIXED_THRESHOLD = "fixed"
BACKUP_MARKER = "cross_fit.json"


@dataclass
class Decision:
    """What a cross-fitted run hands to `finish_classifier`: the threshold chosen on the
    out-of-fold probabilities, the .h5 metadata it adds, and metrics.json's `cross_fit`."""

    threshold: float
    method: str
    tuned_threshold: float | None
    summary: dict
    metadata: dict = field(default_factory=dict)


def pooled_files(sets) -> data.SplitFiles:
    """The labelled images a cross-fitted run decides on: its training files (all, or the
    --label-fraction drawn) and the validation split's."""
    return data.SplitFiles(
        list(sets.train_files.paths) + list(sets.validation.paths),
        np.concatenate([sets.train_files.labels, sets.validation.labels]).astype(int),
    )


def group_keys(paths) -> list[str]:
    """The unit folds keep whole: the BreaKHis slide id (one patient, whatever subtype folder
    holds it), or the image itself for names that are not BreaKHis'."""
    keys = []
    for path in paths:
        parsed = try_parse_filename(Path(path).name)
        keys.append(parsed.slide_id if parsed else str(path))
    return keys


def assign_folds(files: data.SplitFiles, folds: int, seed: int) -> np.ndarray:
    """The 0-based fold of every file: patient-grouped and class-stratified
    (`prepare.split.patient_folds`), deterministic for a seed."""
    keys = group_keys(files.paths)
    records = [
        ImageRecord(
            filename=Path(path).name,
            source=str(path),
            label=CLASS_NAMES[int(label)],
            subtype="",
            patient=key,
            magnification=0,
            slide_id=key,
        )
        for path, label, key in zip(files.paths, files.labels, keys, strict=True)
    ]
    fold_of = patient_folds(records, folds, seed=seed, rest_needed=1, flag="--cross-fit")
    return np.array([fold_of[key] for key in keys], dtype=np.int64)


def check_cross_fit(config) -> None:
    """Refuses what cross-fitting cannot do, before any folder or training."""
    from bc_keras.data import tfrecords

    if tfrecords.is_tfrecord_folder(config.data):
        raise ConfigError(
            f"--cross-fit pools the train and val images of {config.data}, but a TFRecord "
            "folder's shards are read per subset; pass the image split it was exported from"
        )


def _member_sets(sets, train_files: data.SplitFiles, validation_files: data.SplitFiles | None):
    """The run's `ClassifierData` with other training files and validation (None: a refit)."""
    member = replace(sets, train_files=train_files, validation=None, recalibration=None)
    if validation_files is not None:
        member.validation = member.dataset(data.SUBSET_VAL, validation_files)
    if sets.config.recalibrate_bn:
        member.recalibration = member.dataset(data.SUBSET_TRAIN, train_files).data
    return member


def _member_run(run: Run, index: int) -> Run:
    folder = Path(MEMBERS_DIR) / MEMBER_DIR.format(index=index)
    member_dir = run.run_dir / folder
    config = replace(
        run.config,
        run_dir=str(member_dir),
        model_out=str(member_dir / MEMBER_MODEL),
        cross_fit=0,
        seed=run.config.seed + index - 1,
    )
    member = Run(config, member_dir, run.strategy, None, run.chief, run.write_dir / folder)
    member.write_dir.mkdir(parents=True, exist_ok=True)
    return member


def _write_out_of_fold(path: Path, paths, folds, labels, probabilities) -> None:
    with runs.atomic_write(path, newline="") as file:
        writer = csv.writer(file)
        writer.writerow(OUT_OF_FOLD_COLUMNS)
        for row in zip(paths, folds, labels, probabilities, strict=True):
            writer.writerow([row[0], int(row[1]) + 1, int(row[2]), f"{float(row[3]):.9f}"])


def _read_out_of_fold(path: Path) -> dict[str, float]:
    with open(path, newline="") as file:
        return {row["path"]: float(row["probability"]) for row in csv.DictReader(file)}


def train_member(run: Run, sets, train, index: int, folds: np.ndarray, pool, metadata: dict):
    """Trains (or, when finished before, reads) member `index` (1-based): fit on the other
    folds, select on fold `index`, BatchNorm settled, then its out-of-fold probabilities.

    Returns:
        `(probabilities of fold index's images, member record)`.
    """
    member = _member_run(run, index)
    held_out = folds == index - 1
    record_path = member.run_dir / MEMBER_RECORD
    if member.config.resume and record_path.is_file() and (member.run_dir / MEMBER_MODEL).is_file():
        print(f"\ncross-fit member {index}: finished before the interruption; going on")
        record = json.loads(record_path.read_text())
        scores = _read_out_of_fold(member.run_dir / OUT_OF_FOLD_FILE)
        return np.array([scores[p] for p, h in zip(pool.paths, held_out, strict=True) if h]), record
    if member.chief and not (member.run_dir / runs.CONFIG_FILE).is_file():
        runs.write_config(member.run_dir, member.config)
    train_files = data.SplitFiles(
        [p for p, h in zip(pool.paths, held_out, strict=True) if not h], pool.labels[~held_out]
    )
    fold_files = data.SplitFiles(
        [p for p, h in zip(pool.paths, held_out, strict=True) if h], pool.labels[held_out]
    )
    print(
        f"\ncross-fit member {index} of {run.config.cross_fit}: training on "
        f"{len(train_files.paths)} images, selecting on the {len(fold_files.paths)} of fold {index}"
    )
    member_sets = _member_sets(sets, train_files, fold_files)
    set_seed(member.config.seed)
    run.training_started = True
    model, selected = train(member, member_sets)
    if member_sets.recalibration is not None:
        training.recalibrate_batch_norm(model, member_sets.recalibration)
    models.check_finite_weights(model)
    probabilities = predict_probabilities(model, member_sets.validation.data, tta=run.config.tta)
    record = {"fold": index, "selected_epochs": selected, "images": len(fold_files.paths)}
    if member.chief:
        member_metadata = {**metadata, "kind": "classifier", "cross_fit_member": index}
        models.save_model(model, member.run_dir / MEMBER_MODEL, member_metadata)
        _write_out_of_fold(
            member.run_dir / OUT_OF_FOLD_FILE,
            fold_files.paths,
            np.full(len(fold_files.paths), index - 1),
            fold_files.labels,
            probabilities,
        )
        runs.write_json(record_path, record)
        runs.finish_backup(member.run_dir)
    return probabilities, record


def choose_threshold(config, labels, probabilities, folds) -> tuple[float, str, list]:
    """The threshold on the out-of-fold probabilities (the --threshold method, or its fixed
    value) and each fold's own choice (None where a fold holds one class, or for a fixed
    threshold), whose spread says how far one validation fold's choice can move."""
    if config.threshold not in THRESHOLD_METHODS:
        return float(config.threshold), FIXED_THRESHOLD, []
    threshold = bc_metrics.choose_threshold(labels, probabilities, config.threshold)
    per_fold = []
    for fold in range(int(folds.max()) + 1):
        mask = folds == fold
        both = len(np.unique(labels[mask])) == 2
        per_fold.append(
            bc_metrics.choose_threshold(labels[mask], probabilities[mask], config.threshold)
            if both
            else None
        )
    return float(threshold), config.threshold, per_fold


def median_epochs(records: list[dict]) -> list[int]:
    """Per phase, the median over the members of the epochs it contributed (half rounds up;
    the first phase trains at least one epoch)."""
    table = np.array([record["selected_epochs"] for record in records], dtype=float)
    if np.isnan(table).any():
        raise ConfigError(
            "a cross-fit member finished by an older bc_keras does not record its selected "
            "epochs, which --cross-fit-final refit needs; start a new run"
        )
    medians = [int(np.floor(np.median(column) + 0.5)) for column in table.T]
    medians[0] = max(medians[0], 1)
    return medians


def summarise(config, labels, probabilities, folds, keys, threshold, per_fold, records) -> dict:
    """metrics.json's `cross_fit`: K, the final model, the out-of-fold scores at the threshold,
    the folds' own thresholds and their spread, and the epochs each member kept."""
    scores = bc_metrics.binary_scores(labels, probabilities, threshold)
    chosen = [t for t in per_fold if t is not None]
    fold_aucs = []
    for fold in range(config.cross_fit):
        mask = folds == fold
        fold_aucs.append(
            bc_metrics.binary_scores(labels[mask], probabilities[mask], threshold)["auc_roc"]
        )
    return {
        "k": config.cross_fit,
        "final": config.cross_fit_final,
        "threshold": threshold,
        "fold_thresholds": per_fold,
        "threshold_sd": float(np.std(chosen, ddof=1)) if len(chosen) > 1 else None,
        "out_of_fold": {
            "auc_roc": scores["auc_roc"],
            "balanced_accuracy": scores["balanced_accuracy"],
            "accuracy": scores["accuracy"],
            "fold_auc_roc": fold_aucs,
            "images": int(len(labels)),
            "patients": int(len(set(keys))),
        },
        "selected_epochs": [record["selected_epochs"] for record in records],
    }


def _ensemble(run: Run, records: list[dict]) -> object:
    # Loaded inside the scope: a distribution strategy must own the members' variables.
    with run.scope():
        members = [
            models.load_model(
                run.run_dir / MEMBERS_DIR / MEMBER_DIR.format(index=record["fold"]) / MEMBER_MODEL
            )[0]
            for record in records
        ]
        return build_ensemble(members, run.config.image_size)


def _merged_history(run: Run, records: list[dict]) -> None:
    """The parent's history.csv: the members' epochs one after another, with their fold."""
    rows, fields = [], ["fold"]
    for record in records:
        path = (
            run.run_dir / MEMBERS_DIR / MEMBER_DIR.format(index=record["fold"]) / runs.HISTORY_FILE
        )
        if not path.is_file():
            continue
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            fields += [name for name in reader.fieldnames or () if name not in fields]
            rows += [{**row, "fold": record["fold"]} for row in reader]
    with runs.atomic_write(run.run_dir / runs.HISTORY_FILE, newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def cross_fit(run: Run, sets, train, metadata: dict):
    """Trains the K members and the final model of a `--cross-fit K` run.

    Args:
        run, sets: the started run and its checked data (`common.classifier_run`).
        train: the experiment's `train(run, sets, epochs=None) -> (model, selected_epochs)`.
        metadata: the experiment's .h5 metadata (the members are saved with it).

    Returns:
        `(final model, Decision)`.
    """
    config = run.config
    check_cross_fit(config)
    pool = pooled_files(sets)
    folds = assign_folds(pool, config.cross_fit, config.seed)
    keys = group_keys(pool.paths)
    if run.chief:
        # The run's backup folder exists from here until its outputs do: an interrupted
        # cross-fit is resumable (`--resume`) even before any member has an epoch backup.
        (run.run_dir / runs.BACKUP_DIR).mkdir(exist_ok=True)
        runs.write_json(run.run_dir / runs.BACKUP_DIR / BACKUP_MARKER, {"k": config.cross_fit})
        assignment = {key: int(fold) + 1 for key, fold in zip(keys, folds, strict=True)}
        runs.record_in_config(run.run_dir, **{ASSIGNMENT_KEY: dict(sorted(assignment.items()))})
    print(
        f"cross-fitting: {config.cross_fit} patient-grouped folds of the {len(pool.paths)} "
        f"train + val images ({len(set(keys))} patients)"
    )
    probabilities = np.zeros(len(pool.paths))
    records = []
    for index in range(1, config.cross_fit + 1):
        scores, record = train_member(run, sets, train, index, folds, pool, metadata)
        probabilities[folds == index - 1] = scores
        records.append(record)
    threshold, method, per_fold = choose_threshold(config, pool.labels, probabilities, folds)
    tuned = bc_metrics.youden_threshold(pool.labels, probabilities)
    if run.chief:
        _write_out_of_fold(
            run.run_dir / OUT_OF_FOLD_FILE, pool.paths, folds, pool.labels, probabilities
        )
    print(
        f"threshold chosen on the out-of-fold probabilities of {len(pool.paths)} images "
        f"({method}): {threshold:.4f}"
    )
    if config.cross_fit_final == CROSS_FIT_REFIT:
        epochs = median_epochs(records)
        print(f"\nrefit on all {len(pool.paths)} train + val images for {epochs} epochs per phase")
        refit_sets = _member_sets(sets, pool, None)
        set_seed(config.seed)
        model, _ = train(run, refit_sets, epochs=epochs)
        if refit_sets.recalibration is not None:
            training.recalibrate_batch_norm(model, refit_sets.recalibration)
        models.check_finite_weights(model)
    else:
        model = _ensemble(run, records)
        if run.chief:
            _merged_history(run, records)
    summary = summarise(config, pool.labels, probabilities, folds, keys, threshold, per_fold, records)
    added = {"cross_fit": config.cross_fit, "cross_fit_final": config.cross_fit_final}
    if config.cross_fit_final == CROSS_FIT_ENSEMBLE:
        added["ensemble_members"] = config.cross_fit
    return model, Decision(threshold, method, tuned, summary, added)

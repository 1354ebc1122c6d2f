"""The run skeleton every experiment shares: start a run (config first), train in phases
keeping the best model over all of them, then save, evaluate and draw."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bc_keras import data, evaluation, models, runs, training
from bc_keras.config import ClassifierConfig
from bc_keras.errors import ConfigError, DataError
from bc_keras.experiments.labels import (  # noqa: F401
    LABEL_FRACTION_TOLERANCE,
    class_weights,
    labelled_files,
)
from bc_keras.models import card, distill
from bc_keras.prepare.subsets import patients_of_paths
from bc_keras.training import distribute
from bc_keras.training.run import LABELLED_FILES, Run, start_run, verbosity  # noqa: F401

# Inside the run's backup folder: the weights and best validation value at the end of each
# completed phase, so that an interrupted later phase resumes without training it again.
PHASE_WEIGHTS = "phase{number}_complete.weights.h5"
PHASE_STATE = "phase{number}_complete.json"
# --teacher's record: in the backup from the first epoch, at the end in config.json and the model.
TEACHER_RECORD = "teacher.json"
DISTILLATION_KEY = "distillation"


@dataclass
class Phase:
    """One `fit` of a run: how many epochs, and how to freeze and compile the model for it."""

    number: int
    epochs: int
    learning_rate: float
    prepare: Callable[[], None]
    description: str = ""


@dataclass
class ClassifierData:
    """The labelled data of a classifier run: the files of each subset, how they become model
    inputs, and the un-augmented validation and recalibration datasets."""

    config: ClassifierConfig
    preprocess: str
    interpolation: str
    train_files: data.SplitFiles
    test_files: data.SplitFiles
    validation: data.ImageDataset | None = None
    recalibration: object = None
    # Training images used / training images: --label-fraction as drawn by whole patients.
    label_fraction_used: float = 1.0
    # --teacher, and where its record goes (the run's backup, also for a cross-fit member).
    teacher: distill.Teacher | None = None
    teacher_record_file: Path | None = None

    def dataset(self, subset: str, files: data.SplitFiles, **options) -> data.ImageDataset:
        """A tf.data dataset of `files`, un-augmented and in order unless `options` say
        otherwise (see `bc_keras.data.build_dataset`)."""
        defaults = dict(
            image_size=self.config.image_size,
            batch_size=self.config.batch_size,
            preprocess=self.preprocess,
            interpolation=self.interpolation,
            augment=False,
            shuffle=False,
        )
        return data.build_dataset(self.config.data, subset, files=files, **{**defaults, **options})


@contextlib.contextmanager
def classifier_run(config: ClassifierConfig, preprocess: str, interpolation: str):
    """`start_run` and `classifier_data` (on the labelled training files) of a classifier:
    `with classifier_run(config, preprocess, interpolation) as (run, sets):`."""
    with start_run(config) as run:
        teacher = load_run_teacher(run)
        train_files, used = labelled_files(config, run.write_dir)
        if run.chief:
            runs.record_in_config(run.run_dir, label_fraction_used=used)
        sets = classifier_data(config, preprocess, interpolation, train_files=train_files)
        sets.label_fraction_used, sets.teacher = used, teacher
        sets.teacher_record_file = run.run_dir / runs.BACKUP_DIR / TEACHER_RECORD
        yield run, sets


def load_run_teacher(run: Run) -> distill.Teacher | None:
    """The run's --teacher (see `distill.teacher_metadata`) loaded once, or None; refused if it
    saw images normalised otherwise, or on --resume if the file changed since it was used."""
    from bc_keras.evaluation.inference import STAIN_NORMALIZER_KEY as STAIN

    config = run.config
    if config.teacher is None:
        return None
    stain = distill.teacher_metadata(config.teacher, config.model_out).get(STAIN)
    if stain != stain_normalizer(config.data).get(STAIN):
        raise ConfigError(
            f"--teacher {config.teacher} saw images normalised otherwise than {config.data}'s; "
            "distil on a split normalised as the teacher's was (normalize_stains.py)"
        )
    record_file = run.run_dir / runs.BACKUP_DIR / TEACHER_RECORD
    trained_with = json.loads(record_file.read_text())["sha256"] if record_file.is_file() else None
    with run.scope():
        teacher = distill.load_teacher(config.teacher, trained_with)
    alpha, temperature = config.distill_alpha, config.distill_temperature
    print(f"distilling from {config.teacher} (alpha {alpha:g}, T {temperature:g})")
    return teacher


def classifier_data(
    config: ClassifierConfig, preprocess: str, interpolation: str, train_files=None
) -> ClassifierData:
    """Lists and checks the three subsets before any training: a subset with one class or
    none stops the run here, not after hours of training."""
    from bc_keras.data import tfrecords

    # Before any listing: the generator reads image folders, not a TFRecord folder's shards.
    tfrecords.check_pipeline(config.data, config.pipeline)
    train_files = train_files or data.list_split_files(config.data, data.SUBSET_TRAIN)
    validation_files = data.list_split_files(config.data, data.SUBSET_VAL)
    test_files = data.list_split_files(config.data, data.SUBSET_TEST)
    for name, files in (("train", train_files), ("val", validation_files)):
        present = set(np.unique(files.labels).tolist())
        if present != {0, 1}:
            only = "benign" if present == {0} else "malignant"
            raise DataError(
                f"the {name} split of {config.data} holds only {only} images; a classifier "
                "needs both classes there: prepare the split again with more patients or other "
                "--ratios"
            )
    sets = ClassifierData(config, preprocess, interpolation, train_files, test_files)
    sets.validation = sets.dataset(data.SUBSET_VAL, validation_files)
    if config.recalibrate_bn:
        sets.recalibration = sets.dataset(data.SUBSET_TRAIN, train_files).data
    print(
        f"training on {len(train_files.paths)} images, validating on {len(validation_files.paths)}, "
        f"testing on {len(test_files.paths)}"
    )
    return sets


def training_dataset(
    config: ClassifierConfig,
    sets: ClassifierData,
    phase: int,
    start_epoch: int,
    class_weight: dict | None = None,
):
    """The augmented training stream of one phase, starting at `start_epoch` (each phase draws
    its own shuffles and augmentations), with the config's RandAugment and batch mixing; a
    mixed stream carries `class_weight` per image (see `data.pipeline.technique_options`)."""
    return sets.dataset(
        data.SUBSET_TRAIN,
        sets.train_files,
        pipeline=config.pipeline,
        augment=config.augment,
        shuffle=True,
        stain_strength=config.stain_augment or 0.0,
        seed=config.seed + 1000 * (phase - 1),
        epochs=None,
        start_epoch=start_epoch,
        **data.technique_options(config, class_weight),
    )


def fit_phases(
    model,
    phases: list[Phase],
    run: Run,
    sets: ClassifierData,
    epochs: list[int] | None = None,
    **callback_options,
) -> list[int | None]:
    """Trains through `phases` with the one early-stopping rule of SPEC 6: the model kept is
    the best on validation over all phases (a later phase starts from the best value and
    weights the earlier ones handed over, and gives them back if it never beats them).

    A completed phase leaves its weights and best value in the backup folder, so `--resume`
    after an interruption skips it and continues the phase that was running (or, once all are
    done, goes straight to saving and evaluating).

    Args:
        epochs: a refit without validation (`sets.validation` None): each phase runs exactly
            this many epochs (a phase given 0 is skipped) and keeps its last weights.

    Returns:
        The epochs each phase contributed to the model kept: its best epoch (1-based), 0 for a
        later phase that never beat the earlier ones, None where a resumed run's record of a
        phase finished by an older version does not say.
    """
    config = run.config
    numbered = len(phases) > 1
    best_value, best_weights = None, None
    weights = class_weights(config, sets.train_files.labels)
    # A mixed label is no class: mixed batches carry the class weights per image instead.
    fit_weights = None if config.mixup or config.cutmix else weights
    selected: list[int | None] = []
    select = epochs is None
    if not select:
        if len(epochs) != len(phases):
            raise ValueError(f"epochs must give one count per phase. Received: epochs={epochs!r}")
        phases = [replace(phase, epochs=count) for phase, count in zip(phases, epochs, strict=True)]
    for phase in phases:
        if phase.epochs == 0:
            selected.append(0)
            continue
        backup_name = f"{runs.BACKUP_DIR}/phase{phase.number}" if numbered else runs.BACKUP_DIR
        marker = run.run_dir / runs.BACKUP_DIR / PHASE_WEIGHTS.format(number=phase.number)
        state = run.run_dir / runs.BACKUP_DIR / PHASE_STATE.format(number=phase.number)
        if config.resume and marker.is_file() and state.is_file():
            model.load_weights(marker)
            record = json.loads(state.read_text())
            best_value, best_weights = record["best"], model.get_weights()
            selected.append(_epochs_kept(record.get("best_epoch"), select, phase))
            print(f"phase {phase.number} finished before the interruption; going on")
            continue
        if phase.description:
            print(f"\nphase {phase.number}: {phase.description}")
        phase.prepare()
        start_epoch, epochs = 0, phase.epochs
        if config.resume:
            start_epoch = training.resumed_epoch(run.run_dir / backup_name)
            if training.stopped_early(run.run_dir / backup_name):
                epochs = start_epoch  # killed as the phase ended: fit only finishes it
        train = training_dataset(config, sets, phase.number, start_epoch, weights)
        callbacks = run.callbacks(
            phase.learning_rate,
            monitor=config.monitor,
            phase=phase.number if numbered else None,
            backup_name=backup_name,
            initial_best=best_value,
            initial_weights=best_weights,
            recalibration_data=sets.recalibration,
            # Written inside fit, before it returns: no crash point is left between the end of
            # training and the marker (the epoch backup stays until the outputs are written).
            # Every worker saves (a multi-worker save is collective), each in its write_dir.
            complete_marker=tuple(
                run.write_dir / path.relative_to(run.run_dir) for path in (marker, state)
            ),
            select=select,
            **callback_options,
        )
        run.training_started = True
        fitted = model if sets.teacher is None else _distillation_trainer(model, run, sets)
        with distribute.fit_scope(fitted, run.strategy):
            fitted.fit(
                train.data,
                validation_data=None if sets.validation is None else sets.validation.data,
                epochs=epochs,
                steps_per_epoch=train.steps,
                class_weight=fit_weights,
                callbacks=callbacks,
                shuffle=False,  # both pipelines shuffle each epoch themselves
                verbose=verbosity(),
            )
        stopping = training.early_stopping_of(callbacks)
        best_value, best_weights = stopping.best, model.get_weights()
        selected.append(_epochs_kept(stopping.best_epoch, select, phase))
    return selected


def _distillation_trainer(student, run: Run, sets: ClassifierData) -> distill.DistillationTrainer:
    """The student, compiled for its phase, wrapped to train beside the recorded teacher."""
    alpha, temperature = run.config.distill_alpha, run.config.distill_temperature
    if run.chief and not sets.teacher_record_file.is_file():
        sets.teacher_record_file.parent.mkdir(parents=True, exist_ok=True)
        runs.write_json(sets.teacher_record_file, sets.teacher.record(alpha, temperature))
    with run.scope():
        return distill.build_distillation_trainer(
            student, sets.teacher, sets.preprocess, alpha, temperature
        )


def _epochs_kept(best_epoch, select: bool, phase: Phase) -> int | None:
    if not select:
        return phase.epochs
    if best_epoch is None:
        return None
    return int(best_epoch) + 1 if best_epoch >= 0 else 0


def run_classifier(
    config: ClassifierConfig, preprocess: str, interpolation: str, train, metadata, title: str
) -> dict:
    """The classifier run of every experiment: data checked, the model trained by
    `train(run, sets, epochs=None) -> (model, selected_epochs)` (see `fit_phases`) on the one
    validation split, or cross-fitted over K folds of train + val (`--cross-fit K`), then
    saved and evaluated. `metadata(sets)` gives the experiment's own .h5 metadata."""
    with classifier_run(config, preprocess, interpolation) as (run, sets):
        decision = None
        if config.cross_fit:
            from bc_keras.experiments import crossfit

            model, decision = crossfit.cross_fit(run, sets, train, metadata(sets))
        else:
            model, _ = train(run, sets)
        return finish_classifier(model, run, sets, metadata(sets), title, decision=decision)


def finish_classifier(
    model, run: Run, sets: ClassifierData, metadata: dict, title: str, decision=None
) -> dict:
    """Saves the trained classifier and evaluates it: BatchNorm statistics re-estimated (when
    asked), the threshold fixed or chosen on validation and stored in the model, then the
    test predictions, metrics and figures. The backup goes only once all is written.

    A cross-fitted model comes with its `decision` (`crossfit.Decision`): the threshold chosen
    on the out-of-fold probabilities, and its BatchNorm statistics already settled."""
    config = run.config
    if not run.chief:
        return {}
    extra = {"label_fraction_used": sets.label_fraction_used}
    if decision is None:
        if sets.recalibration is not None:
            training.recalibrate_batch_norm(model, sets.recalibration)
        models.check_finite_weights(model)
        threshold, method = evaluation.decide_threshold(
            model, config, sets.validation, tta=config.tta
        )
        tuned = None
    else:
        threshold, method, tuned = decision.threshold, decision.method, decision.tuned_threshold
        metadata = {**metadata, **decision.metadata}
        extra["cross_fit"] = decision.summary
    metadata = {
        **metadata,
        "kind": "classifier",
        "experiment": config.experiment,
        "recipe": config.recipe,
        "image_size": config.image_size,
        "preprocess": sets.preprocess,
        "interpolation": sets.interpolation,
        "threshold": threshold,
        "threshold_method": method,
        "tta": bool(config.tta),
        "run_dir": str(run.run_dir),
        **stain_normalizer(config.data),
    }
    if sets.teacher is not None:
        record = sets.teacher.record(config.distill_alpha, config.distill_temperature)
        metadata[DISTILLATION_KEY] = record
    evaluation.plot_run_history(run.run_dir, title=title)
    test = sets.dataset(data.SUBSET_TEST, sets.test_files)
    result = evaluation.evaluate_classifier(
        model,
        test,
        run.run_dir,
        threshold=threshold,
        threshold_method=method,
        validation=sets.validation,
        tune_threshold=config.tune_threshold,
        tuned_threshold=tuned,
        tta=bool(config.tta),
        title=title,
        seed=config.seed,
        extra=extra,
        write_metrics=False,
    )
    # Saved once evaluated, so that the model carries its card (and the card its results).
    fields = card.classifier_card(metadata, result, data_summary(sets))
    model_path = models.save_model(model, config.model_out, {**metadata, "card": fields})
    card_file = card.write_card(model_path, title, fields)
    result = {**result, runs.MODEL_HASH_KEY: runs.file_sha256(model_path),
              "model_card": str(card_file)}  # fmt: skip
    runs.write_json(run.run_dir / runs.METRICS_FILE, result)
    runs.finish_backup(run.run_dir)
    if sets.teacher is not None:
        # Only once finished: config.json gaining a key earlier would make --resume refuse it.
        runs.record_in_config(run.run_dir, **{DISTILLATION_KEY: record})
    print(
        f"\nmodel: {model_path} (card: {card_file})\nmetrics, predictions and figures: {run.run_dir}"
    )
    return result


def stain_normalizer(split_dir) -> dict:
    """`{"stain_normalizer": {method, target_statistics}}` when the split was written by
    normalize_stains.py (its normalize.json), else {}: stored in the model so that raw images
    are normalised the same way at inference."""
    from bc_keras.evaluation.inference import STAIN_NORMALIZER_KEY
    from bc_keras.prepare.normalize import NORMALIZE_NAME

    path = Path(split_dir) / NORMALIZE_NAME
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
        record = {"method": settings["method"], "target_statistics": settings["target_statistics"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(
            f"{path} cannot be read ({error}); normalise the split again with normalize_stains.py"
        ) from None
    return {STAIN_NORMALIZER_KEY: record}


def _subset_summary(files: data.SplitFiles) -> str:
    labels = np.asarray(files.labels)
    patients = patients_of_paths(files.paths)
    text = f"{len(labels)} images ({int(np.sum(labels == 0))} benign, {int(np.sum(labels == 1))} malignant)"
    return text + (f", {len(set(patients))} patients" if patients else "")


def data_summary(sets: ClassifierData) -> dict:
    """Per subset: images per class and patients (a model card's data section)."""
    summary = {"split": str(sets.config.data)}
    summary["train"] = _subset_summary(sets.train_files)
    if sets.validation is not None:
        summary["val"] = _subset_summary(
            data.SplitFiles(sets.validation.paths, sets.validation.labels)
        )
    summary["test"] = _subset_summary(sets.test_files)
    if getattr(sets.config, "cross_fit", 0):
        summary["cross-fitting"] = f"train + val pooled into {sets.config.cross_fit} patient folds"
    return summary

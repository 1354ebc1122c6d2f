"""Patient-grouped, class-stratified K folds: the fold of every patient (shared by
cross-validation and cross-fitting) and the K train/val/test splits of cross-validation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from bc_keras.errors import DataError
from bc_keras.prepare.index import ImageRecord
from bc_keras.prepare.patients import patients_by_class
from bc_keras.prepare.patients import summary as patient_summary
from bc_keras.prepare.split import (
    DEFAULT_SEED,
    DEFAULT_TRIALS,
    DEFAULT_VAL_SHARE,
    MIN_KFOLD_PATIENTS,
    _assign_patients,
    split_by_patient,
)


def _fold_patient_error(
    label: str,
    patients: int,
    folds: int,
    problem: str,
    flag: str = "--folds",
    least: int = MIN_KFOLD_PATIENTS,
    what: str = "cross-validation",
) -> DataError:
    if patients >= least:
        fix = f"use {flag} {2 if least <= 2 else least} to {patients}, or more data"
    else:
        fix = f"{what} needs at least {least} patients per class: add data"
    return DataError(
        f"too few patients for {folds}-fold {what}: class {label} has {patients} "
        f"patient(s) and {problem}; {fix}"
    )


def patient_folds(
    records: Sequence[ImageRecord],
    folds: int,
    seed: int = DEFAULT_SEED,
    trials: int = DEFAULT_TRIALS,
    rest_needed: int = 2,
    flag: str = "--folds",
) -> dict[str, int]:
    """The 0-based fold of every patient (slide id): patient-grouped and class-stratified.

    Each class's patients are dealt to `folds` groups balanced by image count (and spread over
    subtypes where they have enough patients), as `split_by_patient` deals them to splits; the
    classes' groups are then paired so the folds' totals balance too. Cross-validation
    (`split_kfold_by_patient`) and cross-fitting share it.

    Args:
        rest_needed: the fewest patients of each class a fold must leave outside itself (2:
            a cross-validation fold carves train and val from them; 1: cross-fitting trains on
            them and validates on the fold).
        flag: the option that sets `folds`, named in the error.

    Raises:
        DataError: if a class has too few patients for `folds` folds.
    """
    if folds < 2:
        raise ValueError(f"folds must be 2 or more. Received: folds={folds}")
    rng = np.random.default_rng(seed)
    by_class = patients_by_class(records)
    for label in sorted(by_class):
        if len(by_class[label]) < folds:
            raise _fold_patient_error(
                label,
                len(by_class[label]),
                folds,
                f"each of the {folds} test folds needs at least one",
                **_error_words(flag, rest_needed),
            )
    fold_of: dict[str, int] = {}
    totals = np.zeros(folds)
    for label in sorted(by_class):
        patients = by_class[label]
        groups = _assign_patients(patient_summary(patients), [1.0 / folds] * folds, rng, trials)
        sizes = np.zeros(folds)
        for patient, group in groups.items():
            sizes[group] += len(patients[patient])
        # This class's largest group joins the fold with the fewest images so far.
        by_size = sorted(range(folds), key=lambda g: (-sizes[g], g))
        by_total = sorted(range(folds), key=lambda k: (totals[k], k))
        fold_of_group = dict(zip(by_size, by_total, strict=True))
        for group in range(folds):
            totals[fold_of_group[group]] += sizes[group]
        for patient, group in groups.items():
            fold_of[patient] = fold_of_group[group]
        for fold in range(folds):
            rest = sum(1 for p in patients if fold_of[p] != fold)
            if rest < rest_needed:
                raise _fold_patient_error(
                    label,
                    len(patients),
                    folds,
                    (
                        f"fold {fold + 1} would leave {rest} outside its test set, but train and "
                        "val need one each"
                        if rest_needed == 2
                        else f"fold {fold + 1} would leave none outside it to train on"
                    ),
                    **_error_words(flag, rest_needed),
                )
    return fold_of


def _error_words(flag: str, rest_needed: int) -> dict:
    if rest_needed == 2:
        return {"flag": flag}
    return {"flag": flag, "least": 2, "what": "cross-fitting"}


def split_kfold_by_patient(
    records: Sequence[ImageRecord],
    folds: int,
    seed: int = DEFAULT_SEED,
    val_ratio: float = DEFAULT_VAL_SHARE,
    trials: int = DEFAULT_TRIALS,
) -> list[list[ImageRecord]]:
    """Patient-grouped, class-stratified K folds, each with train/val/test set.

    Each class's patients are dealt to `folds` groups balanced by image count (and spread over
    subtypes where they have enough patients), as `split_by_patient` deals them to splits; the
    classes' groups are then paired so the folds' totals balance too. Fold k tests on group k;
    its validation set is carved by patient from the other groups, as `split_by_fold` does.

    Args:
        records: the images to split.
        folds: K, 2 or more; every patient is in exactly one fold's test set.
        seed: seeds the assignment to folds and every fold's validation carve.
        val_ratio: the share of each fold's non-test images that validation takes.
        trials: how many seeded orderings each assignment tries (the best is kept).

    Returns:
        K lists, one per fold, each holding every record (in input order) with `split` set.

    Raises:
        DataError: if a class has too few patients for `folds` folds.
    """
    if not 0.0 < val_ratio < 1.0:
        raise ValueError(f"val_ratio must be between 0 and 1. Received: val_ratio={val_ratio}")
    fold_of = patient_folds(records, folds, seed, trials)
    result = []
    for fold in range(folds):
        rest = [i for i, r in enumerate(records) if fold_of[r.slide_id] != fold]
        carved = split_by_patient(
            [records[i] for i in rest],
            ratios=(1.0 - val_ratio, val_ratio),
            seed=seed,
            split_names=("train", "val"),
            trials=trials,
        )
        splits = ["test"] * len(records)
        for i, record in zip(rest, carved, strict=True):
            splits[i] = record.split
        result.append([replace(r, split=s) for r, s in zip(records, splits, strict=True)])
    return result

"""Writing a prepared folder: train/val/test/{benign,malignant} of links or copies, split.csv
and prepare.json, built beside the target and renamed into place only once complete."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bc_keras.errors import DataError
from bc_keras.histology.breakhis import CLASS_NAMES, MAGNIFICATIONS
from bc_keras.prepare import split as splitting
from bc_keras.prepare.index import (
    PROGRESS_EVERY,
    ImageRecord,
    IndexResult,
    Log,
    filter_magnifications,
    find_breast_root,
    index_source,
    is_archive,
    parse_magnifications,
    silent,
)
from bc_keras.prepare.manifest import (
    MANIFEST_NAME,
    SETTINGS_NAME,
    manifest_path_of,
    split_summary,
    write_manifest,
)
from bc_keras.prepare.output import check_output_folder, staged_output
from bc_keras.prepare.split import DEFAULT_RATIOS, DEFAULT_SEED, DEFAULT_TRIALS, SPLIT_NAMES

# Where an archive's images are extracted inside the staging folder, before they are placed.
EXTRACTED = ".extracted"


@dataclass
class PrepareResult:
    """What `prepare_split` wrote."""

    out: Path
    records: list[ImageRecord]
    settings: dict
    warnings: list[str]


def _materialize(records, staging: Path, source_kind: str, copy: bool, log: Log) -> None:
    for split in SPLIT_NAMES:
        for label in CLASS_NAMES:
            (staging / split / label).mkdir(parents=True, exist_ok=True)
    for count, record in enumerate(records, start=1):
        place_image(record.source, staging / manifest_path_of(record), source_kind, copy)
        if count % PROGRESS_EVERY == 0:
            log(f"placed {count}/{len(records)} images ...")


def place_image(source, destination: Path, source_kind: str, copy: bool) -> None:
    """Puts an image in a prepared folder: moved (extracted from an archive), copied, or an
    absolute symbolic link to the source."""
    if source_kind == "archive":
        os.replace(source, destination)
    elif copy:
        shutil.copyfile(source, destination)
    else:
        os.symlink(source, destination)


def checked_source_and_out(source, out, overwrite: bool) -> tuple[Path, Path]:
    """`source` and `out` as Paths, once `source` exists and `out` may be written."""
    source = Path(source)
    if not source.exists():
        raise DataError(
            f"source {source} does not exist; pass BreaKHis_v1.tar.gz or the folder it extracts to"
        )
    # The images read may not be touched; `out` may sit beside them inside SOURCE.
    images = source if is_archive(source) else find_breast_root(source)
    out = check_output_folder(out, sources=[images], holders=[source], overwrite=overwrite)
    return source, out


def index_for_prepare(
    source: Path, staging: Path, magnifications: Sequence[int], copy: bool, log: Log, warn: Log
) -> tuple[IndexResult, list[ImageRecord]]:
    """Indexes `source` (an archive is extracted into `staging/.extracted`), warns about what
    was skipped, and keeps the images at `magnifications`; refuses when none is left."""
    from_archive = is_archive(source)
    log(f"indexing {source} ...")
    index = index_source(source, extract_to=staging / EXTRACTED if from_archive else None, log=log)
    if from_archive and not copy:
        warn(
            "images are extracted from the archive into place (symbolic links are "
            "impossible from a tar archive)"
        )
    for line in index.warnings():
        warn(line)
    records = filter_magnifications(index.records, magnifications)
    log(
        f"indexed {len(index.records)} images; {len(records)} at magnification(s) "
        f"{', '.join(f'{m}x' for m in magnifications)}"
    )
    if not records:
        raise DataError(
            f"no usable image in {source} at magnification(s) "
            f"{' '.join(str(m) for m in magnifications)}; check SOURCE and --magnification"
        )
    return index, records


def skip_counts(index: IndexResult, not_in_fold: int) -> dict:
    """prepare.json's "skipped": how many images were left out, per reason."""
    return {
        "unparsable": len(index.unparsable),
        "class_mismatch": len(index.class_mismatch),
        "duplicates": len(index.duplicates),
        "unreadable": len(index.unreadable),
        "not_in_fold": not_in_fold,
    }


def class_gaps(records: Sequence[ImageRecord]) -> list[str]:
    """One warning per split that lacks a class."""
    gaps = []
    for name in SPLIT_NAMES:
        missing = [
            label
            for label in CLASS_NAMES
            if not any(r.split == name and r.label == label for r in records)
        ]
        if missing:
            gaps.append(f"split {name} has no {' or '.join(missing)} image")
    return gaps


def prepare_split(
    source: str | Path,
    out: str | Path,
    split: str = splitting.SPLIT_PATIENT,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = DEFAULT_SEED,
    magnifications: Sequence[int] = MAGNIFICATIONS,
    fold_file: str | Path | None = None,
    copy: bool = False,
    overwrite: bool = False,
    trials: int = DEFAULT_TRIALS,
    log: Log = silent,
    warn: Log = silent,
) -> PrepareResult:
    """Indexes `source`, splits it and writes `out/{train,val,test}/{benign,malignant}/` with
    `split.csv` and `prepare.json`, atomically (built beside `out`, renamed at the end).

    Args:
        source: a BreaKHis tar archive or a folder at any level of the tree.
        out: the prepared folder to write.
        split: splitting.SPLIT_PATIENT, splitting.SPLIT_IMAGE or splitting.SPLIT_FOLD.
        ratios: train/val/test image fractions.
        seed: seeds the split.
        magnifications: the magnifications to keep.
        fold_file: the official dsfoldN.txt for splitting.SPLIT_FOLD.
        copy: copy images instead of linking them (archives are always extracted).
        overwrite: replace an existing `out` that a data tool made (never an unrelated
            folder, never the source or a folder holding it).
        trials: random orderings the patient splitter tries.
        log: receives progress lines.
        warn: receives warnings.

    Returns:
        The written folder, its records, resolved settings and the warnings.
    """
    if split not in splitting.SPLIT_MODES:
        raise DataError(
            f"unknown --split {split!r}; choose one of {', '.join(splitting.SPLIT_MODES)}"
        )
    ratios = splitting.validate_ratios(ratios)
    magnifications = tuple(sorted(parse_magnifications(magnifications)))
    fold_groups = None
    if split == splitting.SPLIT_FOLD:
        if fold_file is None:
            raise DataError("--split fold needs --fold-file FILE (an official dsfoldN.txt)")
        fold_groups = splitting.read_fold_file(fold_file)
    source, out = checked_source_and_out(source, out, overwrite)
    warnings: list[str] = []

    def _warn(message: str) -> None:
        warnings.append(message)
        warn(message)

    with staged_output(out, log) as staging:
        from_archive = is_archive(source)
        index, records = index_for_prepare(source, staging, magnifications, copy, log, _warn)
        fold_report = None
        if split == splitting.SPLIT_PATIENT:
            records = splitting.split_by_patient(records, ratios, seed, trials=trials)
        elif split == splitting.SPLIT_IMAGE:
            _warn(
                "WARNING: --split image splits by image, so the same patient's images land in "
                "train, val and test (patient leakage inflates accuracy); use it only to "
                "reproduce the report; the default --split patient is patient-disjoint"
            )
            records = splitting.split_by_image(records, ratios, seed)
        else:
            records, fold_report = splitting.split_by_fold(
                records, fold_groups, ratios, seed, trials
            )
            for line in fold_report.warnings():
                _warn(line)
        empty = [name for name in SPLIT_NAMES if not any(r.split == name for r in records)]
        if empty:
            raise DataError(
                f"split {', '.join(empty)} would be empty ({len(records)} images, "
                f"{len({r.slide_id for r in records})} patients); use --split image or more data"
            )
        for line in class_gaps(records):
            _warn(line)
        _materialize(records, staging, index.source_kind, copy, log)
        shutil.rmtree(staging / EXTRACTED, ignore_errors=True)
        records = [replace(r, source=str(out.absolute() / manifest_path_of(r))) for r in records]
        write_manifest(records, staging / MANIFEST_NAME)
        settings = {
            "source": str(source.absolute()),
            "source_kind": index.source_kind,
            "breast_root": index.root,
            "split": split,
            "ratios": list(ratios),
            "seed": seed,
            "magnifications": list(magnifications),
            "fold_file": str(Path(fold_file).absolute()) if fold_file else None,
            "layout": "copies" if copy or from_archive else "symlinks",
            "trials": trials if split != splitting.SPLIT_IMAGE else None,
            "counts": split_summary(records),
            "skipped": skip_counts(index, len(fold_report.not_in_fold) if fold_report else 0),
            "converted_to_rgb": len(index.converted),
            "warnings": warnings,
        }
        (staging / SETTINGS_NAME).write_text(json.dumps(settings, indent=2) + "\n")
    return PrepareResult(out=out, records=records, settings=settings, warnings=warnings)

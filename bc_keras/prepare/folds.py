"""Writing cross-validation folds: one shared image store and, per fold, a complete prepared split
whose images are relative links into the store, all built beside the target and renamed into
place at once."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bc_keras.errors import DataError
from bc_keras.histology.breakhis import CLASS_NAMES, MAGNIFICATIONS
from bc_keras.prepare import kfold
from bc_keras.prepare import split as splitting
from bc_keras.prepare.index import (
    PROGRESS_EVERY,
    ImageRecord,
    Log,
    is_archive,
    parse_magnifications,
    silent,
)
from bc_keras.prepare.layout import (
    EXTRACTED,
    checked_source_and_out,
    class_gaps,
    index_for_prepare,
    place_image,
    skip_counts,
)
from bc_keras.prepare.manifest import (
    MANIFEST_NAME,
    SETTINGS_NAME,
    manifest_path_of,
    split_summary,
    write_manifest,
)
from bc_keras.prepare.output import staged_output
from bc_keras.prepare.split import DEFAULT_RATIOS, DEFAULT_SEED, DEFAULT_TRIALS, SPLIT_NAMES

# The folder of DIR that holds every image once; the folds link into it.
IMAGE_STORE = "images"
FOLD_KIND_KFOLD = "kfold"
FOLD_KIND_OFFICIAL = "official"
# A fold's images are links relative to the fold, so DIR can be moved as a whole.
FOLD_LAYOUT = "relative_symlinks"
# From DIR/fold_k/<split>/<label>/ up to DIR.
_UP_TO_OUT = (os.pardir,) * 3


def fold_folder_name(index: int) -> str:
    """The folder of fold `index` (1-based) inside a folds folder: `fold_<index>`."""
    return f"fold_{index}"


@dataclass
class FoldsResult:
    """What `prepare_folds` wrote."""

    out: Path
    folds: list[list[ImageRecord]]
    settings: dict
    fold_settings: list[dict]
    warnings: list[str]


def _fill_store(records, store: Path, source_kind: str, copy: bool, log: Log) -> None:
    store.mkdir()
    for count, record in enumerate(records, start=1):
        place_image(record.source, store / record.filename, source_kind, copy)
        if count % PROGRESS_EVERY == 0:
            log(f"stored {count}/{len(records)} images ...")


def _link_fold(records, folder: Path) -> None:
    for split in SPLIT_NAMES:
        for label in CLASS_NAMES:
            (folder / split / label).mkdir(parents=True)
    for record in records:
        target = os.path.join(*_UP_TO_OUT, IMAGE_STORE, record.filename)
        os.symlink(target, folder / manifest_path_of(record))


def _split_folds(records, folds, fold_files, fold_groups, ratios, seed, trials, warn):
    """The records of every fold (split set) and, per fold, the images its fold file leaves out."""
    if folds is not None:
        val_share = ratios[1] / (ratios[0] + ratios[1])
        chosen = kfold.split_kfold_by_patient(records, folds, seed, val_share, trials)
        return chosen, [0] * folds
    chosen, left_out = [], []
    for index, (path, groups) in enumerate(zip(fold_files, fold_groups, strict=True), start=1):
        try:
            fold_records, report = splitting.split_by_fold(records, groups, ratios, seed, trials)
        except DataError as error:
            raise DataError(f"fold file {path}: {error}") from error
        for line in report.warnings():
            warn(f"{fold_folder_name(index)} ({Path(path).name}): {line}", index - 1)
        chosen.append(fold_records)
        left_out.append(len(report.not_in_fold))
    return chosen, left_out


def prepare_folds(
    source: str | Path,
    out: str | Path,
    folds: int | None = None,
    fold_files: Sequence[str | Path] | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = DEFAULT_SEED,
    magnifications: Sequence[int] = MAGNIFICATIONS,
    copy: bool = False,
    overwrite: bool = False,
    trials: int = DEFAULT_TRIALS,
    log: Log = silent,
    warn: Log = silent,
) -> FoldsResult:
    """Indexes `source` and writes cross-validation folds, atomically: `out/images/<filename>`
    (each image once) and `out/fold_1` .. `out/fold_K`, each a prepared split
    (`{train,val,test}/{benign,malignant}/` of links relative to the fold, `split.csv`,
    `prepare.json`), plus `out/prepare.json` describing the set.

    Args:
        source: a BreaKHis tar archive or a folder at any level of the tree.
        out: the folds folder to write.
        folds: K for patient-grouped, class-stratified K folds (see
            `kfold.split_kfold_by_patient`); give this or `fold_files`.
        fold_files: official dsfoldN.txt files, one fold each: its test group is the test set,
            validation is carved by patient from its train group.
        ratios: train/val/test ratios; validation takes ratios[1] / (ratios[0] + ratios[1]) of
            each fold's non-test images (the folds decide the test set).
        seed: seeds the folds and every validation carve.
        magnifications: the magnifications to keep.
        copy: copy images into `out/images` instead of linking them (archives are always
            extracted there).
        overwrite: replace an existing `out` that a data tool made.
        trials: random orderings the patient splitter tries.
        log: receives progress lines.
        warn: receives warnings.

    Returns:
        The written folder, each fold's records (their `source` in the fold folder), the
        top-level and per-fold settings, and the warnings.
    """
    if (folds is None) == (not fold_files):
        raise ValueError(
            f"Pass either folds or fold_files. Received: folds={folds}, fold_files={fold_files}"
        )
    if folds is not None and folds < 2:
        raise DataError(
            f"--folds {folds} is not cross-validation; use --folds 2 or more (5 is usual), or "
            "leave --folds out for a single patient split"
        )
    ratios = splitting.validate_ratios(ratios)
    magnifications = tuple(sorted(parse_magnifications(magnifications)))
    fold_files = [Path(path) for path in fold_files or ()]
    fold_groups = [splitting.read_fold_file(path) for path in fold_files]
    source, out = checked_source_and_out(source, out, overwrite)
    count = folds if folds is not None else len(fold_files)
    kind = FOLD_KIND_KFOLD if folds is not None else FOLD_KIND_OFFICIAL
    common: list[str] = []
    per_fold: list[list[str]] = [[] for _ in range(count)]

    def _warn(message: str, fold: int | None = None) -> None:
        (common if fold is None else per_fold[fold]).append(message)
        warn(message)

    with staged_output(out, log) as staging:
        index, records = index_for_prepare(source, staging, magnifications, copy, log, _warn)
        fold_records, left_out = _split_folds(
            records, folds, fold_files, fold_groups, ratios, seed, trials, _warn
        )
        for fold, chosen in enumerate(fold_records):
            name = fold_folder_name(fold + 1)
            empty = [s for s in SPLIT_NAMES if not any(r.split == s for r in chosen)]
            if empty:
                raise DataError(
                    f"{name}: split {', '.join(empty)} would be empty ({len(chosen)} images); "
                    "use fewer folds or more data"
                )
            for line in class_gaps(chosen):
                _warn(f"{name}: {line}", fold)
        used = {r.filename for chosen in fold_records for r in chosen}
        stored = [r for r in records if r.filename in used]
        _fill_store(stored, staging / IMAGE_STORE, index.source_kind, copy, log)
        shutil.rmtree(staging / EXTRACTED, ignore_errors=True)
        store_layout = "copies" if copy or is_archive(source) else "symlinks"
        shared = {
            "source": str(source.absolute()),
            "source_kind": index.source_kind,
            "breast_root": index.root,
            "split": splitting.SPLIT_KFOLD if folds is not None else splitting.SPLIT_FOLD,
        }
        settings_of_run = {
            "seed": seed,
            "ratios": list(ratios),
            "val_share": round(ratios[1] / (ratios[0] + ratios[1]), 6),
            "magnifications": list(magnifications),
            "trials": trials,
        }
        placed_folds, fold_settings = [], []
        for fold, chosen in enumerate(fold_records):
            name = fold_folder_name(fold + 1)
            _link_fold(chosen, staging / name)
            placed = [
                replace(r, source=str(out.absolute() / name / manifest_path_of(r))) for r in chosen
            ]
            write_manifest(placed, staging / name / MANIFEST_NAME)
            fold_file = str(fold_files[fold].absolute()) if fold_files else None
            settings = {
                **shared,
                "fold": {"index": fold + 1, "count": count, "kind": kind, "fold_file": fold_file},
                **settings_of_run,
                "fold_file": fold_file,
                "layout": FOLD_LAYOUT,
                "image_store": os.path.join(os.pardir, IMAGE_STORE),
                "image_store_layout": store_layout,
                "counts": split_summary(placed),
                "skipped": skip_counts(index, left_out[fold]),
                "converted_to_rgb": len(index.converted),
                "warnings": common + per_fold[fold],
            }
            (staging / name / SETTINGS_NAME).write_text(json.dumps(settings, indent=2) + "\n")
            placed_folds.append(placed)
            fold_settings.append(settings)
            log(f"wrote {name}")
        top = {
            **shared,
            "folds": count,
            "fold_kind": kind,
            "fold_files": [str(path.absolute()) for path in fold_files] or None,
            **settings_of_run,
            "image_store": IMAGE_STORE,
            "image_store_layout": store_layout,
            "fold_folders": [fold_folder_name(k + 1) for k in range(count)],
            "images": len(stored),
            "patients": len({r.slide_id for r in stored}),
            "counts": {fold_folder_name(s["fold"]["index"]): s["counts"] for s in fold_settings},
            "skipped": skip_counts(index, len(records) - len(stored)),
            "converted_to_rgb": len(index.converted),
            "warnings": common + [line for lines in per_fold for line in lines],
        }
        (staging / SETTINGS_NAME).write_text(json.dumps(top, indent=2) + "\n")
    return FoldsResult(
        out=out,
        folds=placed_folds,
        settings=top,
        fold_settings=fold_settings,
        warnings=common + [line for lines in per_fold for line in lines],
    )

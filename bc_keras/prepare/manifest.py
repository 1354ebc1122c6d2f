"""The manifest of a prepared folder (split.csv), reading prepared folders back, and their
statistics and leakage check."""

from __future__ import annotations

import csv
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

from bc_keras.errors import DataError
from bc_keras.histology.breakhis import CLASS_NAMES, distribution_table, parse_filename
from bc_keras.prepare.index import ImageRecord
from bc_keras.prepare.patients import SPLIT_NAMES, slide_overlap, split_order

MANIFEST_NAME = "split.csv"
SETTINGS_NAME = "prepare.json"
MANIFEST_COLUMNS = (
    "filename", "path", "label", "subtype", "patient", "magnification", "split", "slide_id"
)  # fmt: skip
# Columns a split.csv of an older bc_keras lacks; read from the file name when missing.
OPTIONAL_COLUMNS = ("slide_id",)


def manifest_path_of(record: ImageRecord) -> str:
    """`<split>/<label>/<filename>`: where the image lives in a prepared folder."""
    return f"{record.split}/{record.label}/{record.filename}"


def write_manifest(records: Iterable[ImageRecord], path: str | Path) -> None:
    """Writes `split.csv` with columns MANIFEST_COLUMNS (`path` relative to the prepared folder)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        for r in records:
            writer.writerow(
                [
                    r.filename,
                    manifest_path_of(r),
                    r.label,
                    r.subtype,
                    r.patient,
                    r.magnification,
                    r.split,
                    r.slide_id,
                ]
            )


def read_manifest(path: str | Path) -> list[ImageRecord]:
    """Reads a `split.csv`; each record's `source` is the absolute image path. A manifest
    without the `slide_id` column (older bc_keras) gets it from the file names."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(MANIFEST_COLUMNS) - set(OPTIONAL_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise DataError(
                f"{path} is not a bc_keras split manifest: columns {sorted(missing)} are missing; "
                "make one with data_tools/prepare_breakhis.py"
            )
        return [
            ImageRecord(
                filename=row["filename"],
                source=str((path.parent / row["path"]).absolute()),
                label=row["label"],
                subtype=row["subtype"],
                patient=row["patient"],
                magnification=int(row["magnification"]),
                split=row["split"],
                slide_id=row.get("slide_id") or "",
            )
            for row in reader
        ]


def load_prepared(directory: str | Path) -> list[ImageRecord]:
    """Records of a prepared folder: from its split.csv, else by walking split/class folders."""
    directory = Path(directory)
    if (directory / MANIFEST_NAME).is_file():
        return read_manifest(directory / MANIFEST_NAME)
    records = []
    found = False
    for split in SPLIT_NAMES:
        for label in CLASS_NAMES:
            folder = directory / split / label
            if not folder.is_dir():
                continue
            found = True
            for path in sorted(folder.iterdir()):
                if not path.name.lower().endswith(".png"):
                    continue
                try:
                    parsed = parse_filename(path.name)
                except ValueError:
                    continue
                records.append(
                    ImageRecord(
                        path.name,
                        str(path.absolute()),
                        parsed.label,
                        parsed.subtype,
                        parsed.patient,
                        parsed.magnification,
                        split,
                    )
                )
    if not found:
        raise DataError(
            f"{directory} is not a prepared split: no {MANIFEST_NAME} and no "
            "{train,val,test}/{benign,malignant} folders; make one with "
            "data_tools/prepare_breakhis.py"
        )
    return records


def load_records(path: str | Path) -> tuple[list[ImageRecord], bool]:
    """The records of any PATH the data tools accept (a BreaKHis tree or archive, a prepared
    folder, a split.csv) and whether they carry splits."""
    from bc_keras.prepare.index import index_source

    path = Path(path)
    if not path.exists():
        raise DataError(
            f"{path} does not exist; pass a BreaKHis tree, archive, prepared folder or split.csv"
        )
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_manifest(path), True
    if path.is_dir() and (
        (path / MANIFEST_NAME).is_file() or any((path / s).is_dir() for s in SPLIT_NAMES)
    ):
        return load_prepared(path), True
    index = index_source(path, check_images=False)
    for line in index.warnings():
        warnings.warn(line, stacklevel=2)
    return index.records, False


def missing_files(records: Iterable[ImageRecord]) -> list[str]:
    """The image files a prepared split lists that no longer exist (broken links included)."""
    return [record.source for record in records if not Path(record.source).exists()]


def patient_overlap(records: Iterable[ImageRecord]) -> dict[str, dict[str, int]]:
    """Patients (slide ids, so one slide filed under two subtypes is one patient) found in
    more than one split -> {split: image count}."""
    return slide_overlap(list(records))


def split_summary(records: Sequence[ImageRecord]) -> dict:
    """Counts per split and class, patients (slide ids) per split, and image fractions."""
    total = len(records) or 1
    summary = {}
    for split in sorted({r.split for r in records}, key=split_order):
        chosen = [r for r in records if r.split == split]
        summary[split] = {
            "images": len(chosen),
            "fraction": round(len(chosen) / total, 4),
            "patients": len({r.slide_id for r in chosen}),
            **{label: sum(r.label == label for r in chosen) for label in CLASS_NAMES},
        }
    return summary


def stats_report(records: Sequence[ImageRecord], per_split: bool) -> str:
    """The SPEC distribution table; with `per_split`, then one headed table per split."""
    lines = [distribution_table((r.magnification, r.label) for r in records)]
    if per_split:
        summary = split_summary(records)
        lines.append("")
        lines.append(
            "Patients per split: "
            + ", ".join(f"{split} {info['patients']}" for split, info in summary.items())
            + f" (total {_patient_total(records)})"
        )
        for split in summary:
            chosen = [r for r in records if r.split == split]
            lines += [
                "",
                f"## {split}",
                "",
                distribution_table((r.magnification, r.label) for r in chosen),
                "",
                f"Patients: {summary[split]['patients']}; images: {summary[split]['images']} "
                f"({100 * summary[split]['fraction']:.1f}%)",
            ]
    return "\n".join(lines)


def _patient_total(records: Sequence[ImageRecord]) -> str:
    """`81`, or `81 patients in 82 patient folders` where a slide is filed under two subtypes
    (the per-split counts are patients, the literature's 82 are folders)."""
    slides = len({r.slide_id for r in records})
    folders = len({r.patient for r in records})
    return str(slides) if slides == folders else f"{slides} patients in {folders} patient folders"


def record_dict(record: ImageRecord) -> dict:
    """A record as a plain dict (for JSON or DataFrames)."""
    return asdict(record)

"""List every patient found in more than one split of a prepared folder (from its split.csv,
else from the file names under {train,val,test}/{benign,malignant}), and check that every
listed image file exists. A patient is a slide id (14-13412), so one filed under two subtypes
is one patient. Exit 1 if a patient leaks or files are missing, 0 if all is well."""

from __future__ import annotations

import argparse

from bc_keras.prepare import load_prepared, missing_files, patient_overlap
from bc_keras.prepare.patients import describe_sides, slide_folders


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dir", metavar="DIR", help="a folder written by prepare_breakhis.py")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    records = load_prepared(args.dir)
    missing = missing_files(records)
    overlap = patient_overlap(records)
    patients = len({r.slide_id for r in records})
    if missing:
        print(
            f"MISSING: {len(missing)} of {len(records)} image files listed in the split are gone "
            f"(e.g. {missing[0]}); prepare the split again"
        )
    if not overlap:
        print(f"OK: no patient in more than one split ({patients} patients, {len(records)} images)")
        return 1 if missing else 0
    print(f"LEAK: {len(overlap)} of {patients} patients are in more than one split:")
    folders = slide_folders(records)
    for patient, per_split in overlap.items():
        print(f"  {patient} ({', '.join(folders[patient])}) -> {describe_sides(per_split)}")
    return 1

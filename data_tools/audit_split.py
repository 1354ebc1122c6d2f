"""Check a prepared split for patient leakage: any patient in more than one split."""

from __future__ import annotations

import argparse
import sys

from bc_keras.errors import DataError
from bc_keras.prepare import load_prepared, patient_overlap


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audit_split.py",
        description=(
            "List every patient found in more than one split of a prepared folder (from its "
            "split.csv, else from the file names under {train,val,test}/{benign,malignant}). "
            "Exit 1 if there is any, 0 if none."
        ),
    )
    parser.add_argument("dir", metavar="DIR", help="a folder written by prepare_breakhis.py")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        records = load_prepared(args.dir)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    overlap = patient_overlap(records)
    patients = len({r.patient for r in records})
    if not overlap:
        print(f"OK: no patient in more than one split ({patients} patients, {len(records)} images)")
        return 0
    print(f"LEAK: {len(overlap)} of {patients} patients are in more than one split:")
    for patient, per_split in overlap.items():
        where = ", ".join(
            f"{split}: {count} image{'' if count == 1 else 's'}"
            for split, count in per_split.items()
        )
        print(f"  {patient} -> {where}")
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""List every patient found in more than one split of a prepared folder (from its split.csv,
else from the file names under {train,val,test}/{benign,malignant}), and check that every
listed image file exists. Exit 1 if a patient leaks or files are missing, 0 if all is well."""

from __future__ import annotations

import argparse
import sys

from bc_keras import cli
from bc_keras.prepare import load_prepared, missing_files, patient_overlap


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audit_split.py", description=__doc__)
    parser.add_argument("dir", metavar="DIR", help="a folder written by prepare_breakhis.py")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    records = load_prepared(args.dir)
    missing = missing_files(records)
    overlap = patient_overlap(records)
    patients = len({r.patient for r in records})
    if missing:
        print(
            f"MISSING: {len(missing)} of {len(records)} image files listed in the split are gone "
            f"(e.g. {missing[0]}); prepare the split again"
        )
    if not overlap:
        print(f"OK: no patient in more than one split ({patients} patients, {len(records)} images)")
        return 1 if missing else 0
    print(f"LEAK: {len(overlap)} of {patients} patients are in more than one split:")
    for patient, per_split in overlap.items():
        where = ", ".join(
            f"{split}: {count} image{'' if count == 1 else 's'}"
            for split, count in per_split.items()
        )
        print(f"  {patient} -> {where}")
    return 1


if __name__ == "__main__":
    sys.exit(cli.run_script(main, interrupted=cli.NOTHING_WRITTEN))

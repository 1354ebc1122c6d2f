"""Print images per magnification and class as the SPEC's markdown table, for a BreaKHis tree
or archive, a prepared folder or a split.csv. For a prepared folder or split.csv: the overall
table, patients per split, then one table per split; exit 1 if image files it lists are gone."""

from __future__ import annotations

import argparse

from bc_keras.prepare import load_records, missing_files, stats_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "path",
        metavar="PATH",
        help="a BreaKHis tree (any level) or archive, a prepared folder, or a split.csv manifest",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    records, is_split = load_records(args.path)
    print(stats_report(records, per_split=is_split))
    missing = missing_files(records) if is_split else []
    if missing:
        print(
            f"\nMISSING: {len(missing)} of {len(records)} image files listed are gone (e.g. "
            f"{missing[0]}); the counts above are of the list, not of the files: prepare the "
            "split again"
        )
        return 1
    return 0

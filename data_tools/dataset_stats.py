"""Print the BreaKHis distribution table for a tree, archive, prepared split or manifest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bc_keras.errors import DataError
from bc_keras.prepare import (
    MANIFEST_NAME,
    SPLIT_NAMES,
    index_source,
    load_prepared,
    read_manifest,
    stats_report,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dataset_stats.py",
        description=(
            "Print images per magnification and class as the SPEC's markdown table. For a "
            "prepared folder or split.csv: the overall table, patients per split, then one table "
            "per split."
        ),
    )
    parser.add_argument(
        "path",
        metavar="PATH",
        help="a BreaKHis tree (any level) or archive, a prepared folder, or a split.csv manifest",
    )
    return parser


def load(path: Path):
    """Returns (records, is_split) for any PATH the tool accepts."""
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
        print(f"warning: {line}", file=sys.stderr)
    return index.records, False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        records, is_split = load(Path(args.path))
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(stats_report(records, per_split=is_split))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prepare BreaKHis_v1 for training: index, split and lay out train/val/test folders."""

from __future__ import annotations

import argparse
import sys

from bc_keras import cli
from bc_keras.errors import DataError
from bc_keras.prepare import (
    DEFAULT_RATIOS,
    DEFAULT_SEED,
    IMAGE_STORE,
    SPLIT_FOLD,
    SPLIT_IMAGE,
    SPLIT_MODES,
    SPLIT_PATIENT,
    parse_magnifications,
    prepare_folds,
    prepare_split,
    stats_report,
    validate_ratios,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Index BreaKHis_v1 (archive or extracted tree), split it and write "
            "OUT/{train,val,test}/{benign,malignant}/ plus OUT/split.csv and OUT/prepare.json, "
            "so flow_from_directory works as in the report. With --folds K (or several "
            "--fold-file), write OUT/images/ once and OUT/fold_1 .. OUT/fold_K, each such a "
            "folder (train on one with --data OUT/fold_k)."
        ),
    )
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="BreaKHis_v1.tar.gz (.tgz/.tar) or a folder holding the "
        "BreaKHis_v1/histology_slides/breast tree, at any level down to breast itself",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="prepared folder to write")
    parser.add_argument(
        "--split",
        choices=SPLIT_MODES,
        default=SPLIT_PATIENT,
        help=f"{SPLIT_PATIENT}: patient-disjoint, stratified by class and subtype (default); "
        f"{SPLIT_IMAGE}: the report's random split by image (leaks patients); "
        f"{SPLIT_FOLD}: an official dsfoldN.txt (test = its test group, val carved by patient "
        "from its train group)",
    )
    parser.add_argument(
        "--fold-file",
        nargs="+",
        metavar="FILE",
        help="official dsfoldN.txt, required with --split fold; several (dsfold1.txt .. "
        "dsfold5.txt) write DIR/images/ once and DIR/fold_1 .. DIR/fold_N, one prepared split "
        "per file",
    )
    parser.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help="patient-grouped K-fold cross-validation, stratified by class (with --split "
        "patient): write DIR/images/ once and DIR/fold_1 .. DIR/fold_K, each a prepared split "
        "testing on one fold, with val carved by patient from the rest (val takes "
        "val / (train + val) of --ratios); default: one split, no folds",
    )
    parser.add_argument(
        "--magnification",
        nargs="+",
        default=["all"],
        metavar="MAG",
        help="magnifications to keep: one or more of 40 100 200 400, or all (default: all)",
    )
    parser.add_argument(
        "--ratios",
        nargs="+",
        type=float,
        default=list(DEFAULT_RATIOS),
        metavar="R",
        help="train val test fractions summing to 1 (default: 0.70 0.15 0.15)",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"split seed (default: {DEFAULT_SEED})"
    )
    parser.add_argument(
        "--copy",
        action="store_true",
        help="copy images instead of absolute symbolic links (archives are always extracted)",
    )
    cli.add_overwrite_flag(parser)
    cli.add_quiet_flag(parser)
    return parser


def _print_counts(counts: dict, indent: str) -> None:
    for split, info in counts.items():
        print(
            f"{indent}{split:5s}: {info['images']:5d} images ({100 * info['fraction']:.1f}%), "
            f"{info['benign']} benign, {info['malignant']} malignant, {info['patients']} patients"
        )


def _warn(message: str) -> None:
    print(message if message.startswith("WARNING") else f"warning: {message}", file=sys.stderr)


def _main_folds(args: argparse.Namespace) -> int:
    result = prepare_folds(
        args.source,
        args.out,
        folds=args.folds,
        fold_files=args.fold_file,
        ratios=validate_ratios(args.ratios),
        seed=args.seed,
        magnifications=parse_magnifications(args.magnification),
        copy=args.copy,
        overwrite=args.overwrite,
        log=print,
        warn=_warn,
    )
    settings = result.settings
    kind = "patient-grouped" if args.folds is not None else "official"
    print(
        f"\nWrote {result.out}: {settings['folds']} {kind} folds of {settings['images']} images "
        f"({settings['patients']} patients) in {result.out / IMAGE_STORE}"
    )
    for name, counts in settings["counts"].items():
        print(f"  {name}")
        _print_counts(counts, "    ")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = cli.apply_quiet(build_parser().parse_args(argv))
    if args.split == SPLIT_FOLD and not args.fold_file:
        raise DataError("--split fold needs --fold-file FILE (an official dsfoldN.txt)")
    if args.folds is not None:
        if args.split == SPLIT_IMAGE:
            raise DataError(
                "--folds is patient-grouped cross-validation and cannot split by image; "
                "drop --split image (or drop --folds for the report's image split)"
            )
        if args.split == SPLIT_FOLD:
            raise DataError(
                "--split fold takes its folds from the fold files (one per --fold-file); "
                "drop --folds, or drop --split fold for patient-grouped folds"
            )
        if args.fold_file:
            raise DataError(
                "--fold-file goes with --split fold, not with --folds (which makes its own "
                "patient-grouped folds); drop one of them"
            )
        return _main_folds(args)
    if args.fold_file and len(args.fold_file) > 1:
        if args.split != SPLIT_FOLD:
            raise DataError(
                f"{len(args.fold_file)} --fold-file files need --split fold (one fold each); "
                "add --split fold"
            )
        return _main_folds(args)
    result = prepare_split(
        args.source,
        args.out,
        split=args.split,
        ratios=validate_ratios(args.ratios),
        seed=args.seed,
        magnifications=parse_magnifications(args.magnification),
        fold_file=args.fold_file[0] if args.fold_file else None,
        copy=args.copy,
        overwrite=args.overwrite,
        log=print,
        warn=_warn,
    )
    print(f"\nWrote {result.out} ({args.split} split, {len(result.records)} images)")
    _print_counts(result.settings["counts"], "  ")
    print()
    print(stats_report(result.records, per_split=True))
    return 0

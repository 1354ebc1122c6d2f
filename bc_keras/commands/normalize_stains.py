"""Write a stain-normalised copy of a prepared split (made by prepare_breakhis.py):
DIR/{train,val,test}/{benign,malignant}/*.png, split.csv and prepare.json as in SPLIT_DIR, plus
normalize.json with the method and the fitted target. Every image is mapped (Macenko or
Reinhard) to one target image, by default a fixed reference from the training split."""

from __future__ import annotations

import argparse
import os
import sys

from bc_keras import cli
from bc_keras.histology.stain import METHOD_MACENKO, NORMALIZATION_METHODS
from bc_keras.prepare.normalize import NORMALIZE_NAME, TARGET_RULE, normalize_split


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("split_dir", metavar="SPLIT_DIR", help="prepared split to normalise")
    parser.add_argument("--out", required=True, metavar="DIR", help="normalised folder to write")
    parser.add_argument(
        "--method",
        choices=NORMALIZATION_METHODS,
        default=METHOD_MACENKO,
        help="macenko: stain vectors and amounts (Macenko et al. 2009, default); reinhard: "
        "l-alpha-beta colour statistics (Reinhard et al. 2001)",
    )
    parser.add_argument(
        "--target",
        metavar="IMAGE",
        help=f"image whose staining the others are mapped to (default: {TARGET_RULE})",
    )
    cores = os.cpu_count() or 1
    parser.add_argument(
        "--workers",
        type=cli.positive_int,
        default=cores,
        metavar="N",
        help=f"worker processes (default: the number of CPU cores, {cores})",
    )
    cli.add_overwrite_flag(parser)
    cli.add_quiet_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = cli.apply_quiet(build_parser().parse_args(argv))
    settings = normalize_split(
        args.split_dir,
        args.out,
        args.method,
        args.target,
        args.workers,
        args.overwrite,
        tty=sys.stdout.isatty(),
    )
    print(f"\nWrote {args.out} ({settings['method']}, {settings['images']} images)")
    no_tissue = settings["no_tissue"]
    if no_tissue:
        kept = " (copied unchanged)" if settings["method"] == METHOD_MACENKO else ""
        print(f"{len(no_tissue)} image(s) without detectable tissue{kept}: see {NORMALIZE_NAME}")
    return 0

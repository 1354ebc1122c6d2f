"""Write DIR/BreaKHis_v1/histology_slides/breast/... with real folder and file naming, all 8
subtypes and 4 magnifications, filled with generated tissue-like PNGs that carry a learnable
benign/malignant signal. For the demo and the tests only: never a stand-in for real results."""

from __future__ import annotations

import argparse
import time

from bc_keras import cli
from bc_keras.errors import DataError
from bc_keras.histology.synthetic import (
    CLASS_BALANCE_BREAKHIS,
    CLASS_BALANCES,
    LAYOUT_BREAKHIS,
    LAYOUT_SMALL,
    write_synthetic_tree,
)
from bc_keras.histology.tissue import DEFAULT_SIZE, DIFFICULTIES, DIFFICULTY_HARD


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write into")
    parser.add_argument(
        "--layout",
        choices=(LAYOUT_SMALL, LAYOUT_BREAKHIS),
        default=LAYOUT_SMALL,
        help="small: N patients per subtype, M images per patient and magnification (default); "
        "breakhis: the official 82 patients and 7,909 images",
    )
    for flag, default, metavar, counted in (
        ("--patients-per-subtype", 3, "N", "patients per subtype"),
        ("--images-per-patient", 4, "M", "images per patient and magnification"),
    ):
        parser.add_argument(
            flag,
            type=cli.positive_int,
            default=default,
            metavar=metavar,
            help=f"{counted} for --layout small (default: {default})",
        )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=list(DEFAULT_SIZE),
        metavar=("W", "H"),
        help="image width and height in pixels (default: 700 460, as BreaKHis)",
    )
    parser.add_argument(
        "--difficulty",
        choices=DIFFICULTIES,
        default=DIFFICULTY_HARD,
        help="hard: both classes share stain, brightness and nuclear area, so only morphology "
        "(nuclear size variation, shape, crowding) tells them apart and mean colour is near "
        "chance (default); overlap: as hard, but the morphology follows a per-patient atypia "
        "whose benign and malignant distributions overlap (some benign patients look atypical, "
        "some carcinomas bland), so no model can be perfect; easy: malignant images are darker "
        "with more nuclei, so colour alone separates the classes",
    )
    parser.add_argument(
        "--class-balance",
        choices=CLASS_BALANCES,
        default=CLASS_BALANCE_BREAKHIS,
        help="for --layout small: breakhis gives benign patients about 46%% of M images, so "
        "about 31-33%% of images are benign as in BreaKHis (default); equal gives every patient "
        "M. --layout breakhis always has the official counts",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.size[0] < 1 or args.size[1] < 1:
        raise DataError(f"--size must be two positive integers W H; received {args.size}")
    start = time.time()
    paths = write_synthetic_tree(
        args.out,
        layout=args.layout,
        patients_per_subtype=args.patients_per_subtype,
        images_per_patient=args.images_per_patient,
        size=tuple(args.size),
        seed=args.seed,
        difficulty=args.difficulty,
        class_balance=args.class_balance,
        progress=lambda done, total: print(f"wrote {done}/{total} images"),
    )
    print(
        f"Wrote {len(paths)} synthetic images to {args.out}/BreaKHis_v1 in "
        f"{time.time() - start:.1f} s"
    )
    return 0

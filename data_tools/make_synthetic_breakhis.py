"""Write a synthetic BreaKHis_v1-shaped tree of generated H&E-like images (demo and tests only)."""

from __future__ import annotations

import argparse
import sys
import time

from bc_keras.synthetic import (
    CLASS_BALANCE_BREAKHIS,
    CLASS_BALANCES,
    DEFAULT_SIZE,
    DIFFICULTIES,
    DIFFICULTY_HARD,
    LAYOUT_BREAKHIS,
    LAYOUT_SMALL,
    write_synthetic_tree,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make_synthetic_breakhis.py",
        description=(
            "Write DIR/BreaKHis_v1/histology_slides/breast/... with real folder and file naming, "
            "all 8 subtypes and 4 magnifications, filled with generated tissue-like PNGs that "
            "carry a learnable benign/malignant signal. Never a stand-in for real results."
        ),
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write into")
    parser.add_argument(
        "--layout",
        choices=(LAYOUT_SMALL, LAYOUT_BREAKHIS),
        default=LAYOUT_SMALL,
        help="small: N patients per subtype, M images per patient and magnification (default); "
        "breakhis: the official 82 patients and 7,909 images",
    )
    parser.add_argument(
        "--patients-per-subtype",
        type=int,
        default=3,
        metavar="N",
        help="patients per subtype for --layout small (default: 3)",
    )
    parser.add_argument(
        "--images-per-patient",
        type=int,
        default=4,
        metavar="M",
        help="images per patient and magnification for --layout small (default: 4)",
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
        "chance (default); easy: malignant images are darker with more nuclei, so colour alone "
        "separates the classes",
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
    if args.patients_per_subtype < 1 or args.images_per_patient < 1:
        print(
            "error: --patients-per-subtype and --images-per-patient must be at least 1",
            file=sys.stderr,
        )
        return 2
    if args.size[0] < 1 or args.size[1] < 1:
        print(
            f"error: --size must be two positive integers W H; received {args.size}",
            file=sys.stderr,
        )
        return 2
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


if __name__ == "__main__":
    sys.exit(main())

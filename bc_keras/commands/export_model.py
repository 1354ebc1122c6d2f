"""Export a trained classifier for deployment: `.keras`, SavedModel or LiteRT (float32,
float16, int8), self-contained (uint8 images of any size in, probability out), and measure what
each export costs on a test split (`--check`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bc_keras import cli
from bc_keras.errors import RunError
from bc_keras.export import ALL_EXPORTS, FORMAT_ALL, FORMATS, QUANTIZATIONS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Export a classifier saved by train_cnn.py, train_transfer.py or "
        "train_simclr.py finetune|linear as a self-contained inference model: it takes uint8 "
        "RGB images of any size (one size per call) and returns the malignant probability, "
        "with the resize, preprocessing, stain normaliser and test-time augmentation of the "
        "model inside the graph, and the threshold, class names, input contract and model card "
        "in its metadata (and in DIR/export.json). Loaded with plain Keras, TensorFlow or "
        "LiteRT: no bc_keras needed at inference.",
        formatter_class=cli.HelpFormatter,
    )
    parser.add_argument(
        "model", help="a classifier .h5 (or .keras) saved by a bc_keras training script"
    )
    parser.add_argument("--out", required=True, help="the export folder (made; an earlier "
                        "export there is replaced, any other folder refused)")  # fmt: skip
    parser.add_argument(
        "--format",
        default="savedmodel",
        help=f"one of {', '.join(FORMATS)}, or '{FORMAT_ALL}': every format and quantisation, "
        "each in a subfolder of --out (default: %(default)s)",
    )
    parser.add_argument(
        "--quantize",
        default="none",
        help=f"LiteRT only: {', '.join(QUANTIZATIONS)} (int8: the network full-integer, "
        "calibrated on training images) (default: %(default)s)",
    )
    parser.add_argument(
        "--calibration",
        metavar="SPLIT",
        default=None,
        help="int8: a prepared split whose train/ images calibrate the ranges (default: the "
        "split the model was trained on, from its run folder)",
    )
    parser.add_argument("--calibration-images", type=cli.positive_int, default=100,
                        help="int8: how many calibration images (default: %(default)s)")  # fmt: skip
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average the 8 flips and 90-degree rotations in the graph (default: as the model "
        "was evaluated)",
    )
    parser.add_argument(
        "--max-side",
        type=cli.positive_int,
        default=2048,
        help="the longest image side the graph resizes exactly; a longer one gets a NaN "
        "probability (default: %(default)s)",
    )
    parser.add_argument(
        "--check",
        metavar="SPLIT",
        default=None,
        help="also score the export(s) against the Keras float32 model on this prepared "
        "split's test images (AUC, balanced accuracy, patient recognition rate with paired "
        "patient-bootstrap intervals of each difference, size, CPU latency at batch 1 and 32): "
        "writes DIR/check.json and DIR/check.md",
    )
    cli.add_quiet_flag(parser)
    return cli.apply_quiet(parser.parse_args(argv))


def main(argv=None) -> int:
    args = parse_args(argv)
    from bc_keras.export import formats

    if args.format not in (*FORMATS, FORMAT_ALL):
        raise RunError(
            f"unknown export format {args.format!r}; choose one of {', '.join(FORMATS)}, or "
            f"{FORMAT_ALL} (every format and quantisation)"
        )
    jobs = ALL_EXPORTS if args.format == FORMAT_ALL else ((args.format, args.quantize),)
    if args.format == FORMAT_ALL and args.quantize != "none":
        raise RunError("--format all writes every quantisation; drop --quantize")
    for fmt, quantize in jobs:
        formats.check_choices(fmt, quantize)
    if args.check and not Path(args.check).is_dir():
        raise RunError(f"--check {args.check} does not exist; pass a prepared split folder")
    from bc_keras.export.suite import export_jobs

    out = Path(args.out)
    folders = export_jobs(
        args.model, out, jobs, all_folder=args.format == FORMAT_ALL, calibration=args.calibration,
        tta=args.tta, max_side=args.max_side, calibration_count=args.calibration_images,
    )  # fmt: skip
    if args.check:
        from bc_keras.export.check import check_exports, check_markdown, write_check

        result = check_exports(args.model, folders, args.check)
        json_path, markdown_path = write_check(result, out)
        print(check_markdown(result))
        print(f"wrote {json_path} and {markdown_path}")
    return 0

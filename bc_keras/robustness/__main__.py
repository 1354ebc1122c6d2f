"""`python -m bc_keras.robustness MODEL.h5 [MODEL2.h5 ...] --data SPLIT [--out DIR]`: the
robustness benchmark of saved classifiers (see `bc_keras.robustness`).

The command line imports TensorFlow only once its arguments are valid, so `--help` and a
mistyped corruption name are instant.
"""

from __future__ import annotations

import argparse
import sys

from bc_keras import cli
from bc_keras.robustness.corruptions import (
    CORRUPTIONS,
    MAX_SEVERITY,
    PGD_STEP_SHARE,
    PGD_STEPS,
    check_corruption_names,
    check_severities,
)

DEFAULT_OUT = "robustness"


def _names(values) -> list[str]:
    """Names given as separate words, comma-separated, or both."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    lines = "\n".join(
        f"  {name:<17}{record.title}: {record.parameter} {', '.join(map(str, record.values))}"
        for name, record in CORRUPTIONS.items()
    )
    parser = argparse.ArgumentParser(
        prog="python -m bc_keras.robustness",
        description="How each classifier fails: AUC, balanced accuracy and the patient "
        "recognition rate on a prepared split's test images under graded corruptions, each at "
        f"severities 1-{MAX_SEVERITY} (0 is the clean test split, scored as the training run's "
        "test evaluation, so it equals its metrics.json). Images are corrupted at the model's "
        "input size after its resize; every draw is keyed by (seed, corruption, severity, "
        "image), so a result does not depend on the batch or on the other corruptions run. "
        f"FGSM and PGD ({PGD_STEPS} steps of {PGD_STEP_SHARE} x epsilon, random start) attack "
        "each model white-box through its own preprocessing, epsilon in grey levels of 0-255. "
        "Writes DIR/robustness.json, DIR/robustness.md (a table per score) and "
        "DIR/robustness_<corruption>.png (score against severity, one line per model).\n\n"
        f"corruptions (parameter at severities 1-{MAX_SEVERITY}):\n{lines}",
        formatter_class=cli.HelpFormatter,
    )
    parser.add_argument("models", nargs="+", metavar="MODEL.h5",
                        help="classifiers saved by train_cnn.py, train_transfer.py or "
                        "train_simclr.py finetune|linear (.h5 or .keras)")  # fmt: skip
    parser.add_argument("--data", required=True, metavar="SPLIT",
                        help="a prepared split (or its TFRecord folder) whose test/ images are "
                        "scored; for a model trained behind a stain normaliser, the normalised "
                        "split")  # fmt: skip
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help="the output folder: new, empty or an earlier benchmark (replaced); "
                        "it appears complete or not at all (default: %(default)s)")  # fmt: skip
    parser.add_argument("--corruptions", nargs="+", metavar="NAME",
                        help="which corruptions, by name (space- or comma-separated; default: "
                        "all)")  # fmt: skip
    parser.add_argument("--severities", nargs="+", metavar="S",
                        help=f"which severities, whole numbers 1-{MAX_SEVERITY} (default: all; "
                        "0, the clean split, is always scored)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0,
                        help="keys every random draw: noise, signs, cells, PGD's start "
                        "(a non-negative whole number; default: %(default)s)")  # fmt: skip
    parser.add_argument("--batch-size", type=cli.positive_int, default=None,
                        help="images per prediction batch (default: the one the model's run "
                        "used, from its config.json, else 32)")  # fmt: skip
    cli.add_quiet_flag(parser)
    return parser


def main(argv=None) -> int:
    """Checks the arguments, runs the benchmark and prints the markdown tables."""
    from bc_keras.errors import ConfigError

    args = cli.apply_quiet(build_parser().parse_args(argv))
    corruptions = check_corruption_names(_names(args.corruptions))
    severities = check_severities(_names(args.severities))
    if args.seed < 0:
        raise ConfigError(f"--seed {args.seed} is negative; use a whole number from 0")
    from bc_keras.robustness.benchmark import run_robustness
    from bc_keras.robustness.outputs import MARKDOWN_FILE, robustness_markdown

    result = run_robustness(args.models, args.data, args.out, corruptions, severities,
                            seed=args.seed, batch_size=args.batch_size)  # fmt: skip
    print(robustness_markdown(result))
    print(f"wrote {args.out}/robustness.json, {MARKDOWN_FILE} and "
          f"{len(result['corruptions'])} figure(s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_script(main, interrupted=cli.NOTHING_WRITTEN))

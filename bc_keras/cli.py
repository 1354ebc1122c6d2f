"""Helpers the train_*.py scripts share: common flags, seeding and user-facing errors.

Only the scripts call these; the rest of bc_keras takes explicit arguments.
"""

from __future__ import annotations

import argparse
import sys

from bc_keras.data import PIPELINE_TFDATA, PIPELINES


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default (the report's values) and keeps the description's line breaks."""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    model_out: str,
    epochs: int = 100,
    batch_size: int = 32,
    image_size: int = 224,
    with_pipeline: bool = True,
    with_evaluation: bool = True,
) -> None:
    """The flags every training script shares, with the report's values as defaults."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        required=True,
        help="a prepared split: DIR/{train,val,test}/{benign,malignant} from data_tools/prepare_breakhis.py",
    )
    if with_pipeline:
        data.add_argument(
            "--pipeline",
            choices=PIPELINES,
            default=PIPELINE_TFDATA,
            help="'generator' is the report's ImageDataGenerator; 'tfdata' gives the same tensors, faster",
        )
    data.add_argument(
        "--image-size", type=positive_int, default=image_size, help="input side in pixels"
    )
    data.add_argument(
        "--batch-size", type=positive_int, default=batch_size, help="images per batch"
    )
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=positive_int, default=epochs, help="maximum epochs")
    training.add_argument(
        "--seed", type=int, default=42, help="seeds Python, NumPy, TensorFlow and the data order"
    )
    training.add_argument(
        "--mixed-precision",
        action="store_true",
        help="mixed_float16 compute (GPUs with tensor cores); the sigmoid output stays float32",
    )
    training.add_argument(
        "--strategy",
        choices=("default", "mirrored"),
        default="default",
        help="tf.distribute strategy: 'mirrored' trains on all local GPUs",
    )
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument(
        "--run-dir",
        default=None,
        help="run folder for config, history, metrics, predictions and figures (default: runs/<experiment>/<timestamp>)",
    )
    outputs.add_argument(
        "--model-out", default=model_out, help="where the trained .h5 model is saved"
    )
    outputs.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from its last completed epoch (the --run-dir, or the newest interrupted run)",
    )
    if with_evaluation:
        evaluation = parser.add_argument_group("evaluation")
        evaluation.add_argument(
            "--threshold",
            type=float,
            default=0.5,
            help="probability at or above which an image is malignant",
        )
        evaluation.add_argument(
            "--tune-threshold",
            action="store_true",
            help="also report metrics at the threshold maximising Youden's J on the validation split",
        )


def set_seed(seed: int) -> None:
    """Seeds Python, NumPy and TensorFlow (op determinism is left off: it slows GPUs a lot)."""
    import keras

    keras.utils.set_random_seed(seed)


def run_script(main, argv=None) -> int:
    """Runs a script's `main`, turning user mistakes into one `error: ...` line (exit 2) and
    Ctrl-C into a hint on how to resume (exit 130)."""
    from bc_keras.data import DataError
    from bc_keras.models import ModelFileError
    from bc_keras.runs import RunError

    try:
        return main(argv) or 0
    except (DataError, ModelFileError, RunError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ninterrupted: the run folder keeps a backup; run the same command with --resume to continue",
            file=sys.stderr,
        )
        return 130


def config_from_args(config_class, args: argparse.Namespace, **values):
    """Builds a script's config dataclass: each field from `values` when given, else from the
    parsed flag of the same name (so the shared flags need no copying in every script)."""
    import dataclasses

    fields = {
        field.name: values[field.name] if field.name in values else getattr(args, field.name)
        for field in dataclasses.fields(config_class)
    }
    return config_class(**fields)

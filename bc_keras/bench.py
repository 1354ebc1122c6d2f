"""Benchmarks of the input pipelines, training, inference, the SimCLR step (SPEC 8) and the
exports (issue 20): `python -m bc_keras.bench pipeline|train|infer|simclr|export DIR ...`, one
JSON object printed last.

The command line only: it imports TensorFlow (`bc_keras.benchmarks`) after the quiet console
is set up, so the start-up logs stay filtered and `--help` is instant."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from bc_keras import cli
from bc_keras.config import BENCH_MODELS, MODEL_CNN, MODEL_RESNET18, WARMUP_STEPS, BenchSettings
from bc_keras.errors import ConfigError

# command -> (function in bc_keras.benchmarks, what it measures, default --model, its result line).
BENCHMARKS = {
    "train": (
        "benchmark_training",
        "images/s of model.fit through the augmented tf.data pipeline and on in-memory batches",
        MODEL_CNN,
        "training: tf.data pipeline {pipeline} img/s, in memory {in_memory} img/s, ratio "
        "{ratio_pipeline}; CPU ms/image {pipeline_cpu_ms} and {in_memory_cpu_ms}, ratio "
        "{ratio_pipeline_cpu}",
    ),
    "infer": (
        "benchmark_inference",
        "images/s of predict.py's path on image files and of model.predict on in-memory images",
        MODEL_CNN,
        "prediction: image files {files} img/s, in memory {in_memory} img/s, ratio {ratio}; CPU "
        "ms/image {files_cpu_ms} and {in_memory_cpu_ms}, ratio {ratio_cpu}; batch 1: "
        "{batch1_ms_files} ms per image file, {batch1_ms_in_memory} ms in memory",
    ),
    "simclr": (
        "benchmark_simclr",
        "pairs/s of the SimCLR contrastive step and images/s of a supervised step",
        MODEL_RESNET18,
        "supervised step {supervised} img/s, contrastive step {contrastive} pairs/s, ratio "
        "{ratio_step} (2: a pair costs two images); CPU ms {supervised_cpu_ms} per image and "
        "{contrastive_cpu_ms} per pair, ratio {ratio_step_cpu}",
    ),
}


def describe(command: str, result: dict) -> list[str]:
    """The human-readable lines printed before a benchmark's JSON."""
    flags = [name for name in ("mixed_precision", "jit_compile") if result[name]]
    untimed = "" if command == "infer" else f" (first {WARMUP_STEPS} untimed)"
    lines = [
        f"{result['model']} at {result['image_size']}px, batch {result['batch_size']}, "
        f"{result['repeats']} x {result['steps']} batches{untimed}, "
        f"{', '.join(flags) or 'float32, no XLA'}, {result['device']}",
        BENCHMARKS[command][3].format(**result),
    ]
    if result["mixed_precision"] and result["device"] == "CPU":
        lines.append("note: CPUs run float16 without hardware support: mixed precision is slower")
    return lines


def _run_pipeline(args, benchmarks) -> dict:
    if args.batches < 1 or args.batch_size < 1:
        raise ConfigError("--batches and --batch-size must be positive")
    names = ("batches", "batch_size", "image_size", "seed")
    result = benchmarks.benchmark_pipelines(
        args.dir, **{name: getattr(args, name) for name in names}
    )
    print(
        f"{result['images']} training images at {args.image_size}px, batch {args.batch_size}: "
        f"generator {result['generator']} img/s, tf.data first epoch "
        f"{result['tfdata_first_epoch']} img/s ({result['ratio_first']}x), cached epoch "
        f"{result['tfdata_cached_epoch']} img/s ({result['ratio_cached']}x)"
    )
    keys = ("generator", "tfdata_first_epoch", "tfdata_cached_epoch", "ratio_first", "ratio_cached")
    return {key: result[key] for key in keys}


def build_parser() -> argparse.ArgumentParser:
    """The command line: `pipeline`, `train`, `infer` and `simclr`, each on a prepared split."""
    parser = argparse.ArgumentParser(
        prog="python -m bc_keras.bench",
        description="Benchmarks of bc_keras. The last line printed is one JSON object.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("dir", help="a prepared split (from data_tools/prepare_breakhis.py)")
    common.add_argument("--batch-size", type=int, default=32, help="default: 32 (the report's)")
    common.add_argument("--image-size", type=int, default=224, help="default: 224 (the report's)")
    common.add_argument("--seed", type=int, default=42, help="default: 42")
    commands = parser.add_subparsers(dest="command", required=True)
    pipeline = commands.add_parser(
        "pipeline",
        parents=[common],
        help="images/s of the generator and tf.data pipelines on a prepared split's training data",
        description="Reads the training split with augmentation on, as training does, through "
        "ImageDataGenerator and through tf.data (first epoch and cached epoch), on the same files.",
    )
    pipeline.add_argument("--batches", type=int, default=20, help="batches per pass (default: 20)")
    for command, (_, summary, default_model, _) in BENCHMARKS.items():
        benchmark = commands.add_parser(
            command,
            parents=[common],
            help=summary,
            description=f"Measures {summary}, alternating the two --repeats times in one "
            "process; the rates are medians.",
        )
        models = [MODEL_RESNET18] if command == "simclr" else list(BENCH_MODELS)
        benchmark.add_argument("--model", choices=models, default=default_model)
        benchmark.add_argument(
            "--steps",
            type=int,
            default=BenchSettings.steps,
            help=f"batches per timed pass (default: {BenchSettings.steps}; train and simclr leave "
            f"the first {WARMUP_STEPS} of each untimed); needs steps x batch size images",
        )
        benchmark.add_argument("--repeats", type=int, default=3, help="passes of each (default: 3)")
        benchmark.add_argument("--mixed-precision", action="store_true", help="mixed_float16")
        benchmark.add_argument("--jit-compile", action="store_true", help="XLA-compiled steps")
    export = commands.add_parser(
        "export",
        parents=[common],
        help="latency and images/s of bc_keras' predictor vs each export (Keras, SavedModel, "
        "LiteRT float32/float16/int8)",
        description="Exports a model to every format (int8 calibrated on DIR's training "
        "images) and times bc_keras' predictor and each export, run as a service would, on "
        "DIR's uint8 test images at batch 1 and --batch-size, interleaved in --repeats rounds "
        "in one process (medians; ratios against the predictor).",
    )
    export.add_argument(
        "--model-file",
        default=None,
        help="a bc_keras .h5 or .keras classifier (default: --model built with random weights "
        "at --image-size)",
    )
    export.add_argument("--model", choices=list(BENCH_MODELS), default=MODEL_CNN,
                        help="the model built when no --model-file is given (default: cnn)")  # fmt: skip
    export.add_argument("--repeats", type=int, default=5, help="timed rounds (default: 5)")
    return parser


def _run_export(args) -> dict:
    import tempfile

    from bc_keras.export import bench

    if args.repeats < 1 or args.batch_size < 1:
        raise ConfigError("--repeats and --batch-size must be positive")
    with tempfile.TemporaryDirectory(prefix="bc_keras_bench_model_") as scratch:
        model_file = args.model_file
        if model_file is None:
            from bc_keras import benchmarks, models

            settings = BenchSettings(model=args.model, image_size=args.image_size, seed=args.seed)
            settings.check()
            model_file = Path(scratch) / f"{args.model}.h5"
            metadata = {"kind": "classifier", "image_size": args.image_size,
                        "preprocess": benchmarks.model_preprocess(args.model), "threshold": 0.5}  # fmt: skip
            models.save_model(benchmarks.build_classifier_model(settings), model_file, metadata)
        result = bench.benchmark_exports(
            model_file, args.dir, batch_size=args.batch_size, repeats=args.repeats
        )
    print("\n".join(bench.describe(result)))
    return result


def main(argv=None) -> int:
    """Runs one benchmark; a `UserError` propagates (`cli.run_script` prints it as one line)."""
    args = build_parser().parse_args(argv)
    from bc_keras import benchmarks  # TensorFlow: only once the arguments are valid

    if args.command == "pipeline":
        result = _run_pipeline(args, benchmarks)
    elif args.command == "export":
        result = _run_export(args)
    else:
        names = [field.name for field in fields(BenchSettings)]
        measure = getattr(benchmarks, BENCHMARKS[args.command][0])
        result = measure(args.dir, BenchSettings(**{name: getattr(args, name) for name in names}))
        print("\n".join(describe(args.command, result)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_script(main, interrupted="interrupted: nothing was measured"))

"""Benchmarks: `python -m bc_keras.bench pipeline DIR [--batches N]`."""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from bc_keras.data import (
    PipelineOptions,
    generator_from_files,
    list_split_files,
    tfdata_from_files,
)
from bc_keras.errors import UserError


def _images_per_second(batches, count_images) -> tuple[float, int]:
    start = time.perf_counter()
    images = 0
    for batch in batches:
        images += count_images(batch)
    elapsed = time.perf_counter() - start
    return images / elapsed, images


def benchmark_pipelines(
    split_dir, *, batches: int = 20, batch_size: int = 32, image_size: int = 224, seed: int = 42
) -> dict:
    """Times both pipelines on the same training files, with augmentation on, in one process.

    The tf.data pipeline caches only a fully read epoch, so both pipelines read the same
    `batches * batch_size` training files: one generator pass, a first tf.data epoch (decode,
    resize, fill the cache) and a second, cached tf.data epoch.

    Returns:
        Images per second of each and the ratios to the generator.
    """
    files = list_split_files(split_dir, "train")
    rng = np.random.default_rng(seed)
    count = min(len(files.paths), batches * batch_size)
    chosen = np.sort(rng.permutation(len(files.paths))[:count])
    paths = [files.paths[i] for i in chosen]
    labels = files.labels[chosen]
    options = PipelineOptions(
        image_size=image_size, batch_size=batch_size, augment=True, shuffle=True, seed=seed
    )

    generator = generator_from_files(paths, labels, options)
    steps = int(np.ceil(count / batch_size))
    generator_ips, _ = _images_per_second(
        (generator[i] for i in range(steps)), lambda batch: len(batch[1])
    )
    dataset = tfdata_from_files(paths, labels, options, cache=True)
    first_ips, _ = _images_per_second(dataset, lambda batch: int(batch[1].shape[0]))
    cached_ips, _ = _images_per_second(dataset, lambda batch: int(batch[1].shape[0]))
    return {
        "generator": round(generator_ips, 1),
        "tfdata_first_epoch": round(first_ips, 1),
        "tfdata_cached_epoch": round(cached_ips, 1),
        "ratio_first": round(first_ips / generator_ips, 2),
        "ratio_cached": round(cached_ips / generator_ips, 2),
        "images": count,
        "image_size": image_size,
        "batch_size": batch_size,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bc_keras.bench",
        description="Benchmarks of bc_keras. The last line printed is one JSON object.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    pipeline = commands.add_parser(
        "pipeline",
        help="images/s of the generator and tf.data pipelines on a prepared split's training data",
        description="Reads the training split with augmentation on, as training does, through "
        "ImageDataGenerator and through tf.data (first epoch and cached epoch), on the same files.",
    )
    pipeline.add_argument("dir", help="a prepared split (from data_tools/prepare_breakhis.py)")
    pipeline.add_argument("--batches", type=int, default=20, help="batches per pass (default: 20)")
    pipeline.add_argument("--batch-size", type=int, default=32, help="default: 32 (the report's)")
    pipeline.add_argument("--image-size", type=int, default=224, help="default: 224 (the report's)")
    pipeline.add_argument("--seed", type=int, default=42, help="default: 42")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.batch_size < 1:
        parser.error("--batches and --batch-size must be positive")
    try:
        result = benchmark_pipelines(
            args.dir,
            batches=args.batches,
            batch_size=args.batch_size,
            image_size=args.image_size,
            seed=args.seed,
        )
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{result['images']} training images at {args.image_size}px, batch {args.batch_size}: "
        f"generator {result['generator']} img/s, tf.data first epoch "
        f"{result['tfdata_first_epoch']} img/s ({result['ratio_first']}x), cached epoch "
        f"{result['tfdata_cached_epoch']} img/s ({result['ratio_cached']}x)"
    )
    keys = ("generator", "tfdata_first_epoch", "tfdata_cached_epoch", "ratio_first", "ratio_cached")
    print(json.dumps({key: result[key] for key in keys}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

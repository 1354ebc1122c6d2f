"""`python -m bc_keras.bench export` (issue 20 item 6): the latency and throughput of a bc_keras
model through bc_keras' own predictor and through each of its exports run as a service would
(plain Keras, TensorFlow's SavedModel loader, the LiteRT interpreter), all on the same uint8
test images of their own size, so every runner resizes and preprocesses inside.

The runners are timed interleaved in one process: each round times every runner once at batch
1 and once at the batch size, and the medians over the rounds are reported, so a ratio
compares runners under the same machine load (this machine's other work shifts all alike).
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bc_keras.errors import DataError
from bc_keras.export import ALL_EXPORTS, formats
from bc_keras.export.check import REFERENCE, export_name, file_size
from bc_keras.export.runtime import load_export

WARMUP_CALLS = 2


def benchmark_images(split_dir, batch_size: int) -> np.ndarray:
    """`batch_size` uint8 test images of the split's most common size (repeated in order if
    there are fewer), `[batch_size, h, w, 3]`."""
    from bc_keras.data.files import list_folder_files
    from bc_keras.histology.stain import read_rgb

    files = list_folder_files(split_dir, "test")
    images = [read_rgb(path) for path in files.paths]
    if not images:
        raise DataError(f"{split_dir} has no test images to time; pass a prepared split")
    shape, _ = Counter(image.shape for image in images).most_common(1)[0]
    same = [image for image in images if image.shape == shape]
    return np.stack([same[index % len(same)] for index in range(batch_size)])


def _timed(run, images) -> float:
    start = time.perf_counter()
    run(images)
    return time.perf_counter() - start


def benchmark_exports(
    model_path, split_dir, batch_size: int = 32, repeats: int = 5, variants=ALL_EXPORTS,
    log=print,
) -> dict:  # fmt: skip
    """Exports `model_path` once per variant (int8 calibrated on the split's training images)
    into a temporary folder and times bc_keras' predictor and each export (see the module
    docstring); returns the JSON-ready result, ratios against the predictor."""
    import bc_keras

    images = benchmark_images(split_dir, batch_size)
    predictor = bc_keras.load_model(model_path)
    runners = {REFERENCE: lambda batch: predictor.predict_proba(batch, batch_size=len(batch))}
    sizes = {REFERENCE: file_size(model_path)}
    with tempfile.TemporaryDirectory(prefix="bc_keras_bench_export_") as scratch:
        for fmt, quantize in variants:
            name = export_name({"format": fmt, "quantize": quantize})
            log(f"exporting {name} ...")
            folder = Path(scratch) / name.replace(" ", "_")
            calibration = split_dir if quantize == formats.QUANTIZE_INT8 else None
            formats.export_model(model_path, folder, fmt, quantize, calibration=calibration)
            runners[name] = load_export(folder)
            sizes[name] = file_size(folder / formats.MODEL_FILES[fmt])
        reference = np.asarray(runners[REFERENCE](images), dtype=np.float64)
        deviations = {}
        for name, run in runners.items():
            for _ in range(WARMUP_CALLS):
                run(images[:1])
                probabilities = np.asarray(run(images), dtype=np.float64)
            deviations[name] = float(np.max(np.abs(probabilities - reference)))
        log(f"timing {len(runners)} runners, {repeats} interleaved rounds ...")
        single = {name: [] for name in runners}
        batched = {name: [] for name in runners}
        for _ in range(repeats):
            for name, run in runners.items():
                single[name].append(_timed(run, images[:1]))
                batched[name].append(_timed(run, images))
    base_single = float(np.median(single[REFERENCE]))
    base_batched = float(np.median(batched[REFERENCE]))
    rows = []
    for name in runners:
        latency, batch_time = float(np.median(single[name])), float(np.median(batched[name]))
        rows.append(
            {
                "name": name,
                "size_bytes": sizes[name],
                # Sub-millisecond exports (LiteRT at 32 px): nanosecond digits keep the
                # ratios and throughput recomputable from the times to 1e-5.
                "latency_ms_batch1": round(latency * 1000.0, 6),
                f"ms_batch{batch_size}": round(batch_time * 1000.0, 6),
                "images_per_second": round(batch_size / batch_time, 2),
                "speedup_batch1": round(base_single / latency, 3),
                f"speedup_batch{batch_size}": round(base_batched / batch_time, 3),
                "max_abs_probability_difference": round(deviations[name], 6),
            }
        )
    return {
        "model": str(model_path),
        "split": str(split_dir),
        "image_shape": list(images.shape[1:]),
        "batch_size": batch_size,
        "repeats": repeats,
        "device": "CPU" if not _gpus() else f"{_gpus()} GPU",
        "reference": REFERENCE,
        "runners": rows,
    }


def _gpus() -> int:
    import tensorflow as tf

    return len(tf.config.list_logical_devices("GPU"))


def describe(result: dict) -> list[str]:
    """The human-readable lines printed before the JSON."""
    batch = result["batch_size"]
    lines = [
        f"{result['model']} on {result['image_shape'][1]}x{result['image_shape'][0]} px images, "
        f"batch 1 and {batch}, {result['repeats']} interleaved rounds, {result['device']}"
    ]
    for row in result["runners"]:
        lines.append(
            f"{row['name']:>20}: {row['size_bytes'] / 1e6:7.2f} MB, batch 1 "
            f"{row['latency_ms_batch1']:8.2f} ms ({row['speedup_batch1']:5.2f}x), batch {batch} "
            f"{row['images_per_second']:8.1f} img/s ({row[f'speedup_batch{batch}']:5.2f}x), max "
            f"|p - p_keras| {row['max_abs_probability_difference']:.2g}"
        )
    return lines

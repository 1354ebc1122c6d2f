"""Stain normalisation of a prepared split: every image mapped (Macenko or Reinhard) to one
target, written as a complete copy of the split (layout, split.csv, prepare.json) plus
normalize.json; parallel over processes, TensorFlow-free."""

from __future__ import annotations

import json
import shutil
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from bc_keras.console import Progress  # noqa: F401  (export_tfrecords uses it too)
from bc_keras.errors import DataError, one_line
from bc_keras.histology.breakhis import CLASS_NAMES
from bc_keras.histology.stain import (
    METHOD_MACENKO,
    file_tissue_brightness,
    make_normalizer,
    normalize_file,
    read_rgb,
)
from bc_keras.prepare.manifest import (
    MANIFEST_NAME,
    SETTINGS_NAME,
    manifest_path_of,
    write_manifest,
)
from bc_keras.prepare.output import split_records_and_out, staged_output
from bc_keras.prepare.split import SPLIT_NAMES

NORMALIZE_NAME = "normalize.json"
TRAIN_SPLIT = "train"
TARGET_RULE = (
    "the training image whose mean tissue grey level (pixels with optical density >= 0.15 in "
    "some channel) is closest to the median over the training images; ties go to the first in "
    "split.csv path order"
)


def run_tasks(executor, function, tasks: list[tuple], progress: Progress) -> list:
    """`function(*task)` for every task, in the executor (or here without one), in task order."""
    results = [None] * len(tasks)
    if executor is None:
        for index, task in enumerate(tasks):
            results[index] = function(*task)
            progress.update(index + 1)
        return results
    futures = {executor.submit(function, *task): index for index, task in enumerate(tasks)}
    for done, future in enumerate(as_completed(futures), start=1):
        results[futures[future]] = future.result()
        progress.update(done)
    return results


def choose_target(records, executor, log, tty):
    """The default target (see TARGET_RULE), from the training split only."""
    train = sorted((r for r in records if r.split == TRAIN_SPLIT), key=manifest_path_of)
    if not train:
        raise DataError("the split has no training image to choose a --target from; pass --target")
    progress = Progress("measuring tissue brightness:", len(train), log, tty)
    brightness = run_tasks(executor, file_tissue_brightness, [(r.source,) for r in train], progress)
    candidates = [(r, b) for r, b in zip(train, brightness, strict=True) if b is not None]
    if not candidates:
        raise DataError("no training image shows stained tissue; pass --target IMAGE")
    median = float(np.median([b for _, b in candidates]))
    record, value = min(candidates, key=lambda pair: abs(pair[1] - median))
    log(
        f"target: {manifest_path_of(record)} (tissue grey level {value:.1f}; training median "
        f"{median:.1f})"
    )
    return record, value, median


def fit_target(method, target, records, executor, log, tty):
    """The fitted normaliser, the target's path and how it was chosen."""
    if target is None:
        record, value, median = choose_target(records, executor, log, tty)
        target_path = Path(record.source)
        choice = {"rule": TARGET_RULE, "split_path": manifest_path_of(record)}
        choice.update(tissue_grey_level=value, training_median=median)
    else:
        target_path = Path(target)
        choice = {"rule": "given with --target"}
        held_out = {Path(r.source).resolve() for r in records if r.split != TRAIN_SPLIT}
        if target_path.resolve() in held_out:
            log("warning: --target is a val/test image, so held-out colours shape the training")
    try:
        target_image = read_rgb(target_path)
    except DataError as error:
        raise DataError(
            f"--target {target_path} cannot be read as an image ({one_line(error.__cause__)}); "
            "pass a PNG or JPEG showing stained tissue"
        ) from None
    return make_normalizer(method).fit(target_image), target_path, choice


def normalize_split(
    split_dir,
    out,
    method: str = METHOD_MACENKO,
    target=None,
    workers: int = 1,
    overwrite: bool = False,
    log=print,
    tty: bool = False,
) -> dict:
    """Writes the normalised copy of `split_dir` to `out`, built in a temporary folder beside
    `out` and renamed at the end (removed on any failure); returns what normalize.json holds."""
    split_dir, out = Path(split_dir), Path(out)
    if workers < 1:
        raise DataError(f"--workers must be at least 1 (got {workers})")
    records = split_records_and_out(split_dir, out, overwrite)
    executor = None
    try:
        with staged_output(out, log) as staging:
            if workers > 1:
                executor = ProcessPoolExecutor(
                    max_workers=min(workers, len(records)),
                    # Ctrl-C reaches the main process only, which cancels the rest and cleans up.
                    initializer=signal.signal,
                    initargs=(signal.SIGINT, signal.SIG_IGN),
                )
            normalizer, target_path, choice = fit_target(
                method, target, records, executor, log, tty
            )
            folders = {f"{split}/{label}" for split in SPLIT_NAMES for label in CLASS_NAMES}
            folders |= {str(Path(manifest_path_of(r)).parent) for r in records}
            for folder in folders:
                (staging / folder).mkdir(parents=True, exist_ok=True)
            tasks = [(normalizer, r.source, staging / manifest_path_of(r)) for r in records]
            no_tissue = run_tasks(
                executor, normalize_file, tasks, Progress("normalised", len(tasks), log, tty)
            )
            write_manifest(records, staging / MANIFEST_NAME)
            if (split_dir / SETTINGS_NAME).is_file():
                shutil.copyfile(split_dir / SETTINGS_NAME, staging / SETTINGS_NAME)
            settings = {
                "method": method,
                "target": str(target_path.absolute()),
                "target_choice": choice,
                "target_statistics": normalizer.target_statistics(),
                "source": str(split_dir.absolute()),
                "images": len(records),
                "no_tissue": [
                    manifest_path_of(r)
                    for r, empty in zip(records, no_tissue, strict=True)
                    if empty
                ],
            }
            (staging / NORMALIZE_NAME).write_text(json.dumps(settings, indent=2) + "\n")
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    return settings

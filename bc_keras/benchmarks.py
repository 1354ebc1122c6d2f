"""The measurements of `python -m bc_keras.bench` (SPEC 8): the input pipelines, training,
inference and the SimCLR step, each timed in one process."""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict

import keras
import numpy as np
import tensorflow as tf

from bc_keras.backbones import get_backbone
from bc_keras.config import (
    MODEL_CNN,
    MODEL_RESNET18,
    WARMUP_STEPS,
    BenchSettings,
)
from bc_keras.data import (
    DEFAULT_INTERPOLATION,
    PREPROCESS_RESCALE,
    SUBSET_TRAIN,
    SUBSETS,
    PipelineOptions,
    SplitFiles,
    files_dataset,
    list_split_files,
    simclr_dataset_from_files,
    tfdata_from_files,
)
from bc_keras.data.generator import generator_from_files
from bc_keras.errors import ConfigError, DataError, UserError, one_line
from bc_keras.evaluation.inference import predict_files
from bc_keras.models import build_baseline_cnn, compile_classifier, model_scope, simclr
from bc_keras.models.resnet import build_resnet18
from bc_keras.models.transfer import build_transfer_model

LEARNING_RATE = 1e-3
# Single-image predictions timed for the batch-1 latency (the median is reported).
LATENCY_REPEATS = 10
CONFUSION_COUNTS = ("tp", "fp", "tn", "fn")


def _images_per_second(batches, count_images) -> tuple[float, int]:
    start, images = time.perf_counter(), 0
    for batch in batches:
        images += count_images(batch)
    return images / (time.perf_counter() - start), images


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
    count = min(len(files.paths), batches * batch_size)
    chosen = np.sort(np.random.default_rng(seed).permutation(len(files.paths))[:count])
    paths, labels = [files.paths[i] for i in chosen], files.labels[chosen]
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


def _clock() -> np.ndarray:
    """Wall-clock seconds and this process's CPU seconds (all its threads) now."""
    return np.array([time.perf_counter(), time.process_time()])


class BatchTimer(keras.callbacks.Callback):
    """Records when every training batch ends. Not `async_safe`, so Keras calls it in step."""

    def on_train_begin(self, logs=None):
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(_clock())


def _timed_fit(model, dataset, steps: int, batch_size: int) -> tuple[tuple, dict]:
    """One fit of `steps` batches: `(images, [wall, cpu] seconds)` after the warm-up steps, and
    the epoch's logs."""
    timer = BatchTimer()
    history = model.fit(
        dataset, epochs=1, steps_per_epoch=steps, callbacks=[timer], shuffle=False, verbose=0
    )
    spent = timer.ends[-1] - timer.ends[WARMUP_STEPS - 1]
    logs = {name: values[-1] for name, values in history.history.items()}
    return ((steps - WARMUP_STEPS) * batch_size, spent), logs


def _choose_files(files, settings: BenchSettings, where: str):
    """`steps * batch_size` of `files` (paths, labels), drawn with the seed, in file order."""
    needed = settings.steps * settings.batch_size
    if len(files.paths) < needed:
        raise DataError(
            f"{where} holds {len(files.paths)} readable images, fewer than --steps "
            f"{settings.steps} x --batch-size {settings.batch_size} = {needed}; lower --steps or "
            "--batch-size, or prepare a bigger split"
        )
    chosen = np.sort(np.random.default_rng(settings.seed).permutation(len(files.paths))[:needed])
    return [files.paths[i] for i in chosen], np.asarray(files.labels)[chosen]


def model_preprocess(model: str) -> str:
    """The preprocessing training gives `model`: the backbone's own for transfer models."""
    return PREPROCESS_RESCALE if model in (MODEL_CNN, MODEL_RESNET18) else model


def _device() -> str:
    gpus = tf.config.list_logical_devices("GPU")
    return f"{len(gpus)} GPU" if gpus else "CPU"


@contextlib.contextmanager
def _precision_failures(settings: BenchSettings):
    """Turns a failure of --mixed-precision or --jit-compile on this device into one line."""
    chosen = {"--mixed-precision": settings.mixed_precision, "--jit-compile": settings.jit_compile}
    flags = [flag for flag, on in chosen.items() if on]
    try:
        yield
    except (tf.errors.OpError, NotImplementedError, TypeError, ValueError) as error:
        if not flags or isinstance(error, UserError):
            raise
        raise ConfigError(
            f"{' with '.join(flags)} failed on this {_device()} ({one_line(error)[:300]}); "
            f"run without {' and '.join(flags)}"
        ) from error


def build_classifier_model(settings: BenchSettings) -> keras.Model:
    """The classifier `--model` names, built and compiled as training does, with the settings'
    precision and XLA choices."""
    with model_scope(None, settings.mixed_precision):
        if settings.model == MODEL_CNN:
            model = build_baseline_cnn(settings.image_size)
        elif settings.model == MODEL_RESNET18:
            encoder = build_resnet18(settings.image_size)
            model = simclr.build_classifier(encoder, settings.image_size)
        else:
            # The narrowest width a backbone with a width multiplier has weights for.
            alpha = get_backbone(settings.model).smallest_alpha
            model = build_transfer_model(
                settings.model, settings.image_size, weights=None, alpha=alpha
            )
        return compile_classifier(model, LEARNING_RATE, jit_compile=settings.jit_compile)


def _stacked_batches(dataset, steps: int, batch_size: int) -> list[np.ndarray]:
    """The first `steps` batches of a dataset of tuples, stacked per component `[steps, b, ...]`."""
    batches = [[np.asarray(part) for part in batch] for batch in dataset.take(steps)]
    if len(batches) != steps or any(len(batch[0]) != batch_size for batch in batches):
        raise RuntimeError(f"expected {steps} full batches of {batch_size}")
    return [np.stack(parts) for parts in zip(*batches, strict=True)]


def _median_rates(runs: dict, ratio: str, counts: dict, settings: BenchSettings) -> dict:
    """From `(items, [wall, cpu] seconds)` runs of two measurements: the median rate (items/s)
    of each, `ratio` (the first over the second), the median process CPU milliseconds per item
    of each and their `ratio`_cpu (what `ratio` is when CPU time alone limits the rates, as on a
    machine busy with other work), then counts and settings."""
    result, cpu = {}, {}
    for name, done in runs.items():
        result[name] = round(statistics.median(items / wall for items, (wall, _) in done), 1)
        cpu[name] = round(statistics.median(1000 * used / items for items, (_, used) in done), 2)
    first, second = runs
    result[ratio] = round(result[first] / result[second], 2)
    result.update({f"{name}_cpu_ms": value for name, value in cpu.items()})
    result[f"{ratio}_cpu"] = round(cpu[second] / cpu[first], 2)
    return {**result, **counts, **asdict(settings), "device": _device()}


def benchmark_training(split_dir, settings: BenchSettings) -> dict:
    """Training images/s of `model.fit` through the real tf.data pipeline of the training split
    (augmented and shuffled as training is, its cache filled by a warm-up epoch) and on the same
    batches held in memory, alternating the two `settings.repeats` times.

    Returns:
        Median rates `pipeline` and `in_memory` (images/s), `ratio_pipeline`, their CPU costs
        (see `_median_rates`), the images each fed the timed fits (counted by the model's
        confusion-count metrics), the settings.
    """
    settings.check()
    paths, labels = _choose_files(list_split_files(split_dir, SUBSET_TRAIN), settings, "train/")
    options = PipelineOptions(
        image_size=settings.image_size,
        batch_size=settings.batch_size,
        augment=True,
        shuffle=True,
        seed=settings.seed,
        preprocess=model_preprocess(settings.model),
    )
    pipeline = tfdata_from_files(paths, labels, options, cache=True, epochs=None)
    steps, batch_size = settings.steps, settings.batch_size
    with _precision_failures(settings):
        model = build_classifier_model(settings)
        # Warm-up: decodes every file and fills the cache, and traces the step.
        model.fit(pipeline, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
    # The pipeline's first epoch, from its cache: what every timed pipeline fit sees.
    images, targets = _stacked_batches(pipeline, steps, batch_size)
    # Prefetched like the pipeline, so that neither input makes a step wait for a copy.
    in_memory = tf.data.Dataset.from_tensor_slices((images, targets)).repeat().prefetch(2)
    runs = {"pipeline": [], "in_memory": []}
    counts = {"pipeline_images": 0, "in_memory_images": 0}
    for _ in range(settings.repeats):
        for name, dataset in (("pipeline", pipeline), ("in_memory", in_memory)):
            run, logs = _timed_fit(model, dataset, steps, batch_size)
            runs[name].append(run)
            counts[f"{name}_images"] += int(round(sum(logs[key] for key in CONFUSION_COUNTS)))
    return _median_rates(runs, "ratio_pipeline", counts, settings)


def benchmark_inference(split_dir, settings: BenchSettings) -> dict:
    """Prediction images/s of predict.py's path on image files (`inference.predict_files`:
    check, decode, resize, predict; every pass decodes) and of `model.predict` on the same
    images held in memory, alternating; and the median milliseconds of one image at batch 1.

    Returns:
        Median rates `files` and `in_memory` (images/s), `ratio` (files / in-memory), their
        CPU costs (see `_median_rates`), the batch-1 latencies `batch1_ms_files` and `batch1_ms_in_memory`, the images predicted in
        the timed passes (counted from the predictions), the settings.
    """
    settings.check()
    files = [list_split_files(split_dir, subset) for subset in SUBSETS]
    pooled = SplitFiles(
        sum((f.paths for f in files), []), np.concatenate([f.labels for f in files])
    )
    paths, _ = _choose_files(pooled, settings, f"{split_dir} (train, val and test)")
    metadata = {
        "image_size": settings.image_size,
        "preprocess": model_preprocess(settings.model),
        "interpolation": DEFAULT_INTERPOLATION,
    }
    batch_size, warmup = settings.batch_size, WARMUP_STEPS * settings.batch_size
    # The model's inputs exactly as predict_files makes them.
    dataset = files_dataset(paths, batch_size=batch_size, **metadata)
    images = np.concatenate([np.asarray(batch) for batch, _ in dataset])
    with _precision_failures(settings):
        model = build_classifier_model(settings)
        model.predict(images[:warmup], batch_size=batch_size, verbose=0)
        predict_files(model, metadata, paths[:warmup], batch_size)
    runs = {"files": [], "in_memory": []}
    counts = {"files_images": 0, "in_memory_images": 0}
    for _ in range(settings.repeats):
        start = _clock()
        rows, _ = predict_files(model, metadata, paths, batch_size)
        runs["files"].append((len(rows), _clock() - start))
        counts["files_images"] += len(rows)
        start = _clock()
        outputs = model.predict(images, batch_size=batch_size, verbose=0)
        runs["in_memory"].append((len(outputs), _clock() - start))
        counts["in_memory_images"] += len(outputs)
    latencies = {"batch1_ms_files": [], "batch1_ms_in_memory": []}
    model.predict_on_batch(images[:1])
    predict_files(model, metadata, paths[:1], 1)
    for index in range(LATENCY_REPEATS):
        path, image = paths[index % len(paths)], images[index % len(images)][None]
        start = time.perf_counter()
        predict_files(model, metadata, [path], 1)
        latencies["batch1_ms_files"].append(1000 * (time.perf_counter() - start))
        start = time.perf_counter()
        model.predict_on_batch(image)
        latencies["batch1_ms_in_memory"].append(1000 * (time.perf_counter() - start))
    result = _median_rates(runs, "ratio", counts, settings)
    result.update({name: round(statistics.median(ms), 2) for name, ms in latencies.items()})
    return result


def benchmark_simclr(split_dir, settings: BenchSettings) -> dict:
    """Pairs/s of the SimCLR contrastive step (two views through the encoder and projection
    head, NT-Xent) and images/s of a supervised step (binary cross-entropy on a Dense(1) head)
    of the same encoder at the same per-view batch, both on batches held in memory.

    Returns:
        Median rates `contrastive` (pairs/s) and `supervised` (images/s), `ratio_step`
        (supervised / contrastive; 2 when a pair costs two images), their CPU costs (see
        `_median_rates`), the images and pairs of the timed fits (counted from the optimizers'
        steps), the settings.
    """
    settings.check()
    if settings.model != MODEL_RESNET18:
        raise ConfigError(f"simclr measures the resnet18 encoder, not --model {settings.model}")
    paths, labels = _choose_files(list_split_files(split_dir, SUBSET_TRAIN), settings, "train/")
    steps, batch_size = settings.steps, settings.batch_size
    views = simclr_dataset_from_files(
        paths, image_size=settings.image_size, batch_size=batch_size, shuffle=False, cache=False
    )
    views_a, views_b = _stacked_batches(views, steps, batch_size)
    targets = labels.astype(np.float32).reshape(steps, batch_size)
    data = {
        "contrastive": tf.data.Dataset.from_tensor_slices((views_a, views_b)).repeat().prefetch(2),
        "supervised": tf.data.Dataset.from_tensor_slices((views_a, targets)).repeat().prefetch(2),
    }
    with _precision_failures(settings), model_scope(None, settings.mixed_precision):
        encoder = build_resnet18(settings.image_size)
        trainer = simclr.build_simclr_trainer(
            encoder, learning_rate=LEARNING_RATE, jit_compile=settings.jit_compile
        )
        supervised = simclr.build_classifier(encoder, settings.image_size)
        supervised.compile(
            optimizer=keras.optimizers.Adam(LEARNING_RATE),
            loss=keras.losses.BinaryCrossentropy(),
            jit_compile=settings.jit_compile,
        )
        models = {"supervised": supervised, "contrastive": trainer}
        for name, model in models.items():
            model.fit(data[name], steps_per_epoch=WARMUP_STEPS + 1, shuffle=False, verbose=0)
    runs = {"supervised": [], "contrastive": []}
    counts = {"supervised_images": 0, "contrastive_pairs": 0}
    for _ in range(settings.repeats):
        for (name, model), count in zip(models.items(), counts, strict=True):
            before = int(model.optimizer.iterations.numpy())
            runs[name].append(_timed_fit(model, data[name], steps, batch_size)[0])
            counts[count] += (int(model.optimizer.iterations.numpy()) - before) * batch_size
    return _median_rates(runs, "ratio_step", counts, settings)

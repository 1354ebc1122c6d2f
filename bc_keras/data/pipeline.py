"""Input pipelines over a prepared split: the report's ImageDataGenerator and a tf.data twin.

Training data is a pure function of (seed, epoch, batch) in both pipelines: the shuffle order
of an epoch and every random transform are drawn from seeds built from those three numbers,
so a run resumed at epoch k sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from bc_keras.data.augment import (
    REPORT_AUGMENTATION,
    AffineAugmentation,
    SimCLRAugmentation,
    random_affine_warp,
    random_hed_perturbation,
    simclr_pair,
)
from bc_keras.histology.breakhis import CLASS_NAMES
from bc_keras.backbones import BACKBONES
from bc_keras.config import (
    MODEL_RESNET18,
    PIPELINE_GENERATOR,
    PIPELINE_TFDATA,
    PIPELINES,
    PREPROCESS_RESCALE,
)
from bc_keras.data.decode import DEFAULT_INTERPOLATION, INTERPOLATIONS, decode_and_resize
from bc_keras.errors import DataError
from bc_keras.histology.images import IMAGE_EXTENSIONS, check_images, describe_problems

# SimCLR's ResNet-18 has no ImageNet preprocessing of its own: rescale is used.
NO_PREPROCESS_MODELS = (MODEL_RESNET18,)
SUBSET_TRAIN, SUBSET_VAL, SUBSET_TEST = "train", "val", "test"
SUBSETS = (SUBSET_TRAIN, SUBSET_VAL, SUBSET_TEST)
# Epochs a repeating training stream can deliver (effectively endless).
ENDLESS = 1 << 40

__all__ = [
    "DEFAULT_INTERPOLATION",
    "PIPELINE_GENERATOR",
    "PIPELINE_TFDATA",
    "PIPELINES",
    "PREPROCESS_RESCALE",
]


@dataclass
class SplitFiles:
    """The readable images of one subset, in flow_from_directory's order, and what was skipped."""

    paths: list[str]
    labels: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    converted: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ImageDataset:
    """A batched dataset plus the files behind it, in the order they are yielded when unshuffled."""

    data: object  # tf.data.Dataset or a keras PyDataset over a Keras DirectoryIterator
    paths: list[str]
    labels: np.ndarray
    steps: int
    pipeline: str
    image_size: int
    preprocess: str
    # Where the images come from: figures decode some again (bc_keras.evaluation).
    source: str | None = None
    subset: str | None = None
    interpolation: str = DEFAULT_INTERPOLATION


def list_split_files(split_dir, subset: str, check: bool = True) -> SplitFiles:
    """Lists `split_dir/subset/{benign,malignant}` in the order flow_from_directory uses.

    Args:
        split_dir: a folder prepared by `data_tools/prepare_breakhis.py`, or its TFRecords.
        subset: "train", "val" or "test".
        check: verify every image and skip unreadable ones (with a warning).

    Raises:
        DataError: if the folder is not a prepared split or the subset holds no image.
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}. Received: subset={subset!r}")
    if records := _tfrecords_of(split_dir):  # a TFRecord folder: the names its shards hold
        return records.list_record_files(split_dir, subset)
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(
            f"Data folder {split_dir} does not exist; prepare one with "
            "`python data_tools/prepare_breakhis.py SOURCE --out DIR`."
        )
    subset_dir = split_dir / subset
    missing = [name for name in CLASS_NAMES if not (subset_dir / name).is_dir()]
    if missing:
        raise DataError(
            f"{split_dir} is not a prepared split: missing "
            f"{', '.join(str(subset_dir / m) for m in missing)}. Expected train/, val/ and test/, "
            "each with benign/ and malignant/ (made by `python data_tools/prepare_breakhis.py "
            "SOURCE --out DIR`)."
        )
    paths, labels = [], []
    for label, name in enumerate(CLASS_NAMES):
        for root, _, files in sorted(os.walk(subset_dir / name), key=lambda item: item[0]):
            for file_name in sorted(files):
                if file_name.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(root, file_name))
                    labels.append(label)
    skipped, converted = [], []
    if check:
        scan = check_images(paths)
        keep = set(scan.good)
        labels = [label for path, label in zip(paths, labels, strict=True) if path in keep]
        paths, skipped, converted = scan.good, scan.skipped, scan.converted
        for line in describe_problems(scan, str(subset_dir)):
            warnings.warn(line, stacklevel=2)
    if not paths:
        raise DataError(
            f"{subset_dir} holds no readable image (looked in benign/ and malignant/ for "
            f"{', '.join(IMAGE_EXTENSIONS)}); re-run prepare_breakhis.py or check the split ratios."
        )
    return SplitFiles(paths, np.asarray(labels, dtype=np.int32), skipped, converted)


def preprocess_function(preprocess: str):
    """The function mapping float pixels in [0, 255] to model inputs (None for rescale).

    Args:
        preprocess: "rescale" (the report: x / 255) or a backbone name whose
            `keras.applications` `preprocess_input` is used.
    """
    if preprocess == PREPROCESS_RESCALE or preprocess in NO_PREPROCESS_MODELS:
        return None
    if preprocess not in BACKBONES:
        raise ValueError(
            f"Unknown preprocessing; use {PREPROCESS_RESCALE!r} or one of "
            f"{sorted(BACKBONES)}. Received: preprocess={preprocess!r}"
        )
    module = getattr(keras.applications, BACKBONES[preprocess].preprocess_module)
    return module.preprocess_input


def apply_preprocess(images, preprocess: str):
    """Preprocesses a float batch in [0, 255] (tensor or array) for the model."""
    function = preprocess_function(preprocess)
    if function is None:
        return images * (1.0 / 255.0)
    return function(images)


def check_interpolation(interpolation: str) -> None:
    """Refuses an interpolation the pipelines cannot reproduce exactly."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"interpolation must be one of {INTERPOLATIONS}. Received: interpolation="
            f"{interpolation!r}"
        )


def decoded_dataset(paths, labels, image_size: int, interpolation: str, cache=True):
    """Parallel decode and resize (uint8, as PIL would) of `(path, label)` pairs, cached:
    True caches in memory, a path prefix on disk, False not at all."""
    check_interpolation(interpolation)
    dataset = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, np.float32)))
    dataset = dataset.map(
        lambda path, label: (decode_and_resize(path, image_size, interpolation), label),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if cache is True:
        return dataset.cache()
    return dataset.cache(str(cache)) if cache else dataset


def _epoch_seed(seed: int, epoch):
    return tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)


def _shuffled(data, count: int, seed):
    """`data` in an order drawn from the tensor `seed` alone.

    `Dataset.shuffle` pairs its seed with the global one (`tf.random.set_seed`), so the order
    would depend on it, and with global seed 0 a tensor seed fails to trace (`get_seed`
    compares it with 0 in Python). Clearing the seed of the graph being traced (the
    function `flat_map` builds) leaves `seed` the only source of the order.
    """
    graph = tf.compat.v1.get_default_graph()
    saved, graph.seed = graph.seed, None
    try:
        return data.shuffle(count, seed=seed, reshuffle_each_iteration=False)
    finally:
        graph.seed = saved


@dataclass(frozen=True)
class PipelineOptions:
    """How image files become model inputs, the same in both pipelines."""

    image_size: int = 224
    batch_size: int = 32
    augment: bool = False
    augmentation: AffineAugmentation = REPORT_AUGMENTATION
    stain_strength: float = 0.0
    preprocess: str = PREPROCESS_RESCALE
    shuffle: bool = False
    seed: int = 42
    interpolation: str = DEFAULT_INTERPOLATION
    start_epoch: int = 0


def tfdata_from_files(paths, labels, options: PipelineOptions, *, cache=True, epochs=1):
    """The fast pipeline: parallel decode -> cache of resized uint8 -> per epoch: shuffle ->
    batch -> one fused random affine warp (and H&E stain perturbation) per batch ->
    preprocess -> prefetch.

    Args:
        paths, labels: image files and their 0/1 labels.
        options: sizes, augmentation, preprocessing, seed; epoch e is shuffled and augmented
            from (seed, e), and the first epoch is `options.start_epoch` (a resumed run starts
            where it stopped).
        cache: True for memory, a file path prefix for a disk cache, False for none.
        epochs: how many epochs the dataset delivers back to back (None: endless, for `fit`
            with `steps_per_epoch`).

    Returns:
        A `tf.data.Dataset` of `(images float32 [b, size, size, 3], labels float32 [b])`.
    """
    decoded = decoded_dataset(paths, labels, options.image_size, options.interpolation, cache)
    return epochs_from_decoded(decoded, len(paths), options, epochs=epochs)


def epochs_from_decoded(decoded, count: int, options: PipelineOptions, *, epochs=1):
    """The per-epoch part of the tf.data pipeline on an already decoded (and cached) dataset of
    `count` `(uint8 image, label)` pairs, from image files or TFRecord shards alike: shuffle ->
    batch -> augment (one fused affine warp, and the stain perturbation, per batch) ->
    preprocess -> prefetch, every epoch a function of (seed, epoch, batch)."""
    function = preprocess_function(options.preprocess)
    seed, stain_strength = options.seed, options.stain_strength

    def to_inputs(images):
        images = tf.cast(images, tf.float32)
        return images * (1.0 / 255.0) if function is None else function(images)

    def augment_batch(index, batch, epoch_seed):
        images, batch_labels = batch
        # One stateless seed per batch keeps runs reproducible while every epoch sees new
        # warps. The warp runs on 0-255 floats, as the generator's does.
        batch_seed = tf.stack([epoch_seed, index])
        images = random_affine_warp(tf.cast(images, tf.float32), batch_seed, options.augmentation)
        if stain_strength > 0:
            stain_seed = tf.random.experimental.stateless_fold_in(batch_seed, 7)
            images = random_hed_perturbation(images, stain_seed, stain_strength)
        return to_inputs(images), batch_labels

    def one_epoch(epoch):
        epoch_seed = _epoch_seed(seed, epoch)
        data = decoded
        if options.shuffle:
            data = _shuffled(data, count, epoch_seed)
        data = data.batch(options.batch_size)
        if options.augment:
            return data.enumerate().map(
                lambda index, batch: augment_batch(index, batch, epoch_seed),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        return data.map(
            lambda images, y: (to_inputs(images), y), num_parallel_calls=tf.data.AUTOTUNE
        )

    first = options.start_epoch
    last = first + (ENDLESS if epochs is None else epochs)
    dataset = tf.data.Dataset.range(first, last).flat_map(one_epoch)
    if epochs is not None:
        # flat_map hides the length; Keras needs it to know where an epoch ends.
        batches = -(-count // options.batch_size) * epochs
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    return dataset.prefetch(tf.data.AUTOTUNE)


def files_dataset(
    paths, *, image_size: int, batch_size: int = 32, preprocess: str, interpolation: str
):
    """Un-augmented, unshuffled model inputs for image files (inference): a dataset of
    `(images, zeros)` batches in file order."""
    options = PipelineOptions(
        image_size=image_size,
        batch_size=batch_size,
        preprocess=preprocess,
        interpolation=interpolation,
    )
    return tfdata_from_files(paths, np.zeros(len(paths), np.float32), options, cache=False)


def build_dataset(
    split_dir,
    subset: str,
    *,
    pipeline: str = PIPELINE_TFDATA,
    image_size: int = 224,
    batch_size: int = 32,
    augment: bool | None = None,
    augmentation: AffineAugmentation = REPORT_AUGMENTATION,
    stain_strength: float = 0.0,
    preprocess: str = PREPROCESS_RESCALE,
    shuffle: bool | None = None,
    seed: int = 42,
    cache=True,
    interpolation: str = DEFAULT_INTERPOLATION,
    check: bool = True,
    files: SplitFiles | None = None,
    epochs: int | None = 1,
    start_epoch: int = 0,
) -> ImageDataset:
    """Builds the input pipeline for one subset of a prepared split.

    Labels are benign=0, malignant=1 in both pipelines. Augmentation and shuffling default to
    on for "train" only: validation and test data are never augmented (the report augmented
    validation too; SPEC deviation).

    Args:
        split_dir: folder with train/, val/, test/ each holding benign/ and malignant/, or
            a TFRecord folder of one (data_tools/export_tfrecords.py; "tfdata" only).
        subset: "train", "val" or "test".
        pipeline: "tfdata" (fast) or "generator" (the report's ImageDataGenerator).
        image_size: side of the square model input.
        batch_size: images per batch.
        augment: random rotation/shift/zoom/flip; default: subset == "train".
        stain_strength: H&E stain augmentation sigma when augmenting (0 = none).
        preprocess: "rescale" or a backbone name (its `preprocess_input`).
        shuffle: default: subset == "train".
        seed: seeds shuffling and augmentation.
        cache: tf.data only; True (memory), a file path prefix, or False.
        interpolation: PIL's resize filter ("nearest" is the report's).
        check: verify images first and skip unreadable ones with a warning.
        files: the subset's files when already listed (e.g. a label-fraction subset).
        epochs, start_epoch: tf.data only; see `tfdata_from_files` (the generator always
            delivers epochs for as long as it is asked).
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {PIPELINES}. Received: pipeline={pipeline!r}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels. Received: image_size={image_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive. Received: batch_size={batch_size}")
    preprocess_function(preprocess)  # validates the name early
    records = _tfrecords_of(split_dir)
    if records:
        records.check_pipeline(split_dir, pipeline)
    augment = subset == SUBSET_TRAIN if augment is None else augment
    shuffle = subset == SUBSET_TRAIN if shuffle is None else shuffle
    complete = files is None
    files = files or list_split_files(split_dir, subset, check=check)
    options = PipelineOptions(
        image_size=image_size,
        batch_size=batch_size,
        augment=augment,
        augmentation=augmentation,
        stain_strength=stain_strength,
        preprocess=preprocess,
        shuffle=shuffle,
        seed=seed,
        interpolation=interpolation,
        start_epoch=start_epoch,
    )
    if records:
        data = records.tfdata_from_records(
            split_dir, subset, files, options, cache=cache, epochs=epochs
        )
    elif pipeline == PIPELINE_TFDATA:
        data = tfdata_from_files(files.paths, files.labels, options, cache=cache, epochs=epochs)
    else:
        directory = Path(split_dir) / subset if complete and not files.skipped else None
        from bc_keras.data.generator import generator_from_files

        data = generator_from_files(files.paths, files.labels, options, directory=directory)
    steps = int(np.ceil(len(files.paths) / batch_size))
    return ImageDataset(
        data,
        files.paths,
        files.labels,
        steps,
        pipeline,
        image_size,
        preprocess,
        source=str(split_dir),
        subset=subset,
        interpolation=interpolation,
    )


def simclr_views(
    images,
    count: int,
    *,
    image_size: int = 224,
    batch_size: int = 96,
    augmentation: SimCLRAugmentation | None = None,
    shuffle: bool = True,
    seed: int = 42,
    drop_remainder: bool = True,
):
    """Two independent SimCLR views of every uint8 image of the dataset `images` (`count` of
    them), batched: `(views_a, views_b)` in [0, 1]. `drop_remainder` keeps every batch the same
    size, so the contrastive step compiles once."""
    augmentation = augmentation or SimCLRAugmentation()
    if shuffle:
        images = images.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    dataset = tf.data.Dataset.zip((images, seeds)).map(
        lambda image, view_seed: simclr_pair(image, view_seed, image_size, augmentation),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def simclr_dataset_from_files(paths, *, image_size: int = 224, cache=True, **options):
    """`simclr_views` of image files, decoded and resized once (bilinear, as PIL) and cached;
    views are cropped from that."""
    images = decoded_dataset(paths, np.zeros(len(paths)), image_size, "bilinear", cache)
    images = images.map(lambda image, _: image)
    return simclr_views(images, len(paths), image_size=image_size, **options)


def _tfrecords_of(split_dir):
    """`bc_keras.data.tfrecords` when `split_dir` is a TFRecord folder (see
    data_tools/export_tfrecords.py), else None."""
    from bc_keras.data import tfrecords  # it builds on this module

    return tfrecords if tfrecords.is_tfrecord_folder(split_dir) else None

"""The one dispatcher of the input pipelines: `build_dataset` picks tf.data, the report's
ImageDataGenerator or TFRecord shards for a subset of a prepared split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bc_keras.config import PIPELINE_TFDATA, PIPELINES, PREPROCESS_RESCALE
from bc_keras.data import generator, tfrecords
from bc_keras.data.augment import REPORT_AUGMENTATION, AffineAugmentation
from bc_keras.data.decode import DEFAULT_INTERPOLATION
from bc_keras.data.files import SUBSET_TRAIN, SUBSETS, ImageDataset, SplitFiles, list_folder_files
from bc_keras.data.pipeline import PipelineOptions, preprocess_function, tfdata_from_files


def list_split_files(split_dir, subset: str, check: bool = True) -> SplitFiles:
    """The readable images of one subset of a prepared split (see `list_folder_files`), or the
    names a TFRecord folder's shards hold."""
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}. Received: subset={subset!r}")
    if tfrecords.is_tfrecord_folder(split_dir):
        return tfrecords.list_record_files(split_dir, subset)
    return list_folder_files(split_dir, subset, check=check)


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
    randaugment: tuple[int, int] | None = None,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    class_weight: tuple[float, float] | None = None,
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
        randaugment, mixup_alpha, cutmix_alpha, class_weight: the training-data techniques
            (tf.data only; see `PipelineOptions`); a mixed stream with `class_weight` yields
            `(images, targets, per-image weights)`.
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {PIPELINES}. Received: pipeline={pipeline!r}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels. Received: image_size={image_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive. Received: batch_size={batch_size}")
    preprocess_function(preprocess)  # validates the name early
    records = tfrecords.is_tfrecord_folder(split_dir)
    if records:
        tfrecords.check_pipeline(split_dir, pipeline)
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
        randaugment=randaugment,
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        class_weight=class_weight,
    )
    if records:
        data = tfrecords.tfdata_from_records(
            split_dir, subset, files, options, cache=cache, epochs=epochs
        )
    elif pipeline == PIPELINE_TFDATA:
        data = tfdata_from_files(files.paths, files.labels, options, cache=cache, epochs=epochs)
    else:
        directory = Path(split_dir) / subset if complete and not files.skipped else None
        data = generator.generator_from_files(files.paths, files.labels, options, directory=directory)
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

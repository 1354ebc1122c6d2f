"""Input pipelines over a prepared split: the report's ImageDataGenerator and a tf.data twin."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from bc_keras.augment import (
    REPORT_AUGMENTATION,
    AffineAugmentation,
    SimCLRAugmentation,
    random_affine_warp,
    simclr_pair,
)
from bc_keras.breakhis import CLASS_NAMES
from bc_keras.errors import DataError
from bc_keras.images import IMAGE_EXTENSIONS, check_images, describe_problems

PIPELINE_GENERATOR = "generator"
PIPELINE_TFDATA = "tfdata"
PIPELINES = (PIPELINE_GENERATOR, PIPELINE_TFDATA)
PREPROCESS_RESCALE = "rescale"
# Backbone name -> module of keras.applications whose preprocess_input it uses.
BACKBONE_PREPROCESS_MODULES = {
    "resnet50": "resnet50",
    "vgg16": "vgg16",
    "mobilenet": "mobilenet",
    "resnet18": None,  # no ImageNet preprocessing of its own: rescale is used
}
SUBSET_TRAIN, SUBSET_VAL, SUBSET_TEST = "train", "val", "test"
SUBSETS = (SUBSET_TRAIN, SUBSET_VAL, SUBSET_TEST)
# flow_from_directory's default resize, and so the report's.
DEFAULT_INTERPOLATION = "nearest"


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

    data: object  # tf.data.Dataset or a Keras DirectoryIterator
    paths: list[str]
    labels: np.ndarray
    steps: int
    pipeline: str
    image_size: int
    preprocess: str


def list_split_files(split_dir, subset: str, check: bool = True) -> SplitFiles:
    """Lists `split_dir/subset/{benign,malignant}` in the order flow_from_directory uses.

    Args:
        split_dir: a folder prepared by `data_tools/prepare_breakhis.py`.
        subset: "train", "val" or "test".
        check: verify every image and skip unreadable ones (with a warning).

    Raises:
        DataError: if the folder is not a prepared split or the subset holds no image.
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}. Received: subset={subset!r}")
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
            f"{split_dir} is not a prepared split: missing {', '.join(str(subset_dir / m) for m in missing)}. "
            "Expected train/, val/ and test/, each with benign/ and malignant/ "
            "(made by `python data_tools/prepare_breakhis.py SOURCE --out DIR`)."
        )
    paths, labels = [], []
    for label, name in enumerate(CLASS_NAMES):
        class_dir = subset_dir / name
        for root, _, files in sorted(os.walk(class_dir), key=lambda item: item[0]):
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
    """The function mapping float pixels in [0, 255] to model inputs.

    Args:
        preprocess: "rescale" (the report: x / 255) or a backbone name whose
            `keras.applications` `preprocess_input` is used.
    """
    if preprocess == PREPROCESS_RESCALE or BACKBONE_PREPROCESS_MODULES.get(preprocess, "") is None:
        return None
    if preprocess not in BACKBONE_PREPROCESS_MODULES:
        raise ValueError(
            f"Unknown preprocessing; use {PREPROCESS_RESCALE!r} or one of "
            f"{sorted(BACKBONE_PREPROCESS_MODULES)}. Received: preprocess={preprocess!r}"
        )
    import keras

    module = getattr(keras.applications, BACKBONE_PREPROCESS_MODULES[preprocess])
    return module.preprocess_input


def apply_preprocess(images, preprocess: str):
    """Preprocesses a float batch in [0, 255] (tensor or array) for the model."""
    function = preprocess_function(preprocess)
    if function is None:
        return images * (1.0 / 255.0)
    return function(images)


def resize_nearest_like_pil(image, image_size: int):
    """Nearest-neighbour resize that picks the same pixels as PIL (and so as `load_img`).

    PIL walks the output with a float64 running sum, source = int(0.5 * s + i * s) accumulated
    one step at a time (s = in / out); a cumulative sum on the CPU reproduces those roundings,
    where `tf.image.resize` (float32) lands on the other side of exact boundaries, e.g. when
    upsampling 32 -> 48 px.
    """
    shape = tf.shape(image)

    def indices(source_size):
        scale = tf.cast(source_size, tf.float64) / float(image_size)
        steps = tf.concat([[0.5 * scale], tf.fill([image_size - 1], scale)], axis=0)
        positions = tf.math.cumsum(steps)
        return tf.minimum(tf.cast(tf.floor(positions), tf.int32), source_size - 1)

    rows = tf.gather(image, indices(shape[0]), axis=0)
    return tf.gather(rows, indices(shape[1]), axis=1)


def decode_and_resize(path, image_size: int, interpolation: str = DEFAULT_INTERPOLATION):
    """Reads an image file into a `[size, size, 3]` tensor (uint8 for "nearest")."""
    raw = tf.io.read_file(path)
    image = tf.io.decode_image(raw, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    if interpolation == "nearest":
        return resize_nearest_like_pil(image, image_size)
    resized = tf.image.resize(image, (image_size, image_size), method=interpolation)
    if resized.dtype != tf.uint8:
        # Round like PIL does, so the cache keeps uint8 for every interpolation.
        resized = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    return resized


def _decoded_dataset(paths, labels, image_size, interpolation, cache):
    dataset = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, np.float32)))
    dataset = dataset.map(
        lambda path, label: (decode_and_resize(path, image_size, interpolation), label),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if cache is True:
        dataset = dataset.cache()
    elif cache:
        dataset = dataset.cache(str(cache))
    return dataset


def tfdata_from_files(
    paths,
    labels,
    *,
    image_size: int = 224,
    batch_size: int = 32,
    augment: bool = False,
    augmentation: AffineAugmentation = REPORT_AUGMENTATION,
    preprocess: str = PREPROCESS_RESCALE,
    shuffle: bool = False,
    seed: int = 42,
    cache=True,
    interpolation: str = DEFAULT_INTERPOLATION,
):
    """The fast pipeline: parallel decode -> cache of resized uint8 -> shuffle -> batch ->
    one fused random affine warp per batch -> preprocess -> prefetch.

    Args:
        paths, labels: image files and their 0/1 labels.
        cache: True for memory, a file path prefix for a disk cache, False for none.

    Returns:
        A `tf.data.Dataset` of `(images float32 [b, size, size, 3], labels float32 [b])`.
    """
    dataset = _decoded_dataset(paths, labels, image_size, interpolation, cache)
    if shuffle:
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    function = preprocess_function(preprocess)

    def to_inputs(images):
        images = tf.cast(images, tf.float32)
        return images * (1.0 / 255.0) if function is None else function(images)

    if augment:
        # One stateless seed per batch, drawn afresh each epoch, keeps runs reproducible while
        # every epoch sees new warps. The warp runs on 0-255 floats, as the generator's does.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

        def augment_batch(batch, batch_seed):
            images, labels = batch
            warped = random_affine_warp(tf.cast(images, tf.float32), batch_seed, augmentation)
            return to_inputs(warped), labels

        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            augment_batch, num_parallel_calls=tf.data.AUTOTUNE
        )
    else:
        dataset = dataset.map(
            lambda images, labels: (to_inputs(images), labels),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def generator_from_files(
    paths,
    labels,
    *,
    image_size: int = 224,
    batch_size: int = 32,
    augment: bool = False,
    augmentation: AffineAugmentation = REPORT_AUGMENTATION,
    preprocess: str = PREPROCESS_RESCALE,
    shuffle: bool = False,
    seed: int = 42,
    interpolation: str = DEFAULT_INTERPOLATION,
    directory=None,
):
    """The report's pipeline: `ImageDataGenerator` with `flow_from_directory` (when `directory`
    is given and every file in it is readable) or, for an explicit file list,
    `flow_from_dataframe` with the same generator."""
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    function = preprocess_function(preprocess)
    options = augmentation.generator_kwargs() if augment else {}
    if function is None:
        generator = ImageDataGenerator(rescale=1.0 / 255.0, **options)
    else:
        generator = ImageDataGenerator(preprocessing_function=function, **options)
    flow_options = dict(
        target_size=(image_size, image_size),
        batch_size=batch_size,
        class_mode="binary",
        shuffle=shuffle,
        seed=seed,
        interpolation=interpolation,
    )
    if directory is not None:
        return generator.flow_from_directory(
            str(directory), classes=list(CLASS_NAMES), **flow_options
        )
    import pandas as pd

    frame = pd.DataFrame(
        {"filename": list(paths), "class": [CLASS_NAMES[int(label)] for label in labels]}
    )
    return generator.flow_from_dataframe(
        frame,
        x_col="filename",
        y_col="class",
        classes=list(CLASS_NAMES),
        validate_filenames=False,
        **flow_options,
    )


def build_dataset(
    split_dir,
    subset: str,
    *,
    pipeline: str = PIPELINE_TFDATA,
    image_size: int = 224,
    batch_size: int = 32,
    augment: bool | None = None,
    augmentation: AffineAugmentation = REPORT_AUGMENTATION,
    preprocess: str = PREPROCESS_RESCALE,
    shuffle: bool | None = None,
    seed: int = 42,
    cache=True,
    interpolation: str = DEFAULT_INTERPOLATION,
    check: bool = True,
) -> ImageDataset:
    """Builds the input pipeline for one subset of a prepared split.

    Labels are benign=0, malignant=1 in both pipelines. Augmentation and shuffling default to
    on for "train" only: validation and test data are never augmented (the report augmented
    validation too; SPEC deviation).

    Args:
        split_dir: folder with train/, val/, test/ each holding benign/ and malignant/.
        subset: "train", "val" or "test".
        pipeline: "tfdata" (fast) or "generator" (the report's ImageDataGenerator).
        image_size: side of the square model input.
        batch_size: images per batch.
        augment: random rotation/shift/zoom/flip; default: subset == "train".
        preprocess: "rescale" or a backbone name (its `preprocess_input`).
        shuffle: default: subset == "train".
        seed: seeds shuffling and augmentation.
        cache: tf.data only; True (memory), a file path prefix, or False.
        check: verify images first and skip unreadable ones with a warning.
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {PIPELINES}. Received: pipeline={pipeline!r}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels. Received: image_size={image_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive. Received: batch_size={batch_size}")
    preprocess_function(preprocess)  # validates the name early
    augment = subset == SUBSET_TRAIN if augment is None else augment
    shuffle = subset == SUBSET_TRAIN if shuffle is None else shuffle
    files = list_split_files(split_dir, subset, check=check)
    options = dict(
        image_size=image_size,
        batch_size=batch_size,
        augment=augment,
        augmentation=augmentation,
        preprocess=preprocess,
        shuffle=shuffle,
        seed=seed,
        interpolation=interpolation,
    )
    if pipeline == PIPELINE_TFDATA:
        data = tfdata_from_files(files.paths, files.labels, cache=cache, **options)
    else:
        directory = Path(split_dir) / subset if not files.skipped else None
        data = generator_from_files(files.paths, files.labels, directory=directory, **options)
    steps = int(np.ceil(len(files.paths) / batch_size))
    return ImageDataset(data, files.paths, files.labels, steps, pipeline, image_size, preprocess)


def simclr_dataset_from_files(
    paths,
    *,
    image_size: int = 224,
    batch_size: int = 96,
    augmentation: SimCLRAugmentation | None = None,
    shuffle: bool = True,
    seed: int = 42,
    cache=True,
    drop_remainder: bool = True,
):
    """Two independent SimCLR views of every image, batched: `(views_a, views_b)` in [0, 1].

    Images are decoded and resized once (bilinear) and cached; views are cropped from that.
    `drop_remainder` keeps every batch the same size, so the contrastive step compiles once.
    """
    augmentation = augmentation or SimCLRAugmentation()
    dataset = tf.data.Dataset.from_tensor_slices(list(paths))
    dataset = dataset.map(
        lambda path: decode_and_resize(path, image_size, "bilinear"),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if cache is True:
        dataset = dataset.cache()
    elif cache:
        dataset = dataset.cache(str(cache))
    if shuffle:
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    dataset = tf.data.Dataset.zip((dataset, seeds)).map(
        lambda image, view_seed: simclr_pair(image, view_seed, image_size, augmentation),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)

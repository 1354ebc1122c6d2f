"""Input pipelines over a prepared split: the report's ImageDataGenerator and a tf.data twin.

Training data is a pure function of (seed, epoch, batch) in both pipelines: the shuffle order
of an epoch and every random transform are drawn from seeds built from those three numbers,
so a run resumed at epoch k sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from bc_keras.backbones import BACKBONES
from bc_keras.config import (
    MODEL_RESNET18,
    PIPELINE_GENERATOR,
    PIPELINE_TFDATA,
    PIPELINES,
    PREPROCESS_RESCALE,
)
from bc_keras.data.augment import (
    REPORT_AUGMENTATION,
    AffineAugmentation,
    SimCLRAugmentation,
    random_affine_warp,
    random_hed_perturbation,
    simclr_pair,
)
from bc_keras.data.decode import DEFAULT_INTERPOLATION, INTERPOLATIONS, decode_and_resize
from bc_keras.data.mixing import check_alpha, mix_batch
from bc_keras.data.randaugment import check_randaugment, randaugment

# SimCLR's ResNet-18 has no ImageNet preprocessing of its own: rescale is used.
NO_PREPROCESS_MODELS = (MODEL_RESNET18,)
# Epochs a repeating training stream can deliver (effectively endless).
ENDLESS = 1 << 40

__all__ = [
    "DEFAULT_INTERPOLATION",
    "PIPELINE_GENERATOR",
    "PIPELINE_TFDATA",
    "PIPELINES",
    "PREPROCESS_RESCALE",
]


def keep_pixels(images):
    """The own preprocessing of a backbone that preprocesses inside the model (MobileNetV3,
    EfficientNet, see `Backbone.includes_preprocessing`): float pixels in [0, 255] as they are."""
    return images


def preprocess_function(preprocess: str):
    """The function mapping float pixels in [0, 255] to model inputs (None for rescale).

    Args:
        preprocess: "rescale" (the report: x / 255, whatever the model; a backbone that
            preprocesses inside then gets [0, 1] where it expects [0, 255]) or a backbone
            name: its `keras.applications` `preprocess_input`, or `keep_pixels` for a backbone
            that preprocesses inside the model.
    """
    if preprocess == PREPROCESS_RESCALE or preprocess in NO_PREPROCESS_MODELS:
        return None
    if preprocess not in BACKBONES:
        raise ValueError(
            f"Unknown preprocessing; use {PREPROCESS_RESCALE!r} or one of "
            f"{sorted(BACKBONES)}. Received: preprocess={preprocess!r}"
        )
    record = BACKBONES[preprocess]
    if record.includes_preprocessing:
        return keep_pixels
    return getattr(keras.applications, record.preprocess_module).preprocess_input


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


def shuffled(data, count: int, seed):
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
    # The training-data techniques of issue 22 (tf.data only; off by default). `randaugment`
    # is (N, M); `class_weight` the (benign, malignant) weights a mixed batch carries as
    # per-image weights (Keras' class_weight would round a mixed label to one class).
    randaugment: tuple[int, int] | None = None
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    class_weight: tuple[float, float] | None = None

    def __post_init__(self):
        check_alpha(self.mixup_alpha, "mixup_alpha")
        check_alpha(self.cutmix_alpha, "cutmix_alpha")
        if self.randaugment is not None:
            check_randaugment(*self.randaugment)

    @property
    def mixing(self) -> bool:
        """Whether training batches are mixed (MixUp and/or CutMix)."""
        return bool(self.mixup_alpha or self.cutmix_alpha)

    def techniques(self) -> list[str]:
        """The flags of the issue-22 techniques these options use (for refusals)."""
        used = [("--randaugment", self.randaugment is not None)]
        used += [("--mixup", bool(self.mixup_alpha)), ("--cutmix", bool(self.cutmix_alpha))]
        return [flag for flag, on in used if on]


def technique_options(config, class_weight: dict | None = None) -> dict:
    """The `build_dataset` keywords of a classifier config's training-data techniques
    (`--randaugment`, `--mixup`, `--cutmix`); a mixed stream carries the Keras `class_weight`
    ({0: benign, 1: malignant}) as per-image weights, so `fit` must then get none."""
    mixing = bool(config.mixup or config.cutmix)
    return {
        "randaugment": tuple(config.randaugment) if config.randaugment else None,
        "mixup_alpha": float(config.mixup),
        "cutmix_alpha": float(config.cutmix),
        "class_weight": (class_weight[0], class_weight[1]) if mixing and class_weight else None,
    }


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
    RandAugment -> MixUp / CutMix -> preprocess -> prefetch, every epoch a function of
    (seed, epoch, batch). A mixed stream with `options.class_weight` yields
    `(images, targets, weights)`."""
    function = preprocess_function(options.preprocess)
    seed, stain_strength = options.seed, options.stain_strength
    transformed = options.augment or options.randaugment is not None or options.mixing

    def to_inputs(images):
        images = tf.cast(images, tf.float32)
        return images * (1.0 / 255.0) if function is None else function(images)

    def augment_batch(index, batch, epoch_seed):
        images, batch_labels = batch
        # One stateless seed per batch keeps runs reproducible while every epoch sees new
        # warps. The warp runs on 0-255 floats, as the generator's does.
        batch_seed = tf.stack([epoch_seed, index])
        images = tf.cast(images, tf.float32)
        if options.augment:
            images = random_affine_warp(images, batch_seed, options.augmentation)
        if options.augment and stain_strength > 0:
            stain_seed = tf.random.experimental.stateless_fold_in(batch_seed, 7)
            images = random_hed_perturbation(images, stain_seed, stain_strength)
        # The warp's output has a dynamic shape; RandAugment and CutMix need the static one.
        images = tf.ensure_shape(images, [None, options.image_size, options.image_size, 3])
        if options.randaugment is not None:
            augment_seed = tf.random.experimental.stateless_fold_in(batch_seed, 11)
            images = randaugment(images, augment_seed, *options.randaugment)
        if not options.mixing:
            return to_inputs(images), batch_labels
        # Mixing pixels commutes with every preprocessing here (per-channel affine maps).
        mixed = mix_batch(
            images,
            batch_labels,
            tf.random.experimental.stateless_fold_in(batch_seed, 13),
            mixup_alpha=options.mixup_alpha,
            cutmix_alpha=options.cutmix_alpha,
            class_weight=options.class_weight,
        )
        if mixed.weights is None:
            return to_inputs(mixed.images), mixed.labels
        return to_inputs(mixed.images), mixed.labels, mixed.weights

    def one_epoch(epoch):
        epoch_seed = _epoch_seed(seed, epoch)
        data = decoded
        if options.shuffle:
            data = shuffled(data, count, epoch_seed)
        data = data.batch(options.batch_size)
        if transformed:
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

"""ResNet-18 (He et al., 2016) as a functional Keras encoder: basic blocks 2-2-2-2, 512-d output."""

from __future__ import annotations

from collections.abc import Sequence

import keras

ENCODER_NAME = "resnet18_encoder"
EMBEDDING_DIM = 512
# (filters, first stride, blocks) of the four stages.
RESNET18_STAGES = ((64, 1, 2), (128, 2, 2), (256, 2, 2), (512, 2, 2))
# torchvision's BatchNorm settings, so a converted ImageNet checkpoint behaves the same.
BATCH_NORM_EPSILON = 1e-5
BATCH_NORM_MOMENTUM = 0.9
# Below this the stem (stride 4) and three strided stages leave no pixel to pool.
MIN_IMAGE_SIZE = 32
INPUT_NORMALIZATION_NAME = "input_normalization"


def _per_channel(value, name: str):
    """A float, or a list of 3 floats (one per RGB channel), for a `Rescaling` layer."""
    if isinstance(value, int | float):
        return float(value)
    values = [float(v) for v in value]
    if len(values) != 3:
        raise ValueError(f"{name} must be a number or 3 numbers (RGB). Received: {name}={value}")
    return values


def _batch_norm(name: str, synchronized: bool = False):
    return keras.layers.BatchNormalization(
        epsilon=BATCH_NORM_EPSILON,
        momentum=BATCH_NORM_MOMENTUM,
        synchronized=synchronized,
        name=name,
    )


def apply_basic_block(
    x,
    filters: int,
    stride: int = 1,
    name: str = "block",
    synchronized_batch_norm: bool = False,
):
    """The ResNet basic block: two 3x3 convolutions with BatchNorm, plus a shortcut.

    The shortcut is the identity when the shape is unchanged, else a 1x1 strided convolution
    with BatchNorm (the paper's projection shortcut, option B).

    Args:
        x: input tensor `[batch, height, width, channels]`.
        filters: output channels of both convolutions.
        stride: stride of the first convolution (2 halves the resolution).
        name: prefix of the block's layer names.
        synchronized_batch_norm: normalise with the statistics of the global batch, all
            replicas together, under a distribution strategy (see `build_resnet18`).

    Returns:
        The block's output tensor.
    """
    if filters < 1:
        raise ValueError(f"filters must be positive. Received: filters={filters}")
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2. Received: stride={stride}")
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(
            filters, 1, strides=stride, use_bias=False, name=f"{name}_projection_conv"
        )(x)
        shortcut = _batch_norm(f"{name}_projection_bn", synchronized_batch_norm)(shortcut)
    if stride != 1:
        # Explicit symmetric padding, as torchvision pads, instead of TF's asymmetric "same".
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_conv1_pad")(x)
        x = keras.layers.Conv2D(filters, 3, strides=stride, use_bias=False, name=f"{name}_conv1")(x)
    else:
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    x = _batch_norm(f"{name}_bn1", synchronized_batch_norm)(x)
    x = keras.layers.ReLU(name=f"{name}_relu1")(x)
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(x)
    x = _batch_norm(f"{name}_bn2", synchronized_batch_norm)(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def build_resnet18(
    image_size: int = 224,
    name: str = ENCODER_NAME,
    synchronized_batch_norm: bool = False,
    input_scale: float | Sequence[float] | None = None,
    input_offset: float | Sequence[float] | None = None,
) -> keras.Model:
    """ResNet-18 without its classifier: the SimCLR encoder.

    Stem: 7x7/2 convolution (64) -> BatchNorm -> ReLU -> 3x3/2 max pooling; then four stages of
    two basic blocks with 64, 128, 256 and 512 filters (stages 2-4 start with stride 2); then
    global average pooling to a 512-d embedding.

    Args:
        image_size: side of the square RGB input, at least 32.
        name: the model's name.
        synchronized_batch_norm: under a distribution strategy with several replicas, every
            BatchNorm normalises with the mean and variance of the global batch instead of each
            replica's share of it, as SimCLR's global BN does: the two views of an image share
            a replica, so local statistics let the contrastive loss find a positive by how its
            batch was normalised rather than by its content (Chen et al., 2020, section 2.2).
            Without a strategy, or with one replica, it normalises as the plain layer does, up
            to rounding (it takes the variance as E[x^2] - E[x]^2). Saved encoders keep the
            setting and load with a plain `keras.models.load_model`.
        input_scale, input_offset: when either is given, the images are first mapped to
            `images * input_scale + input_offset` (per channel for sequences of 3) by a Keras
            `Rescaling` layer named "input_normalization": the normalisation ImageNet weights
            were trained with (`bc_keras.models.pretrained`). None of them: no such layer, the
            encoder of a random start.

    Returns:
        A functional `keras.Model` mapping `[batch, image_size, image_size, 3]` to `[batch, 512]`.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be at least {MIN_IMAGE_SIZE} for ResNet-18 (it downsamples 32x). "
            f"Received: image_size={image_size}"
        )
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    if input_scale is not None or input_offset is not None:
        x = keras.layers.Rescaling(
            _per_channel(1.0 if input_scale is None else input_scale, "input_scale"),
            _per_channel(0.0 if input_offset is None else input_offset, "input_offset"),
            name=INPUT_NORMALIZATION_NAME,
        )(x)
    x = keras.layers.ZeroPadding2D(3, name="stem_conv_pad")(x)
    x = keras.layers.Conv2D(64, 7, strides=2, use_bias=False, name="stem_conv")(x)
    x = _batch_norm("stem_bn", synchronized_batch_norm)(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    for stage, (filters, stride, blocks) in enumerate(RESNET18_STAGES, start=2):
        for block in range(blocks):
            x = apply_basic_block(
                x,
                filters,
                stride=stride if block == 0 else 1,
                name=f"stage{stage}_block{block + 1}",
                synchronized_batch_norm=synchronized_batch_norm,
            )
    # float32 embeddings under mixed precision too (as every bc_keras model outputs).
    outputs = keras.layers.GlobalAveragePooling2D(name="average_pool", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)

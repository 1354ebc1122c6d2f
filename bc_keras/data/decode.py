"""Decoding and resizing image files in TensorFlow exactly as PIL (and so Keras' `load_img`,
the report's pipeline) does, so both pipelines give identical tensors."""

from __future__ import annotations

import math

import tensorflow as tf

# flow_from_directory's default resize, and so the report's.
DEFAULT_INTERPOLATION = "nearest"
# PIL's fixed-point precision for 8-bit resampling (Resample.c: 32 - 8 - 2 bits).
_PRECISION_BITS = 22


def _box(x):
    return tf.cast((x > -0.5) & (x <= 0.5), tf.float64)


def _bilinear(x):
    x = tf.abs(x)
    return tf.where(x < 1.0, 1.0 - x, tf.zeros_like(x))


def _bicubic(x, a=-0.5):
    x = tf.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))


def _sinc(x):
    safe = tf.where(x == 0.0, tf.ones_like(x), x) * math.pi
    return tf.where(x == 0.0, tf.ones_like(x), tf.sin(safe) / safe)


def _lanczos(x):
    return tf.where((x > -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3.0), tf.zeros_like(x))


# Keras' interpolation names -> (PIL filter, its support), as in PIL's Resample.c. Hamming is
# left out: its transcendental weights round differently from PIL's in rare pixels.
_FILTERS = {
    "box": (_box, 0.5),
    "bilinear": (_bilinear, 1.0),
    "bicubic": (_bicubic, 2.0),
    "lanczos": (_lanczos, 3.0),
}
INTERPOLATIONS = ("nearest", *_FILTERS)


def _pil_coefficients(in_size, out_size: int, interpolation: str):
    """PIL's `precompute_coeffs` + `normalize_coeffs_8bpc`: for each output pixel, the first
    input index and the fixed-point weights of its window, `([out], [out, taps])` float64."""
    filter_function, filter_support = _FILTERS[interpolation]
    in_float = tf.cast(in_size, tf.float64)
    scale = in_float / float(out_size)
    filter_scale = tf.maximum(scale, 1.0)
    support = filter_support * filter_scale
    taps = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
    center = (tf.range(out_size, dtype=tf.float64) + 0.5) * scale
    first = tf.maximum(tf.floor(center - support + 0.5), 0.0)
    last = tf.minimum(tf.floor(center + support + 0.5), in_float)
    positions = first[:, None] + tf.range(tf.cast(taps, tf.float64), dtype=tf.float64)[None, :]
    weights = filter_function((positions - center[:, None] + 0.5) / filter_scale)
    weights = tf.where(positions < last[:, None], weights, tf.zeros_like(weights))
    total = tf.reduce_sum(weights, axis=1, keepdims=True)
    weights = tf.where(total != 0.0, weights / tf.where(total != 0.0, total, 1.0), weights)
    scaled = weights * float(1 << _PRECISION_BITS)
    # C's (int) cast truncates toward zero.
    fixed = tf.where(scaled < 0, tf.math.ceil(-0.5 + scaled), tf.floor(0.5 + scaled))
    return tf.cast(first, tf.int32), fixed


def _resample_axis(image, out_size: int, interpolation: str, axis: int):
    """One pass of PIL's two-pass resampling along `axis` (0 rows, 1 columns) of an int32
    `[h, w, c]` image of 8-bit values, in PIL's own int32 fixed-point arithmetic (so exact,
    and about twice as fast as float64); returns the rounded, clipped 8-bit values (int32)."""
    in_size = tf.shape(image)[axis]
    first, weights = _pil_coefficients(in_size, out_size, interpolation)
    weights = tf.cast(weights, tf.int32)
    taps = tf.shape(weights)[1]
    indices = tf.minimum(first[:, None] + tf.range(taps)[None, :], in_size - 1)
    # axis 0: [out, taps, w, c]; axis 1: [h, out, taps, c]
    gathered = tf.gather(image, indices, axis=axis)
    if axis == 0:
        total = tf.reduce_sum(gathered * weights[:, :, None, None], axis=1)
    else:
        total = tf.reduce_sum(gathered * weights[None, :, :, None], axis=2)
    # PIL's clip8: add half, shift right (arithmetic, as C does on int), clip to 0..255.
    rounded = tf.bitwise.right_shift(total + (1 << (_PRECISION_BITS - 1)), _PRECISION_BITS)
    return tf.clip_by_value(rounded, 0, 255)


def resize_like_pil(image, image_size: int, interpolation: str):
    """Resizes a uint8 `[h, w, 3]` image to `[size, size, 3]` uint8 exactly as PIL's
    `Image.resize` does for 8-bit RGB: two passes in PIL's fixed-point arithmetic (exact in
    int32, as Resample.c) with rounding to 8 bits in between, in the order Pillow chooses."""
    if interpolation == "nearest":
        return resize_nearest_like_pil(image, image_size)
    if interpolation not in _FILTERS:
        raise ValueError(
            f"interpolation must be one of {INTERPOLATIONS}. Received: interpolation="
            f"{interpolation!r}"
        )
    pixels = tf.cast(image, tf.int32)
    shape = tf.shape(pixels)

    def resample(pixels, axis):
        return tf.cond(
            shape[axis] != image_size,
            lambda: _resample_axis(pixels, image_size, interpolation, axis),
            lambda: pixels,
        )

    # Pillow runs the vertical pass first when it removes more than twice as many rows as the
    # horizontal pass removes columns (found by comparing both orders with Image.resize).
    vertical_first = tf.maximum(shape[0] - image_size, 0) > 2 * tf.maximum(shape[1] - image_size, 0)
    pixels = tf.cond(
        vertical_first,
        lambda: resample(resample(pixels, 0), 1),
        lambda: resample(resample(pixels, 1), 0),
    )
    return tf.cast(tf.reshape(pixels, (image_size, image_size, 3)), tf.uint8)


def resize_nearest_like_pil(image, image_size: int):
    """Nearest-neighbour resize that picks the same pixels as PIL.

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
    """Reads an image file into a uint8 `[size, size, 3]` tensor, converting grayscale,
    palette and RGBA images to RGB as PIL's `convert("RGB")` does (alpha dropped)."""
    return decode_bytes_and_resize(tf.io.read_file(path), image_size, interpolation)


def decode_bytes_and_resize(raw, image_size: int, interpolation: str = DEFAULT_INTERPOLATION):
    """`decode_and_resize` on an encoded image already in memory (e.g. a TFRecord's bytes):
    the same pixels as decoding the file they came from."""
    image = tf.io.decode_image(raw, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return resize_like_pil(image, image_size, interpolation)

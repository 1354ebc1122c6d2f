"""PIL's resize written in `keras.ops`, for exported graphs: the pixels `Image.resize` (and so
the training pipelines, `bc_keras.data.decode`) gives, for a batch of uint8 images of any size,
built from Keras operations only so that a functional model holding it saves as a plain `.keras`
file and converts to LiteRT.

`bc_keras.data.decode.resize_like_pil` is the training pipeline's version (TensorFlow ops on one
image, a window as wide as the scale needs). Here the window has a fixed number of taps, bounded
by the largest input side the export accepts (`max_side`), so that every shape but the input's
is static: what LiteRT wants, and what lets the graph be traced once for every input size. The
arithmetic is PIL's: float64 coefficients rounded to 22-bit fixed point, int32 accumulation,
rounding to 8 bits between the two passes, the pass order Pillow chooses. With `dtype="float32"`
(LiteRT has no float64) a coefficient can round one unit of 2^-22 differently, which moves a
pixel by one grey level in rare cases. Nearest's source indices are a running float64 sum in
PIL, which float32 misses by a whole pixel at many sizes (up to 114 grey levels seen): with
float32 they are looked up in a table made with float64 when the graph is built, one row per
input side up to `max_side` (int16, 2 x max_side x size bytes).
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

from bc_keras.data.decode import INTERPOLATIONS

# PIL's fixed-point precision for 8-bit resampling (Resample.c: 32 - 8 - 2 bits).
PRECISION_BITS = 22
# Keras' interpolation names -> PIL's filter support (Resample.c).
FILTER_SUPPORT = {"box": 0.5, "bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}
# The default bound on the input side of an exported graph (BreaKHis images are 700 x 460).
DEFAULT_MAX_SIDE = 2048


def _filter(name: str, x):
    if name == "box":
        return ops.cast(ops.logical_and(x > -0.5, x <= 0.5), x.dtype)
    x_abs = ops.abs(x)
    zero = ops.zeros_like(x)
    if name == "bilinear":
        return ops.where(x_abs < 1.0, 1.0 - x_abs, zero)
    if name == "bicubic":
        a = -0.5
        near = ((a + 2.0) * x_abs - (a + 3.0)) * x_abs * x_abs + 1.0
        far = (((x_abs - 5.0) * x_abs + 8.0) * x_abs - 4.0) * a
        return ops.where(x_abs < 1.0, near, ops.where(x_abs < 2.0, far, zero))

    # lanczos: sinc(x) sinc(x / 3) on (-3, 3)
    def sinc(value):
        # ops.equal: a symbolic KerasTensor's == is identity, not a comparison.
        zero = ops.equal(value, 0.0)
        safe = ops.where(zero, ops.ones_like(value), value) * math.pi
        return ops.where(zero, ops.ones_like(value), ops.sin(safe) / safe)

    return ops.where(ops.logical_and(x > -3.0, x < 3.0), sinc(x) * sinc(x / 3.0), zero)


def taps_for(interpolation: str, size: int, max_side: int) -> int:
    """The window width that covers every input side up to `max_side` (PIL: 2 ceil(support) + 1)."""
    scale = max(max_side / size, 1.0)
    return int(math.ceil(FILTER_SUPPORT[interpolation] * scale)) * 2 + 1


def _side(images, axis: int, dtype: str):
    """The input's side along `axis` as a scalar tensor of `dtype` (the graph's shapes are
    dynamic, so it is counted rather than read)."""
    line = images[:1, :, :1, :1] if axis == 1 else images[:1, :1, :, :1]
    return ops.reshape(ops.sum(ops.ones_like(ops.cast(line, dtype))), ())


def _nearest_indices(in_size, size: int, dtype: str):
    """PIL's nearest source indices: a running sum of in / out from half a step (float64 in
    PIL; `dtype` here)."""
    scale = in_size / float(size)
    steps = ops.concatenate(
        [ops.reshape(0.5 * scale, (1,)), ops.ones((size - 1,), dtype=dtype) * scale], axis=0
    )
    positions = ops.floor(ops.cumsum(steps))
    return ops.cast(ops.minimum(positions, in_size - 1.0), "int32")


def nearest_table(size: int, max_side: int) -> np.ndarray:
    """PIL's nearest source indices for every input side 1..max_side, `[max_side, size]`
    (int16): row n - 1 is side n's, the running float64 sum of n / size from half a step
    (Pillow's ImagingScaleAffine), clamped to the image."""
    sides = np.arange(1, max_side + 1, dtype=np.float64)[:, None]
    scale = sides / float(size)
    steps = np.concatenate([0.5 * scale, np.repeat(scale, size - 1, axis=1)], axis=1)
    positions = np.floor(np.cumsum(steps, axis=1))
    return np.minimum(positions, sides - 1.0).astype(np.int16)


def _nearest_lookup(in_size, size: int, max_side: int):
    """The nearest indices of a side from `nearest_table` (exact whatever the float width)."""
    row = ops.cast(ops.minimum(in_size, float(max_side)), "int32") - 1
    return ops.cast(ops.take(nearest_table(size, max_side), row, axis=0), "int32")


def _window(in_size, size: int, interpolation: str, taps: int, dtype: str):
    """For each output pixel: the input indices of its window `[size, taps]` (int32, clamped)
    and their fixed-point weights `[size, taps]` (int32), as PIL's precompute_coeffs and
    normalize_coeffs_8bpc compute them."""
    support_1 = FILTER_SUPPORT[interpolation]
    scale = in_size / float(size)
    filter_scale = ops.maximum(scale, 1.0)
    support = support_1 * filter_scale
    center = (ops.arange(size, dtype=dtype) + 0.5) * scale
    first = ops.maximum(ops.floor(center - support + 0.5), 0.0)
    last = ops.minimum(ops.floor(center + support + 0.5), in_size)
    positions = first[:, None] + ops.arange(taps, dtype=dtype)[None, :]
    weights = _filter(interpolation, (positions - center[:, None] + 0.5) / filter_scale)
    weights = ops.where(positions < last[:, None], weights, ops.zeros_like(weights))
    total = ops.sum(weights, axis=1, keepdims=True)
    nonzero = ops.not_equal(total, 0.0)
    weights = ops.where(nonzero, weights / ops.where(nonzero, total, ops.ones_like(total)), weights)
    # 2^22 as 2^11 * 2^11: a float16 LiteRT export stores float constants in float16, whose
    # largest value is 65504.
    half_bits = float(1 << (PRECISION_BITS // 2))
    scaled = weights * half_bits * half_bits
    # C's (int) cast truncates toward zero.
    fixed = ops.where(scaled < 0, ops.ceil(-0.5 + scaled), ops.floor(0.5 + scaled))
    indices = ops.cast(ops.minimum(positions, in_size - 1.0), "int32")
    return indices, ops.cast(fixed, "int32")


def _resample(pixels, in_size, size: int, interpolation: str, axis: int, taps: int, dtype: str):
    """One pass along `axis` (1 rows, 2 columns) of int32 `[n, h, w, c]` 8-bit values: one
    gather per tap (static shapes but the input's, which LiteRT and a traced graph want)."""
    indices, weights = _window(in_size, size, interpolation, taps, dtype)
    shape = (1, size, 1, 1) if axis == 1 else (1, 1, size, 1)
    total = None
    for tap in range(taps):
        term = ops.take(pixels, indices[:, tap], axis=axis) * ops.reshape(weights[:, tap], shape)
        total = term if total is None else total + term
    # PIL's clip8: add half, shift right (a floor division, also for negative totals), clip.
    half = 1 << (PRECISION_BITS - 1)
    return ops.clip(ops.floor_divide(total + half, 1 << PRECISION_BITS), 0, 255)


def pil_resize(
    images, size: int, interpolation: str, max_side: int = DEFAULT_MAX_SIDE, dtype: str = "float64"
):
    """uint8 `[n, h, w, 3]` images (any h, w up to `max_side`) -> uint8 `[n, size, size, 3]`,
    the pixels PIL's `Image.resize((size, size), filter)` gives each image."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"interpolation must be one of {INTERPOLATIONS}. Received: interpolation="
            f"{interpolation!r}"
        )
    height, width = _side(images, 1, dtype), _side(images, 2, dtype)
    if interpolation == "nearest":
        if dtype == "float64":
            row_indices = _nearest_indices(height, size, dtype)
            column_indices = _nearest_indices(width, size, dtype)
        else:
            row_indices = _nearest_lookup(height, size, max_side)
            column_indices = _nearest_lookup(width, size, max_side)
        rows = ops.take(images, row_indices, axis=1)
        return ops.take(rows, column_indices, axis=2)
    taps = taps_for(interpolation, size, max_side)
    pixels = ops.cast(images, "int32")

    def rows(x, in_size):
        return _resample(x, in_size, size, interpolation, 1, taps, dtype)

    def columns(x, in_size):
        return _resample(x, in_size, size, interpolation, 2, taps, dtype)

    vertical_first = rows(pixels, height)
    vertical_first = columns(vertical_first, width)
    horizontal_first = columns(pixels, width)
    horizontal_first = rows(horizontal_first, height)
    # Pillow runs the vertical pass first when it removes more than twice as many rows as the
    # horizontal pass removes columns.
    removed_rows = ops.maximum(height - size, 0.0)
    removed_columns = ops.maximum(width - size, 0.0)
    choose_vertical = removed_rows > 2.0 * removed_columns
    return ops.cast(ops.where(choose_vertical, vertical_first, horizontal_first), "uint8")

"""Stain normalisation in TensorFlow ops, for exported graphs: the `transform` of a fitted
Macenko or Reinhard normaliser (`bc_keras.histology.stain`) with the target's statistics baked in
as constants, applied to one uint8 RGB image of any size.

The maths is the NumPy reference's, step for step (its OD and l-alpha-beta conventions, the
tissue rule, `np.cov`, `np.percentile`'s linear interpolation, `np.linalg.lstsq`, `np.rint`).
Two precisions:

- `litert=False` (SavedModel): float64 and `tf.linalg.eigh`; the uint8 result equals NumPy's but
  where float rounding puts a value on a .5 boundary (a grey level on very few pixels).
- `litert=True`: float32 and TFLite builtin ops only (LiteRT has no float64 and no
  SelfAdjointEigV2): the 3x3 covariance's eigenvectors come from a fixed number of cyclic Jacobi
  sweeps, percentiles from `top_k` (TOPK_V2), and the tissue-free branch is a TFLite IF. The
  result differs from NumPy's by one grey level on a few pixels in 10 000 (float32 rounding).

Sums over the pixels go row by row of the image first, so that float32 keeps its precision on
full-size images; `map_images` maps a normaliser over a batch in a loop LiteRT converts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from bc_keras.histology import stain

# Cyclic Jacobi sweeps for the 3x3 eigen-decomposition: convergence is quadratic, so 6 sweeps
# (18 rotations) reach float32 precision for any symmetric matrix.
JACOBI_SWEEPS = 6
# The rotation pairs of one sweep.
_JACOBI_PAIRS = ((0, 1), (0, 2), (1, 2))
# Fills the slots of non-tissue pixels when a percentile is taken over tissue only; every angle
# lies in [-pi, pi].
_SENTINEL = 10.0
# Two stain vectors whose Gram determinant is below this share of its trace squared are treated
# as one (rank 1): `np.linalg.lstsq` then gives the minimum-norm split.
_SINGULAR_GRAM = {tf.float64: 1e-13, tf.float32: 1e-6}


def normalizer_graph(record: dict, litert: bool = False) -> Callable[[tf.Tensor], tf.Tensor]:
    """The fitted normaliser a model's metadata records, as a function of TensorFlow ops.

    Args:
        record: `{"method", "target_statistics"}` as `restore_normalizer` reads it (a malformed
            record raises its `DataError`).
        litert: False: float64 ops for a SavedModel (equal to NumPy up to .5 rounding ties);
            True: float32 and TFLite builtin ops only, for a LiteRT conversion.

    Returns:
        A function of one uint8 image `[height, width, 3]` (a tensor; any height and width,
        dynamic shapes included) giving the normalised uint8 image of the same shape, as
        `normalizer.transform` does.
    """
    normalizer = stain.restore_normalizer(record)
    dtype = tf.float32 if litert else tf.float64
    if normalizer.method == stain.METHOD_REINHARD:
        means, stds = normalizer.means, normalizer.stds

        def reinhard(image):
            return _reinhard(_check_image(image), means, stds, dtype)

        return reinhard
    vectors, maxima = normalizer.stain_vectors, normalizer.max_concentrations
    beta, alpha = normalizer.beta, normalizer.alpha

    def macenko(image):
        return _macenko(_check_image(image), vectors, maxima, beta, alpha, dtype, jacobi=litert)

    return macenko


def map_images(function: Callable[[tf.Tensor], tf.Tensor], images) -> tf.Tensor:
    """`function` (e.g. a `normalizer_graph`) applied to each image of a uint8 batch
    `[n, height, width, 3]` (n >= 1, one size for all), as a while loop that LiteRT converts.

    `tf.map_fn` does not convert when the images' size is dynamic (its TensorList needs a
    static element shape), and a loop whose accumulator starts empty crashes the TFLite
    interpreter; so the accumulator starts with one blank image, dropped at the end.
    """
    count = tf.shape(images)[0]

    def body(index, done):
        return index + 1, tf.concat([done, function(images[index])[None]], axis=0)

    _, done = tf.while_loop(
        lambda index, _: index < count,
        body,
        [tf.constant(0), tf.zeros_like(images[:1])],
        shape_invariants=[tf.TensorShape([]), tf.TensorShape([None, None, None, 3])],
    )
    return done[1:]


# ------------------------------------------------------------------------------------ helpers


def _check_image(image) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    if (
        image.dtype != tf.uint8
        or image.shape.rank not in (None, 3)
        or image.shape[-1] not in (None, 3)
    ):
        raise ValueError(
            "Expected one uint8 RGB image of shape (height, width, 3). "
            f"Received: dtype={image.dtype.name}, shape={image.shape}"
        )
    return image


def _const(value, dtype) -> tf.Tensor:
    return tf.constant(np.asarray(value, dtype=np.float64), dtype=dtype)


def _pixels(image, dtype) -> tf.Tensor:
    """The image's values as `[pixels, 3]` of `dtype`."""
    return tf.reshape(tf.cast(image, dtype), [-1, 3])


def _to_uint8(rgb, shape) -> tf.Tensor:
    """`np.clip(np.rint(x), 0, 255).astype(np.uint8)`: tf.round rounds half to even as rint."""
    return tf.reshape(tf.cast(tf.clip_by_value(tf.round(rgb), 0.0, 255.0), tf.uint8), shape)


def _sum_rows(values, shape) -> tf.Tensor:
    """The sum over the pixels of `values` `[pixels, ...]`, row by row of the image `shape`
    first: float32 sums of a few hundred terms each stay precise (one sum of 300 000 does not).
    """
    rows = tf.reshape(values, tf.concat([shape[:2], tf.shape(values)[1:]], axis=0))
    return tf.reduce_sum(tf.reduce_sum(rows, axis=1), axis=0)


def percentile(values, q: float, mask=None) -> tf.Tensor:
    """`np.percentile(values, 100 * q, axis=-1)` (linear interpolation) over the last axis.

    Args:
        values: `[..., n]`.
        q: the quantile in [0, 1] (a Python float).
        mask: optional boolean `[n]`; the percentile is then over the True entries only (the
            others are set beyond every value, so that the partial sort never reaches them).

    Returns:
        `[...]`. Only the `top_k` of the side nearer `q` is sorted (k = 1 + q * n or so), which
        is TFLite's TOPK_V2.
    """
    dtype = values.dtype
    low_side = q <= 0.5
    if mask is None:
        count = tf.shape(values)[-1]
    else:
        count = tf.reduce_sum(tf.cast(mask, tf.int32))
        sentinel = tf.constant(_SENTINEL if low_side else -_SENTINEL, dtype)
        values = tf.where(mask, values, sentinel)
    virtual = tf.cast(count - 1, dtype) * tf.constant(q, dtype)
    floor = tf.floor(virtual)
    gamma = virtual - floor
    previous = tf.cast(floor, tf.int32)
    following = tf.minimum(previous + 1, count - 1)
    if low_side:
        # The smallest values, ascending: the negated top of -values.
        ranked = -tf.math.top_k(-values, k=following + 1, sorted=True).values
        lower = tf.gather(ranked, previous, axis=-1)
        upper = tf.gather(ranked, following, axis=-1)
    else:
        # The largest values, descending: sorted index j is at count - 1 - j.
        ranked = tf.math.top_k(values, k=count - previous, sorted=True).values
        lower = tf.gather(ranked, count - 1 - previous, axis=-1)
        upper = tf.gather(ranked, count - 1 - following, axis=-1)
    # NumPy's _lerp: from the lower end below gamma 0.5, from the upper end from 0.5 on.
    difference = upper - lower
    return tf.where(gamma >= 0.5, upper - difference * (1.0 - gamma), lower + difference * gamma)


def jacobi_eigh(matrix, sweeps: int = JACOBI_SWEEPS) -> tuple[tf.Tensor, tf.Tensor]:
    """Eigenvalues (ascending, `[3]`) and eigenvectors (columns, `[3, 3]`) of a symmetric 3x3
    matrix by cyclic Jacobi rotations in plain ops, as `np.linalg.eigh` (up to each vector's
    sign): no SelfAdjointEigV2 and no loop, so that it converts to TFLite builtins."""
    dtype = matrix.dtype
    identity = tf.eye(3, dtype=dtype)
    vectors = identity
    for _ in range(sweeps):
        for p, q in _JACOBI_PAIRS:
            diagonal = np.zeros((3, 3))
            diagonal[p, p] = diagonal[q, q] = 1.0
            skew = np.zeros((3, 3))
            skew[p, q], skew[q, p] = 1.0, -1.0
            a_pp, a_qq, a_pq = matrix[p, p], matrix[q, q], matrix[p, q]
            # tan of the rotation that zeroes a_pq (the smaller of the two, Numerical Recipes).
            gap = a_qq - a_pp
            sign = tf.where(gap >= 0.0, tf.constant(1.0, dtype), tf.constant(-1.0, dtype))
            denominator = tf.abs(gap) + tf.sqrt(gap * gap + 4.0 * a_pq * a_pq)
            safe = tf.where(denominator > 0.0, denominator, tf.ones_like(denominator))
            tangent = tf.where(denominator > 0.0, 2.0 * a_pq * sign / safe, tf.zeros_like(gap))
            cosine = 1.0 / tf.sqrt(tangent * tangent + 1.0)
            rotation = (
                identity
                + (cosine - 1.0) * _const(diagonal, dtype)
                + tangent * cosine * _const(skew, dtype)
            )
            matrix = tf.matmul(tf.matmul(rotation, matrix, transpose_a=True), rotation)
            vectors = tf.matmul(vectors, rotation)
    values = tf.reduce_sum(matrix * identity, axis=1)
    order = tf.math.top_k(-values, k=3).indices
    return tf.gather(values, order), tf.gather(vectors, order, axis=1)


# ----------------------------------------------------------------------------------- Reinhard


def _reinhard(image, target_means, target_stds, dtype) -> tf.Tensor:
    """`ReinhardNormalizer.transform` (see `stain.rgb_to_lalphabeta` for the maths)."""
    rgb = (_pixels(image, dtype) + stain.INTENSITY_OFFSET) / stain.INCIDENT_INTENSITY
    log_lms = tf.math.log(tf.matmul(rgb, _const(stain.RGB_TO_LMS.T, dtype))) / math.log(10.0)
    lab = tf.matmul(log_lms, _const(stain.LOG_LMS_TO_LALPHABETA.T, dtype))
    shape = tf.shape(image)
    count = tf.cast(tf.shape(lab)[0], dtype)
    # Moments of the values less the first pixel's: a flat channel then has a deviation of
    # exactly 0 (in float32 its mean's rounding alone would give ~1e-8 and a huge scale).
    shifted = lab - lab[:1]
    offsets = _sum_rows(shifted, shape) / count
    stds = tf.sqrt(_sum_rows(tf.square(shifted - offsets), shape) / count)
    floor = tf.constant(1e-8, dtype)
    scale = tf.where(stds > floor, _const(target_stds, dtype) / tf.maximum(stds, floor), 1.0)
    lab = (shifted - offsets) * scale + _const(target_means, dtype)
    lms = tf.pow(
        tf.constant(10.0, dtype), tf.matmul(lab, _const(stain.LALPHABETA_TO_LOG_LMS.T, dtype))
    )
    rgb = tf.matmul(lms, _const(stain.LMS_TO_RGB.T, dtype)) * stain.INCIDENT_INTENSITY
    rgb = tf.clip_by_value(rgb - stain.INTENSITY_OFFSET, 0.0, 255.0)
    return _to_uint8(rgb, tf.shape(image))


# ------------------------------------------------------------------------------------ Macenko


def _optical_density(pixels) -> tf.Tensor:
    return -tf.math.log((pixels + stain.INTENSITY_OFFSET) / stain.INCIDENT_INTENSITY)


def _stain_vectors(od, tissue, shape, alpha, jacobi: bool) -> tf.Tensor:
    """`stain.macenko_stain_vectors` of the pixels' ODs `[n, 3]` where `tissue` `[n]` holds
    (`shape`: the image's)."""
    dtype = od.dtype
    weights = tf.cast(tissue, dtype)[:, None]
    count = tf.reduce_sum(weights)
    mean = _sum_rows(od * weights, shape) / count
    centred = tf.reshape((od - mean) * weights, tf.concat([shape[:2], [3]], axis=0))
    products = tf.matmul(centred, centred, transpose_a=True)
    covariance = tf.reduce_sum(products, axis=0) / (count - 1.0)
    if jacobi:
        _, eigenvectors = jacobi_eigh(covariance)
    else:
        _, eigenvectors = tf.linalg.eigh(covariance)
    main, second = eigenvectors[:, 2], eigenvectors[:, 1]
    # Point the main axis into the tissue so that every angle lies within (-pi/2, pi/2).
    main = tf.where(tf.reduce_sum(mean * main) < 0.0, -main, main)
    plane = tf.stack([main, second], axis=1)
    projected = tf.matmul(od, plane)
    angles = tf.math.atan2(projected[:, 1], projected[:, 0])
    low = percentile(angles, alpha / 100.0, mask=tissue)
    high = percentile(angles, (100.0 - alpha) / 100.0, mask=tissue)
    directions = tf.stack(
        [tf.stack([tf.cos(low), tf.sin(low)]), tf.stack([tf.cos(high), tf.sin(high)])]
    )
    vectors = tf.matmul(directions, plane, transpose_b=True)
    vectors = vectors / tf.sqrt(tf.reduce_sum(tf.square(vectors), axis=1, keepdims=True))
    # Haematoxylin first: the vector that absorbs more red.
    return tf.where(vectors[0, 0] >= vectors[1, 0], vectors, tf.reverse(vectors, axis=[0]))


def _concentrations(od, vectors) -> tf.Tensor:
    """`np.linalg.lstsq(vectors.T, od.T)[0].T` for 2 stains: the 2x2 normal equations solved in
    closed form (the minimum-norm split when the two vectors are one)."""
    dtype = od.dtype
    projections = tf.matmul(od, vectors, transpose_b=True)
    g00 = tf.reduce_sum(vectors[0] * vectors[0])
    g11 = tf.reduce_sum(vectors[1] * vectors[1])
    g01 = tf.reduce_sum(vectors[0] * vectors[1])
    determinant = g00 * g11 - g01 * g01
    trace = g00 + g11
    singular = determinant <= _SINGULAR_GRAM[dtype] * trace * trace
    # Rank 1: the pseudo-inverse of G = lambda u u^T is G / lambda^2, lambda the trace.
    divisor = tf.where(singular, trace * trace, determinant)
    inverse = tf.where(
        singular,
        tf.stack([[g00, g01], [g01, g11]]),
        tf.stack([[g11, -g01], [-g01, g00]]),
    )
    return tf.matmul(projections, inverse / divisor)


def _macenko(image, target_vectors, target_maxima, beta, alpha, dtype, jacobi) -> tf.Tensor:
    """`MacenkoNormalizer.transform`: a tissue-free image comes back unchanged (a tf.cond)."""
    od = _optical_density(_pixels(image, dtype))
    tissue = tf.reduce_max(od, axis=1) >= beta
    pixels = tf.shape(od)[0]
    needed = tf.maximum(
        tf.constant(float(stain.MIN_TISSUE_PIXELS), dtype),
        stain.MIN_TISSUE_FRACTION * tf.cast(pixels, dtype),
    )
    too_little = tf.cast(tf.reduce_sum(tf.cast(tissue, tf.int32)), dtype) < needed

    def normalise():
        vectors = _stain_vectors(od, tissue, tf.shape(image), alpha, jacobi)
        concentrations = _concentrations(od, vectors)
        maxima = percentile(tf.transpose(concentrations), stain.MACENKO_MAX_PERCENTILE / 100.0)
        # A stain that is absent (maximum ~0) keeps its amounts rather than amplifying noise.
        floor = tf.constant(1e-6, dtype)
        scale = tf.where(
            maxima > floor, _const(target_maxima, dtype) / tf.maximum(maxima, floor), 1.0
        )
        target_od = tf.matmul(concentrations * scale, _const(target_vectors, dtype))
        rgb = stain.INCIDENT_INTENSITY * tf.exp(-target_od) - stain.INTENSITY_OFFSET
        return _to_uint8(tf.clip_by_value(rgb, 0.0, 255.0), tf.shape(image))

    return tf.cond(too_little, lambda: tf.identity(image), normalise)

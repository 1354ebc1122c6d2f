"""Augmentations as batched TensorFlow ops: the report's affine warp and the SimCLR views."""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf

from bc_keras.histology.stain import (
    HED_FROM_RGB,
    INCIDENT_INTENSITY,
    INTENSITY_OFFSET,
    RGB_FROM_HED,
    check_stain_strength,
)


@dataclass(frozen=True)
class AffineAugmentation:
    """The report's `ImageDataGenerator` arguments (SPEC 3); the defaults are the report's."""

    rotation_range: float = 20.0
    width_shift_range: float = 0.2
    height_shift_range: float = 0.2
    zoom_range: float = 0.2
    horizontal_flip: bool = True

    def generator_kwargs(self) -> dict:
        """The same settings as `ImageDataGenerator` keyword arguments."""
        return {
            "rotation_range": self.rotation_range,
            "width_shift_range": self.width_shift_range,
            "height_shift_range": self.height_shift_range,
            "zoom_range": self.zoom_range,
            "horizontal_flip": self.horizontal_flip,
            "fill_mode": "nearest",
        }


REPORT_AUGMENTATION = AffineAugmentation()


def affine_transforms(theta, tx, ty, zx, zy, flip, height, width):
    """Projective transforms (`[batch, 8]`, output -> input pixel) for `ImageProjectiveTransformV3`.

    The parameters mean exactly what they mean in the legacy `ImageDataGenerator`
    (`get_random_transform` / `apply_affine_transform`): rotation `theta` in degrees, shifts
    `tx`, `ty` in pixels, zooms `zx`, `zy`, then a horizontal flip of the output. The legacy
    code builds its matrix in (x, y) order but centres it with (height, width); that is kept
    so that the warp equals `apply_transform` for every image shape, square or not.

    Args:
        theta, tx, ty, zx, zy: float tensors of shape `[batch]`.
        flip: bool tensor of shape `[batch]`.
        height, width: image size in pixels.

    Returns:
        float32 tensor of shape `[batch, 8]`.
    """
    theta = tf.cast(theta, tf.float32) * (math.pi / 180.0)
    tx, ty, zx, zy = (tf.cast(v, tf.float32) for v in (tx, ty, zx, zy))
    cos, sin = tf.cos(theta), tf.sin(theta)
    # rotation @ shift @ zoom, as in apply_affine_transform.
    m00, m01 = cos * zx, -sin * zy
    m10, m11 = sin * zx, cos * zy
    m02 = cos * tx - sin * ty
    m12 = sin * tx + cos * ty
    # offset @ M @ reset, centred like transform_matrix_offset_center(matrix, height, width).
    o_x = float(height) / 2.0 - 0.5
    o_y = float(width) / 2.0 - 0.5
    m02 = m02 + o_x - m00 * o_x - m01 * o_y
    m12 = m12 + o_y - m10 * o_x - m11 * o_y
    # The flip mirrors the output: output x reads what the unflipped warp put at (width-1-x).
    sign = tf.where(flip, -1.0, 1.0)
    shift = tf.where(flip, float(width - 1), 0.0)
    a0, a2 = m00 * sign, m00 * shift + m02
    b0, b2 = m10 * sign, m10 * shift + m12
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, m01, a2, b0, m11, b2, zeros, zeros], axis=1)


def warp_images(images, transforms):
    """Warps a float batch `[batch, h, w, c]` with one fused op (bilinear, nearest fill)."""
    shape = tf.shape(images)[1:3]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=shape,
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )


def random_affine_parameters(
    seed, batch, height: int, width: int, augmentation=REPORT_AUGMENTATION
):
    """Draws `(theta, tx, ty, zx, zy, flip)` for a batch as `ImageDataGenerator.
    get_random_transform` does: uniform rotation in degrees, shifts in pixels as a fraction of
    the image size, two independent zooms in `[1 - z, 1 + z]`, a fair-coin horizontal flip.

    Args:
        seed: int tensor of shape `[2]` for the stateless random ops.
        batch: number of images (an int or a scalar tensor).
        height, width: image size in pixels.
        augmentation: the ranges.
    """
    seeds = tf.random.experimental.stateless_split(seed, num=6)

    def uniform(index, low, high):
        return tf.random.stateless_uniform([batch], seeds[index], low, high)

    rotation = augmentation.rotation_range
    theta = uniform(0, -rotation, rotation) if rotation else tf.zeros([batch])
    # The legacy generator scales the "height" shift by the height and the "width" shift by the
    # width, whatever axis its matrix later moves them along.
    tx = uniform(1, -1.0, 1.0) * augmentation.height_shift_range * height
    ty = uniform(2, -1.0, 1.0) * augmentation.width_shift_range * width
    zoom = augmentation.zoom_range
    zx = uniform(3, 1.0 - zoom, 1.0 + zoom)
    zy = uniform(4, 1.0 - zoom, 1.0 + zoom)
    if augmentation.horizontal_flip:
        flip = uniform(5, 0.0, 1.0) < 0.5
    else:
        flip = tf.zeros([batch], dtype=tf.bool)
    return theta, tx, ty, zx, zy, flip


def random_affine_warp(images, seed, augmentation: AffineAugmentation = REPORT_AUGMENTATION):
    """Applies an independent random affine warp (see `random_affine_parameters`) to every
    image of a float batch `[batch, height, width, channels]` with static height and width."""
    height, width = int(images.shape[1]), int(images.shape[2])
    parameters = random_affine_parameters(seed, tf.shape(images)[0], height, width, augmentation)
    return warp_images(images, affine_transforms(*parameters, height, width))


@dataclass(frozen=True)
class SimCLRAugmentation:
    """Strengths of the SimCLR views (Chen et al., 2020), with their defaults.

    `crop_scale` is the range of the crop's area as a fraction of the image; `jitter_strength`
    is the paper's s (brightness 0.8s, contrast 0.8s, saturation 0.8s, hue 0.2s), applied with
    `jitter_probability`; the Gaussian blur's sigma is drawn from `blur_sigma` (in pixels of a
    224-pixel image, scaled to the actual size) with `blur_probability`.
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    horizontal_flip: bool = True
    jitter_strength: float = 0.5
    jitter_probability: float = 0.8
    blur_probability: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __post_init__(self):
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(
                f"crop_scale must satisfy 0 < low <= high <= 1. Received: {self.crop_scale}"
            )
        for name in ("jitter_probability", "blur_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]. Received: {name}={value}")
        if self.jitter_strength < 0:
            raise ValueError(f"jitter_strength must be >= 0. Received: {self.jitter_strength}")


def _gaussian_blur(image, sigma, radius):
    """Separable Gaussian blur of one `[h, w, 3]` float image with reflected borders."""
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-(x**2) / (2.0 * sigma**2))
    kernel = kernel / tf.reduce_sum(kernel)
    channels = 3
    horizontal = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
    vertical = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    blurred = tf.nn.depthwise_conv2d(padded, horizontal, [1, 1, 1, 1], "VALID")
    blurred = tf.nn.depthwise_conv2d(blurred, vertical, [1, 1, 1, 1], "VALID")
    return blurred[0]


def simclr_view(image, seed, image_size: int, augmentation: SimCLRAugmentation):
    """One random SimCLR view of a uint8 or float `[h, w, 3]` image, as float32 in [0, 1].

    Random resized crop -> horizontal flip -> colour jitter -> Gaussian blur, each drawn from
    the stateless `seed` (shape `[2]`), so a pipeline seeded once is reproducible.
    """
    seeds = tf.random.experimental.stateless_split(seed, num=10)
    image = tf.image.convert_image_dtype(image, tf.float32)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seeds[0],
        min_object_covered=0.0,
        aspect_ratio_range=augmentation.crop_ratio,
        area_range=augmentation.crop_scale,
        max_attempts=20,
        use_image_if_no_bounding_boxes=True,
    )
    view = tf.slice(image, begin, size)
    view = tf.image.resize(view, (image_size, image_size), method="bilinear")
    if augmentation.horizontal_flip:
        view = tf.image.stateless_random_flip_left_right(view, seeds[1])

    strength = augmentation.jitter_strength

    def jitter(x):
        x = tf.image.stateless_random_brightness(x, 0.8 * strength, seeds[2])
        x = tf.image.stateless_random_contrast(x, 1 - 0.8 * strength, 1 + 0.8 * strength, seeds[3])
        x = tf.image.stateless_random_saturation(
            x, 1 - 0.8 * strength, 1 + 0.8 * strength, seeds[4]
        )
        x = tf.image.stateless_random_hue(x, min(0.2 * strength, 0.5), seeds[5])
        return tf.clip_by_value(x, 0.0, 1.0)

    if strength > 0 and augmentation.jitter_probability > 0:
        draw = tf.random.stateless_uniform([], seeds[6])
        view = tf.cond(draw < augmentation.jitter_probability, lambda: jitter(view), lambda: view)

    if augmentation.blur_probability > 0:
        scale = image_size / 224.0
        low, high = augmentation.blur_sigma
        sigma = tf.random.stateless_uniform([], seeds[7], low * scale, high * scale)
        radius = max(1, int(math.ceil(3 * high * scale)))
        radius = min(radius, image_size // 2 - 1) if image_size > 4 else 1
        draw = tf.random.stateless_uniform([], seeds[8])
        view = tf.cond(
            draw < augmentation.blur_probability,
            lambda: _gaussian_blur(view, sigma, radius),
            lambda: view,
        )
    view = tf.ensure_shape(view, (image_size, image_size, 3))
    return tf.clip_by_value(view, 0.0, 1.0)


def simclr_pair(image, seed, image_size: int, augmentation: SimCLRAugmentation):
    """Two independent views of the same image."""
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    return (
        simclr_view(image, seeds[0], image_size, augmentation),
        simclr_view(image, seeds[1], image_size, augmentation),
    )


def hed_perturbation(images, alpha, beta):
    """Tellez et al. (2018) HED stain perturbation of a batch, `s_c' = alpha_c * s_c + beta_c`.

    The TensorFlow twin of `bc_keras.histology.stain.hed_perturbation_numpy`, with the same OD
    convention (`OD = -ln((I + 1) / 256)`) and the same Ruifrok & Johnston matrices.

    Args:
        images: float tensor `[batch, height, width, 3]` of RGB values in [0, 255].
        alpha: float tensor `[batch, 3]`, each image's H, E, D scale factors.
        beta: float tensor `[batch, 3]`, each image's H, E, D shifts in OD units.

    Returns:
        float32 tensor of the images' shape, clipped to [0, 255].
    """
    images = tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 255.0)
    alpha = tf.cast(alpha, tf.float32)[:, None, None, :]
    beta = tf.cast(beta, tf.float32)[:, None, None, :]
    od = -tf.math.log((images + INTENSITY_OFFSET) / INCIDENT_INTENSITY)
    hed = tf.einsum("bhwc,cs->bhws", od, tf.constant(HED_FROM_RGB, tf.float32))
    od = tf.einsum("bhws,sc->bhwc", hed * alpha + beta, tf.constant(RGB_FROM_HED, tf.float32))
    rgb = INCIDENT_INTENSITY * tf.exp(-od) - INTENSITY_OFFSET
    return tf.clip_by_value(rgb, 0.0, 255.0)


def random_hed_perturbation(images, seed, strength: float):
    """Applies an independent random HED perturbation to every image of a float batch.

    Per image and stain, alpha ~ U(1 - strength, 1 + strength) and beta ~ U(-strength,
    strength), drawn with stateless ops, as in `bc_keras.histology.stain.StainAugmentation`.

    Args:
        images: float tensor `[batch, height, width, 3]` of RGB values in [0, 255].
        seed: int tensor of shape `[2]` for the stateless random ops.
        strength: a Python float in [0, 1); 0 returns the images unchanged.

    Returns:
        float32 tensor of the images' shape.
    """
    strength = check_stain_strength(strength)
    images = tf.cast(images, tf.float32)
    if strength == 0:
        return images
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    alpha = tf.random.stateless_uniform([batch, 3], seeds[0], 1.0 - strength, 1.0 + strength)
    beta = tf.random.stateless_uniform([batch, 3], seeds[1], -strength, strength)
    return hed_perturbation(images, alpha, beta)

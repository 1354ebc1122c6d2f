"""RandAugment (Cubuk et al. 2020) for H&E patches, as batched stateless TensorFlow ops.

Each image goes through N layers; at each layer it draws one operation, uniformly, from
`OPERATIONS`, applied at the one magnitude M (0..10, the reference implementation's scale),
with a random sign where the operation has a direction. Every draw comes from the batch's seed,
so a resumed run augments as the uninterrupted one did.

The operations are those a slide can plausibly show: a patch has no orientation (rotations,
flips, quarter turns, shear, translation), and scanners and staining vary in contrast,
brightness, focus (sharpness), bit depth (posterize) and stain amounts (HED jitter, Tellez et
al. 2018). Left out: solarize and invert (they turn the white background dark and eosin pink
green, colours no H&E slide has, and the H/E channel relations that carry the class would be
taught to the model as noise), equalize and autocontrast (they stretch each patch's histogram,
which removes the stain-intensity differences between tissue types), and colour/saturation
(the HED jitter varies the stains along their own axes instead).
"""

from __future__ import annotations

import math

import tensorflow as tf

from bc_keras.data.augment import random_hed_perturbation

OPERATIONS = (
    "identity",
    "rotate",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "flip_left_right",
    "flip_up_down",
    "rotate_90",
    "contrast",
    "brightness",
    "sharpness",
    "posterize",
    "hed_jitter",
)
# Operations that move pixels: one projective warp per layer applies whichever was drawn.
GEOMETRIC = OPERATIONS[:9]
MAX_MAGNITUDE = 10
MAX_LAYERS = len(OPERATIONS)

# The strongest setting of each magnitude-driven operation (at M = MAX_MAGNITUDE), as in the
# reference implementation (rotate 30 degrees, shear 0.3, translate 0.45 of the side, enhance
# factors 1 +/- 0.9, posterize down to 4 bits); the HED jitter reaches Tellez et al.'s strong
# setting (sigma 0.2).
MAX_STRENGTH = {
    "rotate": 30.0,
    "shear_x": 0.3,
    "shear_y": 0.3,
    "translate_x": 0.45,
    "translate_y": 0.45,
    "contrast": 0.9,
    "brightness": 0.9,
    "sharpness": 0.9,
    "posterize": 4.0,
    "hed_jitter": 0.2,
}
# PIL's ImageFilter.SMOOTH, the degenerate image of ImageEnhance.Sharpness.
SMOOTH_KERNEL = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))


def check_randaugment(layers: int, magnitude: int) -> tuple[int, int]:
    """`(N, M)` as integers: N layers in 1..len(OPERATIONS), magnitude M in 0..10."""
    if isinstance(layers, bool) or isinstance(magnitude, bool):
        raise ValueError(f"N and M must be integers. Received: N={layers}, M={magnitude}")
    if int(layers) != layers or int(magnitude) != magnitude:
        raise ValueError(f"N and M must be integers. Received: N={layers}, M={magnitude}")
    if not 1 <= layers <= MAX_LAYERS:
        raise ValueError(f"N must be in 1..{MAX_LAYERS}. Received: N={layers}")
    if not 0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"M must be in 0..{MAX_MAGNITUDE}. Received: M={magnitude}")
    return int(layers), int(magnitude)


def strength(name: str, magnitude: float) -> float:
    """The setting of operation `name` at magnitude M: degrees for rotate, the shear factor,
    the shift as a fraction of the side, the enhance factor's distance from 1, the bits
    posterize removes, the HED sigma; linear in M (0 at M = 0)."""
    return MAX_STRENGTH[name] * float(magnitude) / MAX_MAGNITUDE


def _identity(batch):
    ones, zeros = tf.ones([batch]), tf.zeros([batch])
    return [ones, zeros, zeros, zeros, ones, zeros]


def geometric_transforms(name: str, magnitude, sign, quarter_turns, size: int):
    """The `[batch, 8]` output-to-input transforms (`ImageProjectiveTransformV3`) of one
    geometric operation on square `size` images, centred on the image centre.

    Args:
        name: one of `GEOMETRIC`.
        magnitude: M.
        sign: float `[batch]` of +1 / -1, the direction of rotate, shear and translate.
        quarter_turns: int `[batch]` in 1..3, the quarter turns of rotate_90.
        size: image side in pixels.
    """
    batch = tf.shape(sign)[0]
    centre = (size - 1) / 2.0
    a0, a1, a2, b0, b1, b2 = _identity(batch)
    if name in ("rotate", "rotate_90"):
        if name == "rotate":
            angle = sign * strength(name, magnitude) * (math.pi / 180.0)
            cos, sin = tf.cos(angle), tf.sin(angle)
        else:  # exact quarter turns: pixel centres land on pixel centres
            angle = tf.cast(quarter_turns, tf.float32) * (math.pi / 2.0)
            cos, sin = tf.round(tf.cos(angle)), tf.round(tf.sin(angle))
        a0, a1, b0, b1 = cos, -sin, sin, cos
        a2 = centre - cos * centre + sin * centre
        b2 = centre - sin * centre - cos * centre
    elif name == "shear_x":
        a1 = sign * strength(name, magnitude)
        a2 = -a1 * centre
    elif name == "shear_y":
        b0 = sign * strength(name, magnitude)
        b2 = -b0 * centre
    elif name == "translate_x":
        a2 = sign * strength(name, magnitude) * size
    elif name == "translate_y":
        b2 = sign * strength(name, magnitude) * size
    elif name == "flip_left_right":
        a0, a2 = -tf.ones([batch]), tf.fill([batch], float(size - 1))
    elif name == "flip_up_down":
        b1, b2 = -tf.ones([batch]), tf.fill([batch], float(size - 1))
    elif name != "identity":
        raise ValueError(f"{name!r} is not a geometric operation; use one of {GEOMETRIC}")
    zeros = tf.zeros([batch])
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def _blend(degenerate, images, factor):
    """PIL's ImageEnhance: `degenerate + factor * (image - degenerate)`, clipped."""
    return tf.clip_by_value(degenerate + factor * (images - degenerate), 0.0, 255.0)


def _smoothed(images):
    """PIL's SMOOTH filter, border pixels kept as they are (as ImageEnhance.Sharpness does)."""
    kernel = tf.constant(SMOOTH_KERNEL, tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    inner = tf.nn.depthwise_conv2d(images, kernel, [1, 1, 1, 1], "VALID")
    inner = tf.pad(inner, [[0, 0], [1, 1], [1, 1], [0, 0]])
    height, width = int(images.shape[1]), int(images.shape[2])
    rows, columns = tf.range(height), tf.range(width)
    border = (
        (rows[:, None] == 0) | (rows[:, None] == height - 1)
        | (columns[None, :] == 0) | (columns[None, :] == width - 1)
    )  # fmt: skip
    return tf.where(border[None, :, :, None], images, inner)


def colour_operation(name: str, images, magnitude, sign, seed):
    """One colour operation on a float batch `[b, h, w, 3]` of pixels in [0, 255].

    contrast, brightness and sharpness are PIL's ImageEnhance with factor `1 + sign * s`
    (degenerate image: the grey mean of the image's luminance, black, PIL's SMOOTH filter);
    posterize keeps `8 - s` bits; hed_jitter is `random_hed_perturbation` with sigma s.
    """
    factor = (1.0 + sign * strength(name, magnitude))[:, None, None, None] if name in (
        "contrast", "brightness", "sharpness"
    ) else None  # fmt: skip
    if name == "contrast":
        luminance = 0.299 * images[..., 0] + 0.587 * images[..., 1] + 0.114 * images[..., 2]
        mean = tf.reduce_mean(luminance, axis=[1, 2])[:, None, None, None]
        return _blend(mean, images, factor)
    if name == "brightness":
        return _blend(tf.zeros_like(images), images, factor)
    if name == "sharpness":
        return _blend(_smoothed(images), images, factor)
    if name == "posterize":
        step = 2.0 ** round(strength(name, magnitude))
        return tf.floor(tf.floor(images) / step) * step
    if name == "hed_jitter":
        return random_hed_perturbation(images, seed, strength(name, magnitude))
    raise ValueError(f"{name!r} is not a colour operation; use one of {OPERATIONS[9:]}")


def randaugment_plan(seed, batch, layers: int, operations=OPERATIONS):
    """What each image draws at each layer: the operation's index in `operations`, the sign
    (+1 / -1) and the quarter turns (1..3) of rotate_90, each int or float `[batch, layers]`."""
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    shape = tf.stack([tf.cast(batch, tf.int32), layers])
    chosen = tf.random.stateless_uniform(shape, seeds[0], 0, len(operations), dtype=tf.int32)
    sign = tf.where(tf.random.stateless_uniform(shape, seeds[1]) < 0.5, -1.0, 1.0)
    quarter_turns = tf.random.stateless_uniform(shape, seeds[2], 1, 4, dtype=tf.int32)
    return chosen, sign, quarter_turns


def randaugment(images, seed, layers: int, magnitude: int, operations=OPERATIONS):
    """RandAugment of a float batch `[b, size, size, 3]` (static size) of pixels in [0, 255].

    At each of the `layers` layers every image applies the operation it drew
    (`randaugment_plan`): the geometric ones as one bilinear warp with reflected borders (an
    identity transform leaves the pixels exact), then the colour ones, each result clipped to
    [0, 255].

    Args:
        seed: int tensor `[2]` for the stateless draws.
        layers, magnitude: N and M (see `check_randaugment`).
        operations: the names drawn from (a subset of `OPERATIONS`, e.g. for tests).
    """
    layers, magnitude = check_randaugment(layers, magnitude)
    unknown = [name for name in operations if name not in OPERATIONS]
    if unknown or not operations:
        raise ValueError(f"operations must be names from {OPERATIONS}. Received: {unknown}")
    images = tf.cast(images, tf.float32)
    size = int(images.shape[1])
    batch = tf.shape(images)[0]
    chosen, sign, quarter_turns = randaugment_plan(seed, batch, layers, operations)
    layer_seeds = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seed, 1), num=layers
    )
    for layer in range(layers):
        picked = chosen[:, layer]
        geometric = [(i, n) for i, n in enumerate(operations) if n in GEOMETRIC and n != "identity"]
        if geometric:
            transforms = geometric_transforms("identity", magnitude, sign[:, layer], None, size)
            for index, name in geometric:
                candidate = geometric_transforms(
                    name, magnitude, sign[:, layer], quarter_turns[:, layer], size
                )
                transforms = tf.where((picked == index)[:, None], candidate, transforms)
            warped = tf.raw_ops.ImageProjectiveTransformV3(
                images=images,
                transforms=transforms,
                output_shape=tf.shape(images)[1:3],
                fill_value=0.0,
                interpolation="BILINEAR",
                fill_mode="REFLECT",
            )
            images = tf.ensure_shape(warped, images.shape)
        for index, name in enumerate(operations):
            if name in GEOMETRIC:
                continue
            changed = colour_operation(name, images, magnitude, sign[:, layer], layer_seeds[layer])
            images = tf.where((picked == index)[:, None, None, None], changed, images)
        images = tf.clip_by_value(images, 0.0, 255.0)
    return images

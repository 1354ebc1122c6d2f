"""RandAugment for H&E (issue 22 item 3): the number of operations each image takes, their
magnitudes, the colour operations against PIL, exact geometric ones against NumPy, uniform
draws and seeded determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance

from bc_keras.config import values
from bc_keras.data import randaugment as ra

SEED = tf.constant([4, 2], tf.int64)


def _images(count=6, size=12, low=40, high=140):
    rng = np.random.default_rng(0)
    return rng.integers(low, high, (count, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_each_image_takes_n_operations_at_magnitude_m(layers):
    """Brightness alone: an image ends scaled by the product of exactly N factors
    1 +/- 0.09 M, the signs the plan drew."""
    images, magnitude = _images(), 2  # no pixel reaches 255 after three brightenings
    out = ra.randaugment(images, SEED, layers, magnitude, operations=("brightness",)).numpy()
    _, sign, _ = ra.randaugment_plan(SEED, len(images), layers, ("brightness",))
    factors = np.prod(1 + sign.numpy() * 0.09 * magnitude, axis=1)
    assert factors.shape == (len(images),)
    np.testing.assert_allclose(out, images * factors[:, None, None, None], rtol=1e-5)


@pytest.mark.parametrize("layers", [1, 2, 3, 4])
def test_n_flips_flip_an_image_when_n_is_odd(layers):
    images = _images()
    out = ra.randaugment(images, SEED, layers, 0, operations=("flip_left_right",)).numpy()
    expected = images[:, :, ::-1] if layers % 2 else images
    np.testing.assert_array_equal(out, expected)


def test_quarter_turns_and_up_down_flips_are_exact():
    images = _images()
    turned = ra.randaugment(images, SEED, 1, 7, operations=("rotate_90",)).numpy()
    _, _, turns = ra.randaugment_plan(SEED, len(images), 1, ("rotate_90",))
    for image, out, k in zip(images, turned, turns.numpy()[:, 0], strict=True):
        np.testing.assert_array_equal(out, np.rot90(image, k, axes=(0, 1)))
    flipped = ra.randaugment(images, SEED, 1, 7, operations=("flip_up_down",)).numpy()
    np.testing.assert_array_equal(flipped, images[:, ::-1])


def test_magnitudes_of_the_geometric_operations():
    sign = tf.constant([1.0, -1.0])
    size, magnitude = 20, 4
    rotate = ra.geometric_transforms("rotate", magnitude, sign, None, size).numpy()
    angles = np.degrees(np.arctan2(rotate[:, 3], rotate[:, 0]))
    np.testing.assert_allclose(angles, [12.0, -12.0], atol=1e-4)  # 30 degrees at M = 10
    shear = ra.geometric_transforms("shear_x", magnitude, sign, None, size).numpy()
    np.testing.assert_allclose(shear[:, 1], [0.12, -0.12], atol=1e-6)
    shift = ra.geometric_transforms("translate_y", magnitude, sign, None, size).numpy()
    np.testing.assert_allclose(shift[:, 5], [0.18 * size, -0.18 * size], atol=1e-5)
    # Every transform keeps the centre of a rotation in place.
    centre = (size - 1) / 2
    np.testing.assert_allclose(rotate[:, 0] * centre + rotate[:, 1] * centre + rotate[:, 2], centre)


def test_magnitude_zero_leaves_every_image_as_it_was():
    images = _images()
    driven = tuple(name for name in ra.OPERATIONS if name in ra.MAX_STRENGTH)
    out = ra.randaugment(images, SEED, 3, 0, operations=driven).numpy()
    np.testing.assert_allclose(out, images, atol=1e-3)


def _pil(image, enhancer, factor):
    return np.asarray(enhancer(Image.fromarray(image.astype(np.uint8))).enhance(factor), np.float32)


@pytest.mark.parametrize(
    "name, enhancer",
    [
        ("brightness", ImageEnhance.Brightness),
        ("contrast", ImageEnhance.Contrast),
        ("sharpness", ImageEnhance.Sharpness),
    ],
)
def test_colour_operations_are_pils_image_enhance(name, enhancer):
    images, magnitude = _images(count=4, size=10), 6
    sign = tf.constant([1.0, -1.0, 1.0, -1.0])
    out = ra.colour_operation(name, images, magnitude, sign, SEED).numpy()
    for image, ours, direction in zip(images, out, sign.numpy(), strict=True):
        factor = 1 + direction * 0.09 * magnitude
        # PIL rounds to uint8 (and its contrast mean to an integer): within 1.5 grey levels.
        np.testing.assert_allclose(ours, _pil(image, enhancer, factor), atol=1.5)


def test_posterize_keeps_the_high_bits():
    images = np.arange(256, dtype=np.float32).reshape(1, 16, 16, 1).repeat(3, axis=3)
    for magnitude, bits in ((0, 8), (5, 6), (10, 4)):
        out = ra.colour_operation("posterize", images, magnitude, tf.ones([1]), SEED).numpy()
        expected = (images.astype(np.uint8) >> (8 - bits)) << (8 - bits)
        np.testing.assert_array_equal(out, expected.astype(np.float32))


def test_hed_jitter_strength_and_operation_draws():
    assert ra.strength("hed_jitter", 10) == 0.2 and ra.strength("hed_jitter", 5) == 0.1
    chosen, sign, _ = ra.randaugment_plan(SEED, 7000, 2, ra.OPERATIONS)
    counts = np.bincount(chosen.numpy().ravel(), minlength=len(ra.OPERATIONS))
    expected = chosen.numpy().size / len(ra.OPERATIONS)
    assert np.all(np.abs(counts - expected) < 0.1 * expected), counts
    assert abs(float(tf.reduce_mean(sign))) < 0.03


def test_randaugment_is_a_function_of_its_seed_and_stays_in_range():
    images = _images(count=8, size=16, low=0, high=256)
    first = ra.randaugment(images, SEED, 2, 9).numpy()
    np.testing.assert_array_equal(first, ra.randaugment(images, SEED, 2, 9).numpy())
    other = ra.randaugment(images, tf.constant([4, 3], tf.int64), 2, 9).numpy()
    assert not np.array_equal(first, other)
    assert first.min() >= 0 and first.max() <= 255 and not math.isnan(first.sum())


def test_bad_settings_are_refused_and_the_config_shares_the_ranges():
    assert (values.RANDAUGMENT_MAX_LAYERS, values.RANDAUGMENT_MAX_MAGNITUDE) == (
        ra.MAX_LAYERS, ra.MAX_MAGNITUDE,
    )  # fmt: skip
    for layers, magnitude, message in ((0, 3, "N must be in 1..14"), (15, 3, "N must be"),
                                       (2, 11, "M must be in 0..10"), (2, -1, "M must be"),
                                       (2, 2.5, "integers")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            ra.check_randaugment(layers, magnitude)
    with pytest.raises(ValueError, match="operations must be names"):
        ra.randaugment(_images(), SEED, 1, 3, operations=("solarize",))

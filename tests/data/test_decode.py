"""Decoding and resizing in TensorFlow give PIL's (and so Keras' load_img's) exact pixels."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from bc_keras.data.decode import INTERPOLATIONS, decode_and_resize, resize_like_pil

PIL_FILTERS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "box": Image.BOX,
    "lanczos": Image.LANCZOS,
}


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_resize_equals_pil_on_random_shapes(interpolation):
    rng = np.random.default_rng(len(interpolation))
    # Down- and upsampling on each axis, square and not, including Pillow's choice of doing
    # the vertical pass first (460x40 -> 32) and the BreaKHis shape.
    shapes = [(460, 700), (460, 40), (33, 17), (17, 33), (64, 64), (31, 300)]
    shapes += [tuple(rng.integers(9, 400, 2)) for _ in range(8)]
    for height, width in shapes:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for size in (32, 48):
            expected = np.asarray(
                Image.fromarray(image).resize((size, size), PIL_FILTERS[interpolation])
            )
            resized = resize_like_pil(tf.constant(image), size, interpolation).numpy()
            assert resized.dtype == np.uint8
            np.testing.assert_array_equal(
                resized, expected, err_msg=f"{height}x{width} -> {size} {interpolation}"
            )


def test_unknown_interpolation_is_refused():
    with pytest.raises(ValueError, match="interpolation must be one of"):
        resize_like_pil(tf.zeros((8, 8, 3), tf.uint8), 4, "hamming")


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "1"])
def test_non_rgb_pngs_decode_as_pil_converts_them(tmp_path, mode):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / f"image_{mode}.png"
    image.save(path)
    with Image.open(path) as reloaded:
        expected = np.asarray(reloaded.convert("RGB").resize((16, 16), Image.BILINEAR))
    decoded = decode_and_resize(str(path), 16, "bilinear").numpy()
    np.testing.assert_array_equal(decoded, expected)

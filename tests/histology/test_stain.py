"""Tests of the HED space, the stain augmentation (NumPy and TensorFlow) and stain
normalisation, on synthetic images built with Beer-Lambert from known stain vectors."""

import numpy as np
import pytest
import tensorflow as tf

from bc_keras.data.augment import hed_perturbation, random_hed_perturbation
from bc_keras.errors import DataError
from bc_keras.histology import stain

# Unit OD vectors of two stainings: the target's and another lab's (bluer H, redder E).
TARGET_VECTORS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
OTHER_VECTORS = np.array([[0.50, 0.80, 0.35], [0.20, 0.95, 0.25]])
TARGET_VECTORS /= np.linalg.norm(TARGET_VECTORS, axis=1, keepdims=True)
OTHER_VECTORS /= np.linalg.norm(OTHER_VECTORS, axis=1, keepdims=True)


def beer_lambert(amounts, vectors):
    """Float RGB in [0, 255] of stain amounts `[..., k]` with OD vectors `[k, 3]`."""
    return 256.0 * np.exp(-(np.asarray(amounts) @ vectors)) - 1.0


def stained_image(vectors, seed, scale=(1.0, 1.0), size=64):
    """A uint8 H&E-like image: random H and E amounts per pixel, 20% background."""
    rng = np.random.default_rng(seed)
    amounts = rng.uniform(0.0, 1.0, (size * size, 2)) * [1.2, 0.8] * np.asarray(scale)
    amounts[rng.random(size * size) < 0.2] = 0.0
    pixels = beer_lambert(amounts, vectors).reshape(size, size, 3)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), amounts.reshape(size, size, 2)


def hed_pixels(amounts):
    """RGB (float64) of exact HED amounts `[..., 3]`."""
    return beer_lambert(amounts, stain.RGB_FROM_HED)


def recover_alpha_beta(before, after):
    """Per image, solves `after_c = alpha_c * before_c + beta_c` from HED amounts of two pixels."""
    s0, s1 = stain.rgb_to_hed(before)[:, 0, :2].transpose(1, 0, 2)
    t0, t1 = stain.rgb_to_hed(after)[:, 0, :2].transpose(1, 0, 2)
    alpha = (t1 - t0) / (s1 - s0)
    return alpha, t0 - alpha * s0


# Two pixels per image with distinct, positive amounts of every stain, far from clipping.
TWO_PIXELS = hed_pixels(np.array([[[[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]]]]))


# ----------------------------------------------------------------------------------- HED space


def test_hed_round_trip_and_hand_values():
    rgb = np.random.default_rng(0).uniform(0, 255, (2, 5, 4, 3))
    np.testing.assert_allclose(stain.hed_to_rgb(stain.rgb_to_hed(rgb)), rgb, atol=1e-3)
    corners = np.array([[0.0, 0.0, 0.0], [255.0, 255.0, 255.0]])
    np.testing.assert_allclose(stain.hed_to_rgb(stain.rgb_to_hed(corners)), corners, atol=1e-3)
    # White is no stain; a pixel of 0.8 OD units of pure haematoxylin is [0.8, 0, 0].
    np.testing.assert_allclose(stain.rgb_to_hed([255.0, 255.0, 255.0]), 0.0, atol=1e-12)
    pure = 256.0 * np.exp(-0.8 * np.array([0.65, 0.70, 0.29])) - 1.0
    np.testing.assert_allclose(stain.rgb_to_hed(pure), [0.8, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(stain.optical_density(0.0), np.log(256.0))
    np.testing.assert_allclose(stain.HED_FROM_RGB @ stain.RGB_FROM_HED, np.eye(3), atol=1e-12)


def test_numpy_perturbation_identity_and_shapes():
    rgb = np.random.default_rng(1).uniform(0, 255, (6, 5, 3))
    out = stain.hed_perturbation_numpy(rgb, np.ones(3), np.zeros(3))
    np.testing.assert_allclose(out, rgb, atol=1e-9)
    with pytest.raises(ValueError, match="alpha and beta must have shape"):
        stain.hed_perturbation_numpy(rgb, np.ones(2), np.zeros(3))


# ------------------------------------------------------------------------ TensorFlow HED op


def test_tf_op_matches_numpy_reference():
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 255, (3, 6, 5, 3)).astype(np.float32)
    alpha = rng.uniform(0.7, 1.3, (3, 3))
    beta = rng.uniform(-0.3, 0.3, (3, 3))
    out = hed_perturbation(images, alpha, beta).numpy()
    assert out.dtype == np.float32 and out.shape == images.shape
    expected = np.stack(
        [stain.hed_perturbation_numpy(images[i], alpha[i], beta[i]) for i in range(3)]
    )
    np.testing.assert_allclose(out, expected, atol=1e-3)
    assert out.min() >= 0.0 and out.max() <= 255.0
    identity = hed_perturbation(images, np.ones((3, 3)), np.zeros((3, 3))).numpy()
    np.testing.assert_allclose(identity, images, atol=1e-3)


def test_perturbation_changes_each_stain_as_intended():
    # Nuclei: much haematoxylin, little eosin; stroma: the reverse (exact HED amounts).
    amounts = np.array([[[0.8, 0.1, 0.0], [0.05, 0.5, 0.0]]])
    image = hed_pixels(amounts)[None].astype(np.float32)
    more_h = hed_perturbation(image, [[1.5, 1.0, 1.0]], np.zeros((1, 3))).numpy()[0, 0]
    more_e = hed_perturbation(image, [[1.0, 1.5, 1.0]], np.zeros((1, 3))).numpy()[0, 0]
    darkening_h = image[0, 0].mean(axis=-1) - more_h.mean(axis=-1)
    darkening_e = image[0, 0].mean(axis=-1) - more_e.mean(axis=-1)
    nucleus, stroma = 0, 1
    assert darkening_h[nucleus] > 5 * darkening_h[stroma] > 0
    assert darkening_e[stroma] > 5 * darkening_e[nucleus] > 0
    # Only the chosen stain's amount moves: H * 1.5, then E + 0.2.
    np.testing.assert_allclose(stain.rgb_to_hed(more_h), amounts[0] * [1.5, 1, 1], atol=1e-4)
    shifted = hed_perturbation(image, np.ones((1, 3)), [[0.0, 0.2, 0.0]]).numpy()[0, 0]
    np.testing.assert_allclose(stain.rgb_to_hed(shifted), amounts[0] + [0, 0.2, 0], atol=1e-4)


def test_random_draws_lie_in_range_differ_per_image_and_follow_the_seed():
    images = np.repeat(TWO_PIXELS, 8, axis=0).astype(np.float32)
    seed = tf.constant([3, 4])
    out = random_hed_perturbation(images, seed, 0.2).numpy()
    alpha, beta = recover_alpha_beta(images, out)
    assert np.all((alpha > 0.8 - 1e-3) & (alpha < 1.2 + 1e-3))
    assert np.all((beta > -0.2 - 1e-3) & (beta < 0.2 + 1e-3))
    assert len(np.unique(np.round(np.concatenate([alpha, beta], 1), 3), axis=0)) == 8
    assert alpha.std() > 0.05 and beta.std() > 0.05
    np.testing.assert_array_equal(random_hed_perturbation(images, seed, 0.2).numpy(), out)
    other = random_hed_perturbation(images, tf.constant([3, 5]), 0.2).numpy()
    assert np.abs(other - out).max() > 1.0
    unchanged = random_hed_perturbation(images, seed, 0.0)
    np.testing.assert_array_equal(unchanged.numpy(), images)
    with pytest.raises(ValueError, match="strength must be in"):
        random_hed_perturbation(images, seed, 1.0)


def test_random_perturbation_runs_in_tf_data_and_tf_function():
    images = np.random.default_rng(5).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    seed = tf.constant([7, 8])
    eager = random_hed_perturbation(images, seed, 0.1).numpy()
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(4)
    mapped = next(iter(dataset.map(lambda x: random_hed_perturbation(x, seed, 0.1)))).numpy()
    compiled = tf.function(lambda x: random_hed_perturbation(x, seed, 0.1))(images).numpy()
    np.testing.assert_allclose(mapped, eager, atol=1e-4)
    np.testing.assert_allclose(compiled, eager, atol=1e-4)


# -------------------------------------------------------------------------- StainAugmentation


def test_stain_augmentation_for_image_data_generator():
    image = TWO_PIXELS[0].astype(np.float32)
    augmentation = stain.StainAugmentation(0.1, seed=0)
    outputs = [augmentation(image) for _ in range(6)]
    assert all(o.dtype == np.float32 and o.shape == image.shape for o in outputs)
    alpha, beta = recover_alpha_beta(np.repeat(image[None], 6, 0), np.stack(outputs))
    assert np.all(np.abs(alpha - 1.0) <= 0.1 + 1e-4) and np.all(np.abs(beta) <= 0.1 + 1e-4)
    assert len(np.unique(np.round(beta[:, 1], 5))) == 6
    # The same seed gives the same sequence; `then` runs on the perturbed image.
    scaled = stain.StainAugmentation(0.1, seed=0, then=lambda x: x / 255.0)
    np.testing.assert_allclose(scaled(image), outputs[0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(stain.StainAugmentation(0.0)(image), image)
    with pytest.raises(ValueError, match="strength must be in"):
        stain.StainAugmentation(-0.1)
    with pytest.raises(ValueError, match="HxWx3"):
        augmentation(image[..., :2])


def test_stain_augmentation_in_image_data_generator():
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    images = np.random.default_rng(9).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    generator = ImageDataGenerator(
        preprocessing_function=stain.StainAugmentation(0.1, seed=3), rescale=1.0 / 255.0
    )
    batch = next(generator.flow(images, batch_size=2, shuffle=False))
    reference = stain.StainAugmentation(0.1, seed=3)
    expected = np.stack([reference(image) for image in images]) / 255.0
    assert batch.dtype == np.float32 and batch.shape == images.shape
    np.testing.assert_allclose(batch, expected, atol=1e-6)


# ------------------------------------------------------------------------------------ Macenko


def test_macenko_recovers_the_stain_vectors_haematoxylin_first():
    for vectors in (TARGET_VECTORS, OTHER_VECTORS):
        image, _ = stained_image(vectors, seed=1)
        found = stain.macenko_stain_vectors(image)
        np.testing.assert_allclose(np.linalg.norm(found, axis=1), 1.0)
        cosines = np.sum(found * vectors, axis=1)
        assert np.all(cosines > 0.99), cosines


def test_macenko_normalises_to_the_target_colours():
    # Source and target share the tissue distribution but not the staining; the source's
    # amounts are scaled (too much H, too little E). Normalised, the source should look like
    # its own tissue stained the target's way: Beer-Lambert of its amounts with target vectors.
    target, _ = stained_image(TARGET_VECTORS, seed=2)
    source, amounts = stained_image(OTHER_VECTORS, seed=3, scale=(1.3, 0.7))
    expected = beer_lambert(amounts / [1.3, 0.7], TARGET_VECTORS)
    normalizer = stain.MacenkoNormalizer().fit(target)
    out = normalizer.transform(source)
    assert out.dtype == np.uint8 and out.shape == source.shape
    error_after = np.abs(out - expected).mean()
    error_before = np.abs(source - expected).mean()
    assert error_after < 1.0 and error_before > 8.0, (error_after, error_before)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), expected.reshape(-1, 3).mean(0), atol=3)
    # The target maps (nearly) onto itself.
    assert np.abs(normalizer.transform(target).astype(float) - target).mean() < 1.5
    statistics = normalizer.target_statistics()
    assert np.dot(statistics["stain_vectors"]["hematoxylin"], TARGET_VECTORS[0]) > 0.99
    # The 99th percentile of U(0, 1.2) H amounts on 80% of the pixels is about 1.185.
    assert statistics["max_concentrations"]["hematoxylin"] == pytest.approx(1.185, abs=0.03)


def test_macenko_blank_image_is_returned_unchanged_and_refused_as_target():
    blank = np.full((16, 16, 3), 250, dtype=np.uint8)
    blank[0, :5] = 100  # a few dark pixels are not tissue enough
    target, _ = stained_image(TARGET_VECTORS, seed=4, size=16)
    normalizer = stain.MacenkoNormalizer().fit(target)
    np.testing.assert_array_equal(normalizer.transform(blank), blank)
    assert stain.macenko_stain_vectors(blank) is None
    with pytest.raises(DataError, match="no stained tissue"):
        stain.MacenkoNormalizer().fit(blank)


def test_tissue_brightness_and_mask():
    image = np.full((8, 8, 3), 255, dtype=np.uint8)
    image[:2] = [100, 60, 140]  # 16 tissue pixels, grey level 100
    assert stain.tissue_mask(image).sum() == 16
    assert stain.tissue_brightness(image) == pytest.approx(100.0)
    # Pale eosin: red OD below beta but green above: tissue, not background.
    assert stain.tissue_mask(np.array([[[230, 170, 200]]], np.uint8))[0, 0]
    assert stain.tissue_brightness(np.full((8, 8, 3), 240, np.uint8)) is None


# ----------------------------------------------------------------------------------- Reinhard


def test_lalphabeta_conversion_hand_values_and_round_trip():
    rgb = np.random.default_rng(6).uniform(0, 255, (7, 3))
    np.testing.assert_allclose(
        stain.lalphabeta_to_rgb(stain.rgb_to_lalphabeta(rgb)), rgb, atol=1e-6
    )
    # Greys differ from white only in l: sqrt(3) * log10((g + 1) / 256).
    white, grey = stain.rgb_to_lalphabeta(np.array([[255.0] * 3, [63.0] * 3]))
    np.testing.assert_allclose(grey - white, [np.sqrt(3) * np.log10(64 / 256), 0, 0], atol=1e-12)
    # White: LMS are the row sums (0.9996, 0.9993, 0.9973); l, alpha, beta by hand from them.
    np.testing.assert_allclose(white, [-0.00095381, 0.00076363, 0.00009218], atol=1e-8)


def test_reinhard_matches_the_target_statistics():
    target, _ = stained_image(TARGET_VECTORS, seed=7, size=32)
    source, _ = stained_image(OTHER_VECTORS, seed=8, scale=(1.2, 0.8), size=32)
    normalizer = stain.ReinhardNormalizer().fit(target)
    out = normalizer.transform(source)
    assert out.dtype == np.uint8 and out.shape == source.shape
    lab_target = stain.rgb_to_lalphabeta(target).reshape(-1, 3)
    lab_out = stain.rgb_to_lalphabeta(out).reshape(-1, 3)
    np.testing.assert_allclose(lab_out.mean(0), lab_target.mean(0), atol=0.01)
    np.testing.assert_allclose(lab_out.std(0), lab_target.std(0), rtol=0.05, atol=0.002)
    np.testing.assert_allclose(
        normalizer.target_statistics()["lalphabeta_mean"], lab_target.mean(0)
    )
    # A flat image is shifted to the target's mean colour rather than failing.
    flat = normalizer.transform(np.full((4, 4, 3), 255, np.uint8))
    assert len(np.unique(flat.reshape(-1, 3), axis=0)) == 1


def test_make_normalizer_and_misuse():
    assert isinstance(stain.make_normalizer(stain.METHOD_MACENKO), stain.MacenkoNormalizer)
    assert isinstance(stain.make_normalizer(stain.METHOD_REINHARD), stain.ReinhardNormalizer)
    with pytest.raises(ValueError, match="method must be one of"):
        stain.make_normalizer("vahadane")
    with pytest.raises(ValueError, match="fit"):
        stain.ReinhardNormalizer().transform(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB"):
        stain.MacenkoNormalizer().fit(np.zeros((2, 2, 3), np.float32))


def test_stain_module_does_not_import_tensorflow():
    import subprocess
    import sys

    code = "import sys, bc_keras.histology.stain; assert 'tensorflow' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

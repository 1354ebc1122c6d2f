"""Occlusion sensitivity and LIME: hand-computed probability drops, LIME's surrogate against a
NumPy weighted ridge and a model that is linear in superpixel presence, SLIC superpixels, the
quadrant test of Grad-CAM for both methods, and the report's panels of correct and wrong
test images."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from test_gradcam import IMAGE_SIZE, PNG_SIGNATURE, quadrant_images, quadrant_mass, small_baseline

from bc_keras import models
from bc_keras.errors import ModelFileError
from bc_keras.evaluation import explain, explain_panels, gradcam, superpixels
from bc_keras.evaluation.gradcam import PANEL_CELL_INCHES, PANEL_DPI


@pytest.fixture(scope="module")
def trained_baseline():
    """Grad-CAM's quadrant model (test_gradcam.trained_baseline, trained as there): a baseline
    CNN whose malignant evidence is a checkerboard in one quadrant, and held-out positives."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images, labels, _ = quadrant_images(384, rng)
    model = small_baseline()
    models.compile_classifier(model, 1e-3)
    model.fit(images, labels, batch_size=32, epochs=3, verbose=0)
    held_out, held_out_labels, quadrants = quadrant_images(64, rng)
    positives = held_out_labels == 1
    return model, held_out[positives], quadrants[positives]


def linear_model(weights):
    """A 'model' whose malignant probability is `sum(weights * x[..., 0]) + 0.5`, in NumPy."""
    return lambda batch: 0.5 + np.einsum("nhw,hw->n", np.asarray(batch)[..., 0], weights)


def test_occlusion_maps_are_the_probability_drops_of_the_patches(trained_baseline):
    model, positives, _ = trained_baseline
    image = positives[:1]
    maps = explain.occlusion(model, image, patch_size=8, stride=8, batch_size=5)
    # Each of the 16 patches hidden by the image's mean colour, scored by hand.
    starts = [(top, left) for top in range(0, IMAGE_SIZE, 8) for left in range(0, IMAGE_SIZE, 8)]
    occluded = np.repeat(image, len(starts), axis=0)
    for copy, (top, left) in zip(occluded, starts, strict=True):
        copy[top : top + 8, left : left + 8] = image[0].mean(axis=(0, 1))
    drops = model.predict(image, verbose=0)[0, 0] - model.predict(occluded, verbose=0)[:, 0]
    for drop, (top, left) in zip(drops, starts, strict=True):
        np.testing.assert_allclose(maps[0, top : top + 8, left : left + 8], drop, atol=1e-6)
    assert maps.max() > 0.05  # hiding the checkerboard costs probability
    benign = explain.occlusion(model, image, patch_size=8, stride=8, target="benign")
    np.testing.assert_allclose(benign, -maps, atol=1e-6)


def test_overlapping_patches_average_their_drops_and_every_pixel_is_covered():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(10, 10))
    images = rng.uniform(0, 1, (2, 10, 10, 3)).astype(np.float32)
    maps = explain.occlusion(linear_model(weights), images, patch_size=4, stride=3, fill=0.25)
    assert explain.occlusion_positions(10, 4, 3).tolist() == [0, 3, 6]
    # A linear model's drop for a patch is the sum over it of weights * (x - fill). Patches
    # cover rows (and columns) 0-3, 3-6 and 6-9: pixel (4, 5) lies under the patch at (3, 3)
    # alone, (9, 0) under (6, 0) alone, and (6, 6) under the four at rows and columns 3 and 6.
    for index in range(2):
        contribution = weights * (images[index, ..., 0] - 0.25)
        drops = {
            (top, left): contribution[top : top + 4, left : left + 4].sum()
            for top in (0, 3, 6)
            for left in (0, 3, 6)
        }
        assert maps[index, 4, 5] == pytest.approx(drops[3, 3], abs=1e-5)
        expected = np.mean([drops[top, left] for top in (3, 6) for left in (3, 6)])
        assert maps[index, 6, 6] == pytest.approx(expected, abs=1e-5)
        assert maps[index, 9, 0] == pytest.approx(drops[6, 0], abs=1e-5)


def test_lime_surrogate_is_lime_s_weighted_ridge():
    rng = np.random.default_rng(1)
    presence = rng.integers(0, 2, (300, 7))
    presence[0] = 1
    presence[1] = 0
    scores = rng.uniform(0, 1, 300)
    coefficients, intercept, score = explain.fit_surrogate(presence, scores)
    # LIME's kernel: sqrt(exp(-d^2 / 0.25^2)) of the cosine distance to the all-ones row.
    cosine = presence.sum(1) / np.maximum(np.linalg.norm(presence, axis=1) * np.sqrt(7), 1e-300)
    weights = np.sqrt(np.exp(-((1.0 - cosine) ** 2) / 0.25**2))
    np.testing.assert_allclose(explain.lime_kernel_weights(presence), weights, rtol=1e-12)
    # Weighted ridge with an unpenalised intercept, alpha 1, in closed form.
    x_mean = weights @ presence / weights.sum()
    y_mean = weights @ scores / weights.sum()
    centred = presence - x_mean
    gram = centred.T @ (weights[:, None] * centred) + np.eye(7)
    expected = np.linalg.solve(gram, centred.T @ (weights * (scores - y_mean)))
    np.testing.assert_allclose(coefficients, expected, rtol=1e-8, atol=1e-12)
    assert intercept == pytest.approx(y_mean - x_mean @ expected)
    residual = weights @ (scores - presence @ expected - intercept) ** 2
    assert score == pytest.approx(1 - residual / (weights @ (scores - y_mean) ** 2))


def test_lime_recovers_a_model_linear_in_superpixel_presence():
    rng = np.random.default_rng(2)
    image = rng.uniform(0, 1, (24, 24, 3)).astype(np.float32)
    segments = superpixels.slic(image, num_segments=9)
    count = segments.max() + 1
    true = rng.permutation(np.linspace(-0.3, 0.3, count))

    def model(batch):  # the fraction of each superpixel left as it was, weighted by `true`
        unchanged = np.all(batch == image, axis=-1)
        kept = np.stack([unchanged[:, segments == k].mean(axis=1) for k in range(count)], 1)
        return 0.4 + kept @ true

    probabilities = explain._probability_function(model, "malignant")
    result = explain.lime_image(probabilities, image, segments, num_samples=400, seed=3)
    np.testing.assert_array_equal(np.argsort(result.coefficients), np.argsort(true))
    np.testing.assert_allclose(result.coefficients, true, atol=0.01)
    assert result.score > 0.999
    np.testing.assert_array_equal(result.heatmap(), result.coefficients[segments].astype("f4"))
    # The sampling is LIME's: row 0 all present, the others fair coins from the seed.
    again = explain.lime_image(probabilities, image, segments, num_samples=400, seed=3)
    np.testing.assert_array_equal(again.coefficients, result.coefficients)
    other = explain.lime_image(probabilities, image, segments, num_samples=400, seed=4)
    assert not np.array_equal(other.coefficients, result.coefficients)


def test_slic_superpixels_follow_colour_edges_and_are_connected():
    image = np.zeros((32, 40, 3), np.uint8)
    image[:13, :17] = (200, 30, 30)
    image[:13, 17:] = (30, 200, 30)
    image[13:, :17] = (30, 30, 200)
    image[13:, 17:] = (230, 230, 230)
    blocks = (np.arange(32)[:, None] >= 13) * 2 + (np.arange(40)[None, :] >= 17)
    for sigma, allowed in ((0.0, 0), (superpixels.DEFAULT_SIGMA, 2)):
        segments = superpixels.slic(image, num_segments=20, sigma=sigma)
        labels = np.unique(segments)
        assert labels.tolist() == list(range(len(labels))) and 12 <= len(labels) <= 20
        for label in labels:
            inside = blocks[segments == label]
            # Each superpixel is one piece on one side of the edges; smoothed, the blended
            # pixels where the edges meet may join a neighbour.
            assert ndimage.label(segments == label)[1] == 1
            assert len(inside) - np.bincount(inside).max() <= allowed
        np.testing.assert_array_equal(superpixels.slic(image, 20, sigma=sigma), segments)
    lab = superpixels.rgb_to_lab(np.array([[[255, 255, 255], [255, 0, 0], [0, 0, 0]]], np.uint8))
    np.testing.assert_allclose(lab[0], [[100, 0, 0], [53.24, 80.09, 67.20], [0, 0, 0]], atol=0.02)
    with pytest.raises(ValueError, match=r"RGB \(height, width, 3\). Received: shape=\(8, 8\)"):
        superpixels.slic(np.zeros((8, 8)))


@pytest.mark.parametrize("method", ["occlusion", "lime"])
def test_maps_mark_the_quadrant_with_the_class_evidence(trained_baseline, method):
    model, positives, quadrants = trained_baseline
    options = {"patch_size": 8, "stride": 4} if method == "occlusion" else {"num_segments": 16}
    if method == "lime":
        options["num_samples"] = 100
    maps = explain.explain(model, positives, method, seed=0, **options)
    assert maps.shape == positives.shape[:3] and 0 <= maps.min() and maps.max() == 1
    mass = quadrant_mass(maps)
    share = mass[np.arange(len(quadrants)), quadrants] / mass.sum(axis=1)
    assert np.mean(mass.argmax(axis=1) == quadrants) >= 0.9
    assert np.median(share) > 0.8  # most of each map's mass is on the evidence


def test_display_maps_and_gradcam_through_explain(trained_baseline):
    model, positives, _ = trained_baseline
    shown = explain.display_maps(np.array([[[-1.0, 2.0], [0.5, 0.0]], [[-1.0, 0.0], [0, 0]]]))
    np.testing.assert_allclose(shown, [[[0, 1], [0.25, 0]], [[0, 0], [0, 0]]])
    np.testing.assert_array_equal(
        explain.explain(model, positives[:3], "gradcam"), gradcam.gradcam(model, positives[:3])
    )
    with pytest.raises(ValueError, match=r"method must be one of .*Received: method='shap'"):
        explain.explain(model, positives[:3], "shap")
    with pytest.raises(ValueError, match=r"patch_size must be in \[1, 32\].*patch_size=40"):
        explain.occlusion(model, positives[:3], patch_size=40)
    with pytest.raises(ValueError, match="target must be one of"):
        explain.occlusion(model, positives[:3], target="tumour")


def test_choose_examples_takes_the_most_confident_correct_then_wrong():
    labels = [0, 0, 1, 1, 1, 0, 1, 0]
    probabilities = [0.1, 0.3, 0.9, 0.6, 0.2, 0.8, 0.45, 0.05]
    # correct: 0 (0.4 from 0.5), 1 (0.2), 2 (0.4), 3 (0.1), 7 (0.45); wrong: 4 (0.3), 5, 6
    assert explain_panels.choose_examples(labels, probabilities, 0.5, 2) == [7, 2, 5, 4]
    assert explain_panels.choose_examples(labels, probabilities, 0.5, 3) == [7, 2, 0, 5, 4, 6]


def test_explanation_panels_show_correct_and_wrong_test_images(synthetic_split, tmp_path):
    keras.utils.set_random_seed(0)
    metadata = {"kind": "classifier", "image_size": IMAGE_SIZE, "preprocess": "rescale",
                "interpolation": "bilinear", "threshold": 0.5}  # fmt: skip
    path = models.save_model(small_baseline(), tmp_path / "cnn.h5", metadata)
    methods = ["occlusion", "lime", "gradcam"]
    written = explain_panels.explanation_panels(
        path, synthetic_split, tmp_path / "panels", methods, count=2, num_samples=20, patch_size=8
    )
    assert list(written) == methods
    for method, panel in written.items():
        assert panel == tmp_path / "panels" / f"explain_{method}.png"
        assert panel.read_bytes().startswith(PNG_SIGNATURE)
        with Image.open(panel) as image:  # 4 pairs (2 correct, 2 wrong) in one row
            width, height = PANEL_CELL_INCHES
            assert image.size == (round(8 * width * PANEL_DPI), round(height * PANEL_DPI))
    encoder = models.save_model(
        small_baseline(), tmp_path / "enc.h5", {**metadata, "kind": "encoder"}
    )
    with pytest.raises(ModelFileError, match="encoder model, not a classifier"):
        explain_panels.explanation_panels(encoder, synthetic_split, tmp_path, ["lime"], 1)

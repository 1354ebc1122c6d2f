"""Explanations beside Grad-CAM: occlusion sensitivity (Zeiler & Fergus, 2014) and LIME
(Ribeiro et al., 2016) for the sigmoid classifiers, model-agnostic and batched.

Both only query the model's probability, so they explain any saved classifier the same way
(the CNN, a transfer model, a SimCLR classifier, a cross-fitted ensemble) and need no access to
its layers. LIME is implemented here rather than through the `lime` package: `lime` 0.2.0.1
does run on this stack, but it needs scikit-image (and networkx, imageio, tifffile, tqdm) for
its superpixels, builds every perturbed image in a Python loop, and could only be an optional
extra that `make test` does not install; the method itself is a short SLIC segmentation
(`bc_keras.evaluation.superpixels`), LIME's sampling, its cosine-distance kernel and a
weighted `sklearn.linear_model.Ridge`, all reproduced below with LIME's image defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import Ridge

from bc_keras.evaluation import gradcam, superpixels
from bc_keras.evaluation.gradcam import TARGET_MALIGNANT, TARGETS

METHOD_GRADCAM, METHOD_OCCLUSION, METHOD_LIME = "gradcam", "occlusion", "lime"
METHODS = (METHOD_GRADCAM, METHOD_OCCLUSION, METHOD_LIME)
METHOD_TITLES = {METHOD_GRADCAM: "Grad-CAM", METHOD_OCCLUSION: "occlusion", METHOD_LIME: "LIME"}
# The occluding patch's side as a fraction of the image side (28 px at 224), its stride half
# the patch, so that every pixel is covered by about four patches.
OCCLUSION_PATCH_FRACTION = 1 / 8
# LIME's image defaults (lime_image.LimeImageExplainer / explain_instance): 1000 samples, an
# exponential kernel of width 0.25 on the cosine distance, Ridge(alpha=1).
LIME_SAMPLES = 1000
LIME_KERNEL_WIDTH = 0.25
LIME_RIDGE_ALPHA = 1.0
DEFAULT_BATCH_SIZE = 64


def _probability_function(model, target: str):
    """A function from a float32 batch to the target class's probability, float64 `[n]`: a
    Keras model's `predict_on_batch`, or `model` itself when it is a plain callable."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}. Received: target={target!r}")
    predict = getattr(model, "predict_on_batch", model)

    def probabilities(batch):
        malignant = np.asarray(predict(np.asarray(batch, np.float32)), np.float64).reshape(-1)
        return malignant if target == TARGET_MALIGNANT else 1.0 - malignant

    return probabilities


def _check_images(images) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[0] == 0 or 0 in images.shape[1:]:
        raise ValueError(
            "images must be a non-empty batch (count, height, width, channels), preprocessed as "
            f"for the model. Received: images.shape={images.shape}"
        )
    return images


def occlusion_positions(size: int, patch_size: int, stride: int) -> np.ndarray:
    """The patch starts along one side: every `stride` pixels, the last one flush with the
    edge, so that every pixel is covered."""
    starts = list(range(0, size - patch_size + 1, stride))
    if starts[-1] != size - patch_size:
        starts.append(size - patch_size)
    return np.asarray(starts)


def occlusion(
    model,
    images,
    patch_size: int | None = None,
    stride: int | None = None,
    target: str = TARGET_MALIGNANT,
    fill=None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Occlusion sensitivity maps: the drop in the target's probability when a patch is hidden.

    A `patch_size` square slides over each image in steps of `stride`; each occluded copy is
    scored (in batches of `batch_size` through one model call each) and the drop
    `p(image) - p(occluded)` is spread over the pixels the patch hid. A pixel covered by
    several patches gets the mean of their drops. Deterministic.

    Args:
        model: a Keras classifier with one sigmoid output, or a function from a float32 batch
            to the malignant probabilities.
        images: `[N, H, W, C]`, preprocessed exactly as for `model.predict`.
        patch_size: the patch side in pixels; None for 1/8 of the smaller side.
        stride: pixels between patch starts; None for half the patch.
        target: "malignant" or "benign", the class whose probability drop is mapped.
        fill: what hides a patch: None for the image's mean (per channel, on the model's
            input scale, so a patch becomes the image's average colour), or a number.
        batch_size: occluded images per model call.

    Returns:
        float32 `[N, H, W]` maps in probability units (negative where hiding a patch raises
        the target's probability).
    """
    images = _check_images(images)
    count, height, width, _ = images.shape
    if patch_size is None:
        patch_size = max(1, int(round(min(height, width) * OCCLUSION_PATCH_FRACTION)))
    if stride is None:
        stride = max(1, patch_size // 2)
    if not (1 <= patch_size <= min(height, width)) or stride < 1 or batch_size < 1:
        raise ValueError(
            f"patch_size must be in [1, {min(height, width)}] and stride and batch_size "
            f"positive. Received: {patch_size=}, {stride=}, {batch_size=}"
        )
    probabilities = _probability_function(model, target)
    tops = occlusion_positions(height, patch_size, stride)
    lefts = occlusion_positions(width, patch_size, stride)
    starts = np.stack(np.meshgrid(tops, lefts, indexing="ij"), axis=-1).reshape(-1, 2)
    # masks[k]: the pixels patch k hides.
    rows, columns = np.arange(height), np.arange(width)
    in_rows = (rows >= starts[:, :1]) & (rows < starts[:, :1] + patch_size)
    in_columns = (columns >= starts[:, 1:]) & (columns < starts[:, 1:] + patch_size)
    masks = in_rows[:, :, None] & in_columns[:, None, :]
    coverage = masks.sum(axis=0)
    originals = probabilities(images)
    maps = np.empty((count, height, width), np.float32)
    for index, image in enumerate(images):
        hidden = image.mean(axis=(0, 1)) if fill is None else np.float32(fill)
        drops = np.empty(len(masks))
        for start in range(0, len(masks), batch_size):
            chunk = masks[start : start + batch_size, :, :, None]
            drops[start : start + len(chunk)] = originals[index] - probabilities(
                np.where(chunk, hidden, image[None])
            )
        maps[index] = np.tensordot(drops, masks, axes=1) / coverage
    return maps


@dataclass
class LimeExplanation:
    """LIME's surrogate for one image: `probability ~ intercept + coefficients . z`, z the
    0/1 presence of each superpixel; `score` is the surrogate's weighted R^2."""

    segments: np.ndarray  # int [H, W] superpixel labels 0 .. K-1
    coefficients: np.ndarray  # float64 [K]
    intercept: float
    score: float

    def heatmap(self) -> np.ndarray:
        """Each pixel's superpixel coefficient, float32 `[H, W]`."""
        return self.coefficients[self.segments].astype(np.float32)


def lime_kernel_weights(presence, kernel_width: float = LIME_KERNEL_WIDTH) -> np.ndarray:
    """LIME's sample weights: `sqrt(exp(-d^2 / width^2))`, d the cosine distance between a
    sample's presence vector and the all-present one (1 for the all-absent vector)."""
    presence = np.asarray(presence, np.float64)
    present = presence.sum(axis=1)
    norms = np.sqrt(present) * np.sqrt(presence.shape[1])
    distances = 1.0 - np.divide(present, norms, out=np.zeros_like(present), where=norms > 0)
    return np.sqrt(np.exp(-(distances**2) / kernel_width**2))


def fit_surrogate(presence, scores, kernel_width: float = LIME_KERNEL_WIDTH):
    """LIME's local linear model: `Ridge(alpha=1)` of `scores` on the 0/1 `presence` rows,
    weighted by `lime_kernel_weights`.

    Returns:
        `(coefficients [K], intercept, weighted R^2)`.
    """
    weights = lime_kernel_weights(presence, kernel_width)
    surrogate = Ridge(alpha=LIME_RIDGE_ALPHA, fit_intercept=True)
    surrogate.fit(presence, scores, sample_weight=weights)
    score = surrogate.score(presence, scores, sample_weight=weights)
    return np.asarray(surrogate.coef_, np.float64), float(surrogate.intercept_), float(score)


def lime_image(
    probabilities,
    image,
    segments,
    num_samples: int = LIME_SAMPLES,
    seed: int = 0,
    kernel_width: float = LIME_KERNEL_WIDTH,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> LimeExplanation:
    """LIME for one image and its superpixels.

    Sample 0 keeps every superpixel; the others switch each on or off with probability 1/2
    (seeded). A switched-off superpixel takes its own mean colour, as `lime` does by default
    (`hide_color=None`): texture and morphology are removed, colour is kept. The surrogate is
    `Ridge(alpha=1)` fitted to the probabilities with LIME's kernel weights.

    Args:
        probabilities: a function from a float32 batch `[n, H, W, C]` to `[n]` probabilities
            of the explained class.
        image: `[H, W, C]` float, as the model takes it.
        segments: int `[H, W]` labels 0 .. K-1 (e.g. `superpixels.slic`).
        num_samples: perturbed images, the unperturbed one included.
        seed: the sampling seed; the same seed gives the same explanation.
        kernel_width: the width of LIME's exponential kernel.
        batch_size: perturbed images per call of `probabilities`.
    """
    image = np.asarray(image, np.float32)
    segments = np.asarray(segments)
    count = int(segments.max()) + 1
    if segments.shape != image.shape[:2] or segments.min() < 0:
        raise ValueError(
            f"segments must be labels 0 .. K-1 of the image's shape {image.shape[:2]}. "
            f"Received: segments.shape={segments.shape}"
        )
    if num_samples < 2 or kernel_width <= 0 or batch_size < 1:
        raise ValueError(
            "num_samples must be at least 2 and kernel_width and batch_size positive. "
            f"Received: {num_samples=}, {kernel_width=}, {batch_size=}"
        )
    sizes = np.bincount(segments.ravel(), minlength=count).astype(np.float32)
    means = (
        np.stack(
            [
                np.bincount(segments.ravel(), channel.ravel(), count)
                for channel in np.moveaxis(image, -1, 0)
            ],
            axis=-1,
        )
        / np.maximum(sizes, 1)[:, None]
    )
    hidden = means[segments].astype(np.float32)
    presence = np.random.default_rng(seed).integers(0, 2, (num_samples, count))
    presence[0] = 1
    scores = np.empty(num_samples)
    for start in range(0, num_samples, batch_size):
        keep = presence[start : start + batch_size][:, segments].astype(bool)[..., None]
        scores[start : start + len(keep)] = probabilities(np.where(keep, image, hidden))
    coefficients, intercept, score = fit_surrogate(presence, scores, kernel_width)
    return LimeExplanation(segments, coefficients, intercept, score)


def _segmentation_images(images, rgb_images):
    if rgb_images is not None:
        rgb_images = np.asarray(rgb_images)
        if rgb_images.shape[:3] != images.shape[:3] or rgb_images.shape[-1] != 3:
            raise ValueError(
                f"rgb_images must be the {images.shape[:3]} RGB images the inputs show. "
                f"Received: rgb_images.shape={rgb_images.shape}"
            )
        return rgb_images
    # No display images: each input stretched to [0, 1] (its first 3 channels) is segmented.
    low = images.min(axis=(1, 2, 3), keepdims=True)
    span = np.maximum(images.max(axis=(1, 2, 3), keepdims=True) - low, 1e-12)
    return ((images - low) / span)[..., :3]


def lime(
    model,
    images,
    rgb_images=None,
    num_segments: int = superpixels.DEFAULT_SEGMENTS,
    num_samples: int = LIME_SAMPLES,
    seed: int = 0,
    target: str = TARGET_MALIGNANT,
    kernel_width: float = LIME_KERNEL_WIDTH,
    batch_size: int = DEFAULT_BATCH_SIZE,
    return_explanations: bool = False,
):
    """LIME maps: each pixel shows its SLIC superpixel's surrogate coefficient.

    Args:
        model: a Keras classifier with one sigmoid output, or a function from a float32 batch
            to the malignant probabilities.
        images: `[N, H, W, C]`, preprocessed exactly as for `model.predict`.
        rgb_images: the `[N, H, W, 3]` RGB images (uint8, or float in [0, 1]) the inputs
            show, to segment; None segments each input stretched to [0, 1].
        num_segments: about how many superpixels per image.
        num_samples, seed, kernel_width, batch_size: see `lime_image`; every image is
            sampled with `seed`, so its map does not depend on the others in the batch.
        target: "malignant" or "benign", the class explained.
        return_explanations: also return each image's `LimeExplanation`.

    Returns:
        float32 `[N, H, W]` maps in probability units per superpixel; with
        `return_explanations`, `(maps, explanations)`.
    """
    images = _check_images(images)
    segmented = _segmentation_images(images, rgb_images)
    probabilities = _probability_function(model, target)
    explanations = [
        lime_image(
            probabilities,
            image,
            superpixels.slic(rgb, num_segments),
            num_samples=num_samples,
            seed=seed,
            kernel_width=kernel_width,
            batch_size=batch_size,
        )
        for image, rgb in zip(images, segmented, strict=True)
    ]
    maps = np.stack([explanation.heatmap() for explanation in explanations])
    return (maps, explanations) if return_explanations else maps


def display_maps(maps) -> np.ndarray:
    """Maps scaled for an overlay as Grad-CAM's are: the positive part divided by each map's
    peak, so evidence for the class is in (0, 1] and a map without any stays all zeros."""
    maps = np.maximum(np.asarray(maps, np.float32), 0.0)
    peaks = maps.max(axis=(1, 2), keepdims=True)
    return np.where(peaks > 0, maps / np.where(peaks > 0, peaks, 1.0), 0.0).astype(np.float32)


def check_method(method: str) -> str:
    """`method` when it is one of `METHODS`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}. Received: method={method!r}")
    return method


def explain(
    model,
    images,
    method: str,
    rgb_images=None,
    seed: int = 0,
    patch_size: int | None = None,
    stride: int | None = None,
    num_samples: int = LIME_SAMPLES,
    num_segments: int = superpixels.DEFAULT_SEGMENTS,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """`method`'s maps of the malignant evidence for a batch, scaled to [0, 1] for display.

    Args:
        model: a Keras classifier with one sigmoid output.
        images: `[N, H, W, C]`, preprocessed as for the model.
        method: "gradcam", "occlusion" or "lime".
        rgb_images: the RGB images the inputs show (LIME segments them).
        seed: LIME's sampling seed (occlusion and Grad-CAM are deterministic).
        patch_size, stride: occlusion's (see `occlusion`).
        num_samples, num_segments: LIME's (see `lime`).
        batch_size: images per model call.
    """
    check_method(method)
    if method == METHOD_GRADCAM:
        return gradcam.gradcam(model, images, batch_size=batch_size)
    if method == METHOD_OCCLUSION:
        maps = occlusion(model, images, patch_size, stride, batch_size=batch_size)
    else:
        maps = lime(
            model, images, rgb_images, num_segments, num_samples, seed, batch_size=batch_size
        )
    return display_maps(maps)

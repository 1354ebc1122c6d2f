"""Explanations of image files: an overlay per image (`predict.py --explain METHOD DIR`) and,
for the report, one panel per method of correct and wrong test images of a saved model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bc_keras.console import Progress
from bc_keras.data.decode import DEFAULT_INTERPOLATION, decode_and_resize, resize_like_pil
from bc_keras.data.pipeline import PREPROCESS_RESCALE, apply_preprocess
from bc_keras.errors import DataError, ModelFileError
from bc_keras.evaluation import explain, gradcam, inference
from bc_keras.histology.breakhis import CLASS_NAMES

PANEL_COUNT = 4
PANEL_FILE = "explain_{method}.png"


def shown_images(files, metadata: dict) -> np.ndarray:
    """The uint8 `[N, S, S, 3]` images the model sees: decoded and resized as it was trained,
    stain-normalised first (at full size) when it was trained on a normalised split."""
    import tensorflow as tf

    size = int(metadata["image_size"])
    interpolation = metadata.get("interpolation", DEFAULT_INTERPOLATION)
    normalizer = inference.stain_normalizer_of(metadata)
    shown = []
    for path in files:
        if normalizer is None:
            shown.append(decode_and_resize(str(path), size, interpolation).numpy())
            continue
        raw = tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False)
        normalised = tf.convert_to_tensor(normalizer.transform(raw.numpy()))
        shown.append(resize_like_pil(normalised, size, interpolation).numpy())
    return np.stack(shown)


def model_inputs(shown, metadata: dict) -> np.ndarray:
    """`shown_images` preprocessed as the model's inputs, float32."""
    preprocess = metadata.get("preprocess", PREPROCESS_RESCALE)
    return np.asarray(apply_preprocess(np.asarray(shown, np.float32), preprocess), np.float32)


def overlay_names(files, method: str) -> tuple[list[str], int]:
    """`<stem>_<method>.png` for every image, disambiguated as `inference.overlay_names` does."""
    names, disambiguated = inference.overlay_names(files)
    return [name.removesuffix("_gradcam.png") + f"_{method}.png" for name in names], disambiguated


def overlay_index(method: str) -> str:
    """The file beside a method's overlays naming each image's overlay."""
    return inference.OVERLAY_INDEX if method == explain.METHOD_GRADCAM else f"{method}.csv"


def write_explanation_overlays(
    model, metadata: dict, files, out_dir, method: str, seed: int = 0, batch_size: int = 32,
    **options,
) -> tuple[list[Path], int]:  # fmt: skip
    """`method`'s map of the malignant evidence of every image, written as overlays (the image
    at the model's input size under the map) in `out_dir`, named `<stem>_<method>.png`, with
    `out_dir/<method>.csv` mapping each image's path to its overlay. Grad-CAM is
    `inference.write_gradcam_overlays` itself.

    Args:
        options: `explain.occlusion` / `explain.lime` settings (patch_size, num_samples ...).

    Returns:
        `(written, disambiguated)` as `inference.write_gradcam_overlays` returns them.
    """
    explain.check_method(method)
    if method == explain.METHOD_GRADCAM:
        return inference.write_gradcam_overlays(model, metadata, files, out_dir, batch_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names, disambiguated = overlay_names(files, method)
    written = []
    with Progress(f"{explain.METHOD_TITLES[method]} overlays", len(files)) as progress:
        for start in range(0, len(files), batch_size):
            shown = shown_images(files[start : start + batch_size], metadata)
            maps = explain.explain(
                model, model_inputs(shown, metadata), method, shown, seed=seed, **options
            )
            for offset, (image, heatmap) in enumerate(zip(shown, maps, strict=True)):
                target = out_dir / names[start + offset]
                Image.fromarray(gradcam.overlay(image, heatmap)).save(target)
                written.append(target)
            progress.advance(len(shown))
    index = [
        {"path": path, "overlay": target.name} for path, target in zip(files, written, strict=True)
    ]
    inference.write_csv(out_dir / overlay_index(method), inference.OVERLAY_COLUMNS, index)
    return written, disambiguated


def choose_examples(labels, probabilities, threshold: float, count: int) -> list[int]:
    """Up to `count` correctly and `count` wrongly classified images (correct ones first), the
    most confident (farthest from the threshold) of each, alternating benign and malignant
    while both are left; ties by index."""
    labels = np.asarray(labels, int)
    probabilities = np.asarray(probabilities, np.float64)
    correct = (probabilities >= threshold).astype(int) == labels
    confidence = np.abs(probabilities - threshold)
    chosen = []
    for wanted in (True, False):
        by_class = [
            sorted(np.flatnonzero((correct == wanted) & (labels == label)),
                   key=lambda i: (-confidence[i], i))
            for label in (0, 1)
        ]  # fmt: skip
        picked = 0
        while picked < count and any(by_class):
            for queue in by_class:
                if queue and picked < count:
                    chosen.append(int(queue.pop(0)))
                    picked += 1
    return chosen


def explanation_panels(
    model_path,
    split_dir,
    out_dir,
    methods=explain.METHODS,
    count: int = PANEL_COUNT,
    seed: int = 0,
    **options,
) -> dict[str, Path]:
    """One PNG per method of correct and wrong test images of a saved classifier, each image
    beside its map of the malignant evidence.

    The model predicts every image of `split_dir/test/` (with the test-time augmentation it
    stores); the `count` most confident correct and `count` most confident wrong ones are shown
    (fewer when there are fewer), titled with their true class and probability.

    Args:
        model_path: a classifier .h5 (or .keras) saved by bc_keras.
        split_dir: a prepared split (image folders; its test/ subset is used).
        out_dir: where `explain_<method>.png` files are written (created).
        methods: any of "gradcam", "occlusion", "lime".
        count: images of each kind (correct, wrong).
        seed: LIME's sampling seed.
        options: `explain.occlusion` / `explain.lime` settings (patch_size, num_samples ...).

    Returns:
        `{method: path written}`, in the order of `methods`.

    Raises:
        ModelFileError: the file is not a classifier. DataError: the split has no test image.
    """
    from bc_keras import models
    from bc_keras.data.files import SUBSET_TEST, list_folder_files

    methods = [explain.check_method(method) for method in methods]
    if not methods or count < 1:
        raise ValueError(
            f"methods must be non-empty and count positive. Received: {methods=}, {count=}"
        )
    model, metadata = models.load_model(model_path)
    if metadata.get("kind") != "classifier":
        raise ModelFileError(
            f"{model_path} is a {metadata.get('kind', 'unknown')} model, not a classifier; "
            "explain the classifier trained from it"
        )
    files = list_folder_files(split_dir, SUBSET_TEST)
    dataset = inference.model_inputs(files.paths, metadata)
    tta = bool(metadata.get("tta", False))
    probabilities = inference.predict_probabilities(model, dataset, tta=tta)
    threshold = float(metadata.get("threshold", 0.5))
    chosen = choose_examples(files.labels, probabilities, threshold, count)
    if not chosen:  # list_folder_files refuses an empty subset, so this is a safeguard
        raise DataError(f"{split_dir}/test holds no image to explain")
    paths = [files.paths[i] for i in chosen]
    shown = shown_images(paths, metadata)
    inputs = model_inputs(shown, metadata)
    titles = []
    for index in chosen:
        label, probability = int(files.labels[index]), float(probabilities[index])
        verdict = "correct" if int(probability >= threshold) == label else "WRONG"
        titles.append(f"{verdict}: {CLASS_NAMES[label]}\np(malignant)={probability:.2f}")
    written = {}
    for method in methods:
        maps = explain.explain(model, inputs, method, shown, seed=seed, **options)
        path = Path(out_dir) / PANEL_FILE.format(method=method)
        title = explain.METHOD_TITLES[method]
        written[method] = gradcam.plot_gradcam_panel(shown, maps, titles, path, map_title=title)
    return written

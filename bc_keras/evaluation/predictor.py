"""The Python face of a saved classifier: `bc_keras.load_model(path)` gives a `Predictor` that
takes image files, folders or uint8 RGB arrays and applies what the model file stores — input
size and resizing, preprocessing, test-time augmentation and the decision threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from bc_keras import models
from bc_keras.config import PREPROCESS_RESCALE
from bc_keras.data.decode import DEFAULT_INTERPOLATION, resize_like_pil
from bc_keras.data.pipeline import apply_preprocess
from bc_keras.errors import DataError, ModelFileError
from bc_keras.evaluation.inference import (
    collect_images,
    model_inputs,
    predict_probabilities,
    stain_normalizer_of,
)
from bc_keras.histology.breakhis import CLASS_NAMES
from bc_keras.histology.images import check_images

KIND_CLASSIFIER = "classifier"


class Predictor:
    """A loaded bc_keras classifier with its stored input contract.

    `predict_proba(images)` returns the malignant probability of each image, `predict(images)`
    the 0/1 decision at the stored threshold. `images` is an image file or folder (searched
    recursively), a list of them, a uint8 RGB array `[H, W, 3]` or `[N, H, W, 3]` (any size:
    resized exactly as the training pipeline resized files), a list of such arrays, or a
    tensor of the same. A model trained on a stain-normalised split normalises raw images the
    same way first (the normaliser is stored in the model).
    """

    def __init__(self, model, metadata: dict, path=None):
        if metadata.get("kind") != KIND_CLASSIFIER:
            raise ModelFileError(
                f"{path or 'the model'} is a {metadata.get('kind', 'unknown')} model, not a "
                "classifier; load a .h5 saved by train_cnn.py, train_transfer.py or "
                "train_simclr.py finetune|linear"
            )
        self.keras_model = model
        self.metadata = metadata
        self.path = None if path is None else Path(path)
        self.image_size = int(metadata["image_size"])
        self.preprocess = metadata.get("preprocess", PREPROCESS_RESCALE)
        self.interpolation = metadata.get("interpolation", DEFAULT_INTERPOLATION)
        self.threshold = float(metadata.get("threshold", 0.5))
        self.tta = bool(metadata.get("tta", False))
        self.class_names = CLASS_NAMES
        # The stain normaliser of a model trained on a normalised split (None otherwise).
        self.normalizer = stain_normalizer_of(metadata)

    def __repr__(self) -> str:
        return (
            f"Predictor({self.path or self.keras_model.name}: {self.image_size} px, "
            f"preprocess {self.preprocess}, threshold {self.threshold:.4g}, tta {self.tta})"
        )

    def _array_dataset(self, images, batch_size: int):
        if self.normalizer is not None:  # at full size, as normalize_stains.py normalised
            images = [self.normalizer.transform(image) for image in images]
        resized = [
            resize_like_pil(tf.convert_to_tensor(image), self.image_size, self.interpolation)
            for image in images
        ]
        batch = tf.cast(tf.stack(resized), tf.float32)
        dataset = tf.data.Dataset.from_tensor_slices(batch).batch(batch_size)
        return dataset.map(lambda x: apply_preprocess(x, self.preprocess))

    def inputs(self, images, batch_size: int = 32):
        """The model inputs of `images` as an unshuffled tf.data dataset, and their count."""
        arrays = _as_arrays(images)
        if arrays is not None:
            return self._array_dataset(arrays, batch_size), len(arrays)
        files, _ = collect_images([images] if isinstance(images, str | Path) else list(images))
        scan = check_images(files)
        if scan.skipped:
            shown = "; ".join(f"{Path(p).name}: {reason}" for p, reason in scan.skipped[:3])
            raise DataError(
                f"{len(scan.skipped)} image(s) cannot be read ({shown}); remove or convert them"
            )
        return model_inputs(scan.good, self.metadata, batch_size), len(scan.good)

    def predict_proba(self, images, batch_size: int = 32, tta: bool | None = None) -> np.ndarray:
        """The malignant probability of each image, float64 `[N]` (TTA as stored, unless
        `tta` says otherwise)."""
        dataset, _ = self.inputs(images, batch_size)
        return predict_probabilities(
            self.keras_model, dataset, tta=self.tta if tta is None else tta
        )

    def predict(self, images, batch_size: int = 32, tta: bool | None = None) -> np.ndarray:
        """0 (benign) or 1 (malignant) per image, at the stored threshold."""
        probabilities = self.predict_proba(images, batch_size, tta)
        return (probabilities >= self.threshold).astype(np.int64)


def _as_arrays(images) -> list[np.ndarray] | None:
    """`images` as a list of uint8 `[H, W, 3]` arrays, or None when they name files."""
    if isinstance(images, str | Path):
        return None
    if isinstance(images, list | tuple):
        if not images or isinstance(images[0], str | Path):
            return None
        return [image for item in images for image in _as_arrays(item)]
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
        raise ValueError(
            "images must be uint8 RGB arrays [H, W, 3] or [N, H, W, 3], files or folders. "
            f"Received: an array of shape {array.shape}"
        )
    if array.dtype != np.uint8:
        raise ValueError(
            "images must be uint8 RGB (0-255), as read from an image file: the predictor "
            "applies the model's own preprocessing. Received: dtype="
            f"{array.dtype}"
        )
    return list(array)


def load_model(path) -> Predictor:
    """A saved bc_keras classifier as a `Predictor` (the file is checked as untrusted input,
    see `bc_keras.models.load_model`)."""
    model, metadata = models.load_model(path)
    return Predictor(model, metadata, path)

"""The self-contained inference model of a bc_keras classifier: uint8 RGB images of any size
in, the malignant probability out, with everything the training pipeline did in between
(PIL's resize, the model's preprocessing, test-time augmentation) as Keras operations, so that
the one functional model saves as a plain `.keras`, exports as a SavedModel and converts to
LiteRT with no bc_keras code at inference."""

from __future__ import annotations

import keras
from keras import ops

from bc_keras.config import PREPROCESS_RESCALE
from bc_keras.data.decode import DEFAULT_INTERPOLATION
from bc_keras.data.pipeline import apply_preprocess
from bc_keras.export.resize import DEFAULT_MAX_SIDE, pil_resize

INPUT_NAME = "images"
OUTPUT_NAME = "probability"
# The 8 symmetries of the square, as `bc_keras.evaluation.inference.dihedral_view` numbers
# them: rotation by 90 * (index % 4) degrees, mirrored left-right when index >= 4.
DIHEDRAL_VIEWS = 8


def dihedral_view(images, index: int):
    """View `index` (0-7) of `[n, h, w, c]` images in Keras operations, equal to
    `bc_keras.evaluation.inference.dihedral_view` (tf.image.rot90 turns counter-clockwise)."""
    rotated = images
    for _ in range(index % 4):  # a quarter turn counter-clockwise: mirror, then transpose
        rotated = ops.transpose(ops.flip(rotated, axis=2), (0, 2, 1, 3))
    return ops.flip(rotated, axis=2) if index >= 4 else rotated


def inference_model(
    network: keras.Model,
    metadata: dict,
    tta: bool | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
    dtype: str = "float64",
) -> keras.Model:
    """A functional model from uint8 `[n, h, w, 3]` images (any h, w up to `max_side`; all
    images of one call share a size) to the malignant probability `[n]` (float32).

    Args:
        network: the saved classifier (its input is the preprocessed `[n, s, s, 3]` batch).
        metadata: the classifier's .h5 metadata (image size, interpolation, preprocessing,
            test-time augmentation).
        tta: average the 8 dihedral views (None: as the model was saved).
        max_side: the largest input side the resize's window covers; an image with a longer
            side gets a NaN probability rather than a wrong one.
        dtype: the resize coefficients' precision: float64 is PIL's exactly; LiteRT has float32
            only (see `bc_keras.export.resize`).
    """
    size = int(metadata["image_size"])
    interpolation = metadata.get("interpolation", DEFAULT_INTERPOLATION)
    preprocess = metadata.get("preprocess", PREPROCESS_RESCALE)
    tta = bool(metadata.get("tta", False)) if tta is None else tta
    images = keras.Input((None, None, 3), dtype="uint8", name=INPUT_NAME)
    resized = pil_resize(images, size, interpolation, max_side, dtype)
    inputs = apply_preprocess(ops.cast(resized, "float32"), preprocess)
    if tta:
        # The 8 views as one batch through one call of the network: its weights appear once in
        # the graph (an int8 LiteRT export would otherwise quantise them once per view).
        views = ops.concatenate([dihedral_view(inputs, i) for i in range(DIHEDRAL_VIEWS)], axis=0)
        outputs = ops.reshape(ops.cast(network(views), "float32"), (DIHEDRAL_VIEWS, -1))
        probability = ops.mean(outputs, axis=0)
    else:
        probability = ops.reshape(ops.cast(network(inputs), "float32"), (-1,))
    # A side beyond the resize's window would be resized wrongly: NaN says so.
    line = ops.cast(images[:1, :, :1, 0], "float32")
    column = ops.cast(images[:1, :1, :, 0], "float32")
    longest = ops.maximum(ops.sum(ops.ones_like(line)), ops.sum(ops.ones_like(column)))
    probability = ops.where(longest <= float(max_side), probability, float("nan"))
    return keras.Model(images, {OUTPUT_NAME: probability}, name="bc_keras_inference")

"""The cross-fitted ensemble: one model whose malignant probability is the mean of its K fold
models' (issue 18), saved and loaded like any classifier."""

from __future__ import annotations

import keras

from bc_keras.models.classifier import OUTPUT_NAME

ENSEMBLE_NAME = "cross_fit_ensemble"
MEMBER_NAME = "member_{index}"
INPUT_NAME = "image"


def member_name(index: int) -> str:
    """The name of fold model `index` (1-based) inside an ensemble."""
    return MEMBER_NAME.format(index=index)


def build_ensemble(members: list[keras.Model], image_size: int) -> keras.Model:
    """A functional model averaging the float32 sigmoid outputs of `members`.

    Each member keeps its own layers and weights inside the ensemble, as a nested model named
    `member_1` ... `member_K` (its layers' names may repeat across members), so the saved .h5
    holds the K fold models and `predict` gives the mean of their probabilities.

    Args:
        members: 2 or more classifiers with one `(None, image_size, image_size, 3)` input and
            one `(None, 1)` probability output.
        image_size: the side of the square input.
    """
    if len(members) < 2:
        raise ValueError(
            f"An ensemble needs at least 2 members. Received: {len(members)} member(s)"
        )
    inputs = keras.Input((image_size, image_size, 3), name=INPUT_NAME)
    outputs = []
    for index, member in enumerate(members, start=1):
        if tuple(member.inputs[0].shape[1:]) != (image_size, image_size, 3):
            raise ValueError(
                f"Member {index} takes inputs of shape {tuple(member.inputs[0].shape[1:])}, not "
                f"{(image_size, image_size, 3)}. Received: image_size={image_size}"
            )
        # A new name over the same layers: the K members would otherwise share one name.
        renamed = keras.Model(member.inputs[0], member.outputs[0], name=member_name(index))
        outputs.append(renamed(inputs))
    mean = keras.layers.Average(name=OUTPUT_NAME, dtype="float32")(outputs)
    return keras.Model(inputs, mean, name=ENSEMBLE_NAME)


def ensemble_members(model: keras.Model) -> list[keras.Model]:
    """The fold models of an ensemble built by `build_ensemble` (empty for any other model)."""
    if model.name != ENSEMBLE_NAME:
        return []
    return [
        layer
        for layer in model.layers
        if isinstance(layer, keras.Model) and layer.name.startswith(MEMBER_NAME.split("{")[0])
    ]

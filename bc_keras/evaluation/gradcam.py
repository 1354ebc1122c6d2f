"""Grad-CAM heatmaps (Selvaraju et al., 2017) for the sigmoid classifiers, nested backbones too."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
from PIL import Image

from bc_keras.models.ensemble import ensemble_members

TARGET_MALIGNANT = "malignant"
TARGET_BENIGN = "benign"
TARGETS = (TARGET_MALIGNANT, TARGET_BENIGN)
# Joins the names of a layer path: "backbone/conv_pw_13_relu" is a layer inside "backbone".
PATH_SEPARATOR = "/"
DEFAULT_COLORMAP = "jet"
# One image / overlay pair of a panel takes 2 cells of this many inches; saved at PANEL_DPI.
PANEL_CELL_INCHES = (2.0, 2.3)
PANEL_DPI = 110


def _single_output(layer):
    """A layer's symbolic output, or None when it has several outputs or call sites."""
    try:
        output = layer.output
    except (AttributeError, ValueError):
        return None
    return output if hasattr(output, "shape") else None


def _output_rank(layer) -> int | None:
    output = _single_output(layer)
    shape = None if output is None else output.shape
    return None if shape is None else len(shape)


def _is_feature_map(layer) -> bool:
    return not isinstance(layer, keras.layers.InputLayer) and _output_rank(layer) == 4


def _layers_with_paths(model: keras.Model, prefix: tuple[str, ...] = ()):
    """Every layer of `model` and of the models nested in it, depth-first in graph order."""
    for layer in model.layers:
        path = (*prefix, layer.name)
        yield path, layer
        if isinstance(layer, keras.Model):
            yield from _layers_with_paths(layer, path)


def feature_map_paths(model: keras.Model) -> list[tuple[str, ...]]:
    """The paths of the layers with a 4-D output, nested models searched, in graph order.

    A nested model is represented by its own layers rather than by itself, so that the last
    path is the innermost name of the last feature map.
    """
    return [
        path
        for path, layer in _layers_with_paths(model)
        if not isinstance(layer, keras.Model) and _is_feature_map(layer)
    ]


def _format_paths(paths) -> str:
    return ", ".join(PATH_SEPARATOR.join(path) for path in paths)


def find_target_layer(model: keras.Model, layer_name: str | None = None) -> tuple[str, ...]:
    """The path of the layer whose feature map Grad-CAM weighs.

    Args:
        model: a functional or sequential classifier, possibly holding nested models.
        layer_name: None for the last layer with a 4-D output (the last convolutional feature
            map, inside a nested backbone when there is one); else a layer name, searched in
            `model` first and then in its nested models, or a path such as
            "backbone/conv_pw_13_relu" where a name is ambiguous.

    Returns:
        The layer names from `model` down to the layer, e.g. `("backbone", "conv_pw_13_relu")`
        for a transfer model or `("pool3",)` for the baseline CNN.

    Raises:
        ValueError: if the layer is unknown, ambiguous or has no 4-D output; the message lists
            the layers that can be used.
    """
    candidates = feature_map_paths(model)
    if layer_name is None:
        if not candidates:
            raise ValueError(
                f"Grad-CAM needs a layer with a 4-D (batch, height, width, channels) output, and "
                f"{model.name} has none. Received: model={model.name!r}"
            )
        return candidates[-1]
    if not isinstance(layer_name, str) or not layer_name:
        raise ValueError(f"layer_name must be a layer's name or None. Received: {layer_name=!r}")
    layers = dict(_layers_with_paths(model))
    if PATH_SEPARATOR in layer_name:
        matches = [tuple(layer_name.split(PATH_SEPARATOR))]
    elif (layer_name,) in layers:
        matches = [(layer_name,)]
    else:
        matches = [path for path in layers if path[-1] == layer_name]
    if len(matches) > 1:
        raise ValueError(
            f"Several layers of {model.name} are named {layer_name!r}: {_format_paths(matches)}; "
            f"pass one of these paths. Received: layer_name={layer_name!r}"
        )
    if not matches or matches[0] not in layers or not _is_feature_map(layers[matches[0]]):
        known = "unknown" if not matches or matches[0] not in layers else "not a 4-D feature map"
        raise ValueError(
            f"layer_name is {known} in {model.name}; Grad-CAM needs a layer with a 4-D output, "
            f"one of: {_format_paths(candidates)}. Received: layer_name={layer_name!r}"
        )
    return matches[0]


def _sigmoid_logit(layer, inputs):
    """The logit (pre-activation) of a sigmoid output layer, in float32."""
    if getattr(layer, "activation", None) is not keras.activations.sigmoid:
        raise ValueError(
            "Grad-CAM expects a model whose output layer applies a sigmoid (Dense(1, sigmoid) or "
            f"Activation('sigmoid')). Received: output_layer={layer.name!r}"
        )
    inputs = tf.cast(inputs, tf.float32)
    if isinstance(layer, keras.layers.Activation):
        return inputs
    if not isinstance(layer, keras.layers.Dense):
        raise ValueError(
            f"The sigmoid output layer must be a Dense or an Activation layer. "
            f"Received: output_layer={type(layer).__name__}"
        )
    logits = tf.matmul(inputs, tf.cast(layer.kernel, tf.float32))
    if layer.bias is not None:
        logits = logits + tf.cast(layer.bias, tf.float32)
    return logits


def _call_inference(operation, args, kwargs):
    if isinstance(operation, keras.layers.Layer):
        kwargs = {**kwargs, "training": False}
    return operation(*args, **kwargs)


def _run_graph(model: keras.Model, inputs, operation_fn):
    """Runs `model` on `inputs`, computing each layer as `operation_fn(layer)(*args, **kwargs)`.

    This is how a feature map inside a nested model is reached: the nested model is not called
    as one layer but run through, layer by layer, in the same forward pass (see `gradcam`).
    """
    inputs = keras.tree.flatten(inputs)
    if isinstance(model, keras.Sequential):
        (outputs,) = inputs
        for layer in model.layers:
            outputs = operation_fn(layer)(outputs)
        return outputs
    if not hasattr(model, "_run_through_graph"):
        raise ValueError(
            "Grad-CAM needs a functional or sequential model (a subclassed model has no graph "
            f"to take a feature map from). Received: model={type(model).__name__}"
        )
    # Keras' own functional call runs the graph the same way, with the same operation_fn hook.
    return model._run_through_graph(inputs, operation_fn=operation_fn)


def _capturing_operation_fn(model, path, tape, captured, output_layer=None):
    """The `operation_fn` that records the feature map at `path` (watched by `tape`) and, for
    the top-level `output_layer`, returns the logit instead of the probability."""
    target = model.get_layer(path[0])

    def operation_fn(operation):
        def call(*args, **kwargs):
            if operation is target and len(path) > 1:
                inner_fn = _capturing_operation_fn(operation, path[1:], tape, captured)
                return _run_graph(operation, args, inner_fn)
            if operation is output_layer:
                return _sigmoid_logit(operation, args[0])
            outputs = _call_inference(operation, args, kwargs)
            if operation is target:
                if captured:
                    raise ValueError(
                        f"Layer {path[0]!r} is called more than once in {model.name}, so its "
                        f"feature map is ambiguous; choose another layer. Received: {path=}"
                    )
                tape.watch(outputs)
                captured.append(outputs)
            return outputs

        return call

    return operation_fn


def _output_layer(model: keras.Model):
    """The layer computing the model's (batch, 1) sigmoid output."""
    outputs = model.outputs
    if len(outputs) != 1 or tuple(outputs[0].shape[1:]) != (1,):
        raise ValueError(
            "Grad-CAM expects a binary classifier with one (batch, 1) sigmoid output. Received: "
            f"output_shapes={[tuple(output.shape) for output in outputs]}"
        )
    if isinstance(model, keras.Sequential):
        layer = model.layers[-1]
    else:
        layer = next((layer for layer in model.layers if layer.name in model.output_names), None)
    if layer is None or isinstance(layer, keras.Model):
        raise ValueError(
            "Grad-CAM expects the model's output to come from a sigmoid layer of its own (not "
            f"from a nested model or an op). Received: output={outputs[0].name!r}"
        )
    return layer


def _gradcam_batch(model, images, path, output_layer, sign: float):
    """Grad-CAM of one batch at feature-map resolution, and the probabilities, in float32."""
    captured = []
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        operation_fn = _capturing_operation_fn(model, path, tape, captured, output_layer)
        logits = keras.tree.flatten(_run_graph(model, images, operation_fn))[0]
        # Samples never interact in inference mode, so the sum's gradient is per sample.
        score = tf.reduce_sum(sign * logits)
    features = captured[0]
    gradients = tape.gradient(score, features)
    features = tf.cast(features, tf.float32)
    if gradients is None:  # the score does not depend on the feature map at all
        gradients = tf.zeros_like(features)
    gradients = tf.cast(gradients, tf.float32)
    channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    maps = tf.nn.relu(tf.reduce_sum(channel_weights * features, axis=-1))
    return maps, tf.sigmoid(tf.reshape(logits, [-1]))


def _check_images(model: keras.Model, images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(
            "images must be a non-empty batch (count, height, width, channels), preprocessed as "
            f"for the model. Received: images.shape={images.shape}"
        )
    expected = tuple(model.inputs[0].shape[1:])
    if any(e is not None and e != got for e, got in zip(expected, images.shape[1:], strict=True)):
        raise ValueError(
            f"{model.name} takes {expected} images. Received: images.shape={images.shape}"
        )
    return images.astype(np.float32, copy=False)


def gradcam(
    model: keras.Model,
    images,
    layer_name: str | None = None,
    target: str = TARGET_MALIGNANT,
    batch_size: int = 32,
    return_probabilities: bool = False,
):
    """Grad-CAM heatmaps of a binary sigmoid classifier, one per image, in [0, 1].

    The class score is the logit z of the malignant probability p = sigmoid(z), not p itself:
    dp/dA = p (1 - p) dz/dA vanishes for confident predictions (and is exactly 0 once p rounds
    to 1 in float32), while z keeps its gradient, as the paper's pre-softmax score does. For
    "benign" the score is -z, the logit of 1 - p. Channel weights are the spatially averaged
    gradients of the score with respect to the feature map; the map is the ReLU of the
    weighted sum of channels, resized (bilinear) to the input size and divided by its maximum,
    so a map without positive evidence stays all zeros.

    The model is run in inference mode (`training=False`) and left unchanged. A feature map
    inside a nested model (the transfer models' "backbone", the SimCLR classifier's encoder)
    cannot be a model output next to the outer output ("graph disconnected"), so the nested
    model is run through layer by layer inside the outer forward pass and the feature map is
    taken, and watched, on the way. Models built under mixed_float16 work: the logit and the
    maps are computed in float32 (the gradients come back through the float16 layers and are
    cast); a model whose activations underflow float16 gets all-zero maps, as its output says.

    Args:
        model: a functional (or sequential) classifier with one Dense(1, sigmoid) output.
        images: `[N, H, W, 3]`, preprocessed exactly as for `model.predict`.
        layer_name: the feature-map layer (see `find_target_layer`); None for the last one.
        target: "malignant" or "benign", the class whose evidence is shown.
        batch_size: how many images go through the model at once.
        return_probabilities: also return the malignant probabilities.

    Returns:
        float32 `[N, H, W]` heatmaps; with `return_probabilities`, `(heatmaps, probabilities)`
        where `probabilities` is float32 `[N]`.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}. Received: target={target!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive. Received: batch_size={batch_size}")
    images = _check_images(model, images)
    members = ensemble_members(model)
    if members:
        return _ensemble_gradcam(members, images, layer_name, target, batch_size, return_probabilities)
    path = find_target_layer(model, layer_name)
    output_layer = _output_layer(model)
    sign = 1.0 if target == TARGET_MALIGNANT else -1.0
    size = images.shape[1:3]
    heatmaps, probabilities = [], []
    for start in range(0, len(images), batch_size):
        batch = tf.convert_to_tensor(images[start : start + batch_size])
        maps, batch_probabilities = _gradcam_batch(model, batch, path, output_layer, sign)
        maps = tf.image.resize(maps[..., None], size, method="bilinear")[..., 0]
        peaks = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
        maps = tf.where(peaks > 0, maps / tf.where(peaks > 0, peaks, 1.0), 0.0)
        heatmaps.append(maps.numpy())
        probabilities.append(batch_probabilities.numpy())
    heatmaps = np.clip(np.concatenate(heatmaps), 0.0, 1.0)
    if return_probabilities:
        return heatmaps, np.concatenate(probabilities)
    return heatmaps


def _ensemble_gradcam(members, images, layer_name, target, batch_size, return_probabilities):
    """A cross-fitted ensemble's map: the mean of its members' maps (each in [0, 1]), scaled
    to a peak of 1 again. The ensemble's probability is the mean of the members' sigmoids, so
    no single feature map carries its logit; each member's evidence counts equally instead."""
    results = [
        gradcam(member, images, layer_name, target, batch_size, return_probabilities=True)
        for member in members
    ]
    mean = np.mean([maps for maps, _ in results], axis=0)
    peaks = mean.max(axis=(1, 2), keepdims=True)
    heatmaps = np.where(peaks > 0, mean / np.where(peaks > 0, peaks, 1.0), 0.0).astype(np.float32)
    if return_probabilities:
        return heatmaps, np.mean([p for _, p in results], axis=0).astype(np.float32)
    return heatmaps


def overlay(
    image_rgb_uint8, heatmap, alpha: float = 0.4, colormap: str = DEFAULT_COLORMAP
) -> np.ndarray:
    """An image with a heatmap blended over it: `(1 - alpha) * image + alpha * colormap(map)`.

    Args:
        image_rgb_uint8: `[H, W, 3]` uint8 RGB image (as shown, not preprocessed).
        heatmap: `[h, w]` values in [0, 1]; resized (bilinear) to `[H, W]` when it differs.
        alpha: the heatmap's opacity, in [0, 1].
        colormap: a matplotlib colormap name.

    Returns:
        `[H, W, 3]` uint8 RGB.
    """
    image = np.asarray(image_rgb_uint8)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            "image_rgb_uint8 must be a uint8 (height, width, 3) RGB image. Received: "
            f"shape={image.shape}, dtype={image.dtype}"
        )
    if heatmap.ndim != 2 or not np.all(np.isfinite(heatmap)):
        raise ValueError(
            f"heatmap must be a finite (height, width) map. Received: shape={heatmap.shape}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]. Received: alpha={alpha}")
    height, width = image.shape[:2]
    if heatmap.shape != (height, width):
        resized = Image.fromarray(heatmap, mode="F").resize((width, height), Image.BILINEAR)
        heatmap = np.asarray(resized, dtype=np.float32)
    colours = matplotlib.colormaps[colormap](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def plot_gradcam_panel(
    images_uint8,
    heatmaps,
    titles,
    path,
    columns: int = 4,
    alpha: float = 0.4,
    colormap: str = DEFAULT_COLORMAP,
    map_title: str = "Grad-CAM",
) -> Path:
    """A PNG grid of image / heat-map overlay pairs (Grad-CAM's, or another explanation's),
    each pair under its title.

    Args:
        images_uint8: N uint8 RGB images `[H, W, 3]` (as shown, not preprocessed).
        heatmaps: N maps in [0, 1], e.g. from `gradcam`.
        titles: N titles, e.g. "true malignant, p=0.91".
        path: the .png file to write (folders are created).
        columns: image / overlay pairs per row (a row has twice as many panels).
        alpha, colormap: see `overlay`.
        map_title: the title over every overlay (the method that made the maps).

    Returns:
        The path written.
    """
    count = len(images_uint8)
    if count == 0 or len(heatmaps) != count or len(titles) != count:
        raise ValueError(
            "images_uint8, heatmaps and titles must be non-empty and of the same length. "
            f"Received: lengths={(count, len(heatmaps), len(titles))}"
        )
    if columns < 1:
        raise ValueError(f"columns must be positive. Received: columns={columns}")
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    cell_width, cell_height = PANEL_CELL_INCHES
    figure, axes = plt.subplots(
        rows,
        2 * columns,
        figsize=(2 * columns * cell_width, rows * cell_height),
        squeeze=False,
    )
    for axis in axes.flat:
        axis.axis("off")
    for index, (image, heatmap, title) in enumerate(
        zip(images_uint8, heatmaps, titles, strict=True)
    ):
        row, column = divmod(index, columns)
        image_axis, overlay_axis = axes[row, 2 * column], axes[row, 2 * column + 1]
        image_axis.imshow(image)
        image_axis.set_title(title, fontsize=9)
        overlay_axis.imshow(overlay(image, heatmap, alpha, colormap))
        overlay_axis.set_title(map_title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=PANEL_DPI, format="png")
    plt.close(figure)
    return path

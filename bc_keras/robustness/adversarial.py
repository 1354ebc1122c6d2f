"""The adversarial corruptions of the robustness benchmark: FGSM (Goodfellow et al. 2015) and PGD
(Madry et al. 2018) against a saved classifier, white-box, untargeted, in the L-infinity ball.

Epsilon is in grey levels of the 0-255 pixels and the attack differentiates through the model's
own preprocessing (rescale, caffe, tf, torch or none), so one epsilon is the same change of the
image for every model while each model is attacked on its own input scale (`input_epsilon`
says what one grey level is there). The attacked images stay float pixels: rounding them to
uint8 would erase an epsilon under half a grey level.

The loss is binary cross-entropy; its gradient's sign is that of the margin loss
`(1 - 2 y) * logit` (BCE is increasing in it), which is what is differentiated: on the logit
before the sigmoid when the model ends in bc_keras' sigmoid head, so that a confident model
(a probability of exactly 1.0 in float32) still has a gradient. With test-time augmentation the
attack is on the mean logit of the 8 views the prediction averages.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from bc_keras.data.pipeline import apply_preprocess
from bc_keras.evaluation.inference import DIHEDRAL_VIEWS, dihedral_view
from bc_keras.models.classifier import OUTPUT_NAME
from bc_keras.robustness.corruptions import PGD_STEP_SHARE, PGD_STEPS, image_rng

# Probabilities are clipped this far from 0 and 1 for the log-odds of a model without
# bc_keras' sigmoid head (a cross-fitted ensemble's mean).
PROBABILITY_EPSILON = 1e-7
PIXEL_MAX = 255.0


def logit_function(model: keras.Model):
    """`inputs -> logits [n]` of a classifier: the pre-activation of its final sigmoid Dense
    (bc_keras' head), else the log-odds of its probability (clipped, so saturated images of
    such a model get no gradient)."""
    head = next((layer for layer in model.layers if layer.name == OUTPUT_NAME), None)
    is_sigmoid_dense = (
        isinstance(head, keras.layers.Dense)
        and getattr(head.activation, "__name__", "") == "sigmoid"
        and head.output is model.outputs[0]
    )
    if is_sigmoid_dense:
        features = keras.Model(model.inputs, head.input)

        def logits(inputs):
            values = tf.cast(features(inputs, training=False), tf.float32)
            kernel = tf.cast(head.kernel, tf.float32)
            return tf.reshape(tf.matmul(values, kernel) + tf.cast(head.bias, tf.float32), [-1])

        return logits

    def log_odds(inputs):
        probability = tf.reshape(tf.cast(model(inputs, training=False), tf.float32), [-1])
        probability = tf.clip_by_value(probability, PROBABILITY_EPSILON, 1 - PROBABILITY_EPSILON)
        return tf.math.log(probability) - tf.math.log1p(-probability)

    return log_odds


def loss_gradient(model: keras.Model, preprocess: str, tta: bool = False, compiled: bool = True):
    """A function `(pixels [n, h, w, 3] float32 in 0-255, labels [n]) -> d loss / d pixels`,
    the loss being the margin `(1 - 2 y) * logit` summed over the batch (each image's gradient
    is its own); a `tf.function` unless not `compiled`. With `tta` the 8 views go through the
    network as one batch (inference mode: one view's result does not depend on the others)."""
    logits = logit_function(model)
    views = DIHEDRAL_VIEWS if tta else 1
    size = int(model.inputs[0].shape[1])

    def gradient(pixels, labels):
        with tf.GradientTape() as tape:
            tape.watch(pixels)
            inputs = apply_preprocess(pixels, preprocess)
            stacked = tf.concat([dihedral_view(inputs, view) for view in range(views)], axis=0)
            logit = tf.reduce_mean(tf.reshape(logits(stacked), [views, -1]), axis=0)
            loss = tf.reduce_sum((1.0 - 2.0 * labels) * logit)
        return tape.gradient(loss, pixels)

    if not compiled:
        return gradient
    signature = (
        tf.TensorSpec([None, size, size, 3], tf.float32),
        tf.TensorSpec([None], tf.float32),
    )
    return tf.function(gradient, input_signature=signature, reduce_retracing=True)


def _batches(count: int, batch_size: int):
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


def _check_epsilon(epsilon) -> float:
    epsilon = float(epsilon)
    if not np.isfinite(epsilon) or epsilon < 0:
        raise ValueError(
            f"epsilon must be a non-negative number of grey levels. Received: {epsilon=}"
        )
    return epsilon


def fgsm(model, pixels, labels, epsilon, preprocess: str, tta: bool = False, batch_size: int = 32,
         gradient=None) -> np.ndarray:  # fmt: skip
    """The fast gradient sign method: `clip(x + epsilon * sign(d loss / d x), 0, 255)`.

    Args:
        model: the classifier (Keras).
        pixels: the clean images, `[n, h, w, 3]` in 0-255 (uint8 or float).
        labels: 0/1 per image.
        epsilon: the step in grey levels.
        preprocess: the model's preprocessing (its metadata's `preprocess`).
        tta: attack the mean of the 8 dihedral views.
        gradient: a `loss_gradient` of the model, to reuse one compiled function.

    Returns:
        float32 attacked images, within epsilon of `pixels` and in 0-255.
    """
    epsilon = _check_epsilon(epsilon)
    gradient = gradient or loss_gradient(model, preprocess, tta)
    pixels = np.asarray(pixels, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.float32)
    out = np.empty_like(pixels)
    for part in _batches(len(pixels), batch_size):
        direction = np.sign(gradient(tf.constant(pixels[part]), tf.constant(labels[part])).numpy())
        out[part] = np.clip(pixels[part] + epsilon * direction, 0.0, PIXEL_MAX)
    return out


def pgd(model, pixels, labels, epsilon, preprocess: str, tta: bool = False, *, seed: int = 0,
        indices=None, steps: int = PGD_STEPS, step_share: float = PGD_STEP_SHARE,
        batch_size: int = 32, gradient=None) -> np.ndarray:  # fmt: skip
    """Projected gradient descent: a uniform random start in the epsilon ball, then `steps`
    signed steps of `step_share * epsilon`, each projected back into the ball and 0-255.

    The random start of image `i` is `epsilon` times a uniform field in [-1, 1] drawn from
    `image_rng(seed, "pgd", index)` (see `bc_keras.robustness.corruptions`), so the attack is
    deterministic given the seed and does not depend on the batch; `indices` are the images'
    positions in their split (default 0..n-1). Other arguments as `fgsm`.
    """
    epsilon = _check_epsilon(epsilon)
    gradient = gradient or loss_gradient(model, preprocess, tta)
    clean = np.asarray(pixels, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.float32)
    indices = range(len(clean)) if indices is None else indices
    starts = [
        epsilon * image_rng(seed, "pgd", index).uniform(-1.0, 1.0, clean.shape[1:])
        for index in indices
    ]
    low = np.maximum(clean - epsilon, 0.0)
    high = np.minimum(clean + epsilon, PIXEL_MAX)
    attacked = np.clip(clean + np.asarray(starts, dtype=np.float32).reshape(clean.shape), low, high)
    for _ in range(int(steps)):
        for part in _batches(len(clean), batch_size):
            grad = gradient(tf.constant(attacked[part]), tf.constant(labels[part])).numpy()
            stepped = attacked[part] + step_share * epsilon * np.sign(grad)
            attacked[part] = np.clip(stepped, low[part], high[part])
    return attacked.astype(np.float32)


def input_epsilon(preprocess: str, grey_levels: float = 1.0) -> list[float]:
    """What `grey_levels` of the 0-255 pixels are on the model's input scale, per input
    channel (R, G, B as the pixels; caffe's preprocessing reorders them to B, G, R)."""
    base = np.full((1, 1, 1, 3), 128.0, dtype=np.float32)
    moved = apply_preprocess(tf.constant(base + grey_levels), preprocess)
    still = apply_preprocess(tf.constant(base), preprocess)
    return [float(abs(v)) for v in np.asarray(moved - still).reshape(-1)]

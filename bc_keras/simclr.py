"""SimCLR: the NT-Xent loss, the projection head, the contrastive trainer, the classifier built on
the pretrained encoder, and the label-fraction subset for label-efficiency runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from bc_keras.models import sigmoid_output
from bc_keras.resnet import EMBEDDING_DIM, ENCODER_NAME

DEFAULT_TEMPERATURE = 0.5
PROJECTION_HIDDEN_DIM = 256
PROJECTION_OUTPUT_DIM = 128
CLASSIFIER_NAME = "simclr_resnet18_classifier"
# Subtracted from the self-similarity logits: far below any cosine / temperature, yet finite in
# float32 so that 0 * mask never makes a NaN.
_SELF_MASK_VALUE = 1e9


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be positive. Received: temperature={temperature}")


def nt_xent_logits_and_labels(z_a, z_b, temperature: float = DEFAULT_TEMPERATURE):
    """The logits and targets of NT-Xent (SimCLR's normalised temperature-scaled cross-entropy).

    The 2N embeddings `[z_a; z_b]` are L2-normalised; logits are their pairwise cosine
    similarities divided by `temperature`, with each anchor's similarity to itself masked out.
    Row i's positive is the other view of the same image (i + N, or i - N); the other 2N - 2
    entries, same-view ones included, are its negatives. Computed in float32 whatever the
    inputs' dtype, so that mixed precision never rounds the softmax.

    Args:
        z_a, z_b: projections of the two views, `[N, dim]`, row i of both from the same image.
        temperature: softmax temperature, positive.

    Returns:
        `(logits, labels)`: float32 `[2N, 2N]` and int32 `[2N]`, the index of each row's positive.
    """
    _check_temperature(temperature)
    z = tf.concat([tf.cast(z_a, tf.float32), tf.cast(z_b, tf.float32)], axis=0)
    z = tf.math.l2_normalize(z, axis=1)
    logits = tf.matmul(z, z, transpose_b=True) / temperature
    size = tf.shape(z)[0]
    logits = logits - _SELF_MASK_VALUE * tf.eye(size, dtype=tf.float32)
    half = size // 2
    labels = tf.concat([tf.range(half, size), tf.range(0, half)], axis=0)
    return logits, labels


def nt_xent_per_anchor(z_a, z_b, temperature: float = DEFAULT_TEMPERATURE):
    """The NT-Xent cross-entropy of each of the 2N anchors, float32 `[2N]`."""
    logits, labels = nt_xent_logits_and_labels(z_a, z_b, temperature)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def nt_xent_loss(z_a, z_b, temperature: float = DEFAULT_TEMPERATURE):
    """NT-Xent (Chen et al., 2020) of two projection batches: the mean over the 2N anchors.

    Args:
        z_a, z_b: `[N, dim]` projections of two views of the same N images.
        temperature: softmax temperature (the report's 0.5).

    Returns:
        A float32 scalar tensor.
    """
    return tf.reduce_mean(nt_xent_per_anchor(z_a, z_b, temperature))


def contrastive_accuracy(z_a, z_b):
    """Top-1 contrastive accuracy: the fraction of the 2N anchors whose most similar other
    embedding is their positive (the other view). Independent of the temperature.

    Returns:
        A float32 scalar tensor in [0, 1].
    """
    logits, labels = nt_xent_logits_and_labels(z_a, z_b, 1.0)
    predicted = tf.argmax(logits, axis=1, output_type=tf.int32)
    return tf.reduce_mean(tf.cast(tf.equal(predicted, labels), tf.float32))


@keras.saving.register_keras_serializable(package="bc_keras")
class NTXentLoss(keras.losses.Loss):
    """NT-Xent as a Keras loss of two projection batches: `loss(z_a, z_b)`.

    The two views take the places of `y_true` and `y_pred`; `call` returns the 2N per-anchor
    losses, which the default reduction averages, as `nt_xent_loss` does.
    """

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, name: str = "nt_xent", **kwargs):
        _check_temperature(temperature)
        super().__init__(name=name, **kwargs)
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        return nt_xent_per_anchor(y_true, y_pred, self.temperature)

    def get_config(self):
        config = super().get_config()
        config.update({"temperature": self.temperature})
        return config


def build_projection_head(
    input_dim: int = EMBEDDING_DIM,
    hidden_dim: int = PROJECTION_HIDDEN_DIM,
    output_dim: int = PROJECTION_OUTPUT_DIM,
    name: str = "projection_head",
) -> keras.Model:
    """SimCLR's projection MLP: Dense(hidden_dim) -> ReLU -> Dense(output_dim).

    Returns:
        A functional `keras.Model` mapping `[batch, input_dim]` to `[batch, output_dim]`.
    """
    for argument, value in (
        ("input_dim", input_dim),
        ("hidden_dim", hidden_dim),
        ("output_dim", output_dim),
    ):
        if value < 1:
            raise ValueError(f"{argument} must be positive. Received: {argument}={value}")
    inputs = keras.Input((input_dim,), name="embedding")
    x = keras.layers.Dense(hidden_dim, name="projection_hidden")(inputs)
    x = keras.layers.ReLU(name="projection_relu")(x)
    outputs = keras.layers.Dense(output_dim, name="projection_output")(x)
    return keras.Model(inputs, outputs, name=name)


class SimCLRTrainer(keras.Model):
    """Owns the encoder and the projection head, and the contrastive step `fit()` runs.

    A batch is `(views_a, views_b)`; the step embeds and projects both views, takes NT-Xent
    under a `tf.GradientTape` and updates encoder and head together. `fit()` compiles the step
    with `tf.function`, and so brings the progress bar and every Keras callback with it.
    `train_step_traces` counts how often the step was traced: with fixed batch shapes
    (`drop_remainder=True`) it stays at 1 however many batches and epochs run.
    """

    def __init__(
        self,
        encoder: keras.Model,
        projection_head: keras.Model,
        temperature: float = DEFAULT_TEMPERATURE,
        **kwargs,
    ):
        _check_temperature(temperature)
        kwargs.setdefault("name", "simclr_trainer")
        super().__init__(**kwargs)
        self.encoder = encoder
        self.projection_head = projection_head
        self.temperature = float(temperature)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="contrastive_accuracy")
        self.train_step_traces = 0
        self.test_step_traces = 0
        # The encoder and head arrive built, so the trainer holds every variable already.
        self.built = True

    def contrastive_variables(self) -> list:
        """The variables the contrastive step trains: the encoder's, then the head's."""
        return self.encoder.trainable_variables + self.projection_head.trainable_variables

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        # Built here, eagerly: slot variables first created inside the compiled step would
        # make tf.function trace the step a second time.
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.contrastive_variables())

    @property
    def metrics(self):
        # Listed here so that fit() and evaluate() reset them at every epoch.
        return [self.loss_tracker, self.accuracy_tracker]

    def call(self, inputs, training=False):
        """Projections `(z_a, z_b)` of a `(views_a, views_b)` pair."""
        views_a, views_b = inputs
        return (
            self.projection_head(self.encoder(views_a, training=training), training=training),
            self.projection_head(self.encoder(views_b, training=training), training=training),
        )

    def _update_metrics(self, loss, z_a, z_b):
        self.loss_tracker.update_state(loss)
        self.accuracy_tracker.update_state(contrastive_accuracy(z_a, z_b))
        return {metric.name: metric.result() for metric in self.metrics}

    def train_step(self, data):
        # Python code: runs once per trace, never per batch, once the step is compiled.
        self.train_step_traces += 1
        views_a, views_b = data
        with tf.GradientTape() as tape:
            z_a, z_b = self((views_a, views_b), training=True)
            loss = nt_xent_loss(z_a, z_b, self.temperature)
            # Replica gradients are summed under a distribution strategy; scale_loss applies
            # the loss scale of a mixed-precision optimizer (and is the identity otherwise).
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled_loss = self.optimizer.scale_loss(loss / replicas)
        variables = self.contrastive_variables()
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(gradients, variables)
        return self._update_metrics(loss, z_a, z_b)

    def test_step(self, data):
        self.test_step_traces += 1
        z_a, z_b = self(data, training=False)
        return self._update_metrics(nt_xent_loss(z_a, z_b, self.temperature), z_a, z_b)

    def get_config(self):
        # The trainer is never saved as a model (the encoder is); this documents its settings.
        return {"name": self.name, "temperature": self.temperature}


def build_simclr_trainer(
    encoder: keras.Model,
    learning_rate: float = 1e-3,
    temperature: float = DEFAULT_TEMPERATURE,
    hidden_dim: int = PROJECTION_HIDDEN_DIM,
    output_dim: int = PROJECTION_OUTPUT_DIM,
) -> SimCLRTrainer:
    """A compiled `SimCLRTrainer` (Adam) around `encoder` and a new projection head.

    Call it inside `bc_keras.models.model_scope` like every other builder.
    """
    head = build_projection_head(int(encoder.output.shape[-1]), hidden_dim, output_dim)
    trainer = SimCLRTrainer(encoder, head, temperature=temperature)
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate))
    return trainer


def build_classifier(
    encoder: keras.Model,
    image_size: int,
    freeze_encoder: bool = False,
    name: str = CLASSIFIER_NAME,
) -> keras.Model:
    """The encoder with the projection head dropped and a Dense(1, sigmoid) head added.

    Args:
        encoder: a (pretrained or fresh) encoder mapping images to embeddings.
        image_size: side of the square input; must match the encoder's input.
        freeze_encoder: start with the encoder frozen (linear evaluation, `--freeze-epochs`).
        name: the model's name.

    Returns:
        A functional `keras.Model`, not compiled (compile it after choosing what is frozen).
    """
    expected = tuple(encoder.input.shape[1:])
    if expected != (image_size, image_size, 3):
        raise ValueError(
            f"The encoder takes {expected} inputs but image_size is {image_size}; pass the size "
            f"it was pretrained with. Received: image_size={image_size}"
        )
    inputs = keras.Input((image_size, image_size, 3), name="image")
    classifier = keras.Model(inputs, sigmoid_output(encoder(inputs)), name=name)
    set_encoder_trainable(classifier, not freeze_encoder)
    return classifier


def classifier_encoder(classifier: keras.Model) -> keras.Model:
    """The encoder nested in a classifier made by `build_classifier`."""
    for layer in classifier.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise ValueError(
        f"{classifier.name} holds no nested encoder model; build it with build_classifier. "
        f"Received: layers={[layer.name for layer in classifier.layers]}"
    )


def set_encoder_trainable(classifier: keras.Model, trainable: bool) -> keras.Model:
    """Freezes or unfreezes the classifier's encoder; recompile the classifier afterwards.

    In Keras 3 a non-trainable BatchNormalization layer runs in inference mode: it normalises
    with its moving statistics and stops updating them. Freezing the encoder therefore also
    keeps its BatchNorm statistics from pretraining, which linear evaluation needs.
    """
    classifier_encoder(classifier).trainable = bool(trainable)
    return classifier


def label_fraction_indices(
    labels, patients: Sequence[str] | None = None, fraction: float = 1.0, seed: int = 42
) -> np.ndarray:
    """The training images kept when only `fraction` of the labels may be used.

    The subset is stratified by class: each class keeps about `fraction` of its images and at
    least one. When `patients` are known, whole patients are drawn per class until that share
    is reached, so the labelled images never split a patient; patients that would overshoot
    the target by more than they help are passed over. Deterministic for a given seed.

    Args:
        labels: the 0/1 label of every training image.
        patients: the patient of every image, or None to draw single images.
        fraction: share of the labelled images to keep, in (0, 1].
        seed: seeds the draw.

    Returns:
        Sorted int64 indices into `labels`.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1]. Received: fraction={fraction}")
    labels = np.asarray(labels)
    if patients is not None and len(patients) != len(labels):
        raise ValueError(
            f"patients and labels must have the same length. Received: "
            f"{len(patients)} patients for {len(labels)} labels"
        )
    if fraction == 1.0:
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        target = max(1, int(round(fraction * len(members))))
        if patients is None:
            chosen.extend(rng.permutation(members)[:target])
            continue
        groups: dict[str, list[int]] = {}
        for index in members:
            groups.setdefault(str(patients[index]), []).append(int(index))
        order = sorted(groups)
        taken = 0
        for position in rng.permutation(len(order)):
            if taken >= target:
                break
            size = len(groups[order[position]])
            # Take the patient when that lands closer to the target than stopping short would.
            if taken == 0 or taken + size - target <= target - taken:
                chosen.extend(groups[order[position]])
                taken += size
    return np.sort(np.asarray(chosen, dtype=np.int64))


def patients_of_paths(paths) -> list[str] | None:
    """The BreaKHis patient of every image path, or None if any file name is not BreaKHis'."""
    from bc_keras.breakhis import parse_filename

    patients = []
    for path in paths:
        try:
            patients.append(parse_filename(Path(path).name).patient)
        except ValueError:
            return None
    return patients


__all__ = [
    "ENCODER_NAME",
    "NTXentLoss",
    "SimCLRTrainer",
    "build_classifier",
    "build_projection_head",
    "build_simclr_trainer",
    "classifier_encoder",
    "contrastive_accuracy",
    "label_fraction_indices",
    "nt_xent_logits_and_labels",
    "nt_xent_loss",
    "nt_xent_per_anchor",
    "patients_of_paths",
    "set_encoder_trainable",
]

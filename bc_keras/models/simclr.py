"""SimCLR: the NT-Xent loss, the projection head, the contrastive trainer and the classifier built
on the pretrained encoder (label fractions are `bc_keras.prepare.subsets`')."""

from __future__ import annotations

import keras
import tensorflow as tf

from bc_keras.models.classifier import sigmoid_output
from bc_keras.models.resnet import EMBEDDING_DIM, ENCODER_NAME

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


def gathered_nt_xent_logits_and_labels(
    z_a, z_b, gathered_z_a, gathered_z_b, offset=0, temperature: float = DEFAULT_TEMPERATURE
):
    """NT-Xent logits of one replica's anchors against the 2M embeddings of the global batch.

    The global batch `[gathered_z_a; gathered_z_b]` holds M images, and this replica's n images
    are its rows `offset` to `offset + n - 1`. Anchor i of view a finds its positive in column
    M + offset + i and itself, masked out, in column offset + i; anchor i of view b the
    reverse. The other 2M - 2 columns are its negatives, as on one device with the whole batch:
    with offset 0 and the local batch as the global one, these are
    `nt_xent_logits_and_labels`' logits and labels. Computed in float32.

    Args:
        z_a, z_b: this replica's projections of the two views, `[n, dim]`.
        gathered_z_a, gathered_z_b: every replica's projections in replica order, `[M, dim]`.
        offset: global index of this replica's first image, an int or an int32 scalar tensor.
        temperature: softmax temperature, positive.

    Returns:
        `(logits, labels)`: float32 `[2n, 2M]` and int32 `[2n]`, the column of each positive.
    """
    _check_temperature(temperature)

    def normalised(first, second):
        views = tf.concat([tf.cast(first, tf.float32), tf.cast(second, tf.float32)], axis=0)
        return tf.math.l2_normalize(views, axis=1)

    anchors = normalised(z_a, z_b)
    candidates = normalised(gathered_z_a, gathered_z_b)
    logits = tf.matmul(anchors, candidates, transpose_b=True) / temperature
    total = tf.shape(gathered_z_a)[0]
    rows = tf.range(tf.shape(z_a)[0]) + tf.cast(offset, tf.int32)
    self_columns = tf.concat([rows, rows + total], axis=0)
    logits = logits - _SELF_MASK_VALUE * tf.one_hot(self_columns, 2 * total, dtype=tf.float32)
    labels = tf.concat([rows + total, rows], axis=0)
    return logits, labels


def gathered_nt_xent_per_anchor(
    z_a, z_b, gathered_z_a, gathered_z_b, offset=0, temperature: float = DEFAULT_TEMPERATURE
):
    """The NT-Xent cross-entropy of each of one replica's 2n anchors against the global batch,
    float32 `[2n]`: views a then views b, as `nt_xent_per_anchor` orders them. Arguments as in
    `gathered_nt_xent_logits_and_labels`."""
    logits, labels = gathered_nt_xent_logits_and_labels(
        z_a, z_b, gathered_z_a, gathered_z_b, offset, temperature
    )
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


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


def cross_replica_nt_xent(z_a, z_b, temperature: float = DEFAULT_TEMPERATURE):
    """NT-Xent of a global batch split over replicas, whose negatives are the whole global batch.

    Call it in replica context (inside `strategy.run`, or anywhere without a strategy). With
    one replica it is `nt_xent_loss` and `contrastive_accuracy` of the local batch. With
    several, the projections of every replica are gathered, as google-research/simclr does, and
    each replica's 2n anchors are scored against all 2M embeddings of the global batch.

    Keras' optimizer sums the gradients of the replicas (an all-reduce SUM in
    `TFOptimizer._all_reduce_sum_gradients`), and the gradient of `all_gather` sums what every
    replica sends back to each slice. So each replica returns the sum of its anchors' losses
    divided by the global anchor count 2M: these shares add up to the global mean loss, and
    their gradients, summed, are the gradient of the single-device loss on the global batch.

    Args:
        z_a, z_b: this replica's projections of the two views, `[n, dim]`.
        temperature: softmax temperature, positive.

    Returns:
        `(replica_loss, loss, accuracy)`: this replica's share of the loss, to differentiate;
        the global batch's mean loss and its contrastive accuracy, the same on every replica
        and without gradient, to report.
    """
    context = tf.distribute.get_replica_context()
    if context is None:
        raise ValueError(
            "cross_replica_nt_xent needs a replica context: call it inside strategy.run(...). "
            f"Received: cross-replica context of {tf.distribute.get_strategy()!r}"
        )
    if context.num_replicas_in_sync == 1:
        loss = nt_xent_loss(z_a, z_b, temperature)
        return loss, loss, contrastive_accuracy(z_a, z_b)
    # Gathered in float32: a projection batch is small, and the loss is float32 anyway.
    z_a, z_b = tf.cast(z_a, tf.float32), tf.cast(z_b, tf.float32)
    gathered_z_a = context.all_gather(z_a, axis=0)
    gathered_z_b = context.all_gather(z_b, axis=0)
    # Each replica's batch size, so that an uneven split of the last batch still finds the
    # right offset.
    sizes = context.all_gather(tf.shape(z_a)[:1], axis=0)
    offset = tf.reduce_sum(sizes[: context.replica_id_in_sync_group])
    logits, labels = gathered_nt_xent_logits_and_labels(
        z_a, z_b, gathered_z_a, gathered_z_b, offset, temperature
    )
    per_anchor = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    anchors = tf.cast(2 * tf.shape(gathered_z_a)[0], tf.float32)
    replica_loss = tf.reduce_sum(per_anchor) / anchors
    predicted = tf.argmax(logits, axis=1, output_type=tf.int32)
    correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))
    loss, correct = context.all_reduce(
        tf.distribute.ReduceOp.SUM, [tf.stop_gradient(replica_loss), correct]
    )
    return replica_loss, loss, correct / anchors


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


def check_dimensions(**dimensions: int) -> None:
    """Raises ValueError naming the first of the layer widths `dimensions` below 1."""
    for argument, value in dimensions.items():
        if value < 1:
            raise ValueError(f"{argument} must be positive. Received: {argument}={value}")


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
    check_dimensions(input_dim=input_dim, hidden_dim=hidden_dim, output_dim=output_dim)
    inputs = keras.Input((input_dim,), name="embedding")
    x = keras.layers.Dense(hidden_dim, name="projection_hidden")(inputs)
    x = keras.layers.ReLU(name="projection_relu")(x)
    outputs = keras.layers.Dense(output_dim, name="projection_output")(x)
    return keras.Model(inputs, outputs, name=name)


class SimCLRTrainer(keras.Model):
    """Owns the encoder and the projection head, and the contrastive step `fit()` runs.

    A batch is `(views_a, views_b)`; the step embeds and projects both views, takes NT-Xent
    under a `tf.GradientTape` and updates encoder and head together. `fit()` compiles the step
    with `tf.function`, and so brings the progress bar and every Keras callback with it. Under
    a distribution strategy the negatives, the loss and the accuracy are those of the global
    batch (`cross_replica_nt_xent`); build the encoder with synchronized BatchNorm
    (`build_resnet18(..., synchronized_batch_norm=True)`) for its statistics to be global too.
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

    def _update_metrics(self, loss, accuracy):
        self.loss_tracker.update_state(loss)
        self.accuracy_tracker.update_state(accuracy)
        return {metric.name: metric.result() for metric in self.metrics}

    def train_step(self, data):
        # Python code: runs once per trace, never per batch, once the step is compiled.
        self.train_step_traces += 1
        views_a, views_b = data
        with tf.GradientTape() as tape:
            z_a, z_b = self((views_a, views_b), training=True)
            # Under a strategy the negatives are the global batch, and replica_loss is this
            # replica's share of its mean loss (see cross_replica_nt_xent). scale_loss applies
            # the loss scale of a mixed-precision optimizer (and is the identity otherwise).
            replica_loss, loss, accuracy = cross_replica_nt_xent(z_a, z_b, self.temperature)
            scaled_loss = self.optimizer.scale_loss(replica_loss)
        variables = self.contrastive_variables()
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(gradients, variables)
        return self._update_metrics(loss, accuracy)

    def test_step(self, data):
        self.test_step_traces += 1
        z_a, z_b = self(data, training=False)
        _, loss, accuracy = cross_replica_nt_xent(z_a, z_b, self.temperature)
        return self._update_metrics(loss, accuracy)

    def get_config(self):
        # The trainer is never saved as a model (the encoder is); this documents its settings.
        return {"name": self.name, "temperature": self.temperature}


def build_simclr_trainer(
    encoder: keras.Model,
    learning_rate: float = 1e-3,
    temperature: float = DEFAULT_TEMPERATURE,
    hidden_dim: int = PROJECTION_HIDDEN_DIM,
    output_dim: int = PROJECTION_OUTPUT_DIM,
    jit_compile: bool = False,
) -> SimCLRTrainer:
    """A compiled `SimCLRTrainer` (Adam) around `encoder` and a new projection head;
    `jit_compile` compiles the contrastive step with XLA.

    Call it inside `bc_keras.models.model_scope` like every other builder.
    """
    head = build_projection_head(int(encoder.output.shape[-1]), hidden_dim, output_dim)
    trainer = SimCLRTrainer(encoder, head, temperature=temperature)
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=jit_compile)
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


__all__ = [
    "ENCODER_NAME",
    "NTXentLoss",
    "SimCLRTrainer",
    "build_classifier",
    "build_projection_head",
    "build_simclr_trainer",
    "classifier_encoder",
    "contrastive_accuracy",
    "cross_replica_nt_xent",
    "gathered_nt_xent_logits_and_labels",
    "gathered_nt_xent_per_anchor",
    "nt_xent_logits_and_labels",
    "nt_xent_loss",
    "nt_xent_per_anchor",
    "set_encoder_trainable",
]

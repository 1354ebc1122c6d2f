"""BYOL (Grill et al., 2020): the regression loss, the projector and predictor MLPs, the cosine
schedule of the target's EMA rate and the trainer whose online network learns to predict the
projection an EMA target network gives of the other view."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from bc_keras.models.simclr import check_dimensions

DEFAULT_EMA_DECAY = 0.996
PROJECTION_HIDDEN_DIM = 256
PROJECTION_OUTPUT_DIM = 128


def check_ema_decay(ema_decay: float) -> None:
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1). Received: ema_decay={ema_decay}")


def ema_decay_at(step, total_steps: int, ema_decay: float = DEFAULT_EMA_DECAY):
    """BYOL's target EMA rate at training step k of K, raised from `ema_decay` to 1 on a
    cosine: `tau_k = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2` (k past K gives 1).

    Args:
        step: k, 0 for the first step; an int or an integer tensor.
        total_steps: K, the training steps of the run, at least 1.
        ema_decay: tau_base, in [0, 1).

    Returns:
        A float32 scalar tensor.
    """
    check_ema_decay(ema_decay)
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive. Received: total_steps={total_steps}")
    # float64: tau is 1 - O(1e-3), and float32 keeps only 4 of its significant digits.
    progress = tf.minimum(tf.cast(step, tf.float64), float(total_steps)) / float(total_steps)
    cosine = (tf.cos(math.pi * progress) + 1.0) / 2.0
    return tf.cast(1.0 - (1.0 - ema_decay) * cosine, tf.float32)


def regression_loss_per_sample(predictions, targets):
    """`2 - 2 cos(p, z)` of each row, float32 `[N]`: the squared distance of the L2-normalised
    prediction and target (0 when they point the same way, 4 when opposite)."""
    predictions = tf.math.l2_normalize(tf.cast(predictions, tf.float32), axis=1)
    targets = tf.math.l2_normalize(tf.cast(targets, tf.float32), axis=1)
    return 2.0 - 2.0 * tf.reduce_sum(predictions * targets, axis=1)


def byol_loss(p_1, p_2, z_1, z_2):
    """BYOL's symmetric loss of a batch: each view's prediction regressed on the target's
    projection of the other view, each direction averaged over the batch and the two added
    (`L + L~` of the paper, in [0, 8]). The targets get no gradient.

    Args:
        p_1, p_2: the online predictions of views 1 and 2, `[N, dim]`.
        z_1, z_2: the target projections of views 1 and 2, `[N, dim]`.

    Returns:
        A float32 scalar tensor.
    """
    z_1, z_2 = tf.stop_gradient(z_1), tf.stop_gradient(z_2)
    return tf.reduce_mean(regression_loss_per_sample(p_1, z_2)) + tf.reduce_mean(
        regression_loss_per_sample(p_2, z_1)
    )


def cross_replica_byol_loss(p_1, p_2, z_1, z_2):
    """`byol_loss` of a global batch split over replicas. Call it in replica context (inside
    `strategy.run`, or anywhere without a strategy).

    Each sample's loss depends on its own views only, so no embedding is gathered: each replica
    returns the sum of its samples' losses divided by the global batch size, and these shares
    add up to the global batch's loss, as Keras' optimizer adds up their gradients.

    Returns:
        `(replica_loss, loss)`: this replica's share, to differentiate, and the global batch's
        loss (the same on every replica, without gradient), to report.
    """
    context = tf.distribute.get_replica_context()
    if context is None:
        raise ValueError(
            "cross_replica_byol_loss needs a replica context: call it inside strategy.run(...). "
            f"Received: cross-replica context of {tf.distribute.get_strategy()!r}"
        )
    z_1, z_2 = tf.stop_gradient(z_1), tf.stop_gradient(z_2)
    if context.num_replicas_in_sync == 1:
        loss = byol_loss(p_1, p_2, z_1, z_2)
        return loss, tf.stop_gradient(loss)
    per_sample = regression_loss_per_sample(p_1, z_2) + regression_loss_per_sample(p_2, z_1)
    size = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.shape(p_1)[0], tf.float32))
    replica_loss = tf.reduce_sum(per_sample) / size
    loss = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(replica_loss))
    return replica_loss, loss


def build_mlp(
    input_dim: int,
    hidden_dim: int = PROJECTION_HIDDEN_DIM,
    output_dim: int = PROJECTION_OUTPUT_DIM,
    name: str = "projector",
    synchronized_batch_norm: bool = False,
) -> keras.Model:
    """BYOL's projector and predictor: Dense(hidden_dim) -> BatchNorm -> ReLU ->
    Dense(output_dim). With `synchronized_batch_norm` the BatchNorm takes the statistics of the
    global batch under a distribution strategy.

    Returns:
        A functional `keras.Model` mapping `[batch, input_dim]` to `[batch, output_dim]`.
    """
    check_dimensions(input_dim=input_dim, hidden_dim=hidden_dim, output_dim=output_dim)
    inputs = keras.Input((input_dim,), name="features")
    x = keras.layers.Dense(hidden_dim, name=f"{name}_hidden")(inputs)
    x = keras.layers.BatchNormalization(synchronized=synchronized_batch_norm, name=f"{name}_bn")(x)
    x = keras.layers.ReLU(name=f"{name}_relu")(x)
    outputs = keras.layers.Dense(output_dim, name=f"{name}_output")(x)
    return keras.Model(inputs, outputs, name=name)


def finalize_normalizations(model: keras.Model) -> keras.Model:
    """Makes every adapted Normalization layer of `model` (nested ones too) compute with the
    mean and variance its variables hold: the layer computes with a copy of them, which
    `set_weights` does not refresh."""
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Normalization) and layer.built:
            layer.finalize_state()
    return model


def copy_network(model: keras.Model, name: str) -> keras.Model:
    """A new network of the same architecture holding the same weights (BYOL's target starts
    as a copy of the online network)."""
    copy = keras.models.clone_model(model)
    copy.name = name
    copy.set_weights(model.get_weights())
    return finalize_normalizations(copy)


class BYOLTrainer(keras.Model):
    """Owns BYOL's online network (encoder, projector, predictor) and its target (a copy of
    encoder and projector), and the step `fit()` runs.

    A batch is `(views_1, views_2)`. The online network predicts, from each view, the target's
    projection of the other view (`byol_loss`); the optimizer updates the online network, and
    then every trainable weight w' of the target moves to `tau_k w' + (1 - tau_k) w`, w the
    online weight after the step and tau_k `ema_decay_at(k, total_steps, ema_decay)`. The
    target sees its views in training mode (BatchNorm with batch statistics, as BYOL's does)
    and its BatchNorm moving statistics follow its own batches. `ema_step` (k) and the target
    are weights of the trainer, so `save_weights` / `load_weights` (and Keras'
    BackupAndRestore) carry them. Under a distribution strategy the loss is the global batch's
    (`cross_replica_byol_loss`) and the target update runs once per variable in cross-replica
    context; build encoder and heads with synchronized BatchNorm for their statistics to be
    global too.
    """

    def __init__(
        self,
        encoder: keras.Model,
        projector: keras.Model,
        predictor: keras.Model,
        total_steps: int,
        ema_decay: float = DEFAULT_EMA_DECAY,
        **kwargs,
    ):
        check_ema_decay(ema_decay)
        if total_steps < 1:
            raise ValueError(f"total_steps must be positive. Received: total_steps={total_steps}")
        kwargs.setdefault("name", "byol_trainer")
        super().__init__(**kwargs)
        self.encoder = encoder
        self.projector = projector
        self.predictor = predictor
        self.target_encoder = copy_network(encoder, "target_encoder")
        self.target_projector = copy_network(projector, "target_projector")
        self.total_steps = int(total_steps)
        self.ema_decay = float(ema_decay)
        self.ema_step = self.add_weight(
            shape=(), dtype="int64", initializer="zeros", trainable=False, name="ema_step"
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.train_step_traces = 0
        self.built = True

    def online_variables(self) -> list:
        """The variables the optimizer trains: encoder, projector, then predictor."""
        return (
            self.encoder.trainable_variables
            + self.projector.trainable_variables
            + self.predictor.trainable_variables
        )

    def target_pairs(self) -> list:
        """`(target, online)` pairs of the variables the EMA updates."""
        target = self.target_encoder.trainable_variables + self.target_projector.trainable_variables
        online = self.encoder.trainable_variables + self.projector.trainable_variables
        return list(zip(target, online, strict=True))

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        # Built eagerly, so that the compiled step creates no slot variable (and traces once).
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.online_variables())

    @property
    def metrics(self):
        return [self.loss_tracker]

    def _predictions(self, views, training):
        projection = self.projector(self.encoder(views, training=training), training=training)
        return self.predictor(projection, training=training)

    def _targets(self, views, training):
        features = self.target_encoder(views, training=training)
        return tf.stop_gradient(self.target_projector(features, training=training))

    def call(self, inputs, training=False):
        """`(p_1, p_2, z_1, z_2)`: online predictions and target projections of both views."""
        views_1, views_2 = inputs
        return (
            self._predictions(views_1, training),
            self._predictions(views_2, training),
            self._targets(views_1, training),
            self._targets(views_2, training),
        )

    def current_ema_decay(self):
        """tau of the next step."""
        return ema_decay_at(self.ema_step.value, self.total_steps, self.ema_decay)

    def update_target(self):
        """One EMA step of the target towards the online network, then k + 1."""
        tau = self.current_ema_decay()
        pairs = [(target.value, online.value) for target, online in self.target_pairs()]
        step = self.ema_step.value

        def blend(target, online, tau):
            tau = tf.cast(tau, target.dtype)
            return target.assign(tau * target + (1.0 - tau) * tf.cast(online, target.dtype))

        def cross_replica(strategy, tau):
            # Every replica holds the same online weights after the optimizer's step, so one
            # update per variable (on each of its copies) is the single-device update.
            for target, online in pairs:
                strategy.extended.update(target, blend, args=(online, tau), group=False)
            strategy.extended.update(step, lambda count: count.assign_add(1), group=False)

        # In replica context (inside `strategy.run`, or the default context without a
        # strategy), where fit() runs the step.
        tf.distribute.get_replica_context().merge_call(cross_replica, args=(tau,))

    def train_step(self, data):
        self.train_step_traces += 1
        views_1, views_2 = data
        # The target's forward pass needs no tape: its outputs are constants of the loss.
        z_1 = self._targets(views_1, training=True)
        z_2 = self._targets(views_2, training=True)
        with tf.GradientTape() as tape:
            p_1 = self._predictions(views_1, training=True)
            p_2 = self._predictions(views_2, training=True)
            replica_loss, loss = cross_replica_byol_loss(p_1, p_2, z_1, z_2)
            scaled_loss = self.optimizer.scale_loss(replica_loss)
        variables = self.online_variables()
        self.optimizer.apply(tape.gradient(scaled_loss, variables), variables)
        self.update_target()
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        p_1, p_2, z_1, z_2 = self(data, training=False)
        _, loss = cross_replica_byol_loss(p_1, p_2, z_1, z_2)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def get_config(self):
        # Never saved as a model (the online encoder is); this documents its settings.
        return {
            "name": self.name,
            "total_steps": self.total_steps,
            "ema_decay": self.ema_decay,
        }


def build_byol_trainer(
    encoder: keras.Model,
    total_steps: int,
    learning_rate: float = 1e-3,
    ema_decay: float = DEFAULT_EMA_DECAY,
    hidden_dim: int = PROJECTION_HIDDEN_DIM,
    output_dim: int = PROJECTION_OUTPUT_DIM,
    synchronized_batch_norm: bool = False,
    jit_compile: bool = False,
) -> BYOLTrainer:
    """A compiled `BYOLTrainer` (Adam) around `encoder`, with a projector
    (features -> hidden_dim -> output_dim) and a predictor (output_dim -> hidden_dim ->
    output_dim). Call it inside `bc_keras.models.model_scope` like every other builder."""
    features = int(encoder.output.shape[-1])
    options = dict(synchronized_batch_norm=synchronized_batch_norm)
    projector = build_mlp(features, hidden_dim, output_dim, "projector", **options)
    predictor = build_mlp(output_dim, hidden_dim, output_dim, "predictor", **options)
    trainer = BYOLTrainer(encoder, projector, predictor, total_steps, ema_decay)
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=jit_compile)
    return trainer


__all__ = [
    "BYOLTrainer",
    "build_byol_trainer",
    "build_mlp",
    "byol_loss",
    "copy_network",
    "finalize_normalizations",
    "cross_replica_byol_loss",
    "ema_decay_at",
    "regression_loss_per_sample",
]

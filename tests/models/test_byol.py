"""Tests for BYOL: its loss against a NumPy re-derivation, the cosine EMA schedule and the target
update against their formulas, the trainer's step, and the SSL method registry."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from bc_keras.errors import ConfigError
from bc_keras.models import byol, ssl
from bc_keras.models.byol import (
    BYOLTrainer,
    build_byol_trainer,
    build_mlp,
    byol_loss,
    cross_replica_byol_loss,
    ema_decay_at,
)

SIZE = 16


def numpy_byol_loss(p_1, p_2, z_1, z_2) -> float:
    """BYOL's symmetric loss re-derived in float64: for each sample, 2 - 2 cos of a view's
    prediction and the other view's target projection, both orders, averaged over samples."""

    def regression(p, z):
        p = p.astype(np.float64) / np.linalg.norm(p, axis=1, keepdims=True)
        z = z.astype(np.float64) / np.linalg.norm(z, axis=1, keepdims=True)
        return np.mean(2.0 - 2.0 * np.sum(p * z, axis=1))

    return float(regression(p_1, z_2) + regression(p_2, z_1))


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("dim", [2, 16, 128])
def test_byol_loss_matches_numpy(batch, dim):
    rng = np.random.default_rng(batch * 1000 + dim)
    p_1, p_2, z_1, z_2 = (rng.normal(size=(batch, dim)).astype(np.float32) for _ in range(4))
    expected = numpy_byol_loss(p_1, p_2, z_1, z_2)
    assert float(byol_loss(p_1, p_2, z_1, z_2)) == pytest.approx(expected, rel=1e-5)
    # Scaling a vector changes no cosine; float16 inputs are computed in float32.
    assert float(byol_loss(3 * p_1, p_2, z_1, 0.5 * z_2)) == pytest.approx(expected, rel=1e-5)
    half = byol_loss(*(tf.constant(x, tf.float16) for x in (p_1, p_2, z_1, z_2)))
    assert half.dtype == tf.float32


def test_byol_loss_hand_values_and_stopped_target_gradient():
    z = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    assert float(byol_loss(z, z, z, z)) == pytest.approx(0.0, abs=1e-6)  # aligned: 0
    assert float(byol_loss(-z, -z, z, z)) == pytest.approx(8.0, abs=1e-6)  # opposite: 4 + 4
    orthogonal = z[:, ::-1].copy()
    assert float(byol_loss(orthogonal, orthogonal, z, z)) == pytest.approx(4.0, abs=1e-6)
    p, target = tf.Variable(np.ones((2, 2), np.float32)), tf.Variable(z)
    with tf.GradientTape() as tape:
        loss = byol_loss(p, p, target, target)
    gradient_p, gradient_z = tape.gradient(loss, [p, target])
    assert gradient_z is None and float(tf.reduce_max(tf.abs(gradient_p))) > 0.1
    # Without a strategy the replica's share is the whole loss.
    share, reported = cross_replica_byol_loss(p, p, target, target)
    assert float(share) == float(reported) == pytest.approx(float(loss))


def test_ema_decay_follows_the_cosine_schedule():
    total = 10
    for step in range(total + 3):
        expected = 1 - (1 - 0.996) * (math.cos(math.pi * min(step, total) / total) + 1) / 2
        assert float(ema_decay_at(step, total, 0.996)) == pytest.approx(expected, abs=1e-7)
    assert float(ema_decay_at(0, total, 0.99)) == pytest.approx(0.99, abs=1e-7)
    assert float(ema_decay_at(total // 2, total, 0.99)) == pytest.approx(0.995, abs=1e-7)
    assert float(ema_decay_at(total, total, 0.99)) == 1.0
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="ema_decay must be in"):
            ema_decay_at(0, total, bad)
    with pytest.raises(ValueError, match="total_steps must be positive"):
        ema_decay_at(0, 0)


def _encoder():
    """Two convolutions with BatchNorm, pooled: 16 px images to 8-d features."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(keras.layers.ReLU()(x))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="encoder")


def _trainer(total_steps=4, ema_decay=0.9, learning_rate=0.5):
    keras.utils.set_random_seed(0)
    trainer = build_byol_trainer(_encoder(), total_steps, ema_decay=ema_decay,
                                 hidden_dim=16, output_dim=8)  # fmt: skip
    trainer.compile(optimizer=keras.optimizers.SGD(learning_rate))
    trainer.optimizer.build(trainer.online_variables())
    return trainer


def _views(count=8, seed=1):
    rng = np.random.default_rng(seed)
    views_1 = rng.random((count, SIZE, SIZE, 3)).astype(np.float32)
    views_2 = np.clip(views_1 + 0.1 * rng.normal(size=views_1.shape), 0, 1).astype(np.float32)
    return views_1, views_2


def test_the_target_starts_as_a_copy_and_follows_the_online_network_by_the_ema_formula():
    trainer = _trainer(total_steps=4, ema_decay=0.9)
    pairs = trainer.target_pairs()
    # One pair per trainable weight of the encoder and projector; the predictor has no twin.
    assert len(pairs) == len(trainer.encoder.trainable_weights) + len(
        trainer.projector.trainable_weights
    )
    for target, online in pairs:
        assert target is not online
        np.testing.assert_array_equal(target.numpy(), online.numpy())
    batch = tf.data.Dataset.from_tensors(_views())
    for step in range(3):
        before = [target.numpy() for target, _ in pairs]
        predictor_before = [w.numpy() for w in trainer.predictor.trainable_weights]
        trainer.fit(batch, epochs=1, verbose=0)
        tau = 1 - (1 - 0.9) * (math.cos(math.pi * step / 4) + 1) / 2
        for (target, online), old in zip(pairs, before, strict=True):
            expected = tau * old + (1 - tau) * online.numpy()
            np.testing.assert_allclose(target.numpy(), expected, rtol=1e-5, atol=1e-7)
        assert int(trainer.ema_step.numpy()) == step + 1
        predictor = zip(trainer.predictor.trainable_weights, predictor_before, strict=True)
        assert max(np.abs(w.numpy() - b).max() for w, b in predictor) > 1e-4  # it trains
    assert max(np.abs(t.numpy() - o.numpy()).max() for t, o in pairs) > 1e-4
    # The target's BatchNorm statistics follow its own batches.
    assert not np.allclose(trainer.target_encoder.non_trainable_weights[0].numpy(), 0.0)


def test_the_trainer_minimises_the_loss_of_its_networks_and_traces_once():
    trainer = _trainer(total_steps=6)
    views_1, views_2 = _views()
    p_1, p_2, z_1, z_2 = (x.numpy() for x in trainer((views_1, views_2), training=False))
    evaluated = trainer.evaluate(tf.data.Dataset.from_tensors((views_1, views_2)), verbose=0)
    assert evaluated == pytest.approx(numpy_byol_loss(p_1, p_2, z_1, z_2), rel=1e-5)
    batches = tf.data.Dataset.from_tensor_slices((views_1, views_2)).batch(4, drop_remainder=True)
    history = trainer.fit(batches, epochs=3, verbose=0).history
    assert trainer.train_step_traces == 1
    assert history["loss"][-1] < history["loss"][0]
    assert int(trainer.ema_step.numpy()) == 6


def test_save_and_load_weights_carry_the_target_and_its_step(tmp_path):
    trainer = _trainer()
    trainer.fit(tf.data.Dataset.from_tensors(_views()), epochs=2, verbose=0)
    path = tmp_path / "byol.weights.h5"
    trainer.save_weights(path)
    fresh = _trainer()
    fresh.load_weights(path)
    assert int(fresh.ema_step.numpy()) == 2
    for ours, theirs in zip(fresh.get_weights(), trainer.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    targets = fresh.target_encoder.get_weights() + fresh.target_projector.get_weights()
    expected = trainer.target_encoder.get_weights() + trainer.target_projector.get_weights()
    for ours, theirs in zip(targets, expected, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="hidden_dim must be positive"):
        build_mlp(8, hidden_dim=0)
    with pytest.raises(ValueError, match="total_steps must be positive"):
        BYOLTrainer(_encoder(), build_mlp(8), build_mlp(128), total_steps=0)


def test_the_registry_holds_both_methods_and_refuses_an_unknown_one():
    assert list(ssl.SSL_METHODS) == ["simclr", "byol"]
    trainer = ssl.get_method("byol").build_trainer(
        _encoder(), ssl.TrainerSettings(total_steps=3, hidden_dim=16, output_dim=8)
    )
    assert isinstance(trainer, BYOLTrainer) and trainer.total_steps == 3
    assert trainer.projector.output.shape == (None, 8)
    # SimCLR keeps its view stream; BYOL's views come from (seed, epoch, image).
    assert not ssl.get_method("simclr").indexed_views and ssl.get_method("byol").indexed_views
    with pytest.raises(ConfigError, match="unknown --method 'swav'; choose one of simclr, byol"):
        ssl.get_method("swav")


def test_a_registry_backbone_encoder_is_pooled_and_copied_by_the_target():
    encoder = ssl.build_encoder("mobilenet", 32, alpha=0.25)
    assert encoder.output.shape == (None, 256)
    assert ssl.encoder_backbone(encoder).name == "backbone"
    copy = byol.copy_network(encoder, "target_encoder")
    images = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(copy(images), encoder(images), rtol=1e-6, atol=1e-6)
    assert ssl.encoder_identity("mobilenet", 0.25, "byol") == {
        "kind": "encoder", "architecture": "mobilenet", "alpha": 0.25, "method": "byol",
    }  # fmt: skip
    assert ssl.encoder_identity("resnet18", 1.0, "simclr")["kind"] == "simclr_encoder"
    assert ssl.encoder_identity("resnet18", 1.0, "byol")["kind"] == "encoder"

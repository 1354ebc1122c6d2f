"""Tests for NT-Xent, the contrastive trainer, the classifier and the label fraction."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from bc_keras.models import model_scope, save_model
from bc_keras.models.resnet import build_resnet18
from bc_keras.models.simclr import (
    NTXentLoss,
    build_classifier,
    build_projection_head,
    build_simclr_trainer,
    classifier_encoder,
    contrastive_accuracy,
    cross_replica_nt_xent,
    gathered_nt_xent_logits_and_labels,
    gathered_nt_xent_per_anchor,
    nt_xent_logits_and_labels,
    nt_xent_loss,
    nt_xent_per_anchor,
    set_encoder_trainable,
)
from bc_keras.prepare.subsets import label_fraction_indices

IMAGE_SIZE = 32


def numpy_nt_xent_per_anchor(z_a: np.ndarray, z_b: np.ndarray, temperature: float) -> np.ndarray:
    """NT-Xent re-derived anchor by anchor: row i of z_a and row i of z_b are positives;
    every other embedding of the 2N (both views) is a negative. Views a first, then views b."""
    z = np.concatenate([z_a, z_b]).astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    count = len(z)
    half = count // 2
    losses = []
    for anchor in range(count):
        positive = anchor + half if anchor < half else anchor - half
        denominator = 0.0
        for other in range(count):
            if other != anchor:
                denominator += math.exp(float(z[anchor] @ z[other]) / temperature)
        numerator = math.exp(float(z[anchor] @ z[positive]) / temperature)
        losses.append(-math.log(numerator / denominator))
    return np.array(losses)


def numpy_nt_xent(z_a: np.ndarray, z_b: np.ndarray, temperature: float) -> float:
    """The NumPy NT-Xent of the batch: the mean over its 2N anchors."""
    return float(numpy_nt_xent_per_anchor(z_a, z_b, temperature).mean())


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("dim", [2, 16, 128])
@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_matches_numpy(batch, dim, temperature):
    rng = np.random.default_rng(batch * 1000 + dim)
    z_a = rng.normal(size=(batch, dim)).astype(np.float32)
    z_b = rng.normal(size=(batch, dim)).astype(np.float32)
    expected = numpy_nt_xent(z_a, z_b, temperature)
    loss = nt_xent_loss(z_a, z_b, temperature)
    assert loss.dtype == tf.float32
    assert loss.shape == ()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-5)
    keras_loss = NTXentLoss(temperature)(z_a, z_b)
    np.testing.assert_allclose(float(keras_loss), expected, rtol=1e-5, atol=1e-5)


def test_nt_xent_hand_computed_tiny_cases():
    # Two images, 2-d, temperature 0.5. Identical views of orthogonal images: every anchor sees
    # its positive at cosine 1 (logit 2) and two negatives at cosine 0 (logit 0).
    basis = np.eye(2, dtype=np.float32)
    identical = nt_xent_loss(basis, basis, 0.5)
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 2 * math.exp(0.0)))
    assert float(identical) == pytest.approx(expected, abs=1e-6)
    # Swapped views: each anchor's positive is orthogonal to it (logit 0), one negative too
    # (logit 0), and the other image's second view is identical to it (logit 2), so the loss
    # is -log(e^0 / (e^0 + e^0 + e^2)).
    swapped = nt_xent_loss(basis, basis[::-1], 0.5)
    assert float(swapped) == pytest.approx(math.log(2.0 + math.exp(2.0)), abs=1e-6)
    # Scaling an embedding does not change a cosine similarity.
    assert float(nt_xent_loss(3.0 * basis, 0.5 * basis, 0.5)) == pytest.approx(expected, abs=1e-6)


def test_logits_mask_self_similarity_and_point_to_the_other_view():
    z = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    logits, labels = nt_xent_logits_and_labels(z, z + 0.01, 0.5)
    assert logits.shape == (6, 6)
    np.testing.assert_array_equal(labels.numpy(), [3, 4, 5, 0, 1, 2])
    diagonal = np.diag(logits.numpy())
    off_diagonal = logits.numpy()[~np.eye(6, dtype=bool)]
    assert diagonal.max() < off_diagonal.min() - 1e6


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_gathered_nt_xent_scores_each_replica_against_the_global_batch(temperature):
    # A global batch of 6 images split unevenly over three replicas; every replica's anchors
    # must lose what the same anchors lose on one device with the whole batch.
    rng = np.random.default_rng(11)
    z_a = rng.normal(size=(6, 5)).astype(np.float32)
    z_b = rng.normal(size=(6, 5)).astype(np.float32)
    expected = numpy_nt_xent_per_anchor(z_a, z_b, temperature)
    losses_a, losses_b = [], []
    for offset, size in ((0, 3), (3, 1), (4, 2)):
        rows = slice(offset, offset + size)
        per_anchor = gathered_nt_xent_per_anchor(
            z_a[rows], z_b[rows], z_a, z_b, offset, temperature
        ).numpy()
        assert per_anchor.shape == (2 * size,)
        np.testing.assert_allclose(per_anchor[:size], expected[:6][rows], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(per_anchor[size:], expected[6:][rows], rtol=1e-5, atol=1e-5)
        losses_a.append(per_anchor[:size])
        losses_b.append(per_anchor[size:])
    global_mean = np.concatenate(losses_a + losses_b).mean()
    assert global_mean == pytest.approx(numpy_nt_xent(z_a, z_b, temperature), abs=1e-5)
    # Scored against its own rows only, a replica loses less: fewer negatives.
    local = nt_xent_per_anchor(z_a[:3], z_b[:3], temperature).numpy()
    assert np.abs(local - expected[[0, 1, 2, 6, 7, 8]]).max() > 1e-2


def test_gathered_logits_locate_positives_and_self_at_global_offsets():
    z = np.random.default_rng(12).normal(size=(5, 4)).astype(np.float32)
    logits, labels = gathered_nt_xent_logits_and_labels(z[2:4], z[2:4] + 0.01, z, z + 0.01, 2)
    assert logits.shape == (4, 10)
    np.testing.assert_array_equal(labels.numpy(), [7, 8, 2, 3])
    masked = logits.numpy() < -1e6
    expected_mask = np.zeros((4, 10), dtype=bool)
    expected_mask[[0, 1, 2, 3], [2, 3, 7, 8]] = True
    np.testing.assert_array_equal(masked, expected_mask)
    # With the whole batch local, the logits are exactly those of the single-device function.
    full, full_labels = gathered_nt_xent_logits_and_labels(z, z + 0.01, z, z + 0.01, 0, 0.5)
    single, single_labels = nt_xent_logits_and_labels(z, z + 0.01, 0.5)
    np.testing.assert_array_equal(full.numpy(), single.numpy())
    np.testing.assert_array_equal(full_labels.numpy(), single_labels.numpy())


def test_cross_replica_nt_xent_without_a_strategy_is_the_local_loss():
    rng = np.random.default_rng(13)
    z_a = rng.normal(size=(4, 8)).astype(np.float32)
    z_b = rng.normal(size=(4, 8)).astype(np.float32)
    replica_loss, loss, accuracy = cross_replica_nt_xent(z_a, z_b, 0.5)
    assert float(replica_loss) == float(nt_xent_loss(z_a, z_b, 0.5))
    assert float(loss) == float(replica_loss)
    assert float(accuracy) == float(contrastive_accuracy(z_a, z_b))
    # In cross-replica context there is no replica to gather from.
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        with pytest.raises(ValueError, match="Received: cross-replica context"):
            cross_replica_nt_xent(z_a, z_b)


def test_identical_orthogonal_views_lose_less_than_random_views():
    dim, batch = 16, 8
    orthogonal = np.eye(dim, dtype=np.float32)[:batch]
    rng = np.random.default_rng(1)
    random_a = rng.normal(size=(batch, dim)).astype(np.float32)
    random_b = rng.normal(size=(batch, dim)).astype(np.float32)
    aligned = float(nt_xent_loss(orthogonal, orthogonal))
    unaligned = float(nt_xent_loss(random_a, random_b))
    assert aligned < unaligned - 0.5
    # Chance level for random views is about log(2N - 1).
    assert unaligned == pytest.approx(math.log(2 * batch - 1), abs=0.5)


def test_contrastive_accuracy():
    basis = np.eye(4, dtype=np.float32)
    assert float(contrastive_accuracy(basis, basis)) == 1.0
    # Each view's nearest other embedding is another image's view: never the positive.
    swapped = basis[[1, 0, 3, 2]]
    assert float(contrastive_accuracy(basis, swapped)) == 0.0


def test_nt_xent_computes_in_float32_for_float16_inputs():
    rng = np.random.default_rng(2)
    z_a = rng.normal(size=(4, 8)).astype(np.float16)
    z_b = rng.normal(size=(4, 8)).astype(np.float16)
    loss = nt_xent_loss(tf.constant(z_a), tf.constant(z_b), 0.1)
    assert loss.dtype == tf.float32
    expected = numpy_nt_xent(z_a.astype(np.float32), z_b.astype(np.float32), 0.1)
    assert float(loss) == pytest.approx(expected, abs=1e-4)


def test_nt_xent_loss_is_registered_and_serialisable():
    loss = NTXentLoss(temperature=0.2)
    config = keras.saving.serialize_keras_object(loss)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, NTXentLoss)
    assert restored.temperature == pytest.approx(0.2)
    z = np.random.default_rng(3).normal(size=(3, 5)).astype(np.float32)
    assert float(restored(z, z[::-1])) == pytest.approx(float(loss(z, z[::-1])), abs=1e-6)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_bad_temperature_raises(temperature):
    z = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="Received: temperature"):
        nt_xent_loss(z, z, temperature)
    with pytest.raises(ValueError, match="Received: temperature"):
        NTXentLoss(temperature)


def test_projection_head_shape_and_parameters():
    head = build_projection_head()
    assert head.name == "projection_head"
    assert head.output.shape == (None, 128)
    assert head.count_params() == (512 * 256 + 256) + (256 * 128 + 128)
    with pytest.raises(ValueError, match="Received: hidden_dim=0"):
        build_projection_head(hidden_dim=0)


def _pair_dataset(images: int, batch_size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    views_a = rng.random((images, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    views_b = np.clip(views_a + 0.05 * rng.normal(size=views_a.shape), 0, 1).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((views_a, views_b)).batch(
        batch_size, drop_remainder=True
    )


def test_trainer_step_compiles_once_over_batches_and_epochs():
    with model_scope():
        trainer = build_simclr_trainer(build_resnet18(IMAGE_SIZE), learning_rate=1e-3)
    train = _pair_dataset(images=16, batch_size=4)  # 4 batches per epoch
    validation = _pair_dataset(images=8, batch_size=4, seed=1)
    history = trainer.fit(train, validation_data=validation, epochs=2, shuffle=False, verbose=0)
    assert trainer.train_step_traces == 1
    assert trainer.test_step_traces == 1
    assert set(history.history) == {
        "loss",
        "contrastive_accuracy",
        "val_loss",
        "val_contrastive_accuracy",
    }
    assert all(np.isfinite(history.history["loss"]))
    # Two views of 4 images: the loss starts near chance, log(2 * 4 - 1).
    assert history.history["loss"][0] < math.log(7) + 1.0


def test_trainer_trains_under_mixed_precision():
    with model_scope(mixed_precision=True):
        trainer = build_simclr_trainer(build_resnet18(IMAGE_SIZE))
    # Float16 compute, float32 embeddings (the NT-Xent is computed in float32 anyway).
    assert trainer.encoder.get_layer("stage5_block2_out").compute_dtype == "float16"
    assert trainer.encoder.output.dtype == "float32"
    history = trainer.fit(_pair_dataset(images=8, batch_size=4), epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert trainer.train_step_traces == 1


def test_classifier_freezing_keeps_batch_norm_statistics():
    encoder = build_resnet18(IMAGE_SIZE)
    classifier = build_classifier(encoder, IMAGE_SIZE, freeze_encoder=True)
    assert classifier.output.shape == (None, 1)
    assert classifier.output.dtype == "float32"
    assert classifier_encoder(classifier) is encoder
    # Frozen: only the sigmoid head's kernel and bias train.
    assert len(classifier.trainable_weights) == 2
    moving = [w.numpy().copy() for w in encoder.non_trainable_weights]
    kernels = [w.numpy().copy() for w in encoder.weights]
    classifier.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    rng = np.random.default_rng(4)
    images = rng.random((8, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    labels = np.array([0, 1] * 4, np.float32)
    classifier.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    for before, after in zip(kernels, encoder.weights, strict=True):
        np.testing.assert_array_equal(before, after.numpy())
    for before, after in zip(moving, encoder.non_trainable_weights, strict=True):
        np.testing.assert_array_equal(before, after.numpy())
    set_encoder_trainable(classifier, True)
    assert len(classifier.trainable_weights) == len(encoder.trainable_weights) + 2


def test_classifier_rejects_a_mismatched_image_size():
    with pytest.raises(ValueError, match="Received: image_size=64"):
        build_classifier(build_resnet18(IMAGE_SIZE), 64)


@pytest.mark.parametrize("frozen", [False, True])
def test_classifier_save_load_gives_same_outputs(tmp_path, frozen):
    with model_scope():
        classifier = build_classifier(build_resnet18(IMAGE_SIZE), IMAGE_SIZE, frozen)
    images = np.random.default_rng(5).random((3, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    expected = classifier.predict(images, verbose=0)
    path = save_model(classifier, tmp_path / "classifier.h5", {"kind": "simclr_classifier"})
    import bc_keras  # noqa: F401

    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, atol=1e-5)
    assert classifier_encoder(loaded).trainable is not frozen


def _patient_labels(seed: int = 0):
    """Labels and patients of a small imbalanced training set: 12 benign patients and 20
    malignant ones with 2 to 8 images each."""
    rng = np.random.default_rng(seed)
    labels, patients = [], []
    for label, count in ((0, 12), (1, 20)):
        for patient in range(count):
            size = int(rng.integers(2, 9))
            labels += [label] * size
            patients += [f"P{label}-{patient}"] * size
    return np.array(labels), patients


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5])
def test_label_fraction_is_stratified_and_patient_grouped(fraction):
    labels, patients = _patient_labels()
    chosen = label_fraction_indices(labels, patients, fraction, seed=7)
    assert np.all(np.diff(chosen) > 0)
    chosen_set = set(chosen.tolist())
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        kept = np.isin(members, chosen).sum()
        assert kept >= 1
        # Within one patient (at most 8 images) of the class's share.
        assert abs(kept - fraction * len(members)) <= 8
    # Whole patients only.
    for patient in set(patients):
        indices = {i for i, p in enumerate(patients) if p == patient}
        assert indices <= chosen_set or not (indices & chosen_set)
    overall = len(chosen) / len(labels)
    assert overall == pytest.approx(fraction, abs=0.1)


def test_label_fraction_is_deterministic_per_seed():
    labels, patients = _patient_labels()
    first = label_fraction_indices(labels, patients, 0.3, seed=1)
    np.testing.assert_array_equal(first, label_fraction_indices(labels, patients, 0.3, seed=1))
    draws = {tuple(label_fraction_indices(labels, patients, 0.3, seed=s)) for s in range(5)}
    assert len(draws) > 1


def test_label_fraction_without_patients_and_edge_cases():
    labels = np.array([0] * 30 + [1] * 70)
    chosen = label_fraction_indices(labels, None, 0.1, seed=0)
    assert (labels[chosen] == 0).sum() == 3
    assert (labels[chosen] == 1).sum() == 7
    # A tiny fraction still keeps one image per class.
    tiny = label_fraction_indices(labels, None, 0.001, seed=0)
    assert sorted(labels[tiny].tolist()) == [0, 1]
    np.testing.assert_array_equal(label_fraction_indices(labels, None, 1.0), np.arange(100))
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="Received: fraction"):
            label_fraction_indices(labels, None, bad)

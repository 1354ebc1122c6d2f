"""Knowledge distillation: the loss against NumPy, the teacher's inputs against the pipeline's,
the trainer acting on the student alone, and a distilled student closer to its teacher."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from bc_keras import data, models
from bc_keras.backbones import BACKBONES
from bc_keras.data.pipeline import (
    PipelineOptions,
    apply_preprocess,
    decoded_dataset,
    epochs_from_decoded,
    tfdata_from_files,
)
from bc_keras.histology.breakhis import SUBTYPES
from bc_keras.histology.tissue import generate_tissue_image
from bc_keras.models import distill
from bc_keras.training.callbacks import recalibrate_batch_norm, trainable_batchnorm_layers

SIZE = 32


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_distillation(labels, student, teacher, alpha, temperature, weights=None) -> float:
    """The loss re-derived in float64: probabilities clipped as float32 clips them, logits
    log(p / (1 - p)), the hard BCE and the T^2-scaled soft-target cross-entropy, then Keras'
    reduction (the sum of weighted losses over the batch size)."""
    low, high = float(np.float32(distill.EPSILON)), float(np.float32(1 - distill.EPSILON))
    student = np.clip(np.asarray(student, np.float64), low, high)
    teacher = np.clip(np.asarray(teacher, np.float64), low, high)
    labels = np.asarray(labels, np.float64)
    hard = -(labels * np.log(student) + (1 - labels) * np.log(1 - student))
    targets = _sigmoid(np.log(teacher / (1 - teacher)) / temperature)
    softened = _sigmoid(np.log(student / (1 - student)) / temperature)
    soft = -(targets * np.log(softened) + (1 - targets) * np.log(1 - softened))
    per_image = alpha * hard + (1 - alpha) * temperature**2 * soft
    weights = np.ones_like(per_image) if weights is None else np.asarray(weights, np.float64)
    return float(np.sum(weights * per_image) / len(per_image))


def _loss(labels, student, teacher, alpha, temperature, weights=None) -> float:
    targets = np.stack([labels, teacher], axis=-1).astype(np.float32)
    loss = distill.DistillationLoss(alpha, temperature)
    value = loss(targets, np.asarray(student, np.float32).reshape(-1, 1), weights)
    return float(value)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 10.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_the_loss_equals_its_numpy_rederivation(temperature, alpha, weighted):
    rng = np.random.default_rng(int(temperature * 10 + alpha * 100))
    labels = rng.integers(0, 2, 12).astype(np.float32)
    student = rng.uniform(0.001, 0.999, 12).astype(np.float32)
    teacher = rng.uniform(0.001, 0.999, 12).astype(np.float32)
    # Saturated probabilities exercise the clip.
    student[:2], teacher[2:4] = (0.0, 1.0), (1.0, 0.0)
    weights = rng.uniform(0.2, 3.0, 12).astype(np.float32) if weighted else None
    expected = numpy_distillation(labels, student, teacher, alpha, temperature, weights)
    assert _loss(labels, student, teacher, alpha, temperature, weights) == pytest.approx(
        expected, rel=1e-5
    )


def test_a_hand_computed_value_and_the_soft_gradient_scale():
    # Both at 0.5 (logit 0): hard = soft = log 2, so the loss is (0.5 + 0.5 * T^2) log 2.
    value = _loss(np.array([1.0]), np.array([0.5]), np.array([0.5]), 0.5, 2.0)
    assert value == pytest.approx(2.5 * np.log(2.0), rel=1e-6)
    # alpha = 0: d loss / d z = T (sigmoid(z / T) - sigmoid(t / T)), the T^2 cancelling the 1/T^2.
    logits = tf.Variable([[1.5], [-0.7]])
    teacher = np.array([0.9, 0.2], np.float32)
    with tf.GradientTape() as tape:
        per_image = distill.distillation_per_image(
            np.zeros(2), tf.sigmoid(logits), teacher, 0.0, 3.0
        )
    gradient = tape.gradient(per_image, logits).numpy()[:, 0]
    expected = 3.0 * (
        _sigmoid(np.array([1.5, -0.7]) / 3.0) - _sigmoid(np.log(teacher / (1 - teacher)) / 3.0)
    )
    np.testing.assert_allclose(gradient, expected, rtol=1e-4)


def test_alpha_one_is_keras_binary_cross_entropy_with_sample_weights():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 16).astype(np.float32)
    student = rng.uniform(0, 1, (16, 1)).astype(np.float32)
    weights = rng.uniform(0.5, 2.0, 16).astype(np.float32)
    bce = float(keras.losses.BinaryCrossentropy()(labels, student, weights))
    assert _loss(labels, student[:, 0], rng.uniform(0, 1, 16), 1.0, 4.0, weights) == bce


@pytest.mark.parametrize(
    "settings, message",
    [((1.5, 4.0), "alpha must be in [0, 1]"), ((0.5, 0.0), "temperature must be positive")],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        distill.DistillationLoss(*settings)


# ----------------------------------------------------------------------- the teacher's inputs


@pytest.mark.parametrize("preprocess", ["rescale", "resnet18", *sorted(BACKBONES)])
def test_undoing_a_preprocessing_gives_back_the_pixels(preprocess):
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    inputs = apply_preprocess(pixels.copy(), preprocess)
    np.testing.assert_allclose(
        distill.pixels_from_inputs(inputs, preprocess).numpy(), pixels, atol=2e-3
    )


def test_a_preprocessing_that_is_not_affine_is_refused(monkeypatch):
    monkeypatch.setattr(distill, "apply_preprocess", lambda images, _: np.sqrt(images))
    with pytest.raises(ValueError, match="per-channel affine map"):
        distill.preprocess_affine("rescale")


def _split_batch(split, preprocess: str, size: int):
    files = data.list_split_files(split, "test")
    options = PipelineOptions(image_size=size, batch_size=64, preprocess=preprocess)
    images, _ = next(iter(tfdata_from_files(files.paths, files.labels, options, cache=False)))
    return files, images


@pytest.mark.parametrize(
    "student, teacher", [("resnet50", "rescale"), ("rescale", "vgg16"), ("mobilenet", "resnet50")]
)
def test_at_the_same_size_the_teacher_gets_its_own_pipeline(synthetic_split, student, teacher):
    _, inputs = _split_batch(synthetic_split, student, SIZE)
    _, expected = _split_batch(synthetic_split, teacher, SIZE)
    converted = distill.teacher_inputs(inputs, student, teacher, SIZE).numpy()
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(converted, expected.numpy(), atol=1e-5 * scale)


def test_a_larger_teacher_gets_the_students_pixels_resized_then_its_preprocessing(
    synthetic_split,
):
    files, inputs = _split_batch(synthetic_split, "rescale", SIZE)
    decoded = decoded_dataset(files.paths, files.labels, SIZE, "nearest", cache=False)
    pixels = np.stack([image.numpy() for image, _ in decoded]).astype(np.float32)
    resized = tf.image.resize(pixels, (48, 48), method="bilinear")
    expected = apply_preprocess(resized, "mobilenet").numpy()
    converted = distill.teacher_inputs(inputs, "rescale", "mobilenet", 48).numpy()
    assert converted.shape == (len(files.paths), 48, 48, 3)
    np.testing.assert_allclose(converted, expected, atol=1e-5)


# --------------------------------------------------------------------------------- the trainer


def _cnn(seed: int, name: str = "baseline_cnn", dense_units: int = 16) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = models.build_baseline_cnn(SIZE, dense_units, 0.5, 0.9, name=name)
    return models.compile_classifier(model, 1e-3)


def _teacher(seed: int = 9) -> distill.Teacher:
    return distill.Teacher(_cnn(seed, name="teacher_cnn"), "rescale", SIZE)


def _batches(count: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, (count, SIZE, SIZE, 3)).astype(np.float32)
    labels = (rng.uniform(0, 1, count) < 0.3).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(8), labels


def _sgd_cnn(seed: int) -> keras.Model:
    # Plain SGD: Adam would magnify the rounding noise of gradients that are zero in exact
    # arithmetic (a convolution's bias before BatchNorm) into differences of its step size.
    # (A few steps on, rounding flips a max-pooling choice and the two runs part anyway.)
    model = _cnn(seed)
    model.compile(keras.optimizers.SGD(0.01), keras.losses.BinaryCrossentropy(),
                  metrics=models.classifier_metrics())  # fmt: skip
    return model


def test_alpha_one_trains_as_the_plain_fit_with_class_weights():
    train, labels = _batches()
    validation, _ = _batches(8, seed=1)
    weights = {0: 0.7, 1: 1.9}
    plain = _sgd_cnn(0)
    plain_history = plain.fit(train, validation_data=validation, epochs=1, class_weight=weights,
                              verbose=0).history  # fmt: skip
    student = _sgd_cnn(0)
    trainer = distill.build_distillation_trainer(student, _teacher(), "rescale", alpha=1.0)
    history = trainer.fit(train, validation_data=validation, epochs=1, class_weight=weights,
                          verbose=0).history  # fmt: skip
    assert set(history) == set(plain_history)
    for key in ("loss", "val_loss", "auc", "val_auc", "val_tp"):
        np.testing.assert_allclose(history[key], plain_history[key], rtol=1e-5, err_msg=key)
    for ours, theirs in zip(student.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert int(student.optimizer.iterations.numpy()) == 3


def test_validation_loss_is_the_plain_bce_and_training_loss_the_distillation_one():
    train, _ = _batches()
    student, teacher = _cnn(0), _teacher()
    trainer = distill.build_distillation_trainer(student, teacher, "rescale", 0.25, 3.0)
    images, labels = next(iter(train))
    logs = trainer.evaluate(images, labels, verbose=0, return_dict=True)
    predicted = student.predict(images, verbose=0)
    bce = float(keras.losses.BinaryCrossentropy()(labels, predicted))
    assert logs["loss"] == pytest.approx(bce, rel=1e-5)
    teacher_probabilities = teacher.model.predict(images, verbose=0)[:, 0]
    targets = tf.stack([labels, teacher_probabilities], axis=-1)
    computed = trainer.compute_loss(images, labels, student(images), training=True)
    expected = numpy_distillation(labels, predicted[:, 0], teacher_probabilities, 0.25, 3.0)
    assert float(computed) == pytest.approx(expected, rel=1e-5)
    assert float(trainer.distillation_loss(targets, predicted)) == pytest.approx(expected, rel=1e-5)


def test_weights_saves_and_batchnorm_layers_are_the_students(tmp_path):
    train, labels = _batches()
    student, teacher = _cnn(0), _teacher()
    teacher_weights = [np.array(w) for w in teacher.model.get_weights()]
    trainer = distill.build_distillation_trainer(student, teacher, "rescale")
    trainer.fit(train, epochs=1, verbose=0)
    for ours, theirs in zip(trainer.get_weights(), student.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    for before, after in zip(teacher_weights, teacher.model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)  # frozen: BatchNorm statistics included
    assert trainable_batchnorm_layers(trainer) == trainable_batchnorm_layers(student)
    assert len(trainable_batchnorm_layers(student)) == 3
    trainer.save_weights(tmp_path / "student.weights.h5")
    fresh = _cnn(5)
    fresh.load_weights(tmp_path / "student.weights.h5")
    for ours, theirs in zip(fresh.get_weights(), student.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    # The saved model is the plain student: none of the teacher's layers, same outputs.
    path = models.save_model(student, tmp_path / "student.h5", {"kind": "classifier"})
    with h5py.File(path) as file:
        assert b"teacher_cnn" not in file.attrs["model_config"].encode()
        assert set(file["model_weights"]) == {layer.name for layer in student.layers} | {
            "top_level_model_weights"
        }
    reloaded, _ = models.load_model(path)
    images, _ = next(iter(train))
    np.testing.assert_allclose(reloaded.predict(images, verbose=0),
                               student.predict(images, verbose=0), atol=1e-6)  # fmt: skip
    assert len(reloaded.weights) == len(student.weights)


def test_an_uncompiled_student_is_refused():
    student = models.build_baseline_cnn(SIZE, 8)
    with pytest.raises(ValueError, match="Compile the student"):
        distill.build_distillation_trainer(student, _teacher(), "rescale")


# ------------------------------------------------------- the acceptance test of issue 20 item 5

TEACHER_IMAGES, STUDENT_IMAGES, TEST_IMAGES = 400, 48, 200
TEACHER_EPOCHS, STUDENT_EPOCHS = 12, 8
ALPHA, TEMPERATURE = 0.3, 4.0
SEEDS = (0, 1, 2)


def _tissue(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic H&E fields (the class shows in nuclear morphology only), classes alternating."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index in range(count):
        label = ("benign", "malignant")[index % 2]
        subtype = rng.choice(sorted(s for s, (kind, _) in SUBTYPES.items() if kind == label))
        magnification = int(rng.choice([40, 100, 200, 400]))
        image_rng = np.random.default_rng([seed, index])
        images.append(generate_tissue_image(image_rng, label, subtype, magnification, (SIZE, SIZE)))
        labels.append(index % 2)
    return np.stack(images), np.array(labels, np.float32)


def _stream(images, labels, seed: int, batch_size: int):
    """The project's tf.data epochs, shuffled per epoch from the seed and not augmented: the
    report's warps resample the 32 px fields, whose class lies in a few pixels' morphology."""
    options = PipelineOptions(image_size=SIZE, batch_size=batch_size, shuffle=True, seed=seed)
    decoded = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
    return epochs_from_decoded(decoded, len(images), options, epochs=None)


def _settled(model, images, labels):
    """BatchNorm statistics re-estimated on the training images (--recalibrate-bn), so that
    the decisions at 0.5 are the trained weights', not lagging moving averages'."""
    inputs = tf.data.Dataset.from_tensor_slices((images / np.float32(255), labels)).batch(32)
    recalibrate_batch_norm(model, inputs)
    return model


@pytest.mark.slow
def test_a_distilled_student_is_closer_to_a_better_teacher_over_three_seeds(capsys):
    """A teacher CNN trained on 400 images; students (the same CNN) trained on 48 of them for 8
    epochs, alone or distilled from it, from the same initialisation and batches. The
    distilled student agrees with the teacher's decisions on more of 200 test images, and its
    probabilities are nearer the teacher's, at every seed."""
    images, labels = _tissue(TEACHER_IMAGES, 1)
    test_images, test_labels = _tissue(TEST_IMAGES, 2)
    test_inputs = test_images / np.float32(255)
    teacher_model = _cnn(100, name="teacher_cnn", dense_units=64)
    teacher_model.fit(_stream(images, labels, 5, 32), steps_per_epoch=TEACHER_IMAGES // 32,
                      epochs=TEACHER_EPOCHS, verbose=0)  # fmt: skip
    _settled(teacher_model, images, labels)
    teacher_probabilities = teacher_model.predict(test_inputs, verbose=0)[:, 0]
    teacher_auc = roc_auc_score(test_labels, teacher_probabilities)
    teacher = distill.Teacher(teacher_model, "rescale", SIZE)
    results = {}
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        chosen = np.concatenate(
            [
                rng.choice(np.flatnonzero(labels == c), STUDENT_IMAGES // 2, replace=False)
                for c in (0, 1)
            ]
        )
        for mode in ("plain", "distilled"):
            student = _cnn(seed, dense_units=64)
            fitted = student
            if mode == "distilled":
                fitted = distill.build_distillation_trainer(student, teacher, "rescale", ALPHA,
                                                            TEMPERATURE)  # fmt: skip
            fitted.fit(_stream(images[chosen], labels[chosen], seed, 8), verbose=0,
                       steps_per_epoch=STUDENT_IMAGES // 8, epochs=STUDENT_EPOCHS)  # fmt: skip
            _settled(student, images[chosen], labels[chosen])
            probabilities = student.predict(test_inputs, verbose=0)[:, 0]
            results[seed, mode] = {
                "auc": roc_auc_score(test_labels, probabilities),
                "agreement": np.mean((probabilities >= 0.5) == (teacher_probabilities >= 0.5)),
                "distance": np.mean(np.abs(probabilities - teacher_probabilities)),
            }
    with capsys.disabled():
        print(f"\nteacher AUC {teacher_auc:.3f}")
        for (seed, mode), values in results.items():
            print(f"seed {seed} {mode:9s} " + " ".join(f"{k} {v:.3f}" for k, v in values.items()))
    for seed in SEEDS:
        plain, distilled = results[seed, "plain"], results[seed, "distilled"]
        assert teacher_auc > plain["auc"], "the teacher is better than a student alone"
        assert distilled["agreement"] > plain["agreement"], (seed, plain, distilled)
        assert distilled["distance"] < plain["distance"], (seed, plain, distilled)

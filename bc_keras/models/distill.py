"""Knowledge distillation (Hinton et al. 2015) in its binary form: the loss, the conversion of a
student's inputs into a teacher's, and the trainer that fits a student beside a frozen teacher."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from bc_keras.data.pipeline import apply_preprocess, preprocess_function
from bc_keras.errors import ConfigError, ModelFileError, RunError
from bc_keras.models.classifier import classifier_metrics

DEFAULT_ALPHA = 0.5
DEFAULT_TEMPERATURE = 4.0
KIND_CLASSIFIER = "classifier"
# Probabilities are clipped to [EPSILON, 1 - EPSILON] before their logits are taken. It is
# Keras' own BCE clip (keras.config.epsilon()), so both terms of the loss see the same
# probabilities. In float32 1 - 1e-7 rounds to 1 - 2**-23, the largest value below 1 whose
# complement is still exact, so the logits stay finite (about -16.1 to 15.9); a sigmoid that far
# out is 1.0 or 6e-8 in float32 anyway, and carries no soft information beyond it.
EPSILON = 1e-7
# The teacher's metadata kept in the run folder and the student's model card.
SUMMARY_KEYS = ("experiment", "architecture", "backbone", "image_size", "preprocess", "threshold")


def _check_settings(alpha: float, temperature: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]. Received: alpha={alpha}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive. Received: temperature={temperature}")


def probability_logits(probabilities):
    """The logits `log(p) - log(1 - p)` of sigmoid probabilities, clipped to
    [EPSILON, 1 - EPSILON] first, in float32 (the inverse of the models' sigmoid heads)."""
    p = tf.clip_by_value(tf.cast(probabilities, tf.float32), EPSILON, 1.0 - EPSILON)
    return tf.math.log(p) - tf.math.log1p(-p)


def _column(values):
    return tf.reshape(tf.cast(values, tf.float32), [-1, 1])


def distillation_per_image(
    labels, student_probabilities, teacher_probabilities, alpha, temperature
):
    """The distillation loss of each image, float32 `[N]`:

        alpha * BCE(y, p_s) + (1 - alpha) * T^2 * BCE(sigmoid(t / T), sigmoid(s / T))

    with s, t the student's and teacher's logits (`probability_logits`). The first term is
    Keras' binary cross-entropy on the labels, so alpha = 1 is the plain BCE. The second is
    the cross-entropy of the student's softened probability against the teacher's softened one
    (the soft targets); it includes the soft targets' entropy, a constant that changes no
    gradient. Its gradient in s is (sigmoid(s / T) - sigmoid(t / T)) / T, so the T^2 keeps the
    soft term's gradients on the scale of the hard term's whatever T (Hinton et al. 2015,
    section 2).

    Args:
        labels: 0/1 labels, `[N]` or `[N, 1]`.
        student_probabilities, teacher_probabilities: sigmoid outputs, `[N]` or `[N, 1]`.
        alpha: weight of the label term, in [0, 1].
        temperature: T, positive.
    """
    _check_settings(alpha, temperature)
    labels, student = _column(labels), _column(student_probabilities)
    hard = keras.losses.binary_crossentropy(labels, student)
    soft_targets = tf.sigmoid(probability_logits(teacher_probabilities) / temperature)
    soft = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.reshape(soft_targets, [-1, 1]),
        logits=tf.reshape(probability_logits(student), [-1, 1]) / temperature,
    )
    return alpha * hard + (1.0 - alpha) * temperature**2 * soft[:, 0]


@keras.saving.register_keras_serializable(package="bc_keras")
class DistillationLoss(keras.losses.Loss):
    """`distillation_per_image` as a Keras loss, reduced as Keras' BCE is (sample weights, the
    mean over the batch, the share of one replica under a strategy).

    `y_true` packs each image's label and the teacher's probability, `[N, 2]`; `y_pred` is the
    student's probability.
    """

    def __init__(
        self,
        alpha: float = DEFAULT_ALPHA,
        temperature: float = DEFAULT_TEMPERATURE,
        name: str = "distillation",
        **kwargs,
    ):
        _check_settings(alpha, temperature)
        super().__init__(name=name, **kwargs)
        self.alpha, self.temperature = float(alpha), float(temperature)

    def call(self, y_true, y_pred):
        return distillation_per_image(
            y_true[:, 0], y_pred, y_true[:, 1], self.alpha, self.temperature
        )

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "temperature": self.temperature}


def preprocess_affine(preprocess: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A preprocessing as the per-channel affine map it is: model input channel j is
    `scale[j] * pixel[..., source[j]] + offset[j]` for pixels in [0, 255].

    Every preprocessing bc_keras uses is one: 'rescale' (x / 255), keras.applications' 'tf'
    ([-1, 1]), 'torch' (ImageNet mean and std) and 'caffe' (RGB -> BGR, minus the mean) modes,
    and the identity of models that preprocess inside. The map is measured on probe images
    through `bc_keras.data.pipeline.apply_preprocess` itself, then checked on random pixels.

    Returns:
        `(scale, offset, source)`: float64 `[3]`, float64 `[3]`, int `[3]`.

    Raises:
        ValueError: for a preprocessing that is not a per-channel affine map.
    """
    probes = np.zeros((4, 1, 1, 3), np.float32)
    for channel in range(3):
        probes[channel + 1, 0, 0, channel] = 255.0
    out = np.asarray(apply_preprocess(probes.copy(), preprocess), np.float64).reshape(4, 3)
    offset = out[0]
    response = (out[1:] - offset) / 255.0  # response[c, j]: input channel j per unit of pixel c
    source = np.argmax(np.abs(response), axis=0)
    scale = response[source, np.arange(3)]
    pixels = np.random.default_rng(0).uniform(0.0, 255.0, (2, 4, 4, 3)).astype(np.float32)
    expected = np.asarray(apply_preprocess(pixels.copy(), preprocess), np.float64)
    tolerance = 1e-4 * (1.0 + np.abs(expected).max())
    if (
        sorted(source) != [0, 1, 2]
        or np.count_nonzero(np.abs(response) > 1e-12) != 3
        or np.abs(scale * pixels[..., source] + offset - expected).max() > tolerance
    ):
        raise ValueError(
            "Distillation undoes the student's preprocessing, which must be a per-channel "
            f"affine map of the pixels. Received: preprocess={preprocess!r}"
        )
    return scale, offset, source


def pixels_from_inputs(images, preprocess: str):
    """Undoes `preprocess`: model inputs back to float pixels in [0, 255] (float32)."""
    scale, offset, source = preprocess_affine(preprocess)
    inverse = np.argsort(source)  # the input channel holding each pixel channel
    images = tf.gather(tf.cast(images, tf.float32), inverse, axis=-1)
    return (images - offset[inverse].astype(np.float32)) * (1.0 / scale[inverse]).astype(np.float32)


def teacher_inputs(images, student_preprocess: str, teacher_preprocess: str, teacher_size: int):
    """The student's input batch as the teacher's inputs: the student's preprocessing undone
    (pixels in [0, 255]), resized bilinearly to `teacher_size` when the sizes differ (without
    antialiasing, which XLA cannot compile), then the teacher's own preprocessing
    (`bc_keras.data.pipeline.apply_preprocess`). In-graph and float32."""
    pixels = pixels_from_inputs(images, student_preprocess)
    if tuple(pixels.shape[1:3]) != (teacher_size, teacher_size):
        pixels = tf.image.resize(pixels, (teacher_size, teacher_size), method="bilinear")
    return apply_preprocess(pixels, teacher_preprocess)


@dataclass
class Teacher:
    """A loaded teacher: its model (frozen), what its inputs must be, and its file."""

    model: keras.Model
    preprocess: str
    image_size: int
    metadata: dict = field(default_factory=dict)
    path: str = ""
    sha256: str = ""

    def record(self, alpha: float, temperature: float) -> dict:
        """What the student's run folder, metadata and card record of the teacher: its file
        and SHA-256, its metadata summary (`SUMMARY_KEYS`) and the distillation settings."""
        summary = {key: self.metadata[key] for key in SUMMARY_KEYS if key in self.metadata}
        return {"teacher": self.path, "sha256": self.sha256, **summary,
                "alpha": float(alpha), "temperature": float(temperature)}  # fmt: skip


def teacher_metadata(path, model_out=None) -> dict:
    """The metadata of a teacher file, refused in one line unless it is a bc_keras classifier
    (a missing or foreign file, an encoder) other than the student's `model_out`."""
    from bc_keras.models.saving import read_metadata

    if model_out is not None and Path(path).resolve() == Path(model_out).resolve():
        raise ConfigError(
            f"--teacher {path} is the --model-out file, which the student would overwrite; "
            "choose another --model-out"
        )
    try:
        metadata = read_metadata(path)
    except ModelFileError as error:
        raise ModelFileError(f"--teacher: {error}") from None
    if metadata.get("kind") != KIND_CLASSIFIER:
        raise ModelFileError(
            f"--teacher {path} is a {metadata.get('kind') or 'model of unknown kind'}, not a "
            "classifier; pass a .h5 saved by train_cnn.py, train_transfer.py or train_simclr.py "
            "finetune|linear"
        )
    return metadata


def load_teacher(path, trained_with: str | None = None) -> Teacher:
    """Loads a teacher classifier (`bc_keras.models.load_model`: checked as untrusted input),
    frozen, with the SHA-256 of its file; call it inside the run's `model_scope`.

    Args:
        trained_with: the SHA-256 of the teacher an interrupted run trained with: a resumed
            run refuses another file.
    """
    from bc_keras import runs
    from bc_keras.models.saving import load_model

    teacher_metadata(path)
    sha256 = runs.file_sha256(path)
    if trained_with not in (None, sha256):
        raise RunError(
            f"--resume: --teacher {path} changed since the interrupted run trained with it "
            f"(SHA-256 {trained_with[:12]}... now {sha256[:12]}...); put the original file back, "
            "or start a new run"
        )
    model, metadata = load_model(path)
    model.trainable = False
    size = int(metadata["image_size"])
    try:
        preprocess_function(metadata["preprocess"])
    except ValueError:
        raise ModelFileError(
            f"--teacher {path} wants the preprocessing {metadata['preprocess']!r}, which this "
            "version of bc_keras does not know; use a teacher saved by this version"
        ) from None
    if tuple(model.input_shape[1:3]) not in ((size, size), (None, None)):
        raise ModelFileError(
            f"--teacher {path} takes {model.input_shape[1:3]} inputs but its metadata says "
            f"{size} px; use a .h5 saved by a bc_keras training script"
        )
    return Teacher(model, metadata["preprocess"], size, metadata, str(path), sha256)


class DistillationTrainer(keras.Model):
    """Fits a student beside a frozen teacher; everything else acts on the student alone.

    `fit()` trains the student on `DistillationLoss` of the labels and the teacher's
    probabilities of the same (augmented) batch, which the teacher sees through
    `teacher_inputs` (training=False, one view: no test-time augmentation); class and sample
    weights weigh each image's loss. The
    metrics (accuracy, AUC, ...) are the student's on the labels, under the names a plain
    classifier logs, and the validation loss (`val_loss`) is the plain BCE of the labels, so
    that early stopping and model selection judge a distilled student as they judge any.

    Weights go to and from the student (`get_weights`, `set_weights`, `save_weights`,
    `load_weights`), and `layers` holds the student and the teacher (frozen, so the BatchNorm
    recalibration finds the student's layers only): every callback of a run (checkpoints,
    backups, best-epoch restore) acts on the student, and the model saved is the student.
    """

    def __init__(
        self,
        student: keras.Model,
        teacher: Teacher,
        student_preprocess: str,
        alpha: float = DEFAULT_ALPHA,
        temperature: float = DEFAULT_TEMPERATURE,
        **kwargs,
    ):
        _check_settings(alpha, temperature)
        kwargs.setdefault("name", "distillation_trainer")
        super().__init__(**kwargs)
        self.student = student
        self.teacher = teacher.model
        self.teacher.trainable = False
        self.student_preprocess = student_preprocess
        self.teacher_preprocess, self.teacher_size = teacher.preprocess, teacher.image_size
        # Checked now, eagerly: an unusable preprocessing fails before fit traces anything.
        preprocess_affine(student_preprocess)
        self.distillation_loss = DistillationLoss(alpha, temperature)
        self.label_loss = keras.losses.BinaryCrossentropy()
        self.built = True

    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    def teacher_probabilities(self, images):
        """The teacher's probabilities of a batch of the student's inputs, float32 `[N]`."""
        inputs = teacher_inputs(
            images, self.student_preprocess, self.teacher_preprocess, self.teacher_size
        )
        probabilities = self.teacher(inputs, training=False)
        return tf.stop_gradient(tf.reshape(tf.cast(probabilities, tf.float32), [-1]))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if training:
            targets = tf.stack(
                [tf.reshape(tf.cast(y, tf.float32), [-1]), self.teacher_probabilities(x)], axis=-1
            )
            loss = self.distillation_loss(targets, y_pred, sample_weight)
        else:
            loss = self.label_loss(y, y_pred, sample_weight)
        # The student's own regularisation losses, as its plain fit adds them.
        for extra in self.student.losses:
            loss = loss + self._aggregate_additional_loss(extra)
        return loss

    def get_weights(self):
        return self.student.get_weights()

    def set_weights(self, weights):
        self.student.set_weights(weights)

    def save_weights(self, *args, **kwargs):
        return self.student.save_weights(*args, **kwargs)

    def load_weights(self, *args, **kwargs):
        return self.student.load_weights(*args, **kwargs)

    def get_config(self):
        # Never saved as a model (the student is); this documents its settings.
        return {
            "name": self.name,
            "alpha": self.distillation_loss.alpha,
            "temperature": self.distillation_loss.temperature,
        }


def build_distillation_trainer(
    student: keras.Model,
    teacher: Teacher,
    student_preprocess: str,
    alpha: float = DEFAULT_ALPHA,
    temperature: float = DEFAULT_TEMPERATURE,
) -> DistillationTrainer:
    """A `DistillationTrainer` compiled as the student is: with the student's own optimizer
    (its state is the student's, saved with its weights), XLA setting and the classifier
    metrics. Compile the student first (what it trains is fixed then), and call this inside
    the same `bc_keras.models.model_scope`."""
    if not student.compiled or student.optimizer is None:
        raise ValueError(
            f"Compile the student before distilling into it. Received: student={student.name} "
            "(not compiled)"
        )
    trainer = DistillationTrainer(student, teacher, student_preprocess, alpha, temperature)
    trainer.compile(
        optimizer=student.optimizer, metrics=classifier_metrics(), jit_compile=student.jit_compile
    )
    return trainer


__all__ = [
    "DistillationLoss",
    "DistillationTrainer",
    "Teacher",
    "build_distillation_trainer",
    "distillation_per_image",
    "load_teacher",
    "pixels_from_inputs",
    "preprocess_affine",
    "probability_logits",
    "teacher_inputs",
    "teacher_metadata",
]

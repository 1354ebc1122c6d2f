"""The report's baseline CNN (SPEC 4): train, evaluate on the test split, save the .h5."""

from __future__ import annotations

from bc_keras import experiments, models
from bc_keras.config import PREPROCESS_RESCALE, CNNConfig
from bc_keras.data.decode import DEFAULT_INTERPOLATION
from bc_keras.experiments import common

TITLE = experiments.EXPERIMENTS[CNNConfig].title


def run(config: CNNConfig) -> dict:
    """Trains (on one validation split, or cross-fitted), saves and evaluates the baseline
    CNN; returns the test metrics."""
    return common.run_classifier(
        config,
        PREPROCESS_RESCALE,
        DEFAULT_INTERPOLATION,
        train,
        lambda sets: {"architecture": "baseline_cnn"},
        TITLE,
    )


def train(run, sets, epochs=None):
    """Builds and trains the CNN on `sets` (see `common.fit_phases` for `epochs`)."""
    config = run.config
    with run.scope():
        model = models.build_baseline_cnn(
            config.image_size,
            config.dense_units,
            config.dropout,
            config.batch_norm_momentum,
            synchronized_batch_norm=run.replicas() > 1,
        )

    def prepare():
        with run.scope():
            models.compile_classifier(
                model,
                config.learning_rate,
                config.jit_compile,
                label_smoothing=config.label_smoothing,
            )

    phase = common.Phase(1, config.epochs, config.learning_rate, prepare)
    selected = common.fit_phases(
        model,
        [phase],
        run,
        sets,
        epochs=epochs,
        reduce_lr_patience=config.reduce_lr_patience,
        reduce_lr_factor=config.reduce_lr_factor,
        min_learning_rate=config.min_learning_rate,
    )
    return model, selected

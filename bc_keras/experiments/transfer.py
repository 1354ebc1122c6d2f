"""Transfer learning of the report (SPEC 4): an ImageNet backbone, frozen then fine-tuned."""

from __future__ import annotations

from bc_keras import experiments, runs
from bc_keras.config import TransferConfig
from bc_keras.data.decode import DEFAULT_INTERPOLATION
from bc_keras.experiments import common
from bc_keras.models import transfer


def run(config: TransferConfig) -> dict:
    """Trains both phases (on one validation split, or cross-fitted), keeps the best model
    over them, saves and evaluates it."""

    def metadata(sets):
        return {
            "architecture": f"transfer_{config.backbone}",
            "backbone": config.backbone,
            "alpha": config.alpha,
            "weights": config.weights,
        }

    title = experiments.experiment_of(config).title_for(config.backbone)
    return common.run_classifier(
        config, config.preprocess, DEFAULT_INTERPOLATION, train, metadata, title
    )


def train(run, sets, epochs=None):
    """Builds the transfer model and trains its two phases on `sets` (see
    `common.fit_phases` for `epochs`)."""
    config = run.config
    phase1_done = (
        config.resume
        and (run.run_dir / runs.BACKUP_DIR / common.PHASE_WEIGHTS.format(number=1)).is_file()
    )
    with run.scope():
        model = transfer.build_transfer_model(
            config.backbone,
            config.image_size,
            # Resuming after phase 1 takes every weight from its checkpoint.
            weights=None if phase1_done else config.weights,
            alpha=config.alpha,
            dense_units=config.dense_units,
        )

    def prepare(phase: int, learning_rate: float):
        def compile_phase():
            transfer.start_phase(
                model,
                phase,
                learning_rate,
                freeze_batchnorm=config.freeze_batchnorm,
                strategy=run.strategy,
                mixed_precision=config.mixed_precision,
                jit_compile=config.jit_compile,
                label_smoothing=config.label_smoothing,
            )

        return compile_phase

    phases = [
        common.Phase(
            transfer.PHASE_FROZEN,
            config.phase1_epochs,
            config.learning_rate,
            prepare(transfer.PHASE_FROZEN, config.learning_rate),
            "frozen backbone",
        ),
        common.Phase(
            transfer.PHASE_FINE_TUNE,
            config.phase2_epochs,
            config.finetune_learning_rate,
            prepare(transfer.PHASE_FINE_TUNE, config.finetune_learning_rate),
            "fine-tuning",
        ),
    ]
    return model, common.fit_phases(model, phases, run, sets, epochs=epochs)

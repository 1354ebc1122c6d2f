"""Training: distribution strategy, seeds, the run object and the callbacks."""

from bc_keras.training.callbacks import (  # noqa: F401
    COLLAPSE_EPOCHS,
    DIVERGED_LOSS,
    RECALIBRATION_BATCHES,
    BatchNormRecalibration,
    BestOverPhasesEarlyStopping,
    CallbackStateBackup,
    CollapseWarning,
    DivergenceGuard,
    LogValue,
    PhaseCompleteMarker,
    SharedBackupAndRestore,
    early_stopping_of,
    recalibrate_batch_norm,
    resumed_epoch,
    stopped_early,
    trainable_batchnorm_layers,
    training_callbacks,
    trim_history,
)

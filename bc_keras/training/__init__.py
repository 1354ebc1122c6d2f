"""Training: distribution strategy, seeds, the run object and the callbacks."""

from bc_keras.training.callbacks import (  # noqa: F401
    PhaseCompleteMarker,
    trim_history,
    resumed_epoch,
    stopped_early,
    DIVERGED_LOSS,
    COLLAPSE_EPOCHS,
    RECALIBRATION_BATCHES,
    LogValue,
    BestOverPhasesEarlyStopping,
    CallbackStateBackup,
    DivergenceGuard,
    CollapseWarning,
    SharedBackupAndRestore,
    trainable_batchnorm_layers,
    recalibrate_batch_norm,
    BatchNormRecalibration,
    training_callbacks,
    early_stopping_of,
)

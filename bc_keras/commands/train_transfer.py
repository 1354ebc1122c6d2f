"""Transfer learning of the report (SPEC 4): an ImageNet backbone, frozen then fine-tuned."""

from __future__ import annotations

from bc_keras import cli
from bc_keras.config import TransferConfig

DESCRIPTION = """\
Fine-tune a keras.applications backbone on a prepared BreaKHis split, evaluate it on the test
split and save it.

Defaults are the report's: backbone without top -> GlobalAveragePooling -> Dense 128 ReLU ->
Dense 1 sigmoid. Phase 1 trains the head on the frozen backbone (Adam 1e-3); phase 2
unfreezes the backbone (Adam 1e-4). Each phase runs up to 100 epochs with
EarlyStopping(val_loss, 15); the model kept is the best on validation over both phases.

BatchNorm layers of a pretrained backbone stay in inference mode during fine-tuning (frozen,
moving statistics kept), as the Keras transfer-learning guide advises; with --weights none they
train normally, having no statistics to keep."""


parse_args, main = cli.experiment_entry(TransferConfig, DESCRIPTION)

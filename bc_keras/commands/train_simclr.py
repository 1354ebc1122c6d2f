"""Self-supervised learning (SPEC 4): pretraining an encoder (SimCLR or BYOL; the report's
ResNet-18 or any registry backbone), fine-tuning and linear evaluation on it, each with the run
folder, evaluation and saved .h5 of the other experiments."""

from __future__ import annotations

import argparse
import sys

from bc_keras import cli
from bc_keras.config import FinetuneConfig, LinearConfig, PretrainConfig

MODES = {
    "pretrain": (
        PretrainConfig,
        "self-supervised pretraining of the encoder (SimCLR or BYOL)",
        "SimCLR pretraining (the report's settings): two views per image, ResNet-18 encoder, "
        "projection MLP 512->256->ReLU->128, NT-Xent (temperature 0.5, all 2N-2 negatives, "
        "gathered across replicas), Adam 1e-3, batch 96, up to 100 epochs, EarlyStopping(val_loss, "
        "15). --method byol trains BYOL instead (Grill et al. 2020: projector and predictor MLPs "
        "with BatchNorm, an EMA target network, tau from --ema-decay to 1 on a cosine, loss "
        "2 - 2 cos(p, z') over both view orders, no negatives; its views are drawn from (seed, "
        "epoch, image), so --resume ends where an uninterrupted run would). --encoder NAME "
        "pretrains any backbone of the registry (pooled; --encoder-init imagenet|PATH|random, "
        "--alpha), whose encoder also starts `train_transfer.py --backbone NAME --weights "
        "ENCODER.h5`. The test split is read only for the t-SNE figure of the finished encoder.",
    ),
    "finetune": (
        FinetuneConfig,
        "fine-tune the encoder with a Dense(1, sigmoid) head",
        "Fine-tune the encoder (any method's, fed as it was pretrained) with a Dense(1, sigmoid) "
        "head: frozen for the first "
        "--freeze-epochs epochs at --lr, then trained at --finetune-lr; the model kept is the "
        "best on validation over both phases. BCE, Adam, early stopping, evaluation on the test "
        "split as for the other experiments.",
    ),
    "linear": (
        LinearConfig,
        "linear evaluation: a Dense(1, sigmoid) head on the frozen encoder",
        "Linear evaluation: train only a Dense(1, sigmoid) head on the frozen encoder (its "
        "BatchNorm statistics stay those of pretraining). BCE, Adam, early stopping, evaluation "
        "on the test split as for the other experiments.",
    ),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Self-supervised learning (SimCLR, BYOL) on a prepared BreaKHis split, in "
        "three modes (pretrain, finetune, linear); run `%(prog)s MODE --help` for each mode's "
        "flags.",
        formatter_class=cli.HelpFormatter,
    )
    modes = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
    replayed = {}
    given = list(sys.argv[1:] if argv is None else argv)
    for mode, (config_class, summary, description) in MODES.items():
        sub = modes.add_parser(
            mode, help=summary, description=description, formatter_class=cli.HelpFormatter
        )
        cli.add_config_arguments(sub, config_class)
        if given and given[0] == mode:  # --config: the stored values become this mode's defaults
            replayed = cli.replay_defaults(sub, config_class, given[1:])
    args = parser.parse_args(argv)
    config = cli.config_from_args(MODES[args.mode][0], args)
    cli.report_replay(config, replayed, args.config)
    return config


def main(argv=None) -> int:
    from bc_keras import experiments

    experiments.run(parse_args(argv))
    return 0

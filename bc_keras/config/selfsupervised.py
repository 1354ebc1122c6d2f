"""The self-supervised run configurations: pretraining an encoder (SimCLR, BYOL) and the
classifiers on it (linear evaluation, fine-tuning)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from bc_keras.config.options import (
    ENCODER_NONE,
    GROUP_DATA,
    GROUP_MODEL,
    MODEL_RESNET18,
    SSL_METHOD_SIMCLR,
    SSL_METHODS,
    option,
    recipe_option,
)
from bc_keras.config.settings import ClassifierConfig, RunConfig, TwoPhaseConfig
from bc_keras.config.values import encoder_init_value
from bc_keras.errors import ConfigError


@dataclass(kw_only=True)
class PretrainConfig(RunConfig):
    """SimCLR contrastive pretraining of the ResNet-18 encoder (SPEC 4)."""

    EXPERIMENT: ClassVar[str] = "simclr_pretrain"
    # `pretrain --encoder NAME` names the backbone (LinearConfig's --encoder is a file).
    FLAG_ALIASES: ClassVar[dict] = {"encoder_backbone": ("--encoder",)}
    MIN_IMAGE_SIZE: ClassVar[int] = 32
    model_out: str = "models/simclr_resnet18_encoder.h5"
    batch_size: int = 96
    patience: int = 15
    unlabeled: list[str] | None = option(
        None,
        "--unlabeled",
        "pretrain on these images instead of the train split's: image folders (searched "
        "recursively), prepared splits (their train images) or TFRecord folders; validation "
        "NT-Xent stays on the --data split's val images",
        GROUP_DATA,
        nargs="+",
        metavar="PATH",
    )
    encoder_init: str | None = recipe_option(
        "--encoder-init",
        "the encoder's start: 'imagenet' is keras-hub's resnet_18_imagenet preset (the report's "
        "'ResNet-18 pretrained on ImageNet'; from kagglehub's cache, ~/.cache/kagglehub or "
        "$KAGGLEHUB_CACHE, downloaded if online; needs pip install \"bc_keras[hub]\"), 'random' "
        "a random initialisation, or the PATH of a local keras-hub ResNet-18 preset folder",
        metavar="random|imagenet|PATH",
    )
    method: str = option(
        SSL_METHOD_SIMCLR,
        "--method",
        "the self-supervised objective: 'simclr' (NT-Xent, the report's) or 'byol' (Grill et "
        "al. 2020: an EMA target network, no negatives)",
        GROUP_MODEL,
        choices=SSL_METHODS,
    )
    encoder_backbone: str = option(
        MODEL_RESNET18,
        "--encoder-backbone",
        "the encoder pretrained: 'resnet18' (the report's) or any transfer backbone of the "
        "registry (e.g. resnet50, mobilenet)",
        GROUP_MODEL,
    )
    ema_decay: float = option(
        0.996,
        "--ema-decay",
        "BYOL: the target network's base EMA rate tau, raised to 1 on a cosine schedule",
        GROUP_MODEL,
    )
    temperature: float = option(0.5, "--temperature", "NT-Xent temperature")
    projection_hidden_dim: int = option(
        256, "--projection-hidden-dim", "projection MLP width", GROUP_MODEL
    )
    projection_dim: int = option(128, "--projection-dim", "projection output size", GROUP_MODEL)
    crop_scale_min: float = option(
        0.2, "--crop-scale-min", "smallest random-crop area, as a fraction of the image"
    )
    jitter_strength: float = option(0.5, "--jitter-strength", "colour jitter strength s")
    blur_probability: float = option(0.5, "--blur-probability", "probability of a Gaussian blur")

    def __post_init__(self):
        if isinstance(self.encoder_init, os.PathLike):
            self.encoder_init = os.fspath(self.encoder_init)
        super().__post_init__()
        self.encoder_init = encoder_init_value(self.encoder_init)
        # NT-Xent contrasts each view with the 2N - 2 other views of the batch: N = 1 leaves
        # none, and the loss is 0 whatever the encoder does.
        if self.batch_size < 2:
            raise ConfigError(
                f"--batch-size {self.batch_size} gives SimCLR no negatives (each view is "
                "contrasted with the 2N-2 other views of its batch); pass --batch-size 2 or more "
                "(the report uses 96)"
            )


@dataclass(kw_only=True)
class LinearConfig(ClassifierConfig):
    """A Dense(1, sigmoid) head on a frozen SimCLR (or random) encoder: linear evaluation."""

    EXPERIMENT: ClassVar[str] = "simclr_linear"
    MIN_IMAGE_SIZE: ClassVar[int] = 32
    # Each mode saves to its own default file, so the README's sequence (finetune, linear,
    # linear without an encoder) keeps all three models.
    model_out: str = "models/simclr_resnet18_linear_breast_cancer.h5"
    RANDOM_ENCODER_MODEL_OUT: ClassVar[str] = "models/random_resnet18_linear_breast_cancer.h5"
    patience: int = 15
    encoder: str = option(
        "models/simclr_resnet18_encoder.h5",
        "--encoder",
        f"pretrained encoder .h5 from `train_simclr.py pretrain`, or '{ENCODER_NONE}' for a "
        "randomly initialised encoder (the no-pretraining comparison)",
        GROUP_MODEL,
    )

    def __post_init__(self):
        super().__post_init__()
        if self.encoder.lower() == ENCODER_NONE:
            self.encoder = ENCODER_NONE
            if self.model_out == type(self).__dataclass_fields__["model_out"].default:
                self.model_out = self.RANDOM_ENCODER_MODEL_OUT


@dataclass(kw_only=True)
class FinetuneConfig(LinearConfig, TwoPhaseConfig):
    """The SimCLR encoder fine-tuned with a Dense(1, sigmoid) head, optionally frozen first."""

    EXPERIMENT: ClassVar[str] = "simclr_finetune"
    model_out: str = "models/simclr_resnet18_breast_cancer.h5"
    RANDOM_ENCODER_MODEL_OUT: ClassVar[str] = "models/random_resnet18_finetune_breast_cancer.h5"
    freeze_epochs: int = option(
        0, "--freeze-epochs", "epochs with the encoder frozen before it is fine-tuned"
    )

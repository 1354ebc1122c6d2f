"""The self-supervised run configurations: pretraining an encoder (SimCLR, BYOL) and the
classifiers on it (linear evaluation, fine-tuning)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import ClassVar

from bc_keras import backbones
from bc_keras.config.options import (
    ENCODER_NONE,
    GROUP_DATA,
    GROUP_MODEL,
    MODEL_RESNET18,
    SSL_METHOD_BYOL,
    SSL_METHOD_SIMCLR,
    SSL_METHODS,
    option,
    recipe_option,
)
from bc_keras.config.settings import ClassifierConfig, RunConfig, TransferConfig, TwoPhaseConfig
from bc_keras.config.values import encoder_init_value
from bc_keras.errors import ConfigError

# The smallest batch each method learns from, and why.
MIN_BATCH_SIZES = {
    # NT-Xent contrasts each view with the 2N - 2 other views of the batch: N = 1 leaves none,
    # and the loss is 0 whatever the encoder does.
    SSL_METHOD_SIMCLR: (
        2,
        "gives SimCLR no negatives (each view is contrasted with the 2N-2 other views of its "
        "batch)",
    ),
    # BatchNorm in training mode normalises each feature over the batch: with one image every
    # feature of the projector's and predictor's hidden layers becomes its BatchNorm offset,
    # whatever the image, and the online network has nothing to learn from.
    SSL_METHOD_BYOL: (
        2,
        "leaves BYOL nothing to learn (its projector and predictor use BatchNorm, which maps a "
        "batch of one image to a constant)",
    ),
}


@dataclass(kw_only=True)
class PretrainConfig(RunConfig):
    """Self-supervised pretraining of an encoder (SPEC 4): SimCLR (the report's) or BYOL, of
    the report's ResNet-18 or any backbone of the registry."""

    EXPERIMENT: ClassVar[str] = "simclr_pretrain"
    # `pretrain --encoder NAME` names the backbone (LinearConfig's --encoder is a file).
    FLAG_ALIASES: ClassVar[dict] = {"encoder_backbone": ("--encoder",)}
    MIN_IMAGE_SIZE: ClassVar[int] = 32
    model_out: str = "models/simclr_resnet18_encoder.h5"
    # The default file of every other method and encoder (see `__post_init__`).
    MODEL_OUT_PATTERN: ClassVar[str] = "models/{method}_{backbone}_encoder.h5"
    batch_size: int = 96
    patience: int = 15
    unlabeled: list[str] | None = option(
        None,
        "--unlabeled",
        "pretrain on these images instead of the train split's: image folders (searched "
        "recursively), prepared splits (their train images) or TFRecord folders; the "
        "validation loss stays on the --data split's val images",
        GROUP_DATA,
        nargs="+",
        metavar="PATH",
    )
    encoder_init: str | None = recipe_option(
        "--encoder-init",
        "the encoder's start: 'imagenet' is keras-hub's resnet_18_imagenet preset (the report's "
        "'ResNet-18 pretrained on ImageNet'; from kagglehub's cache, ~/.cache/kagglehub or "
        "$KAGGLEHUB_CACHE, downloaded if online; needs pip install \"bc_keras[hub]\"), 'random' "
        "a random initialisation, or the PATH of a local keras-hub ResNet-18 preset folder. For "
        "a registry backbone (--encoder resnet50, ...): 'imagenet' is Keras' no-top ImageNet "
        "file (~/.keras/models or $KERAS_HOME/models, downloaded if online) and PATH a local "
        "no-top .h5",
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
        "registry (e.g. resnet50, mobilenet), pooled; a registry backbone's views get its own "
        "preprocessing, and its encoder starts `train_transfer.py --backbone NAME --weights "
        "ENCODER.h5`",
        GROUP_MODEL,
    )
    # Transfer's --alpha, reused as it is declared there (one flag, one declaration): an encoder
    # of a backbone with a width multiplier is pretrained, and transferred, at one width.
    alpha: float = dataclasses.field(
        default=TransferConfig.__dataclass_fields__["alpha"].default,
        metadata=TransferConfig.__dataclass_fields__["alpha"].metadata,
    )
    ema_decay: float = option(
        0.996,
        "--ema-decay",
        "BYOL: the target network's base EMA rate tau in [0, 1), raised to 1 on a cosine "
        "schedule over the training steps",
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
        self._check_encoder()
        minimum, reason = MIN_BATCH_SIZES[self.method]
        if self.batch_size < minimum:
            raise ConfigError(
                f"--batch-size {self.batch_size} {reason}; pass --batch-size {minimum} or more "
                "(the report uses 96)"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(
                f"--ema-decay {self.ema_decay} is outside [0, 1): BYOL's target moves by "
                f"1 - tau of the way to the online network each step (tau 1 would never move "
                "it); pass e.g. 0.996 (BYOL's) or 0.99"
            )
        if self.model_out == type(self).__dataclass_fields__["model_out"].default:
            self.model_out = self.default_model_out()

    def _check_encoder(self) -> None:
        """The encoder is ResNet-18 or a registry backbone, at a width it has."""
        if self.encoder_backbone == MODEL_RESNET18:
            if self.alpha != 1.0:
                raise ConfigError(
                    f"--alpha {self.alpha:g} applies to registry encoders with a width "
                    "multiplier (e.g. --encoder mobilenet); drop it for resnet18"
                )
            return
        try:
            record = backbones.get_backbone(self.encoder_backbone)
        except ConfigError as error:
            raise ConfigError(
                f"--encoder: {error} (or {MODEL_RESNET18}, the report's encoder)"
            ) from None
        record.check_alpha(self.alpha)

    def default_model_out(self) -> str:
        """models/simclr_resnet18_encoder.h5 for the report's pretraining, else
        models/<method>_<backbone>[_alpha<alpha>]_encoder.h5."""
        if (self.method, self.encoder_backbone) == (SSL_METHOD_SIMCLR, MODEL_RESNET18):
            return type(self).__dataclass_fields__["model_out"].default
        backbone = self.encoder_backbone + (f"_alpha{self.alpha:g}" if self.alpha != 1.0 else "")
        return self.MODEL_OUT_PATTERN.format(method=self.method, backbone=backbone)

    def run_name(self) -> str:
        """simclr_pretrain (the report's), else e.g. byol_pretrain, simclr_pretrain_resnet50."""
        name = f"{self.method}_pretrain"
        return (
            name if self.encoder_backbone == MODEL_RESNET18 else f"{name}_{self.encoder_backbone}"
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

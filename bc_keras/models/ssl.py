"""The self-supervised methods (a registry: SimCLR, BYOL) and the encoders they pretrain: the
report's ResNet-18, or any backbone of the registry followed by global average pooling.

Every method trains an encoder from two augmented views of each unlabelled image, and every
encoder maps images to a pooled feature vector, so pretraining, saving and the classifiers on
top (`train_simclr.py linear|finetune`, `train_transfer.py --weights ENCODER.h5`) are one path.
Adding a method is one `SSLMethod` record here (and its name in `config.options.SSL_METHODS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from bc_keras.backbones import BACKBONES, get_backbone
from bc_keras.config import PREPROCESS_RESCALE
from bc_keras.config.values import ENCODER_INIT_IMAGENET, ENCODER_INIT_RANDOM
from bc_keras.errors import ConfigError, ModelFileError, WeightsError
from bc_keras.models import byol, card, pretrained, simclr, transfer
from bc_keras.models.resnet import ENCODER_NAME
from bc_keras.models.transfer import BACKBONE_LAYER_NAME, build_backbone

ENCODER_RESNET18 = "resnet18"
# The metadata kind of an encoder file: SimCLR's ResNet-18 keeps the kind it always had (the
# report's encoder, and every file saved before methods); any other method or encoder is an
# "encoder", the contract `train_transfer.py --weights` reads (see
# `bc_keras.models.transfer.load_encoder_backbone`).
KIND_SIMCLR_RESNET18 = "simclr_encoder"
KIND_ENCODER = "encoder"
ENCODER_KINDS = transfer.ENCODER_KINDS
POOLING_LAYER_NAME = "embedding"


@dataclass(frozen=True)
class TrainerSettings:
    """What a method's trainer may be built with (each method reads its own)."""

    learning_rate: float = 1e-3
    hidden_dim: int = 256
    output_dim: int = 128
    temperature: float = simclr.DEFAULT_TEMPERATURE
    ema_decay: float = byol.DEFAULT_EMA_DECAY
    total_steps: int = 1
    synchronized_batch_norm: bool = False
    jit_compile: bool = False


def _simclr_trainer(encoder: keras.Model, settings: TrainerSettings) -> keras.Model:
    return simclr.build_simclr_trainer(
        encoder,
        learning_rate=settings.learning_rate,
        temperature=settings.temperature,
        hidden_dim=settings.hidden_dim,
        output_dim=settings.output_dim,
        jit_compile=settings.jit_compile,
    )


def _byol_trainer(encoder: keras.Model, settings: TrainerSettings) -> keras.Model:
    return byol.build_byol_trainer(
        encoder,
        total_steps=settings.total_steps,
        learning_rate=settings.learning_rate,
        ema_decay=settings.ema_decay,
        hidden_dim=settings.hidden_dim,
        output_dim=settings.output_dim,
        synchronized_batch_norm=settings.synchronized_batch_norm,
        jit_compile=settings.jit_compile,
    )


@dataclass(frozen=True)
class SSLMethod:
    """One self-supervised method.

    Attributes:
        name: the `--method` value, recorded in the encoder's metadata.
        title: how figures, cards and logs name it.
        loss_title: the name of its validation loss.
        metrics: the validation metrics its trainer reports besides the loss.
        build_trainer: `(encoder, TrainerSettings) -> compiled trainer` whose `.encoder` is
            the encoder being pretrained.
        indexed_views: whether its views are drawn from (seed, epoch, image) alone, so that a
            resumed run sees the views of an uninterrupted one and ends with its weights.
            SimCLR keeps the view stream it has always had (seeded once per run), so that its
            runs stay what they were.
    """

    name: str
    title: str
    loss_title: str
    metrics: tuple[str, ...]
    build_trainer: Callable[[keras.Model, TrainerSettings], keras.Model]
    indexed_views: bool = True


SSL_METHODS: dict[str, SSLMethod] = {}


def register_method(method: SSLMethod) -> SSLMethod:
    """Adds (or replaces) a method record; returns it."""
    SSL_METHODS[method.name] = method
    return method


def get_method(name: str) -> SSLMethod:
    """The record of `name`; ConfigError naming the choices for an unknown one."""
    if name not in SSL_METHODS:
        raise ConfigError(f"unknown --method {name!r}; choose one of {', '.join(SSL_METHODS)}")
    return SSL_METHODS[name]


register_method(
    SSLMethod(
        "simclr", "SimCLR", "NT-Xent", ("contrastive_accuracy",), _simclr_trainer,
        indexed_views=False,
    )
)  # fmt: skip
register_method(SSLMethod("byol", "BYOL", "BYOL loss", (), _byol_trainer))


def encoder_title(backbone: str, alpha: float = 1.0) -> str:
    """ "ResNet-18", "ResNet50", "MobileNet (alpha 0.25)"."""
    if backbone == ENCODER_RESNET18:
        return "ResNet-18"
    title = get_backbone(backbone).title
    return f"{title} (alpha {alpha:g})" if alpha != 1.0 else title


def set_synchronized_batch_norm(model: keras.Model, synchronized: bool) -> keras.Model:
    """Makes every BatchNormalization layer of `model` (nested ones too) normalise with the
    global batch's statistics under a distribution strategy, or with its replica's. Set it
    before the model is first called: a traced step keeps the mode it was traced with."""
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = bool(synchronized)
    return model


def build_backbone_encoder(
    backbone: str,
    image_size: int,
    alpha: float = 1.0,
    weights: list[np.ndarray] | None = None,
    synchronized_batch_norm: bool = False,
) -> keras.Model:
    """A registry backbone as an encoder: `build_backbone(backbone, image_size, weights=None,
    alpha=alpha)` as the nested layer "backbone", then GlobalAveragePooling2D, so that the
    encoder's output is the pooled feature vector.

    Args:
        backbone: a name of `bc_keras.backbones.BACKBONES`.
        image_size: square input side.
        alpha: the width multiplier of a backbone that has one.
        weights: the backbone's starting weights (`get_weights()` of a backbone built the same
            way, e.g. from ImageNet); None for a random initialisation.
        synchronized_batch_norm: see `set_synchronized_batch_norm`.

    Returns:
        A functional `keras.Model` named "<backbone>_encoder".
    """
    inner = build_backbone(backbone, image_size, weights=None, alpha=alpha)
    if weights is not None:
        inner.set_weights(weights)
        byol.finalize_normalizations(inner)
    set_synchronized_batch_norm(inner, synchronized_batch_norm)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    features = keras.layers.GlobalAveragePooling2D(name=POOLING_LAYER_NAME)(inner(inputs))
    return keras.Model(inputs, features, name=f"{backbone}_encoder")


def backbone_start(backbone: str, image_size: int, alpha: float, encoder_init: str) -> list:
    """The starting weights of a registry encoder, as arrays: those of Keras' no-top ImageNet
    file ('imagenet') or of a local no-top .h5 (a path), read and checked by
    `transfer.build_backbone` (offline without the file: its one-line error naming where)."""
    if encoder_init != ENCODER_INIT_IMAGENET and Path(encoder_init).is_dir():
        raise WeightsError(
            f"--encoder-init {encoder_init} is a folder (keras-hub presets start --encoder "
            f"resnet18 only); for --encoder {backbone} pass the PATH of a no-top .h5 of "
            f"keras.applications {encoder_title(backbone, alpha)} weights, imagenet or random"
        )
    return build_backbone(backbone, image_size, weights=encoder_init, alpha=alpha).get_weights()


def build_encoder(
    backbone: str,
    image_size: int,
    alpha: float = 1.0,
    start=None,
    synchronized_batch_norm: bool = False,
) -> keras.Model:
    """The encoder to pretrain: the report's ResNet-18 (`start` a `pretrained.PresetWeights` or
    None) or a registry backbone (`start` its weights as arrays, `backbone_start`, or None),
    None a random start."""
    if backbone == ENCODER_RESNET18:
        return pretrained.build_encoder(
            image_size, start, synchronized_batch_norm=synchronized_batch_norm
        )
    return build_backbone_encoder(backbone, image_size, alpha, start, synchronized_batch_norm)


def encoder_preprocess(backbone: str) -> str:
    """How an encoder's views are fed: ResNet-18 takes them in [0, 1] ('rescale', the
    report's); a registry backbone takes its own preprocessing (its name), whatever its start:
    its ImageNet weights need it, every encoder of a backbone is then fed alike, and
    `train_transfer.py --preprocess backbone` feeds a transfer model from it the same way."""
    return PREPROCESS_RESCALE if backbone == ENCODER_RESNET18 else backbone


def encoder_identity(backbone: str, alpha: float, method: str) -> dict:
    """What an encoder file's metadata says it is: SimCLR's ResNet-18 as it always was (kind
    "simclr_encoder"), any other by the contract `train_transfer.py --weights` reads (kind
    "encoder", the registry name, its alpha); each with its method."""
    if (method, backbone) == ("simclr", ENCODER_RESNET18):
        return {"kind": KIND_SIMCLR_RESNET18, "architecture": backbone, "method": method}
    return {"kind": KIND_ENCODER, "architecture": backbone, "alpha": float(alpha), "method": method}


def describe_encoder(metadata: dict | None) -> tuple[str, str]:
    """`(method, architecture)` of an encoder file's metadata; SimCLR's ResNet-18 for None (the
    random encoder of the no-pretraining comparison) and for files saved before methods."""
    if metadata is None:
        return "simclr", ENCODER_RESNET18
    return metadata.get("method", "simclr"), metadata.get("architecture", ENCODER_RESNET18)


def check_encoder_file(path, metadata: dict) -> None:
    """Refuses, in one line, an encoder file whose method or architecture this version does
    not know (a file from another version of bc_keras, or edited)."""
    method, architecture = describe_encoder(metadata)
    if method not in SSL_METHODS:
        raise ModelFileError(
            f"{path} was pretrained with method {method!r}, which this version does not know "
            f"({', '.join(SSL_METHODS)}); pretrain it again with `train_simclr.py pretrain`"
        )
    if architecture != ENCODER_RESNET18 and architecture not in BACKBONES:
        raise ModelFileError(
            f"{path} is an encoder of architecture {architecture!r}, which this version does not "
            f"know ({ENCODER_RESNET18} or {', '.join(BACKBONES)}); pretrain it again"
        )


def encoder_backbone(encoder: keras.Model) -> keras.Model:
    """The "backbone" layer of a `build_backbone_encoder` encoder."""
    return encoder.get_layer(BACKBONE_LAYER_NAME)


def start_title(backbone: str, encoder_init: str) -> str:
    """How a card and the log name an encoder's start (`--encoder-init`)."""
    if encoder_init == ENCODER_INIT_RANDOM:
        return "random initialisation"
    if backbone == ENCODER_RESNET18:
        if encoder_init == ENCODER_INIT_IMAGENET:
            return f"ImageNet (keras-hub preset {pretrained.IMAGENET_PRESET})"
        return f"the keras-hub preset folder {encoder_init}"
    if encoder_init == ENCODER_INIT_IMAGENET:
        return "ImageNet (Keras' no-top weights)"
    return f"the weights file {encoder_init}"


def encoder_card(metadata: dict, summary: dict, images: dict) -> dict:
    """The model card's fields of an encoder file (`card.encoder_card`) with its method, its
    start and the name of its method's loss."""
    method = get_method(metadata["method"])
    fields = card.encoder_card(metadata, summary, images)
    # The card names SimCLR's loss; another method's section says its own.
    fields = {
        key.replace("NT-Xent", method.loss_title) if key.startswith("pretraining") else key: value
        for key, value in fields.items()
    }
    fields["model"]["method"] = method.title
    fields["model"]["start"] = start_title(metadata["architecture"], metadata["encoder_init"])
    return fields


def classifier_name(method: str, backbone: str) -> str:
    """The Keras name of a classifier on an encoder ("simclr_resnet18_classifier")."""
    return f"{method}_{backbone}_classifier"


__all__ = [
    "ENCODER_KINDS",
    "KIND_ENCODER",
    "KIND_SIMCLR_RESNET18",
    "ENCODER_NAME",
    "ENCODER_RESNET18",
    "SSL_METHODS",
    "SSLMethod",
    "TrainerSettings",
    "backbone_start",
    "build_backbone_encoder",
    "build_encoder",
    "check_encoder_file",
    "classifier_name",
    "describe_encoder",
    "encoder_card",
    "encoder_backbone",
    "encoder_identity",
    "encoder_preprocess",
    "encoder_title",
    "get_method",
    "register_method",
    "set_synchronized_batch_norm",
    "start_title",
]

"""An ImageNet start for the ResNet-18 encoder: keras-hub's `resnet_18_imagenet` preset (or a
local keras-hub preset folder) mapped layer by layer onto `build_resnet18`.

keras-hub's ResNet-18 (`ResNetBackbone`, basic blocks, not pre-activation) is the same network
as the project's: a 7x7/2 stem padded by 3, a 3x3/2 max pooling padded by 1, and basic blocks
whose strided 3x3 convolutions are padded symmetrically by 1 and whose first block of stages
3-5 has a 1x1/2 projection shortcut (the first stage's is the identity). Only the names differ,
so its weights are copied onto the project's layers and the saved encoder holds Keras layers
only (keras-hub's classes would not pass the safe loader of `bc_keras.models.load_model`).
The preset's image converter (ImageNet's mean and standard deviation) becomes the encoder's
first layer, so the weights see the inputs they were trained on.

keras-hub is optional (`pip install "bc_keras[hub]"`): it is imported only to read a preset.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from bc_keras.config.values import ENCODER_INIT_IMAGENET, ENCODER_INIT_RANDOM
from bc_keras.errors import ConfigError, WeightsError, shorten
from bc_keras.models.resnet import RESNET18_STAGES, build_resnet18

IMAGENET_PRESET = "resnet_18_imagenet"
# The preset's Kaggle handle in keras-hub 0.32 (`ResNetBackbone.presets`): where kagglehub
# caches it, so that a cached preset is found without keras-hub or the network.
IMAGENET_PRESET_HANDLE = "keras/resnetv1/keras/resnet_18_imagenet/3"
HUB_INSTALL = 'pip install "bc_keras[hub]"'
BACKBONE_CLASS = "keras_hub>ResNetBackbone"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
IMAGE_CONVERTER_FILE = "image_converter.json"
# A keras-hub ResNetBackbone that is the project's ResNet-18, key by key.
RESNET18_HUB_CONFIG = {
    "input_conv_filters": [64],
    "input_conv_kernel_sizes": [7],
    "stackwise_num_filters": [filters for filters, _, _ in RESNET18_STAGES],
    "stackwise_num_strides": [stride for _, stride, _ in RESNET18_STAGES],
    "stackwise_num_blocks": [blocks for _, _, blocks in RESNET18_STAGES],
    "block_type": "basic_block",
    "use_pre_activation": False,
}
# keras-hub's block layer suffixes -> the project's (`apply_basic_block`).
_BLOCK_LAYERS = {
    "0_conv": "projection_conv",
    "0_bn": "projection_bn",
    "1_conv": "conv1",
    "1_bn": "bn1",
    "2_conv": "conv2",
    "2_bn": "bn2",
}
_STEM_LAYERS = {"conv1_conv": "stem_conv", "conv1_bn": "stem_bn"}
_BLOCK_NAME = re.compile(r"stack(\d+)_block(\d+)_(\d_(?:conv|bn))")


@dataclass
class PresetWeights:
    """A preset's weights by the project's layer names, and the input normalisation of its
    image converter as the encoder applies it to images rescaled to [0, 1]."""

    source: str
    weights: dict[str, list[np.ndarray]] = field(default_factory=dict)
    input_scale: list[float] | None = None
    input_offset: list[float] | None = None


def encoder_layer_name(hub_name: str) -> str | None:
    """The project's name for a weighted layer of keras-hub's ResNet-18, or None if it has none.

    E.g. "conv1_conv" -> "stem_conv", "stack1_block0_0_conv" -> "stage3_block1_projection_conv".
    """
    if hub_name in _STEM_LAYERS:
        return _STEM_LAYERS[hub_name]
    match = _BLOCK_NAME.fullmatch(hub_name)
    if match is None or match.group(3) not in _BLOCK_LAYERS:
        return None
    stack, block, layer = match.groups()
    return f"stage{int(stack) + 2}_block{int(block) + 1}_{_BLOCK_LAYERS[layer]}"


def kagglehub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder kagglehub (keras-hub's downloader) caches presets in: `cache_dir`, else
    $KAGGLEHUB_CACHE, else ~/.cache/kagglehub, resolved now as kagglehub resolves it."""
    if cache_dir is None:
        cache_dir = os.environ.get("KAGGLEHUB_CACHE") or Path.home() / ".cache" / "kagglehub"
    return Path(cache_dir).expanduser()


def imagenet_preset_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where kagglehub keeps the `resnet_18_imagenet` preset (whether it is there or not)."""
    return kagglehub_cache_dir(cache_dir) / "models" / IMAGENET_PRESET_HANDLE


def cached_imagenet_preset(cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The cached `resnet_18_imagenet` preset folder, or None when it is not cached."""
    folder = imagenet_preset_dir(cache_dir)
    complete = (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()
    return folder if complete else None


def keras_hub_installed() -> bool:
    """Whether keras-hub can be imported (found without importing it)."""
    return importlib.util.find_spec("keras_hub") is not None


def _keras_hub(encoder_init: str):
    if not keras_hub_installed():
        raise ConfigError(
            f"--encoder-init {encoder_init} reads a keras-hub preset, but keras-hub is not "
            f"installed; {HUB_INSTALL}, or pass --encoder-init {ENCODER_INIT_RANDOM}"
        )
    import keras_hub

    return keras_hub


def _offline_message(cache_dir) -> str:
    return (
        f"the ImageNet ResNet-18 (keras-hub preset {IMAGENET_PRESET!r}) is not available "
        f"offline: copy its folder (config.json, model.weights.h5, image_converter.json), which "
        f"keras_hub.models.Backbone.from_preset({IMAGENET_PRESET!r}) caches in "
        f"~/.cache/kagglehub/models/{IMAGENET_PRESET_HANDLE} on a machine with internet, to "
        f"{imagenet_preset_dir(cache_dir)}, or pass --encoder-init PATH to the copied folder, or "
        f"--encoder-init {ENCODER_INIT_RANDOM}"
    )


def check_preset_folder(path: str | os.PathLike) -> dict:
    """The `config` of a local keras-hub preset folder holding a ResNet-18 backbone.

    Raises:
        WeightsError: if the folder is missing, lacks config.json or model.weights.h5, or
            holds another model (not a ResNetBackbone, other stages or block type,
            pre-activation, or inputs without 3 channels); one line naming the difference.
    """
    folder = Path(path)
    expected = (
        f"a keras-hub ResNet-18 preset folder ({CONFIG_FILE} and {WEIGHTS_FILE}, as "
        f"keras_hub.models.Backbone.save_to_preset writes), e.g. {IMAGENET_PRESET}'s"
    )
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise WeightsError(f"--encoder-init {path} {what}; pass {expected}, or imagenet or random")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise WeightsError(f"{folder} has no {name}; pass {expected}")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as error:
        raise WeightsError(f"{folder / CONFIG_FILE} is unreadable ({shorten(error, 100)}); "
                           f"pass {expected}") from None  # fmt: skip
    name = config.get("registered_name") if isinstance(config, dict) else None
    values = config.get("config") if isinstance(config, dict) else None
    if name != BACKBONE_CLASS or not isinstance(values, dict):
        raise WeightsError(
            f"{folder} holds a {name or 'non-keras-hub'} model, not a keras-hub ResNetBackbone; "
            f"pass {expected}"
        )
    for key, wanted in RESNET18_HUB_CONFIG.items():
        if values.get(key) != wanted:
            raise WeightsError(
                f"{folder} holds a ResNet with {key}={values.get(key)!r}, not ResNet-18's "
                f"{wanted!r} (basic blocks 2-2-2-2, no pre-activation); pass {expected}"
            )
    shape = values.get("image_shape") or [None, None, 3]
    if not isinstance(shape, list | tuple) or len(shape) != 3 or shape[-1] != 3:
        raise WeightsError(
            f"{folder} holds a ResNet-18 for inputs of shape {shape}, not RGB images with 3 "
            f"channels; pass {expected}"
        )
    return values


def _converter_scale_offset(folder: Path) -> tuple:
    """The scale and offset of a preset's image_converter.json (None, None without one). The
    file is read as data: nothing in it is deserialised."""
    path = folder / IMAGE_CONVERTER_FILE
    if not path.is_file():
        return None, None
    try:
        values = json.loads(path.read_text())["config"]
        return values.get("scale"), values.get("offset")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise WeightsError(
            f"{path} is unreadable ({shorten(error, 100)}); fix it or remove it (the encoder "
            "then takes the images as they are)"
        ) from None


def _normalisation(scale, offset) -> tuple[list[float] | None, list[float] | None]:
    """A converter's scale and offset, which keras-hub applies to [0, 255] pixels, as the
    encoder applies them to [0, 1] images; None, None for no converter."""
    if scale is None and offset is None:
        return None, None

    def three(value, default):
        value = default if value is None else value
        values = [float(value)] * 3 if isinstance(value, int | float) else [float(v) for v in value]
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"expected 1 or 3 finite numbers, got {value!r}")
        return values

    # The converter maps pixels p in [0, 255] to p * scale + offset; the encoder gets p / 255.
    return [s * 255.0 for s in three(scale, 1.0)], three(offset, 0.0)


def _backbone_weights(backbone, source: str) -> dict[str, list[np.ndarray]]:
    """The backbone's weights by the project's layer names; every weighted layer mapped."""
    weights = {}
    for layer in backbone.layers:
        values = layer.get_weights()
        if not values:
            continue
        name = encoder_layer_name(layer.name)
        if name is None:
            raise WeightsError(
                f"{source} has a layer {layer.name!r} that ResNet-18 does not; pass a keras-hub "
                "ResNet-18 preset"
            )
        weights[name] = values
    return weights


def _download_imagenet(keras_hub):
    """keras-hub's own download (and cache) of the preset: `(backbone, scale, offset)` with the
    converter's scale and offset as it applies them to [0, 255] pixels."""
    backbone = keras_hub.models.Backbone.from_preset(IMAGENET_PRESET)
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(IMAGENET_PRESET)
    except FileNotFoundError:  # a preset without a converter: images taken as they are
        return backbone, None, None
    return backbone, converter.scale, converter.offset


def load_preset_weights(
    encoder_init: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    download: Callable | None = None,
) -> PresetWeights:
    """The weights of `--encoder-init imagenet` or `--encoder-init PATH`, read with keras-hub.

    Args:
        encoder_init: "imagenet" (kagglehub's cache, else keras-hub downloads it) or the path
            of a local keras-hub ResNet-18 preset folder.
        cache_dir: kagglehub's cache folder (see `kagglehub_cache_dir`).
        download: called with the keras_hub module when the ImageNet preset is not cached;
            returns `(backbone, scale, offset)` (default: keras-hub's `from_preset`).

    Raises:
        ConfigError: keras-hub is not installed (the line says how to install it).
        WeightsError: the preset is not cached and cannot be downloaded (the line names the
            preset, the folder to place it in and `--encoder-init PATH`), or the folder is not
            a ResNet-18 preset, or its weights are not finite.
    """
    keras_hub = _keras_hub(str(encoder_init))
    if str(encoder_init).lower() != ENCODER_INIT_IMAGENET:
        source, backbone, scale, offset = _read_folder(keras_hub, Path(encoder_init))
    elif (cached := cached_imagenet_preset(cache_dir)) is not None:
        source, backbone, scale, offset = _read_folder(keras_hub, cached)
    else:
        try:
            backbone, scale, offset = (download or _download_imagenet)(keras_hub)
        except Exception as error:  # kagglehub raises requests' errors, or its own
            raise WeightsError(
                f"{_offline_message(cache_dir)}. (Download failed: {shorten(error, 200)})"
            ) from error
        source = f"keras-hub preset {IMAGENET_PRESET}"
    _check_backbone(backbone, keras_hub, source)
    try:
        input_scale, input_offset = _normalisation(scale, offset)
    except (ValueError, TypeError) as error:
        raise WeightsError(f"{source} has an unusable image converter ({error})") from None
    preset = PresetWeights(source, _backbone_weights(backbone, source), input_scale, input_offset)
    broken = [name for name, values in preset.weights.items()
              if not all(np.isfinite(v).all() for v in values)]  # fmt: skip
    if broken:
        raise WeightsError(
            f"{source} holds non-finite weights ({len(broken)} layers, e.g. {broken[0]}); pass "
            "another preset or --encoder-init random"
        )
    return preset


def _read_folder(keras_hub, folder: Path) -> tuple:
    """`(source, backbone, scale, offset)` of a local preset folder, checked first."""
    check_preset_folder(folder)
    try:
        backbone = keras_hub.models.Backbone.from_preset(str(folder))
    except (ValueError, OSError, KeyError, TypeError) as error:
        raise WeightsError(
            f"{folder} cannot be read by keras-hub ({shorten(error, 200)}); pass a keras-hub "
            "ResNet-18 preset folder"
        ) from None
    return (str(folder), backbone, *_converter_scale_offset(folder))


def _check_backbone(backbone, keras_hub, source: str) -> None:
    resnet = isinstance(backbone, keras_hub.models.ResNetBackbone)
    config = backbone.get_config() if resnet else {}
    if not resnet or any(config.get(k) != v for k, v in RESNET18_HUB_CONFIG.items()):
        raise WeightsError(f"{source} is not a keras-hub ResNet-18 backbone; pass one")


def apply_preset_weights(encoder: keras.Model, preset: PresetWeights) -> keras.Model:
    """Sets every weighted layer of a `build_resnet18` encoder from the preset.

    Raises:
        WeightsError: if a layer is missing on either side or a shape differs.
    """
    weighted = {layer.name for layer in encoder.layers if layer.weights}
    if weighted != set(preset.weights):
        missing = sorted(weighted ^ set(preset.weights))
        raise WeightsError(
            f"{preset.source} does not cover the encoder's layers (e.g. {missing[0]}); pass a "
            "keras-hub ResNet-18 preset"
        )
    for name, values in preset.weights.items():
        try:
            encoder.get_layer(name).set_weights(values)
        except ValueError as error:
            raise WeightsError(
                f"{preset.source}: layer {name} does not fit ResNet-18 ({shorten(error, 150)})"
            ) from None
    return encoder


def build_encoder(
    image_size: int,
    preset: PresetWeights | None = None,
    synchronized_batch_norm: bool = False,
) -> keras.Model:
    """The ResNet-18 encoder, randomly initialised (`preset` None) or from a preset's weights
    with its input normalisation (see `build_resnet18`)."""
    if preset is None:
        return build_resnet18(image_size, synchronized_batch_norm=synchronized_batch_norm)
    encoder = build_resnet18(
        image_size,
        synchronized_batch_norm=synchronized_batch_norm,
        input_scale=preset.input_scale,
        input_offset=preset.input_offset,
    )
    return apply_preset_weights(encoder, preset)

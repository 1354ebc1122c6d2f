"""Transfer learning: keras.applications backbones, their weights (ImageNet, a no-top file or a
self-supervised encoder), the head and the two phases."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from bc_keras import runs
from bc_keras.backbones import BACKBONES, Backbone
from bc_keras.backbones import get_backbone as backbone_record
from bc_keras.errors import WeightsError, shorten
from bc_keras.models import saving
from bc_keras.models.classifier import compile_classifier, sigmoid_output
from bc_keras.models.scope import model_scope

WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_NONE = "none"
# The name of the backbone sub-model inside a transfer model.
BACKBONE_LAYER_NAME = "backbone"
# keras.applications refuses smaller inputs for every registered backbone.
MIN_IMAGE_SIZE = min(b.min_image_size for b in BACKBONES.values())
PHASE_FROZEN = 1
PHASE_FINE_TUNE = 2
PHASE1_LEARNING_RATE = 1e-3
PHASE2_LEARNING_RATE = 1e-4
# The metadata kinds of a self-supervised encoder file ("simclr_encoder": before issue 21).
ENCODER_KINDS = ("encoder", "simclr_encoder")
# `weights_provenance`'s "weights_source": where a transfer model's starting weights came from.
SOURCE_IMAGENET, SOURCE_NONE, SOURCE_FILE, SOURCE_ENCODER = "imagenet", "none", "file", "encoder"


@dataclass(frozen=True)
class ImageNetWeightsFile:
    """The no-top ImageNet weights file keras.applications would fetch for a backbone."""

    file_name: str
    url: str
    file_hash: str | None


def check_backbone(backbone: str, alpha: float = 1.0) -> None:
    """Raises `ConfigError` for an unknown backbone or an `alpha` it does not take."""
    backbone_record(backbone).check_alpha(alpha)


def imagenet_weights_file(
    backbone: str, image_size: int, alpha: float = 1.0
) -> ImageNetWeightsFile:
    """The file name, URL and hash keras.applications uses for a no-top backbone.

    A backbone with per-size weights (MobileNet: 128, 160, 192 or 224 pixels) falls back, like
    Keras, to the weights of its default size for any other size (they do not depend on it).
    """
    record = backbone_record(backbone)
    record.check_alpha(alpha)
    file_name = record.weights_file_name(image_size, alpha)
    if file_name is None:
        raise WeightsError(
            f"{record.title} has ImageNet weights for alpha in "
            f"{tuple(a for a, _ in record.alphas)} only; use one of them or weights none. "
            f"Received: alpha={alpha}"
        )
    url = f"{record.weights_url}{record.weights_folder}{file_name}"
    return ImageNetWeightsFile(file_name, url, record.weights_file_hash(alpha))


def keras_models_dir(keras_home: str | os.PathLike | None = None) -> Path:
    """The folder Keras caches application weights in, resolved as `keras.utils.get_file` does.

    Args:
        keras_home: the Keras home folder; None resolves it as Keras does ($KERAS_HOME, else
            ~/.keras, else /tmp/.keras when the home folder is not writable), but now rather
            than at import, so a changed $KERAS_HOME is honoured.

    Returns:
        `<keras home>/models` (`/tmp/.keras/models` when the keras home is not writable).
    """
    if keras_home is None:
        if "KERAS_HOME" in os.environ:
            keras_home = os.environ["KERAS_HOME"]
        else:
            base = os.path.expanduser("~")
            if not os.access(base, os.W_OK):
                base = "/tmp"
            keras_home = os.path.join(base, ".keras")
    base = os.path.expanduser(os.fspath(keras_home))
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    return Path(base) / "models"


def resolve_imagenet_weights(
    backbone: str,
    image_size: int,
    alpha: float = 1.0,
    keras_home: str | os.PathLike | None = None,
    download: Callable | None = None,
) -> Path:
    """The local path of a backbone's no-top ImageNet weights, downloading them if allowed.

    Args:
        backbone: one of `BACKBONES`.
        image_size: the input size (it picks the file of a backbone with per-size weights).
        alpha: the width multiplier of a backbone that has one.
        keras_home: the Keras home folder (see `keras_models_dir`).
        download: called as `keras.utils.get_file` (its default) when the file is not cached.

    Raises:
        WeightsError: when the file is not cached and cannot be downloaded (no network); the
            message names the exact file, the folder to put it in and where to get it.
    """
    weights_file = imagenet_weights_file(backbone, image_size, alpha)
    folder = keras_models_dir(keras_home)
    cached = folder / weights_file.file_name
    if cached.is_file():
        return cached
    download = download or keras.utils.get_file
    try:
        path = download(
            weights_file.file_name,
            weights_file.url,
            cache_subdir="models",
            file_hash=weights_file.file_hash,
            cache_dir=str(folder.parent),
        )
    except Exception as error:  # get_file raises a bare Exception when offline.
        raise WeightsError(
            f"ImageNet weights for {backbone} are not available offline: put "
            f"{weights_file.file_name} in {folder} (download it from {weights_file.url} on a "
            "machine with internet), or pass --weights PATH to a local no-top .h5, or "
            f"--weights none. (Download failed: {error})"
        ) from error
    return Path(path)


def load_backbone_weights(model: keras.Model, path, backbone: str, alpha: float = 1.0) -> None:
    """Loads a no-top .h5 weights file (or an encoder's backbone, `load_encoder_backbone`) into a
    backbone, with a clear error when it cannot. The file is untrusted: a full model saved as .h5 (which has a configuration) is inspected
    with `check_model_file` before anything else, although only its weights are read. Keras'
    EfficientNet ImageNet file gets the correction Keras applies when it loads it itself.

    Raises:
        WeightsError: if the file is missing, a folder, not HDF5, does not match the
            architecture, or holds NaN or infinite weights.
        ModelFileError: if the file's configuration carries code (a Lambda layer, ...).
    """
    import h5py

    path = Path(path)
    expected = f"the no-top {backbone} weights keras.applications uses"
    if backbone_record(backbone).has_alpha:
        expected += f" for alpha {alpha}"
    if path.is_dir():
        raise WeightsError(
            f"Weights file {path} is a folder; pass the .h5 file inside it with {expected}."
        )
    if not path.is_file():
        raise WeightsError(
            f"Weights file {path} does not exist; pass {WEIGHTS_IMAGENET!r}, {WEIGHTS_NONE!r} or "
            f"the path of a local .h5 with {expected}."
        )
    if path.suffix != ".h5" or not h5py.is_hdf5(path):
        raise WeightsError(f"{path} is not an HDF5 (.h5) weights file; expected {expected}.")
    saving.check_model_file(path)  # first: code is refused whatever the file claims to be
    if (metadata := file_metadata(path)) is not None:
        load_encoder_backbone(model, path, backbone, alpha, metadata)
        return
    try:
        model.load_weights(path)
    except (ValueError, KeyError, OSError, TypeError) as error:
        raise WeightsError(
            f"Weights file {path.name} ({path}) does not match the {backbone} backbone: expected "
            f"{expected} (include_top=False). Keras said: {shorten(error)}"
        ) from error
    _correct_imagenet_variance(model, backbone_record(backbone))
    _refuse_nonfinite(model, path)


def _refuse_nonfinite(model: keras.Model, path: Path) -> None:
    broken = saving.nonfinite_weights(model)
    if broken:
        # A NaN backbone makes every prediction NaN (or 0.5 after the head): never train on it.
        raise WeightsError(
            f"Weights file {path} holds non-finite weights ({len(broken)} variables, e.g. "
            f"{broken[0]}): it was saved from a diverged run; pass another file, "
            f"{WEIGHTS_IMAGENET!r} or {WEIGHTS_NONE!r}."
        )


def _correct_imagenet_variance(model: keras.Model, record: Backbone) -> None:
    """Folds Keras' correction of its EfficientNet ImageNet file into the input Normalization:
    the file's variance v is the standard deviations s, and Keras divides by sqrt(s) again in
    a Rescaling layer it adds only when it loads the file itself; v * s does the same with the
    layers of any backbone. Another variance (random, saved by bc_keras) is left as it is."""
    if not record.stddev_as_variance:
        return
    layer = next(lay for lay in model.layers if isinstance(lay, keras.layers.Normalization))
    mean, variance, *rest = layer.get_weights()
    stddev = np.asarray(record.stddev_as_variance, variance.dtype)
    if np.allclose(variance, stddev, rtol=0.0, atol=1e-6):
        layer.set_weights([mean, variance * stddev, *rest])
        layer.finalize_state()  # the layer computes with a copy of its variables


def file_metadata(path) -> dict | None:
    """The bc_keras metadata of an HDF5 file; None for a file without (a no-top weights file)."""
    import h5py

    with h5py.File(path, "r") as file:
        raw = file.attrs.get(saving.METADATA_ATTRIBUTE)
    return None if raw is None else json.loads(raw)


def load_encoder_backbone(
    model: keras.Model, path, backbone: str, alpha: float, metadata: dict | None = None
) -> None:
    """Copies the "backbone" layer of a self-supervised encoder file into a transfer backbone.

    The encoder (`train_simclr.py pretrain`) is a bc_keras model of kind "encoder" whose
    metadata names its `architecture` and `alpha`, with `build_backbone(architecture, size,
    weights=None, alpha=alpha)` as its layer "backbone"; loaded as untrusted, once they match.

    Raises:
        WeightsError: not an encoder, or of another backbone or width, or non-finite.
        ModelFileError: if the file carries code or cannot be loaded.
    """
    path = Path(path)
    metadata = file_metadata(path) if metadata is None else metadata
    kind, architecture = metadata.get("kind"), metadata.get("architecture")
    if kind not in ENCODER_KINDS:
        described = f"a bc_keras {kind or 'model'}" + (f" ({architecture})" if architecture else "")
        raise WeightsError(
            f"{path.name} is {described}, not starting weights; pass an encoder from "
            "`train_simclr.py pretrain`, a no-top .h5, 'imagenet' or 'none'"
        )
    encoder_alpha = float(metadata.get("alpha", 1.0))
    width = f" --alpha {encoder_alpha:g}" if encoder_alpha != 1.0 else ""
    described = f"a {metadata.get('method', 'simclr')} {architecture} encoder"
    if architecture != backbone:
        other = f"fine-tune it with `train_simclr.py finetune --encoder {path}`"
        other = f"pass --backbone {architecture}{width}" if architecture in BACKBONES else other
        article = "an" if backbone[0] in "aeiou" else "a"
        raise WeightsError(
            f"{path.name} is {described}, not {article} {backbone} one; pretrain with --encoder "
            f"{backbone} or {other}"
        )
    if encoder_alpha != float(alpha):
        raise WeightsError(
            f"{path.name} is {described} of alpha {encoder_alpha:g}, not {alpha:g}; pass --alpha "
            f"{encoder_alpha:g}, or pretrain a {backbone} encoder of alpha {alpha:g}"
        )
    encoder, _ = saving.load_model(path)
    try:
        model.set_weights(encoder.get_layer(BACKBONE_LAYER_NAME).get_weights())
    except ValueError as error:
        raise WeightsError(
            f"{path.name} is {described} without a {backbone} {BACKBONE_LAYER_NAME!r} layer "
            f"({shorten(error, 120)}); pretrain it again with `train_simclr.py pretrain`"
        ) from error
    for layer in [lay for lay in model.layers if isinstance(lay, keras.layers.Normalization)]:
        layer.finalize_state()  # the layer computes with a copy of its variables
    _refuse_nonfinite(model, path)


def weights_provenance(weights) -> dict:
    """Where a transfer model's starting weights come from, for its metadata: "weights_source"
    (imagenet, none, file or encoder) and, for a file, its SHA-256, and for an encoder its
    method, architecture, alpha, image size and preprocessing too."""
    if weights is None or str(weights).lower() == WEIGHTS_NONE:
        return {"weights_source": SOURCE_NONE}
    if weights == WEIGHTS_IMAGENET:
        return {"weights_source": SOURCE_IMAGENET}
    provenance = {"weights_file": str(weights), "weights_sha256": runs.file_sha256(weights)}
    metadata = file_metadata(weights) or {}
    if metadata.get("kind") not in ENCODER_KINDS:
        return {"weights_source": SOURCE_FILE, **provenance}
    defaults = {"method": "simclr", "alpha": 1.0}
    keys = ("method", "alpha", "architecture", "image_size", "preprocess")
    encoder = {f"encoder_{key}": metadata.get(key, defaults.get(key)) for key in keys}
    return {"weights_source": SOURCE_ENCODER, **provenance, **encoder}


def _hard_sigmoid_layers(x):
    """MobileNetV3's gate relu6(x + 3) / 6 in layers, the same arithmetic as Keras' raw ops
    (x + 3.0, * 1/6), which its .h5 loader cannot rebuild ("Only input tensors may be passed
    as positional arguments", Keras 3.15)."""
    x = keras.layers.ReLU(6.0)(keras.layers.Rescaling(1.0, offset=3.0)(x))
    return keras.layers.Rescaling(1.0 / 6.0)(x)


def build_backbone(
    backbone: str,
    image_size: int,
    weights: str | os.PathLike | None = WEIGHTS_IMAGENET,
    alpha: float = 1.0,
    keras_home: str | os.PathLike | None = None,
    download: Callable | None = None,
    name: str = BACKBONE_LAYER_NAME,
) -> keras.Model:
    """A keras.applications backbone without its top, named `name`.

    Args:
        backbone: the name of a registered backbone (`bc_keras.backbones`).
        image_size: square input size, at least 32.
        weights: "imagenet" (the Keras cache, see `resolve_imagenet_weights`), None or "none"
            (random initialisation), the path of a local no-top .h5 weights file, or that of
            a self-supervised encoder of this backbone (see `load_encoder_backbone`).
        alpha: the width multiplier of a backbone that has one (see its registry record).
        keras_home: the Keras home folder for the ImageNet cache; None resolves it as Keras does.
        download: how a missing ImageNet file is fetched (default `keras.utils.get_file`).
        name: the model's name.

    Returns:
        A functional `keras.Model` from images to the last feature map.
    """
    check_backbone(backbone, alpha)
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be at least {MIN_IMAGE_SIZE} for keras.applications backbones. "
            f"Received: image_size={image_size}"
        )
    if isinstance(weights, str) and weights.lower() == WEIGHTS_NONE:
        weights = None
    weights_path = None if weights is None else Path(weights)
    if weights == WEIGHTS_IMAGENET:
        weights_path = resolve_imagenet_weights(backbone, image_size, alpha, keras_home, download)
    record = backbone_record(backbone)
    options = {**record.builder_options, **({"alpha": alpha} if record.has_alpha else {})}
    builder = getattr(keras.applications, record.application)
    module = vars(sys.modules[builder.__module__])
    patch = {"hard_sigmoid": _hard_sigmoid_layers} if record.hard_sigmoid_layers else {}
    saved = {key: module[key] for key in patch}
    module.update(patch)
    shape = (image_size, image_size, 3)
    try:  # Weights loaded below, so that a bad file gets a message naming it.
        model = builder(include_top=False, weights=None, input_shape=shape, **options)
    finally:
        module.update(saved)
    model.name = name  # built under Keras' name: EfficientNetV2 picks its blocks by it
    if weights_path is not None:
        load_backbone_weights(model, weights_path, backbone, alpha)
    return model


def build_transfer_model(
    backbone: str,
    image_size: int = 224,
    weights: str | os.PathLike | None = WEIGHTS_IMAGENET,
    alpha: float = 1.0,
    dense_units: int = 128,
    name: str | None = None,
    keras_home: str | os.PathLike | None = None,
    download: Callable | None = None,
) -> keras.Model:
    """The report's transfer model: backbone -> GlobalAveragePooling -> Dense(ReLU) -> sigmoid.

    The backbone's BatchNorm layers stay in inference mode (moving statistics used, never
    updated) even once it is unfrozen for fine-tuning, as the Keras transfer-learning guide
    advises: small fine-tuning batches would otherwise wreck the statistics learnt on
    ImageNet. The backbone is called with `training=False` for direct calls, and
    `set_backbone_trainable` keeps its BatchNorm layers frozen for `fit` (see there why).

    Args:
        backbone, image_size, weights, alpha, keras_home, download: see `build_backbone`.
        dense_units: the hidden Dense layer's width.
        name: the model's name (default `transfer_<backbone>`).

    Returns:
        A functional `keras.Model` whose backbone is the layer named "backbone".
    """
    if dense_units < 1:
        raise ValueError(f"dense_units must be positive. Received: dense_units={dense_units}")
    base = build_backbone(backbone, image_size, weights, alpha, keras_home, download)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = base(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pooling")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="dense")(x)
    return keras.Model(inputs, sigmoid_output(x), name=name or f"transfer_{backbone}")


def get_backbone(model: keras.Model) -> keras.Model:
    """The backbone sub-model of a transfer model."""
    return model.get_layer(BACKBONE_LAYER_NAME)


def set_backbone_trainable(
    model: keras.Model, trainable: bool, freeze_batchnorm: bool = True
) -> keras.Model:
    """Freezes or unfreezes the backbone; the head stays trainable. Recompile after.

    Args:
        model: a model from `build_transfer_model`.
        trainable: whether the backbone's weights are to be trained.
        freeze_batchnorm: keep the backbone's BatchNormalization layers frozen even when it is
            unfrozen, so that they stay in inference mode (a frozen BatchNormalization layer
            runs in inference mode in Keras 3). The `training=False` of `build_transfer_model`
            alone does not do it: `fit` passes `training=True` down through nested functional
            models (keras-team/keras#20285), and the small fine-tuning batches would then
            overwrite the moving statistics learnt on ImageNet. Turn it off for a randomly
            initialised backbone, which has no statistics to keep and, with its BatchNorm
            stuck at the initial statistics, passes almost no signal through its deep layers.
    """
    backbone = get_backbone(model)
    backbone.trainable = trainable
    # Each layer is set explicitly: setting the backbone's flag does not always reach a layer
    # frozen on its own before.
    for layer in backbone.layers:
        is_batchnorm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = trainable and not (freeze_batchnorm and is_batchnorm)
    return model


def start_phase(
    model: keras.Model,
    phase: int,
    learning_rate: float | None = None,
    freeze_batchnorm: bool = True,
    strategy=None,
    mixed_precision: bool = False,
    jit_compile: bool = False,
    label_smoothing: float = 0.0,
) -> keras.Model:
    """Prepares a transfer model for a training phase and (re)compiles it in `model_scope`.

    Phase 1 freezes the backbone (Adam 1e-3 by default) so only the head learns; phase 2
    unfreezes it (Adam 1e-4 by default) to fine-tune everything but, with `freeze_batchnorm`,
    the BatchNorm layers, which stay frozen and so in inference mode (see
    `set_backbone_trainable`). A change of `trainable` takes effect once the model is compiled.
    """
    if phase not in (PHASE_FROZEN, PHASE_FINE_TUNE):
        raise ValueError(
            f"phase must be {PHASE_FROZEN} (frozen backbone) or {PHASE_FINE_TUNE} (fine-tuning). "
            f"Received: phase={phase!r}"
        )
    if learning_rate is None:
        learning_rate = PHASE1_LEARNING_RATE if phase == PHASE_FROZEN else PHASE2_LEARNING_RATE
    with model_scope(strategy, mixed_precision):
        set_backbone_trainable(model, phase == PHASE_FINE_TUNE, freeze_batchnorm)
        compile_classifier(model, learning_rate, jit_compile, label_smoothing=label_smoothing)
    return model

"""Transfer learning: keras.applications backbones, their weights, the head and the two phases."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from bc_keras.backbones import BACKBONES, KERAS_APPLICATIONS_URL
from bc_keras.backbones import get_backbone as backbone_record
from bc_keras.errors import WeightsError, shorten
from bc_keras.models.classifier import compile_classifier, sigmoid_output
from bc_keras.models.saving import check_model_file, nonfinite_weights
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
    url = f"{KERAS_APPLICATIONS_URL}{record.weights_folder}{file_name}"
    return ImageNetWeightsFile(file_name, url, record.weights_hash)


def keras_models_dir(keras_home: str | os.PathLike | None = None) -> Path:
    """The folder Keras caches application weights in, resolved as `keras.utils.get_file` does.

    Args:
        keras_home: the Keras home folder; None resolves it as Keras does ($KERAS_HOME, else
            ~/.keras, else /tmp/.keras when the home folder is not writable), but now rather
            than at import, so a changed $KERAS_HOME is honoured.

    Returns:
        `<keras home>/models`, or `/tmp/.keras/models` when the keras home is not writable.
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
    """Loads a no-top .h5 weights file into a backbone, with a clear error when it cannot.

    The file is untrusted: a full model saved as .h5 (which has a configuration) is inspected
    with `check_model_file` first, although only its weights are read.

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
    check_model_file(path)
    try:
        model.load_weights(path)
    except (ValueError, KeyError, OSError, TypeError) as error:
        raise WeightsError(
            f"Weights file {path.name} ({path}) does not match the {backbone} backbone: expected "
            f"{expected} (include_top=False). Keras said: {shorten(error)}"
        ) from error
    broken = nonfinite_weights(model)
    if broken:
        # A NaN backbone makes every prediction NaN (or 0.5 after the head): never train on it.
        raise WeightsError(
            f"Weights file {path} holds non-finite weights ({len(broken)} variables, e.g. "
            f"{broken[0]}): it was saved from a diverged run; pass another file, "
            f"{WEIGHTS_IMAGENET!r} or {WEIGHTS_NONE!r}."
        )


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
            (random initialisation), or the path of a local no-top .h5 weights file.
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
    if weights == WEIGHTS_IMAGENET:
        weights_path = resolve_imagenet_weights(backbone, image_size, alpha, keras_home, download)
    else:
        weights_path = None if weights is None else Path(weights)
    record = backbone_record(backbone)
    options = {**record.builder_options, **({"alpha": alpha} if record.has_alpha else {})}
    # Built without weights, then loaded here, so a bad file gets a message naming it.
    model = getattr(keras.applications, record.application)(
        include_top=False,
        weights=None,
        input_shape=(image_size, image_size, 3),
        name=name,
        **options,
    )
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
        compile_classifier(model, learning_rate, jit_compile)
    return model

"""Saving and loading bc_keras models: .h5 files (the default) or native `.keras` archives with
their metadata, written atomically, and checked as untrusted input before Keras reads them."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import keras
import numpy as np

from bc_keras import runs
from bc_keras.errors import ModelFileError, RunError, TrainingError, one_line, shorten

# The name of the HDF5 attribute holding what inference needs to know about a saved model.
METADATA_ATTRIBUTE = "bc_keras_metadata"
# The same metadata in a native .keras archive (a zip): a member beside Keras' config.json.
METADATA_MEMBER = "bc_keras_metadata.json"
# The member an exported inference model carries instead (bc_keras.export.formats).
EXPORT_MEMBER = "bc_keras_export.json"
MODEL_SUFFIXES = (".h5", ".keras")


def check_model_out(path) -> Path:
    """Checks, before any training, that a model can be saved at `path` (a .h5 file, or a
    native .keras archive, in a folder that exists or can be made and is writable); returns
    it as a Path."""
    path = Path(path)
    if path.suffix not in MODEL_SUFFIXES:
        raise RunError(
            f"--model-out {path} must end in .h5 (HDF5, the default) or .keras (Keras' native "
            f"format); e.g. {path.with_suffix('.h5')}"
        )
    if path.is_dir():
        raise RunError(f"--model-out {path} is a folder; name a {path.suffix} file inside it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(
            f"cannot create {path.parent} for --model-out ({error.strerror}); choose a writable "
            "location"
        ) from error
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise RunError(f"--model-out {path} is not writable; choose a writable location")
    return path


def nonfinite_weights(model: keras.Model) -> list[str]:
    """The paths of the model's variables holding a NaN or an infinity."""
    return [w.path for w in model.weights if not np.all(np.isfinite(w.numpy()))]


def check_finite_weights(model: keras.Model) -> None:
    """Refuses a model with NaN or infinite weights (a diverged run)."""
    broken = nonfinite_weights(model)
    if broken:
        raise TrainingError(
            f"the trained model has non-finite weights ({len(broken)} variables, e.g. "
            f"{broken[0]}): training diverged; start a new run with a lower --lr. Nothing was "
            "saved"
        )


def _float32_policies(value):
    """A model config with every layer's dtype policy set to float32."""
    if isinstance(value, dict):
        if value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
            return {**value, "config": {**value.get("config", {}), "name": "float32"}}
        return {key: _float32_policies(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_float32_policies(item) for item in value]
    return value


def float32_copy(model: keras.Model) -> keras.Model:
    """The model computing in float32 (the weights of a mixed-precision model are float32
    already), so a saved model predicts in float32 on any machine; the model itself if it
    computes in float32 anyway."""
    if model.dtype_policy.name == "float32" and all(
        layer.dtype_policy.name == "float32" for layer in model._flatten_layers()
    ):
        return model
    config = _float32_policies(json.loads(model.to_json()))
    copy = keras.models.model_from_json(json.dumps(config))
    copy.set_weights(model.get_weights())
    return copy


def save_model(model: keras.Model, path, metadata: dict) -> Path:
    """Saves `model` as .h5 (or, for a `.keras` path, Keras' native archive) with `metadata`
    (JSON) inside the file, atomically.

    The metadata says how inputs were prepared (image size, preprocessing) so that
    `predict.py` never has to be told: an HDF5 attribute of the .h5, a member of the .keras
    zip. A mixed-precision model is saved computing in float32. The file appears only once it
    is complete.
    """
    import h5py

    path = check_model_out(path)
    check_finite_weights(model)
    with runs.atomic_path(path, keep_suffix=True) as temporary:
        float32_copy(model).save(temporary)
        if path.suffix == ".keras":
            with zipfile.ZipFile(temporary, "a") as archive:
                archive.writestr(METADATA_MEMBER, json.dumps(metadata))
        else:
            with h5py.File(temporary, "a") as file:
                file.attrs[METADATA_ATTRIBUTE] = json.dumps(metadata)
    return path


def _keras_archive_members(path: Path) -> dict:
    """The bc_keras metadata, export record and Keras config of a .keras zip (None where
    absent), as text."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            return {
                member: archive.read(member).decode() if member in names else None
                for member in (METADATA_MEMBER, EXPORT_MEMBER, "config.json")
            }
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as error:
        raise ModelFileError(
            f"{path} cannot be read as a .keras model ({one_line(error)}); it is truncated or "
            "corrupt: copy it again or retrain"
        ) from error


def _read_keras_metadata(path: Path) -> dict:
    members = _keras_archive_members(path)
    if members[EXPORT_MEMBER] is not None and members[METADATA_MEMBER] is None:
        raise ModelFileError(
            f"{path} is an exported inference model (uint8 images in, the probability out), "
            "not a trained bc_keras model; pass the .h5 or .keras the training script saved"
        )
    if members[METADATA_MEMBER] is None:
        kind = "a Keras model" if members["config.json"] is not None else "a zip file"
        raise ModelFileError(
            f"{path} is {kind} without bc_keras metadata, so its input size and preprocessing "
            "are unknown; use a model saved by a bc_keras training script."
        )
    return json.loads(members[METADATA_MEMBER])


def read_metadata(path) -> dict:
    """The bc_keras metadata stored in a saved .h5 (or .keras) model.

    Raises:
        ModelFileError: if the file is missing, a folder, neither HDF5 nor a .keras archive,
            or not saved by bc_keras.
    """
    import h5py

    path = Path(path)
    if path.is_dir():
        raise ModelFileError(
            f"Model file {path} is a folder; pass the .h5 file a training script saved (e.g. "
            f"{path / 'model.h5'})."
        )
    if not path.is_file():
        raise ModelFileError(
            f"Model file {path} does not exist; pass the .h5 a training script saved."
        )
    if zipfile.is_zipfile(path):
        return _read_keras_metadata(path)
    if path.suffix == ".keras":
        raise ModelFileError(
            f"{path} is not a .keras archive (a zip); it is truncated or corrupt: copy it again "
            "or retrain"
        )
    if not h5py.is_hdf5(path):
        raise ModelFileError(
            f"{path} is neither an HDF5 (.h5) nor a .keras model file; pass a model saved by "
            "train_cnn.py, train_transfer.py or train_simclr.py."
        )
    try:
        with h5py.File(path, "r") as file:
            raw = file.attrs.get(METADATA_ATTRIBUTE)
            has_model = "model_config" in file.attrs
    except OSError as error:
        raise ModelFileError(
            f"{path} cannot be read as a model ({one_line(error)}); it is truncated or corrupt: "
            "copy it again or retrain"
        ) from error
    if raw is None:
        kind = "a Keras model" if has_model else "an HDF5 file"
        raise ModelFileError(
            f"{path} is {kind} without bc_keras metadata, so its input size and preprocessing "
            "are unknown; use a model saved by a bc_keras training script."
        )
    return json.loads(raw)


# Built-in layers that run code or a graph from elsewhere: refused like Lambda (Keras' safe
# mode refuses them too, but only the Keras versions that enforce it for .h5). A
# TorchModuleWrapper's configuration is a pickled torch module; Jax/FlaxLayer wrap functions.
CODE_LAYERS = ("Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer")
# Keras' markers for values inside a config (tensors, arrays, slices), not classes; its marker
# for Python code, "__lambda__", is refused.
_VALUE_MARKERS = frozenset(
    ("__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__")
)
# Where the classes of a legacy .h5 config (class names without a module) live.
_KERAS_NAMESPACES = (
    "keras.layers",
    "keras.models",
    "keras.losses",
    "keras.metrics",
    "keras.optimizers",
    "keras.optimizers.schedules",
    "keras.initializers",
    "keras.regularizers",
    "keras.constraints",
    "keras.activations",
    "keras.dtype_policies",
    "keras",
    "keras.src.models.functional",
)


# The only places a built-in function of a config (an activation, a loss) may come from.
_FUNCTION_NAMESPACES = ("keras.activations", "keras.losses", "keras.metrics")


def _is_keras_name(name: str, module: str | None, function: bool = False) -> bool:
    """Whether `name` is a Keras built-in class (or, with `function`, an activation, loss or
    metric function); a `module` the file names must be Keras' own."""
    import importlib

    if module is not None and module != "keras" and not module.startswith("keras."):
        return False  # never import a module a file names unless it is Keras'
    if function:
        namespaces = _FUNCTION_NAMESPACES
    else:
        namespaces = ((module,) if module else ()) + _KERAS_NAMESPACES
    for namespace in namespaces:
        try:
            found = getattr(importlib.import_module(namespace), name, None)
        except ImportError:
            continue
        if found is not None and (
            callable(found) and not isinstance(found, type) if function else isinstance(found, type)
        ):
            return True
    return False


def _is_bc_keras_object(registered_name) -> bool:
    """Whether `registered_name` names an object bc_keras registered with Keras."""
    return (
        isinstance(registered_name, str)
        and registered_name.startswith("bc_keras>")
        and keras.saving.get_registered_object(registered_name) is not None
    )


def _code_in(value) -> str | None:
    """What in a (nested) Keras config could run code, in words, or None."""
    if isinstance(value, list):
        return next((found for item in value if (found := _code_in(item))), None)
    if not isinstance(value, dict):
        return None
    class_name = value.get("class_name")
    if isinstance(class_name, str):
        config = value.get("config")
        name = config.get("name") if isinstance(config, dict) else None
        module, registered = value.get("module"), value.get("registered_name")
        if class_name in CODE_LAYERS:
            return f"a {class_name} layer {name or class_name!r}"
        if class_name == "__lambda__":
            return "a Python lambda"
        if class_name == "function":
            fn_name = config if isinstance(config, str) else "?"
            known = _is_keras_name(fn_name, module, function=True)
            if not (known or _is_bc_keras_object(registered)):
                return f"an unregistered function {fn_name!r} of module {module!r}"
        elif class_name not in _VALUE_MARKERS:
            own = _is_bc_keras_object(registered)
            # A name another package registered is code too: bc_keras cannot vouch for it.
            foreign = not own and registered not in (None, class_name)
            if foreign or not (own or _is_keras_name(class_name, module)):
                return (
                    f"a class {registered if foreign else class_name!r} that is neither "
                    "Keras' nor bc_keras'"
                )
    return next((found for item in value.values() if (found := _code_in(item))), None)


def _hdf5_configs(path: Path) -> dict:
    import h5py

    try:
        with h5py.File(path, "r") as file:
            return {key: file.attrs.get(key) for key in ("model_config", "training_config")}
    except OSError as error:
        raise ModelFileError(
            f"{path} cannot be read as HDF5 ({shorten(error)}); it is truncated or corrupt: "
            "copy it again or retrain"
        ) from error


def check_model_file(path) -> None:
    """Refuses a .h5 (or .keras) whose Keras configuration could run code when loaded, before Keras reads
    it: a Lambda (or TFSMLayer) layer, a Python function, or a class that is neither a Keras
    built-in nor registered by bc_keras, anywhere in the model (nested models included) or its
    training configuration. A weights-only file (no configuration) passes.

    Raises:
        ModelFileError: if the file carries code, or its configuration cannot be read.
    """
    # Importing bc_keras.models.simclr registers NTXentLoss, bc_keras' only Keras-registered
    # object (`import bc_keras` alone registers nothing), so compiled files resolve it.
    from bc_keras.models import simclr  # noqa: F401

    path = Path(path)
    if zipfile.is_zipfile(path):
        # A .keras archive: its config.json holds the model and (as compile_config) training
        # configuration.
        raw = {"model configuration": _keras_archive_members(path)["config.json"]}
    else:
        raw = _hdf5_configs(path)
    for key, text in raw.items():
        if text is None:
            continue
        try:
            config = json.loads(text.decode() if isinstance(text, bytes) else str(text))
            found = _code_in(config)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelFileError(
                f"{path} has a {key} that is not JSON ({shorten(error, 80)}); it is corrupt or "
                "not a Keras model: copy it again or retrain"
            ) from error
        except RecursionError as error:
            # No Keras model nests hundreds of levels deep: a crafted file, not to be read.
            raise ModelFileError(
                f"{path} has a {key} nested too deeply to inspect; it is not a bc_keras model "
                "and will not be loaded: use a model saved by a bc_keras training script"
            ) from error
        if found:
            raise ModelFileError(
                f"{path} carries code ({found}) that bc_keras will not run; retrain the model "
                "without it, or load it with Keras yourself only if you trust its author"
            )


def _finalize_normalizations(model: keras.Model) -> None:
    """Sets every adapted Normalization's mean and variance from its loaded statistics.

    Keras' .h5 loader calls `finalize_state` on top-level layers only: a nested backbone's
    input Normalization (EfficientNet's) keeps its build-time mean 0 and variance 1 and would
    compute differently from the saved model. A Normalization given its mean at construction
    has nothing to finalise (Keras skips it).
    """
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Normalization) and layer.built:
            layer.finalize_state()


def load_model(path, compile: bool = False) -> tuple[keras.Model, dict]:
    """Loads a bc_keras .h5 model and its metadata, treating the file as untrusted.

    The file's configuration is inspected before Keras reads it (`check_model_file`), Keras
    loads it in safe mode, and a model with non-finite weights is refused.

    Raises:
        ModelFileError: see `read_metadata` and `check_model_file`; also when Keras cannot
            load the file or its weights are NaN or infinite.
    """
    metadata = read_metadata(path)
    check_model_file(path)
    try:
        model = keras.models.load_model(path, compile=compile, safe_mode=True)
    except OSError as error:
        # h5py's errors: the data behind the attributes read above is damaged.
        raise ModelFileError(
            f"{path} cannot be read as a model ({shorten(error)}); it is truncated or corrupt: "
            "copy it again or retrain"
        ) from error
    except Exception as error:  # noqa: BLE001  (whatever an untrusted file makes Keras raise)
        raise ModelFileError(
            f"{path} cannot be loaded: {shorten(error)}; use a .h5 saved by a bc_keras "
            "training script with this version of Keras"
        ) from error
    _finalize_normalizations(model)
    broken = nonfinite_weights(model)
    if broken:
        raise ModelFileError(
            f"{path} has non-finite weights ({len(broken)} variables, e.g. {broken[0]}): it "
            "was saved from a diverged run and would predict nothing meaningful; retrain it"
        )
    return model, metadata

"""Writing a classifier as a self-contained export: a `.keras` file, a TensorFlow SavedModel or
a LiteRT (TFLite) flatbuffer, each taking uint8 RGB images of any size and returning the
malignant probability, with the model's threshold, class names, input contract and card in the
export's own metadata (and in `export.json` beside it)."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import bc_keras
from bc_keras import runs
from bc_keras.data.decode import DEFAULT_INTERPOLATION
from bc_keras.errors import DataError, ModelFileError, RunError, one_line
from bc_keras.export import FORMATS, QUANTIZATIONS  # noqa: E402  (spelled once, TF-free)
from bc_keras.export.graph import INPUT_NAME, OUTPUT_NAME, inference_model
from bc_keras.export.resize import DEFAULT_MAX_SIDE
from bc_keras.histology.breakhis import CLASS_NAMES
from bc_keras.models import saving

FORMAT_KERAS, FORMAT_SAVEDMODEL, FORMAT_LITERT = FORMATS
QUANTIZE_NONE, QUANTIZE_FLOAT16, QUANTIZE_INT8 = QUANTIZATIONS
# What an export folder holds: this file always, and the format's model.
EXPORT_FILE = "export.json"
MODEL_FILES = {
    FORMAT_KERAS: "model.keras",
    FORMAT_SAVEDMODEL: "saved_model",
    FORMAT_LITERT: "model.tflite",
}
# The name of the metadata inside a .keras archive and a .tflite flatbuffer, and the
# SavedModel signature that returns it.
METADATA_NAME = saving.EXPORT_MEMBER
METADATA_SIGNATURE = "metadata"
SERVING_SIGNATURE = "serving_default"
DEFAULT_CALIBRATION_IMAGES = 100


def check_choices(fmt: str, quantize: str) -> None:
    """Refuses an unknown format or quantisation, and quantising a float-only format."""
    if fmt not in FORMATS:
        raise RunError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if quantize not in QUANTIZATIONS:
        raise RunError(
            f"unknown quantisation {quantize!r}; choose one of {', '.join(QUANTIZATIONS)}"
        )
    if quantize != QUANTIZE_NONE and fmt != FORMAT_LITERT:
        raise RunError(
            f"--quantize {quantize} applies to --format litert only; the {fmt} export is float32"
        )


def export_record(metadata: dict, source, fmt: str, quantize: str, tta: bool, max_side: int):
    """The export's metadata: what a service needs to call it and to trust its output."""
    return {
        "format": fmt,
        "quantize": quantize,
        "model_file": MODEL_FILES[fmt],
        "source_model": str(source),
        runs.MODEL_HASH_KEY: runs.file_sha256(source),
        "bc_keras_version": bc_keras.__version__,
        "threshold": float(metadata.get("threshold", 0.5)),
        "class_names": list(CLASS_NAMES),
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "shape": [None, None, None, 3],
            "description": "RGB images of any size up to max_side (one size per call); "
            "resized in the graph as the training pipeline resized files",
            "image_size": int(metadata["image_size"]),
            "interpolation": metadata.get("interpolation", DEFAULT_INTERPOLATION),
            "max_side": int(max_side),
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": [None],
            "description": "probability of malignant; malignant at or above threshold; NaN "
            "for an image with a side over max_side",
        },
        "preprocess": metadata.get("preprocess"),
        "tta": bool(tta),
        "stain_normalizer": metadata.get("stain_normalizer"),
        "experiment": metadata.get("experiment"),
        "card": metadata.get("card"),
    }


def check_out_dir(out_dir) -> Path:
    """An output folder that does not exist, is empty, or holds an earlier export (replaced)."""
    return runs.replaceable_out_dir(out_dir, EXPORT_FILE, "bc_keras export")


def _stain_graph(record: dict | None, fmt: str, litert: bool) -> Callable | None:
    if not record:
        return None
    if fmt == FORMAT_KERAS:
        raise RunError(
            "this model was trained behind a stain normaliser, which the .keras format cannot "
            "hold (it needs TensorFlow ops that are not Keras layers); export --format "
            "savedmodel or litert"
        )
    from bc_keras.export.stain import normalizer_graph

    return normalizer_graph(record, litert=litert)


def serving_function(inference: keras.Model, normalizer: Callable | None):
    """uint8 `[n, h, w, 3]` -> {"probability": [n]}: the normaliser per image (at full size,
    as normalize_stains.py normalised), then the inference model."""

    def serve(images):
        if normalizer is not None:
            from bc_keras.export.stain import map_images

            images = map_images(normalizer, images)
        return {OUTPUT_NAME: inference(images)[OUTPUT_NAME]}

    return serve


IMAGES_SPEC = tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_NAME)


def write_savedmodel(path, inference: keras.Model, normalizer, record: dict) -> None:
    """A SavedModel with the `serving_default` signature (images -> probability) and a
    `metadata` signature returning the export record as JSON."""
    archive = keras.export.ExportArchive()
    archive.track(inference)
    archive.add_endpoint(
        SERVING_SIGNATURE, serving_function(inference, normalizer), input_signature=[IMAGES_SPEC]
    )
    text = json.dumps(record)
    archive.add_endpoint(
        METADATA_SIGNATURE, lambda: {"json": tf.constant(text)}, input_signature=[]
    )
    archive.write_out(str(path), verbose=False)


def write_keras(path, inference: keras.Model, record: dict) -> None:
    """The inference model as a `.keras` archive, the export record inside it."""
    inference.save(path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(METADATA_NAME, json.dumps(record, indent=2))


def read_keras_metadata(path) -> dict:
    """The export record inside a `.keras` export."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read(METADATA_NAME))


def _unsupported_ops(message: str) -> list[str]:
    """The op names a converter error blames, e.g. ['tf.Floor'] (first-seen order)."""
    found = re.findall(r"'((?:tf|tfl)\.[A-Za-z0-9_]+)'", message)
    found += re.findall(r"\b(tf\.[A-Z][A-Za-z0-9_]+)\(", message)
    return list(dict.fromkeys(found))


def _with_litert_metadata(flatbuffer: bytes, record: dict) -> bytes:
    """The flatbuffer with the export record as its `bc_keras_export.json` metadata entry."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(record).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_litert_metadata(path) -> dict:
    """The export record inside a `.tflite` export."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == METADATA_NAME:
            return json.loads(bytes(model.buffers[entry.buffer].data))
    raise ModelFileError(f"{path} holds no {METADATA_NAME}; it is not a bc_keras LiteRT export")


# The ops that only move int8 values in and out of the quantised network.
_BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE", "DELEGATE"}


def _convert(saved: Path, quantize: str):
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(saved), signature_keys=[SERVING_SIGNATURE]
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == QUANTIZE_FLOAT16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return converter


def _ops_outside(flatbuffer: bytes, scope: str) -> list[str]:
    """The output tensor names of the ops not inside the network's name scope `scope`."""
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    tensors = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    return [
        tensors[index]
        for op in interpreter._get_ops_details()
        for index in op["outputs"]
        if index in tensors and scope not in tensors[index]
    ]


def float_ops_inside(flatbuffer: bytes, scope: str) -> list[str]:
    """The op types inside the network's scope that compute in float (not quantised)."""
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    tensors = interpreter.get_tensor_details()
    by_index = {t["index"]: t for t in tensors}
    found = []
    for op in interpreter._get_ops_details():
        if op["op_name"] in _BOUNDARY_OPS:
            continue
        outputs = [by_index[i] for i in op["outputs"] if i in by_index]
        if any(scope in t["name"] and t["dtype"] == np.float32 for t in outputs):
            found.append(op["op_name"])
    return list(dict.fromkeys(found))


def _int8(saved: Path, calibration, scope: str) -> bytes:
    """Full-integer int8 of the network (weights and activations, calibrated on
    `calibration`); the resize and preprocessing around it keep their int32 / float32
    arithmetic (int8 cannot hold PIL's fixed-point coefficients), so they are denylisted."""
    float_model = _convert(saved, QUANTIZE_NONE).convert()
    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_nodes=_ops_outside(float_model, scope)
    )
    converter = _convert(saved, QUANTIZE_NONE)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image] for image in calibration())
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter,
        debug_dataset=lambda: ([image] for image in calibration()),
        debug_options=options,
    )
    flatbuffer = debugger.get_nondebug_quantized_model()
    left = float_ops_inside(flatbuffer, scope)
    if left:
        raise ModelFileError(
            f"int8 conversion cannot take the {', '.join(left)} op(s) of this network (they "
            "stay float32); export with --quantize float16 or none"
        )
    return flatbuffer


def write_litert(path, inference, normalizer, record, quantize, calibration=None) -> None:
    """The serving function converted to a LiteRT flatbuffer with TFLite builtin ops only (so
    any LiteRT runtime runs it, no Flex delegate): float32, float16 weights, or int8 (the
    network full-integer, calibrated on `calibration`, a callable yielding uint8
    `[1, h, w, 3]` images)."""
    scope = _network_scope(inference)
    with tempfile.TemporaryDirectory() as scratch:
        saved = Path(scratch) / "saved_model"
        write_savedmodel(saved, inference, normalizer, record)
        try:
            if quantize == QUANTIZE_INT8:
                flatbuffer = _int8(saved, calibration, scope)
            else:
                flatbuffer = _convert(saved, quantize).convert()
        except ModelFileError:
            raise
        except Exception as error:  # noqa: BLE001  (the converter raises its own ConverterError)
            ops = _unsupported_ops(str(error))
            named = f" ({', '.join(ops[:6])})" if ops else ""
            raise ModelFileError(
                f"LiteRT conversion cannot take an op of this model{named}: "
                f"{one_line(str(error))[:200]}; export --format savedmodel"
            ) from None
    Path(path).write_bytes(_with_litert_metadata(flatbuffer, record))


def _network_scope(inference: keras.Model) -> str:
    """The name scope of the classifier inside the inference model (its nested model)."""
    nested = [layer for layer in inference.layers if isinstance(layer, keras.Model)]
    return f"/{nested[0].name}"


def calibration_images(split, count: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0):
    """A callable yielding up to `count` uint8 `[1, h, w, 3]` training images of a prepared
    split (its train/ subset, or a folder with benign/ and malignant/), both classes drawn
    alike; refuses a missing split and a one-class one."""
    from bc_keras.data.files import list_folder_files
    from bc_keras.histology.stain import read_rgb

    split = Path(split)
    if not split.is_dir():
        raise DataError(
            f"calibration split {split} does not exist; pass --calibration DIR, a prepared "
            "split whose train/ images calibrate the int8 ranges"
        )
    parent, subset = (split.parent, split.name) if (split / "benign").is_dir() else (split, "train")
    files = list_folder_files(parent, subset if subset in ("train", "val", "test") else "train")
    classes = sorted(set(files.labels.tolist()))
    if len(classes) < 2:
        raise DataError(
            f"calibration split {split} has images of one class only ({CLASS_NAMES[classes[0]]}); "
            "int8 ranges calibrated on one class can clip the other: pass a split with both"
        )
    order = np.random.default_rng(seed).permutation(len(files.paths))[:count]
    paths = [files.paths[i] for i in sorted(order)]

    def generate():
        for path in paths:
            yield read_rgb(path)[None]

    return generate


def export_model(
    model_path,
    out_dir,
    fmt: str = FORMAT_SAVEDMODEL,
    quantize: str = QUANTIZE_NONE,
    calibration=None,
    tta: bool | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
    calibration_count: int = DEFAULT_CALIBRATION_IMAGES,
) -> Path:
    """Exports a saved bc_keras classifier to `out_dir` (see the module docstring); returns the
    exported model's path. The folder appears complete or not at all: it is written beside
    `out_dir` and moved into place at the end.

    Args:
        calibration: for int8, a prepared split whose training images calibrate the ranges
            (default: the split the model was trained on, from its run folder).
        tta: average the 8 dihedral views in the graph (None: as the model was saved).
    """
    from bc_keras import models
    from bc_keras.evaluation.predictor import KIND_CLASSIFIER

    check_choices(fmt, quantize)
    out_dir = check_out_dir(out_dir)
    network, metadata = models.load_model(model_path)
    if metadata.get("kind") != KIND_CLASSIFIER:
        raise ModelFileError(
            f"{model_path} is a {metadata.get('kind', 'unknown')} model, not a classifier; export "
            "a .h5 saved by train_cnn.py, train_transfer.py or train_simclr.py finetune|linear"
        )
    tta = bool(metadata.get("tta", False)) if tta is None else tta
    litert = fmt == FORMAT_LITERT
    normalizer = _stain_graph(metadata.get("stain_normalizer"), fmt, litert)
    source = calibration_images(calibration or _training_split(metadata, model_path),
                                calibration_count) if quantize == QUANTIZE_INT8 else None  # fmt: skip
    record = export_record(metadata, model_path, fmt, quantize, tta, max_side)
    inference = inference_model(
        network, metadata, tta=tta, max_side=max_side, dtype="float32" if litert else "float64"
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        target = scratch / MODEL_FILES[fmt]
        if fmt == FORMAT_KERAS:
            write_keras(target, inference, record)
        elif fmt == FORMAT_SAVEDMODEL:
            write_savedmodel(target, inference, normalizer, record)
        else:
            write_litert(target, inference, normalizer, record, quantize, source)
        record["size_bytes"] = _size(target)
        runs.write_json(scratch / EXPORT_FILE, record)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        scratch.rename(out_dir)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)
    return out_dir / MODEL_FILES[fmt]


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _training_split(metadata: dict, model_path) -> Path:
    """The split a model was trained on, from its run folder's config.json."""
    config = Path(metadata.get("run_dir", "")) / runs.CONFIG_FILE
    try:
        return Path(json.loads(config.read_text())["data"])
    except (OSError, KeyError, ValueError):
        raise DataError(
            f"int8 needs calibration images and {model_path}'s run folder ({config.parent}) is "
            "not here to say which split it was trained on; pass --calibration DIR"
        ) from None

"""Deployment: a trained classifier as a self-contained export (`.keras`, SavedModel, LiteRT
float32 / float16 / int8) that takes uint8 RGB images of any size and returns the malignant
probability with no bc_keras code at inference, and the measured cost of each export
(`python -m bc_keras.export MODEL.h5 --out DIR --format ...`, `--check SPLIT`).

Importing this package imports no TensorFlow; its modules do.
"""

FORMATS = ("keras", "savedmodel", "litert")
QUANTIZATIONS = ("none", "float16", "int8")
# `--format all`: every format, and LiteRT at each quantisation, each in its own subfolder.
FORMAT_ALL = "all"
ALL_EXPORTS = (
    ("keras", "none"),
    ("savedmodel", "none"),
    ("litert", "none"),
    ("litert", "float16"),
    ("litert", "int8"),
)
ALL_INDEX = "exports.json"


def export_subfolder(fmt: str, quantize: str) -> str:
    """The subfolder of one export in a `--format all` folder: `litert_int8`, `savedmodel`."""
    return fmt if quantize == "none" else f"{fmt}_{quantize}"

"""The files of a prepared split: the subsets, their readable images in flow_from_directory's
order, and the dataset record (files + pipeline) every experiment passes around."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bc_keras.data.decode import DEFAULT_INTERPOLATION
from bc_keras.errors import DataError
from bc_keras.histology.breakhis import CLASS_NAMES
from bc_keras.histology.images import IMAGE_EXTENSIONS, check_images, describe_problems

SUBSET_TRAIN, SUBSET_VAL, SUBSET_TEST = "train", "val", "test"
SUBSETS = (SUBSET_TRAIN, SUBSET_VAL, SUBSET_TEST)


@dataclass
class SplitFiles:
    """The readable images of one subset, in flow_from_directory's order, and what was skipped."""

    paths: list[str]
    labels: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    converted: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ImageDataset:
    """A batched dataset plus the files behind it, in the order they are yielded when unshuffled."""

    data: object  # tf.data.Dataset or a keras PyDataset over a Keras DirectoryIterator
    paths: list[str]
    labels: np.ndarray
    steps: int
    pipeline: str
    image_size: int
    preprocess: str
    # Where the images come from: figures decode some again (bc_keras.evaluation).
    source: str | None = None
    subset: str | None = None
    interpolation: str = DEFAULT_INTERPOLATION


def list_folder_files(split_dir, subset: str, check: bool = True) -> SplitFiles:
    """Lists `split_dir/subset/{benign,malignant}` in the order flow_from_directory uses.

    Args:
        split_dir: a folder prepared by `data_tools/prepare_breakhis.py`, or its TFRecords.
        subset: "train", "val" or "test".
        check: verify every image and skip unreadable ones (with a warning).

    Raises:
        DataError: if the folder is not a prepared split or the subset holds no image.
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}. Received: subset={subset!r}")
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(
            f"Data folder {split_dir} does not exist; prepare one with "
            "`python data_tools/prepare_breakhis.py SOURCE --out DIR`."
        )
    subset_dir = split_dir / subset
    missing = [name for name in CLASS_NAMES if not (subset_dir / name).is_dir()]
    if missing:
        raise DataError(
            f"{split_dir} is not a prepared split: missing "
            f"{', '.join(str(subset_dir / m) for m in missing)}. Expected train/, val/ and test/, "
            "each with benign/ and malignant/ (made by `python data_tools/prepare_breakhis.py "
            "SOURCE --out DIR`)."
        )
    paths, labels = [], []
    for label, name in enumerate(CLASS_NAMES):
        for root, _, files in sorted(os.walk(subset_dir / name), key=lambda item: item[0]):
            for file_name in sorted(files):
                if file_name.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(root, file_name))
                    labels.append(label)
    skipped, converted = [], []
    if check:
        scan = check_images(paths)
        keep = set(scan.good)
        labels = [label for path, label in zip(paths, labels, strict=True) if path in keep]
        paths, skipped, converted = scan.good, scan.skipped, scan.converted
        for line in describe_problems(scan, str(subset_dir)):
            warnings.warn(line, stacklevel=2)
    if not paths:
        raise DataError(
            f"{subset_dir} holds no readable image (looked in benign/ and malignant/ for "
            f"{', '.join(IMAGE_EXTENSIONS)}); re-run prepare_breakhis.py or check the split ratios."
        )
    return SplitFiles(paths, np.asarray(labels, dtype=np.int32), skipped, converted)

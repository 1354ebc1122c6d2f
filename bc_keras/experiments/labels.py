"""The labels a classifier run trains on: all of the training split's, or --label-fraction of
them drawn by whole patients, and the --class-weight they are weighted by."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from bc_keras import data
from bc_keras.config import CLASS_WEIGHT_BALANCED, ClassifierConfig
from bc_keras.prepare.subsets import label_fraction_indices, patients_of_paths
from bc_keras.training.run import LABELLED_FILES

# The share drawn by whole patients is near the one asked for; beyond this relative difference
# (one patient per class is the least drawn) a warning gives the share actually used.
LABEL_FRACTION_TOLERANCE = 0.2


def labelled_files(config: ClassifierConfig, run_dir: Path) -> tuple[data.SplitFiles, float]:
    """The training files whose labels are used: all, or --label-fraction of them drawn by
    whole patients per class (listed in the run folder), and the share of the training images
    they are (rounded to 6 digits); warns when that share is far from the one asked for."""
    files = data.list_split_files(config.data, data.SUBSET_TRAIN)
    if config.label_fraction == 1.0:
        return files, 1.0
    patients = patients_of_paths(files.paths)
    keep = label_fraction_indices(files.labels, patients, config.label_fraction, seed=config.seed)
    chosen = data.SplitFiles([files.paths[i] for i in keep], files.labels[keep])
    (run_dir / LABELLED_FILES).write_text("".join(f"{path}\n" for path in chosen.paths))
    used = round(len(chosen.paths) / len(files.paths), 6)
    print(
        f"label fraction {config.label_fraction}: {len(chosen.paths)} of {len(files.paths)} "
        f"training images ({'whole patients' if patients else 'single images'}, per class)"
    )
    if abs(used - config.label_fraction) > LABEL_FRACTION_TOLERANCE * config.label_fraction:
        warnings.warn(
            f"--label-fraction {config.label_fraction:g} uses {used:.4g} of the training images "
            f"({len(chosen.paths)} of {len(files.paths)}: whole "
            f"{'patients' if patients else 'images'} per class, at least one each); recorded as "
            "label_fraction_used",
            stacklevel=2,
        )
    return chosen, used


def class_weights(config: ClassifierConfig, labels) -> dict | None:
    """Keras `class_weight` for --class-weight balanced: n / (2 n_class), from the training
    labels actually used."""
    if config.class_weight != CLASS_WEIGHT_BALANCED:
        return None
    labels = np.asarray(labels)
    weights = {c: float(len(labels) / (2.0 * np.sum(labels == c))) for c in (0, 1)}
    print(f"class weights: benign {weights[0]:.3f}, malignant {weights[1]:.3f}")
    return weights

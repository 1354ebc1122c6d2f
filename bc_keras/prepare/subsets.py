"""Subsets of a training split: the labelled share for label-efficiency runs, drawn by whole
patients and per class."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bc_keras.histology.breakhis import parse_filename


def label_fraction_indices(
    labels, patients: Sequence[str] | None = None, fraction: float = 1.0, seed: int = 42
) -> np.ndarray:
    """The training images kept when only `fraction` of the labels may be used.

    The subset is stratified by class: each class keeps about `fraction` of its images and at
    least one. When `patients` are known, whole patients are drawn per class until that share
    is reached, so the labelled images never split a patient; patients that would overshoot
    the target by more than they help are passed over. Deterministic for a given seed.

    Args:
        labels: the 0/1 label of every training image.
        patients: the patient (slide id, see `patients_of_paths`) of every image, or None
            to draw single images.
        fraction: share of the labelled images to keep, in (0, 1].
        seed: seeds the draw.

    Returns:
        Sorted int64 indices into `labels`.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1]. Received: fraction={fraction}")
    labels = np.asarray(labels)
    if patients is not None and len(patients) != len(labels):
        raise ValueError(
            f"patients and labels must have the same length. Received: "
            f"{len(patients)} patients for {len(labels)} labels"
        )
    if fraction == 1.0:
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        target = max(1, int(round(fraction * len(members))))
        if patients is None:
            chosen.extend(rng.permutation(members)[:target])
            continue
        groups: dict[str, list[int]] = {}
        for index in members:
            groups.setdefault(str(patients[index]), []).append(int(index))
        order = sorted(groups)
        taken = 0
        for position in rng.permutation(len(order)):
            if taken >= target:
                break
            size = len(groups[order[position]])
            # Take the patient when that lands closer to the target than stopping short would.
            if taken == 0 or taken + size - target <= target - taken:
                chosen.extend(groups[order[position]])
                taken += size
    return np.sort(np.asarray(chosen, dtype=np.int64))


def patients_of_paths(paths) -> list[str] | None:
    """The BreaKHis patient (slide id, `14-13412`, whatever subtype folder holds the image) of
    every image path, or None if any file name is not BreaKHis'."""
    patients = []
    for path in paths:
        try:
            patients.append(parse_filename(Path(path).name).slide_id)
        except ValueError:
            return None
    return patients

"""Patients as the splits see them: a patient is a slide id (`14-13412`), whatever subtypes
its images are filed under, grouped per class, with the checks that find one on two sides."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from bc_keras.prepare.index import ImageRecord

SPLIT_NAMES = ("train", "val", "test")


def majority(values) -> str:
    """The most common value; ties go to the first in sorted order (deterministic)."""
    counts = Counter(values)
    return min(counts, key=lambda value: (-counts[value], value))


def patients_by_class(records: Sequence[ImageRecord]) -> dict[str, dict[str, list[ImageRecord]]]:
    """Class -> slide (patient) id -> its images, the groups every split keeps whole.

    A slide filed under two subtypes (14-13412 is ductal and lobular) is one group; a slide
    whose images disagree on the class goes whole to the class most of them have. Slides are
    ordered by their first patient folder, so a tree where every slide is one folder splits as
    it did when the folder was the key.
    """
    by_slide: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        by_slide[record.slide_id].append(record)
    by_class: dict[str, dict[str, list[ImageRecord]]] = defaultdict(dict)
    for slide in sorted(by_slide, key=lambda s: (min(r.patient for r in by_slide[s]), s)):
        images = by_slide[slide]
        by_class[majority(r.label for r in images)][slide] = images
    return by_class


def summary(patients: dict[str, list[ImageRecord]]) -> list[tuple[str, int, str]]:
    """(slide, images, main subtype) per patient, in the order `patients_by_class` gives."""
    return [(p, len(images), majority(r.subtype for r in images)) for p, images in patients.items()]


def slide_overlap(records: Sequence[ImageRecord]) -> dict[str, dict[str, int]]:
    """Slides (patients) found in more than one split -> {split: image count}, splits in
    train/val/test order."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for record in records:
        counts[record.slide_id][record.split] += 1
    return {
        slide: dict(sorted(per_split.items(), key=lambda kv: split_order(kv[0])))
        for slide, per_split in sorted(counts.items())
        if len(per_split) > 1
    }


def slide_folders(records: Sequence[ImageRecord]) -> dict[str, list[str]]:
    """Slide (patient) id -> the patient folders it is filed under, sorted."""
    folders: dict[str, set[str]] = defaultdict(set)
    for record in records:
        folders[record.slide_id].add(record.patient)
    return {slide: sorted(names) for slide, names in folders.items()}


def split_order(split: str) -> tuple[int, str]:
    """Sort key: train, val, test, then any other split name."""
    return (SPLIT_NAMES.index(split) if split in SPLIT_NAMES else len(SPLIT_NAMES), split)


def describe_sides(per_split: dict[str, int]) -> str:
    """`train: 3 images, test: 1 image`."""
    return ", ".join(
        f"{split}: {count} image{'' if count == 1 else 's'}" for split, count in per_split.items()
    )

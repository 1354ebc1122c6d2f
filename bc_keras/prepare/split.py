"""Splitting indexed images: patient-disjoint, by image (the report's, leaky), an official fold,
or patient-grouped K folds for cross-validation."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bc_keras.errors import DataError
from bc_keras.prepare.index import ImageRecord, problem_lines
from bc_keras.prepare.patients import (
    SPLIT_NAMES,
    describe_sides,
    patients_by_class,
    slide_folders,
    slide_overlap,
)
from bc_keras.prepare.patients import summary as patient_summary

SPLIT_PATIENT = "patient"
SPLIT_IMAGE = "image"
SPLIT_FOLD = "fold"
SPLIT_MODES = (SPLIT_PATIENT, SPLIT_IMAGE, SPLIT_FOLD)
# Patient-grouped K-fold cross-validation (`--folds K`); not a `--split` choice.
SPLIT_KFOLD = "kfold"
DEFAULT_RATIOS = (0.70, 0.15, 0.15)
DEFAULT_SEED = 42
DEFAULT_TRIALS = 300
# The share of a fold's non-test images that validation takes: 0.15 / 0.85, as in a 70/15/15 split.
DEFAULT_VAL_SHARE = DEFAULT_RATIOS[1] / (DEFAULT_RATIOS[0] + DEFAULT_RATIOS[1])
# The fewest patients per class that leave one for train and one for val beside every test fold.
MIN_KFOLD_PATIENTS = 3
NOT_IN_FOLD = "excluded {count} image(s) of the tree that the fold file does not list: {names}"
NOT_IN_TREE = (
    "{count} fold-file name(s) are not in the tree (or were filtered out or skipped): {names}"
)


RATIOS_RULE = (
    "give 3 fractions train val test, each above 0 (the training scripts validate on val and "
    "score on test, so neither may be empty), that sum to 1, e.g. 0.70 0.15 0.15"
)


def validate_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Checks train/val/test fractions: three finite values above 0 that sum to 1.

    Val and test may not be 0: every training script validates on val and scores on test, so
    a split without one is not usable (and with --folds val still takes val / (train + val)).

    Raises:
        DataError: naming the rule that `ratios` breaks.
    """
    values = tuple(float(r) for r in ratios)
    shown = " ".join(f"{r:g}" for r in values)
    if len(values) != 3:
        raise DataError(
            f"--ratios needs 3 values (train val test), received {len(values)}: {shown}; "
            f"{RATIOS_RULE}"
        )
    if not all(np.isfinite(values)):
        raise DataError(f"--ratios {shown} holds a value that is not a number; {RATIOS_RULE}")
    empty = [name for name, r in zip(SPLIT_NAMES, values, strict=True) if r <= 0.0]
    if empty:
        raise DataError(
            f"--ratios {shown} leaves {' and '.join(empty)} with no image; {RATIOS_RULE}"
        )
    if abs(sum(values) - 1.0) > 1e-6:
        raise DataError(f"--ratios {shown} sum to {sum(values):g}, not 1; {RATIOS_RULE}")
    return values  # type: ignore[return-value]


def _assign_patients(
    patients: Sequence[tuple[str, int, str]],
    ratios: Sequence[float],
    rng: np.random.Generator,
    trials: int,
) -> dict[str, int]:
    """Best of `trials` greedy assignments of (patient, images, subtype) to len(ratios) splits.

    Each trial orders patients largest first, with the sizes jittered so trials differ, and gives
    each patient to the split furthest below its image target (every other trial first to a split
    its subtype still misses). A trial scores its total deviation
    from the target image fractions plus a penalty for every subtype with at least as many
    patients as splits that misses a split, and a large one for an empty split.
    """
    sizes = np.array([size for _, size, _ in patients], dtype=float)
    total = sizes.sum()
    targets = np.asarray(ratios, dtype=float) * total
    subtype_of = [subtype for _, _, subtype in patients]
    subtype_counts = Counter(subtype_of)
    covered_subtypes = [s for s, n in subtype_counts.items() if n >= len(ratios)]
    best_score, best = np.inf, None
    for trial in range(trials):
        jitter = 1.0 if trial == 0 else rng.uniform(0.5, 1.5, len(patients))
        ties = rng.random(len(patients))
        order = np.lexsort((ties, -sizes * jitter))
        filled = np.zeros(len(ratios))
        assignment = np.empty(len(patients), dtype=int)
        members: dict[int, set[str]] = defaultdict(set)
        counts = np.zeros(len(ratios), dtype=int)
        # Every other trial also steers each subtype's first patients into the splits that
        # subtype still misses; the score decides whether that costs too much balance.
        subtype_aware = trial % 2 == 1
        for index in order:
            # Empty splits first, then the one furthest below its target.
            deficit = targets - filled + np.where(counts == 0, total, 0.0)
            subtype = subtype_of[index]
            if subtype_aware and subtype in covered_subtypes:
                missing = [k for k in range(len(ratios)) if subtype not in members[k]]
                if missing:
                    deficit = np.where(np.isin(np.arange(len(ratios)), missing), deficit, -np.inf)
            choice = int(np.argmax(deficit))
            assignment[index] = choice
            filled[choice] += sizes[index]
            counts[choice] += 1
            members[choice].add(subtype_of[index])
        score = float(np.abs(filled / total - np.asarray(ratios)).sum())
        score += 0.1 * sum(
            1 for s in covered_subtypes for split in range(len(ratios)) if s not in members[split]
        )
        score += 100.0 * int((counts == 0).sum())
        if score < best_score - 1e-12:
            best_score, best = score, assignment.copy()
    return {patient: int(best[i]) for i, (patient, _, _) in enumerate(patients)}


def split_by_patient(
    records: Sequence[ImageRecord],
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = DEFAULT_SEED,
    split_names: Sequence[str] = SPLIT_NAMES,
    trials: int = DEFAULT_TRIALS,
) -> list[ImageRecord]:
    """Patient-disjoint split, each class's patients split separately, balanced by image count.

    A patient is a slide id (`patients_by_class`), so a slide filed under two subtypes is on
    one side.

    Args:
        records: the images to split.
        ratios: target image fraction per split, one per name in `split_names`.
        seed: seeds the random orderings.
        split_names: the splits to fill.
        trials: how many seeded orderings to try (the best is kept).

    Returns:
        The records with `split` set.

    Raises:
        DataError: if a class has fewer patients than there are splits.
    """
    if len(ratios) != len(split_names):
        raise ValueError(f"One ratio per split is needed. Received: ratios={ratios}")
    rng = np.random.default_rng(seed)
    by_class = patients_by_class(records)
    split_of: dict[str, str] = {}
    for label in sorted(by_class):
        patients = by_class[label]
        if len(patients) < len(split_names):
            raise DataError(
                f"too few patients for a patient split: class {label} has {len(patients)} "
                f"patient(s) but {'/'.join(split_names)} need at least one each; use "
                "--split image (leaks patients) or more data"
            )
        for patient, index in _assign_patients(
            patient_summary(patients), ratios, rng, trials
        ).items():
            split_of[patient] = split_names[index]
    return [replace(r, split=split_of[r.slide_id]) for r in records]


def split_by_image(
    records: Sequence[ImageRecord],
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = DEFAULT_SEED,
) -> list[ImageRecord]:
    """The report's split: random by image, stratified by class (it leaks patients).

    Two calls of sklearn's `train_test_split`: test off the whole, then val off the rest.
    """
    from sklearn.model_selection import train_test_split

    train_ratio, val_ratio, test_ratio = validate_ratios(ratios)
    indices = np.arange(len(records))
    labels = [r.label for r in records]
    try:
        rest, test = train_test_split(
            indices, test_size=test_ratio, random_state=seed, stratify=labels
        )
        train, val = train_test_split(
            rest,
            test_size=val_ratio / (train_ratio + val_ratio),
            random_state=seed,
            stratify=[labels[i] for i in rest],
        )
    except ValueError as error:
        raise DataError(
            f"too few images for a stratified image split of {len(records)} images ({error}); "
            "add more data"
        ) from error
    split_of = {}
    for name, chosen in zip(SPLIT_NAMES, (train, val, test), strict=True):
        for i in chosen:
            split_of[int(i)] = name
    return [replace(r, split=split_of[i]) for i, r in enumerate(records)]


def read_fold_file(path: str | Path) -> dict[str, str]:
    """Reads an official `dsfoldN.txt` (`filename|mag|fold|grp` lines) into filename -> grp."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"fold file {path} does not exist; pass an official dsfoldN.txt")
    groups: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            parts = [part.strip() for part in text.split("|")]
            if (
                len(parts) != 4
                or not parts[1].isdigit()
                or not parts[2].isdigit()
                or parts[3].lower() not in ("train", "test")
                or not parts[0]
            ):
                raise DataError(
                    f"fold file {path} line {number} is malformed: {text[:80]!r}; expected "
                    "filename|mag|fold|grp with grp train or test"
                )
            filename, group = parts[0], parts[3].lower()
            if groups.get(filename, group) != group:
                raise DataError(
                    f"fold file {path} line {number} puts {filename} in {group} but an earlier "
                    "line put it in the other group; fix the fold file"
                )
            groups[filename] = group
    if not groups:
        raise DataError(f"fold file {path} has no lines; pass an official dsfoldN.txt")
    return groups


@dataclass
class FoldReport:
    """What a fold split left out, and the patients (slides) it puts on both sides."""

    not_in_fold: list[str]
    not_in_tree: list[str]
    # Slide -> {split: images}, for slides the fold file puts in its train and test groups.
    crossing: dict[str, dict[str, int]] = field(default_factory=dict)
    # Slide -> its patient folders, for the slides in `crossing`.
    folders: dict[str, list[str]] = field(default_factory=dict)

    def warnings(self) -> list[str]:
        lines = problem_lines((self.not_in_fold, NOT_IN_FOLD), (self.not_in_tree, NOT_IN_TREE))
        for slide, per_split in self.crossing.items():
            lines.append(
                f"the fold file puts patient {slide} (folders "
                f"{', '.join(self.folders.get(slide, []))}) on both sides ({describe_sides(per_split)}); "
                "kept as the published protocol assigns it, so its test images are not from an "
                "unseen patient; use --split patient or --folds for patient-disjoint splits"
            )
        return lines


def split_by_fold(
    records: Sequence[ImageRecord],
    fold_groups: dict[str, str],
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = DEFAULT_SEED,
    trials: int = DEFAULT_TRIALS,
) -> tuple[list[ImageRecord], FoldReport]:
    """Official-fold split: test = the fold's test group; val carved by patient from its train.

    The fold file's assignment is kept exactly (the published protocol), even where it puts a
    patient on both sides (slide 14-13412, filed as DC and LC, in fold 1); the report lists such
    patients, with their images per split, for a warning.

    Args:
        records: the images (already filtered by magnification).
        fold_groups: filename -> "train" or "test", from `read_fold_file`.
        ratios: train/val/test ratios; val takes ratios[1] / (ratios[0] + ratios[1]) of the
            fold's train images.
        seed, trials: as in `split_by_patient`.

    Returns:
        The records listed in the fold, with `split` set, and what was left out.
    """
    train_ratio, val_ratio, _ = validate_ratios(ratios)
    in_fold = [r for r in records if r.filename in fold_groups]
    names = {r.filename for r in records}
    report = FoldReport(
        not_in_fold=sorted(r.filename for r in records if r.filename not in fold_groups),
        not_in_tree=sorted(name for name in fold_groups if name not in names),
    )
    if not in_fold:
        raise DataError(
            "no image of the tree is listed in the fold file; check that the fold file belongs to "
            "this dataset and that --magnification keeps its images"
        )
    test = [replace(r, split="test") for r in in_fold if fold_groups[r.filename] == "test"]
    train_group = [r for r in in_fold if fold_groups[r.filename] == "train"]
    if not test or not train_group:
        missing = "test" if not test else "train"
        raise DataError(
            f"the fold file's {missing} group has no image in this tree; check --magnification "
            "and the fold file"
        )
    val_share = val_ratio / (train_ratio + val_ratio)
    carved = split_by_patient(
        train_group,
        ratios=(1.0 - val_share, val_share),
        seed=seed,
        split_names=("train", "val"),
        trials=trials,
    )
    order = {r.filename: i for i, r in enumerate(records)}
    result = sorted(carved + test, key=lambda r: order[r.filename])
    test_slides = {r.slide_id for r in test}
    report.crossing = {
        slide: sides for slide, sides in slide_overlap(result).items() if slide in test_slides
    }
    folders = slide_folders(result)
    report.folders = {slide: folders[slide] for slide in report.crossing}
    return result, report

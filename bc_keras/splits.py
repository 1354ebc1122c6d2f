"""Index BreaKHis trees and archives, split them (patient, image or official fold), and lay out
train/val/test folders with a split.csv manifest."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from bc_keras.breakhis import CLASS_NAMES, MAGNIFICATIONS, distribution_table, parse_filename

SPLIT_PATIENT = "patient"
SPLIT_IMAGE = "image"
SPLIT_FOLD = "fold"
SPLIT_MODES = (SPLIT_PATIENT, SPLIT_IMAGE, SPLIT_FOLD)
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_RATIOS = (0.70, 0.15, 0.15)
DEFAULT_SEED = 42
DEFAULT_TRIALS = 300
MANIFEST_NAME = "split.csv"
SETTINGS_NAME = "prepare.json"
MANIFEST_COLUMNS = ("filename", "path", "label", "subtype", "patient", "magnification", "split")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
EXPECTED_LAYOUT = (
    "BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<subtype>/<patient>/<mag>X/*.png"
)
# Files per progress line on long work.
PROGRESS_EVERY = 1000
# How many offending file names a warning lists before it only counts.
LISTED_NAMES = 5

Log = Callable[[str], None]


def _silent(message: str) -> None:
    del message


class DatasetError(ValueError):
    """A problem with the user's data or arguments; the message is one line naming the fix."""


@dataclass(frozen=True)
class ImageRecord:
    """One indexed image: where it is, what its name says, and (once split) its split."""

    filename: str
    source: str
    label: str
    subtype: str
    patient: str
    magnification: int
    split: str = ""


@dataclass
class IndexResult:
    """The images found in a source, plus everything skipped or noted on the way."""

    records: list[ImageRecord]
    source_kind: str  # "folder" or "archive"
    root: str
    unparsable: list[str] = field(default_factory=list)
    class_mismatch: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    converted: list[tuple[str, str]] = field(default_factory=list)

    def warnings(self) -> list[str]:
        """One line per kind of problem, listing a few names and the count."""
        lines = []
        if self.unparsable:
            lines.append(
                f"skipped {len(self.unparsable)} .png file(s) whose name does not follow "
                f"SOB_<B|M>_<subtype>-<yy>-<slide>-<mag>-<seq>.png: {_listed(self.unparsable)}"
            )
        if self.class_mismatch:
            lines.append(
                f"skipped {len(self.class_mismatch)} file(s) whose name disagrees with their "
                f"benign/malignant folder: {_listed(self.class_mismatch)}"
            )
        if self.duplicates:
            lines.append(
                f"skipped {len(self.duplicates)} duplicate file name(s) (first copy kept): "
                f"{_listed(self.duplicates)}"
            )
        if self.unreadable:
            described = [f"{name} ({reason})" for name, reason in self.unreadable]
            lines.append(
                f"skipped {len(self.unreadable)} unreadable image(s): {_listed(described)}; "
                "re-extract or re-download them"
            )
        if self.converted:
            described = [f"{name} ({mode})" for name, mode in self.converted]
            lines.append(
                f"kept {len(self.converted)} image(s) that are not RGB; they will be converted to "
                f"RGB when loaded: {_listed(described)}"
            )
        return lines


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:LISTED_NAMES])
    return shown + (
        f", ... ({len(names) - LISTED_NAMES} more)" if len(names) > LISTED_NAMES else ""
    )


# ----------------------------------------------------------------------------------- arguments


def validate_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Checks train/val/test fractions: three positive values adding up to 1."""
    values = tuple(float(r) for r in ratios)
    if len(values) != 3:
        raise DatasetError(
            f"--ratios needs 3 values (train val test), e.g. 0.70 0.15 0.15; received {len(values)}: "
            f"{' '.join(str(r) for r in ratios)}"
        )
    if any(not 0.0 < r < 1.0 for r in values) or abs(sum(values) - 1.0) > 1e-6:
        raise DatasetError(
            f"--ratios must be 3 values between 0 and 1 that sum to 1 (e.g. 0.70 0.15 0.15); "
            f"received {' '.join(f'{r:g}' for r in values)} (sum {sum(values):g})"
        )
    return values  # type: ignore[return-value]


def parse_magnifications(values: Iterable[str | int] | None) -> tuple[int, ...]:
    """Turns `["40", "100x"]`, `["all"]` or None into magnifications; unknown ones are an error."""
    if values is None:
        return MAGNIFICATIONS
    chosen = set()
    for value in values:
        text = str(value).strip().lower().removesuffix("x")
        if text == "all":
            return MAGNIFICATIONS
        if not text.isdigit() or int(text) not in MAGNIFICATIONS:
            raise DatasetError(
                f"unknown magnification {value!r}; choose from "
                f"{' '.join(str(m) for m in MAGNIFICATIONS)} or all"
            )
        chosen.add(int(text))
    if not chosen:
        raise DatasetError("--magnification needs at least one of 40 100 200 400 or all")
    return tuple(sorted(chosen))


# ------------------------------------------------------------------------------------ indexing


def is_archive(path: str | Path) -> bool:
    """True when `path` names a tar archive by its suffix."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def find_breast_root(source: str | Path) -> Path:
    """Finds the `histology_slides/breast` folder at or below `source`.

    `source` may be a folder holding `BreaKHis_v1`, `BreaKHis_v1` itself, `histology_slides`, or
    `breast`.
    """
    source = Path(source)
    if not source.exists():
        raise DatasetError(
            f"source {source} does not exist; pass BreaKHis_v1.tar.gz or the folder it extracts to"
        )
    if not source.is_dir():
        raise DatasetError(
            f"source {source} is neither a folder nor a .tar.gz/.tgz/.tar archive; pass "
            "BreaKHis_v1.tar.gz or the folder it extracts to"
        )
    candidates = [
        source,
        source / "breast",
        source / "histology_slides" / "breast",
        source / "BreaKHis_v1" / "histology_slides" / "breast",
    ]
    candidates += sorted(source.glob("*/BreaKHis_v1/histology_slides/breast"))
    candidates += sorted(source.glob("*/histology_slides/breast"))
    for candidate in candidates:
        if candidate.name == "breast" and any(
            (candidate / label).is_dir() for label in CLASS_NAMES
        ):
            return candidate
    raise DatasetError(
        f"source {source} is not a BreaKHis tree: no histology_slides/breast/{{benign,malignant}} "
        f"inside; expected the layout {EXPECTED_LAYOUT}"
    )


def _check_image(opener) -> str | None:
    """Returns None for a good RGB PNG, 'mode L'-style notes for other modes, raises for bad."""
    with Image.open(opener) as image:
        mode = image.mode
        if image.format != "PNG":
            raise OSError(f"a {image.format} file named .png")
        image.verify()
    return None if mode == "RGB" else mode


def _inspect(name: str, size: int, opener, result: IndexResult) -> bool:
    """Checks one image's bytes; records problems in `result`; True when the image is usable."""
    if size == 0:
        result.unreadable.append((name, "zero bytes"))
        return False
    try:
        mode = _check_image(opener)
    except Image.UnidentifiedImageError:
        result.unreadable.append((name, "not an image"))
        return False
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as error:
        result.unreadable.append((name, f"corrupt or truncated: {error}"))
        return False
    if mode is not None:
        result.converted.append((name, f"mode {mode}"))
    return True


def _index_one(
    relative: PurePosixPath, source: str, result: IndexResult, seen: set[str]
) -> ImageRecord | None:
    """Parses one file below `breast/`; records why it is skipped, if it is."""
    filename = relative.name
    try:
        parsed = parse_filename(filename)
    except ValueError:
        result.unparsable.append(str(relative))
        return None
    folder_label = relative.parts[0] if len(relative.parts) > 1 else None
    if folder_label != parsed.label:
        result.class_mismatch.append(f"{relative} (name says {parsed.label})")
        return None
    if filename in seen:
        result.duplicates.append(str(relative))
        return None
    seen.add(filename)
    return ImageRecord(
        filename=filename,
        source=source,
        label=parsed.label,
        subtype=parsed.subtype,
        patient=parsed.patient,
        magnification=parsed.magnification,
    )


def index_tree(source: str | Path, check_images: bool = True, log: Log = _silent) -> IndexResult:
    """Indexes every PNG below the `breast` folder of an extracted BreaKHis tree.

    Args:
        source: the tree, at any level from the folder holding `BreaKHis_v1` down to `breast`.
        check_images: verify each PNG (zero-byte, not an image, truncated, not RGB).
        log: receives progress lines.

    Returns:
        The records (sorted by file name) and what was skipped.
    """
    root = find_breast_root(source)
    result = IndexResult(records=[], source_kind="folder", root=str(root.absolute()))
    seen: set[str] = set()
    count = 0
    for directory, subdirs, files in os.walk(root, followlinks=True):
        subdirs.sort()
        for filename in sorted(files):
            if not filename.lower().endswith(".png"):
                continue
            path = Path(directory) / filename
            relative = PurePosixPath(path.relative_to(root).as_posix())
            record = _index_one(relative, str(path.absolute()), result, seen)
            if record is None:
                continue
            if check_images and not _inspect(str(relative), path.stat().st_size, path, result):
                seen.discard(filename)
                continue
            result.records.append(record)
            count += 1
            if count % PROGRESS_EVERY == 0:
                log(f"indexed {count} images ...")
    result.records.sort(key=lambda r: r.filename)
    return result


def _archive_breast_relative(member_name: str) -> PurePosixPath | None:
    """The part of an archive member's path below `histology_slides/breast/`, if any."""
    parts = PurePosixPath(member_name).parts
    for i in range(len(parts) - 1):
        if parts[i] == "histology_slides" and parts[i + 1] == "breast":
            return PurePosixPath(*parts[i + 2 :]) if len(parts) > i + 2 else None
    return None


def index_archive(
    archive: str | Path, extract_to: str | Path | None = None, log: Log = _silent
) -> IndexResult:
    """Indexes (and optionally extracts) a BreaKHis tar archive in one streaming pass.

    Args:
        archive: `BreaKHis_v1.tar.gz`, `.tgz` or `.tar`.
        extract_to: where to extract the usable images (flat, by file name); their records point
            there. With None only names are read and nothing is verified.
        log: receives progress lines.

    Returns:
        The records and what was skipped.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise DatasetError(
            f"source {archive} does not exist; pass BreaKHis_v1.tar.gz or the folder it extracts to"
        )
    result = IndexResult(records=[], source_kind="archive", root=str(archive.absolute()))
    seen: set[str] = set()
    found_tree = False
    if extract_to is not None:
        Path(extract_to).mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                relative = _archive_breast_relative(member.name)
                if relative is None:
                    continue
                found_tree = True
                if not member.isfile() or not relative.name.lower().endswith(".png"):
                    continue
                if extract_to is None:
                    record = _index_one(relative, f"{archive}::{member.name}", result, seen)
                    if record is not None:
                        result.records.append(record)
                    continue
                target = Path(extract_to) / relative.name
                record = _index_one(relative, str(target.absolute()), result, seen)
                if record is None:
                    continue
                stream = tar.extractfile(member)
                data = stream.read() if stream is not None else b""
                if not _inspect(str(relative), len(data), io.BytesIO(data), result):
                    seen.discard(relative.name)
                    continue
                target.write_bytes(data)
                result.records.append(record)
                if len(result.records) % PROGRESS_EVERY == 0:
                    log(f"extracted {len(result.records)} images ...")
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        detail = " ".join(str(error).split())[:160]
        raise DatasetError(
            f"archive {archive} is corrupt or truncated ({type(error).__name__}: {detail}); "
            "download BreaKHis_v1.tar.gz again or pass its extracted folder"
        ) from error
    if not found_tree:
        raise DatasetError(
            f"archive {archive} is not BreaKHis: it has no histology_slides/breast folder; "
            f"expected the layout {EXPECTED_LAYOUT}"
        )
    result.records.sort(key=lambda r: r.filename)
    return result


def index_source(
    source: str | Path,
    extract_to: str | Path | None = None,
    check_images: bool = True,
    log: Log = _silent,
) -> IndexResult:
    """Indexes a tree (any level) or a tar archive; see `index_tree` and `index_archive`."""
    source = Path(source)
    if is_archive(source):
        return index_archive(source, extract_to=extract_to, log=log)
    if source.is_file():
        raise DatasetError(
            f"source {source} is a file but not a .tar.gz/.tgz/.tar archive; pass "
            "BreaKHis_v1.tar.gz or the folder it extracts to"
        )
    return index_tree(source, check_images=check_images, log=log)


def filter_magnifications(
    records: Iterable[ImageRecord], magnifications: Iterable[int]
) -> list[ImageRecord]:
    """Keeps the records at the given magnifications."""
    wanted = set(magnifications)
    return [r for r in records if r.magnification in wanted]


# ---------------------------------------------------------------------------------- splitting


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

    Args:
        records: the images to split.
        ratios: target image fraction per split, one per name in `split_names`.
        seed: seeds the random orderings.
        split_names: the splits to fill.
        trials: how many seeded orderings to try (the best is kept).

    Returns:
        The records with `split` set.

    Raises:
        DatasetError: if a class has fewer patients than there are splits.
    """
    if len(ratios) != len(split_names):
        raise ValueError(f"One ratio per split is needed. Received: ratios={ratios}")
    rng = np.random.default_rng(seed)
    by_class: dict[str, dict[str, list[ImageRecord]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        by_class[record.label][record.patient].append(record)
    split_of: dict[str, str] = {}
    for label in sorted(by_class):
        patients = by_class[label]
        if len(patients) < len(split_names):
            raise DatasetError(
                f"too few patients for a patient split: class {label} has {len(patients)} "
                f"patient(s) but {'/'.join(split_names)} need at least one each; use "
                "--split image (leaks patients) or more data"
            )
        summary = [(p, len(images), images[0].subtype) for p, images in sorted(patients.items())]
        for patient, index in _assign_patients(summary, ratios, rng, trials).items():
            split_of[patient] = split_names[index]
    return [replace(r, split=split_of[r.patient]) for r in records]


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
        raise DatasetError(
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
        raise DatasetError(f"fold file {path} does not exist; pass an official dsfoldN.txt")
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
                raise DatasetError(
                    f"fold file {path} line {number} is malformed: {text[:80]!r}; expected "
                    "filename|mag|fold|grp with grp train or test"
                )
            filename, group = parts[0], parts[3].lower()
            if groups.get(filename, group) != group:
                raise DatasetError(
                    f"fold file {path} line {number} puts {filename} in {group} but an earlier "
                    "line put it in the other group; fix the fold file"
                )
            groups[filename] = group
    if not groups:
        raise DatasetError(f"fold file {path} has no lines; pass an official dsfoldN.txt")
    return groups


@dataclass
class FoldReport:
    """What a fold split left out."""

    not_in_fold: list[str]
    not_in_tree: list[str]

    def warnings(self) -> list[str]:
        lines = []
        if self.not_in_fold:
            lines.append(
                f"excluded {len(self.not_in_fold)} image(s) of the tree that the fold file does "
                f"not list: {_listed(self.not_in_fold)}"
            )
        if self.not_in_tree:
            lines.append(
                f"{len(self.not_in_tree)} fold-file name(s) are not in the tree (or were filtered "
                f"out or skipped): {_listed(self.not_in_tree)}"
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
        raise DatasetError(
            "no image of the tree is listed in the fold file; check that the fold file belongs to "
            "this dataset and that --magnification keeps its images"
        )
    test = [replace(r, split="test") for r in in_fold if fold_groups[r.filename] == "test"]
    train_group = [r for r in in_fold if fold_groups[r.filename] == "train"]
    if not test or not train_group:
        missing = "test" if not test else "train"
        raise DatasetError(
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
    return result, report


# ----------------------------------------------------------------------------------- manifests


def manifest_path_of(record: ImageRecord) -> str:
    """`<split>/<label>/<filename>`: where the image lives in a prepared folder."""
    return f"{record.split}/{record.label}/{record.filename}"


def write_manifest(records: Iterable[ImageRecord], path: str | Path) -> None:
    """Writes `split.csv` with columns MANIFEST_COLUMNS (`path` relative to the prepared folder)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        for r in records:
            writer.writerow(
                [
                    r.filename,
                    manifest_path_of(r),
                    r.label,
                    r.subtype,
                    r.patient,
                    r.magnification,
                    r.split,
                ]
            )


def read_manifest(path: str | Path) -> list[ImageRecord]:
    """Reads a `split.csv`; each record's `source` is the absolute image path."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(MANIFEST_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(
                f"{path} is not a bc_keras split manifest: columns {sorted(missing)} are missing; "
                "make one with data_tools/prepare_breakhis.py"
            )
        return [
            ImageRecord(
                filename=row["filename"],
                source=str((path.parent / row["path"]).absolute()),
                label=row["label"],
                subtype=row["subtype"],
                patient=row["patient"],
                magnification=int(row["magnification"]),
                split=row["split"],
            )
            for row in reader
        ]


def load_prepared(directory: str | Path) -> list[ImageRecord]:
    """Records of a prepared folder: from its split.csv, else by walking split/class folders."""
    directory = Path(directory)
    if (directory / MANIFEST_NAME).is_file():
        return read_manifest(directory / MANIFEST_NAME)
    records = []
    found = False
    for split in SPLIT_NAMES:
        for label in CLASS_NAMES:
            folder = directory / split / label
            if not folder.is_dir():
                continue
            found = True
            for path in sorted(folder.iterdir()):
                if not path.name.lower().endswith(".png"):
                    continue
                try:
                    parsed = parse_filename(path.name)
                except ValueError:
                    continue
                records.append(
                    ImageRecord(
                        path.name,
                        str(path.absolute()),
                        parsed.label,
                        parsed.subtype,
                        parsed.patient,
                        parsed.magnification,
                        split,
                    )
                )
    if not found:
        raise DatasetError(
            f"{directory} is not a prepared split: no {MANIFEST_NAME} and no "
            "{train,val,test}/{benign,malignant} folders; make one with "
            "data_tools/prepare_breakhis.py"
        )
    return records


def patient_overlap(records: Iterable[ImageRecord]) -> dict[str, dict[str, int]]:
    """Patients found in more than one split -> {split: image count}."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for record in records:
        counts[record.patient][record.split] += 1
    return {
        patient: dict(sorted(per_split.items(), key=lambda kv: _split_order(kv[0])))
        for patient, per_split in sorted(counts.items())
        if len(per_split) > 1
    }


def _split_order(split: str) -> tuple[int, str]:
    return (SPLIT_NAMES.index(split) if split in SPLIT_NAMES else len(SPLIT_NAMES), split)


def split_summary(records: Sequence[ImageRecord]) -> dict:
    """Counts per split and class, patients per split, and image fractions per split."""
    total = len(records) or 1
    summary = {}
    for split in sorted({r.split for r in records}, key=_split_order):
        chosen = [r for r in records if r.split == split]
        summary[split] = {
            "images": len(chosen),
            "fraction": round(len(chosen) / total, 4),
            "patients": len({r.patient for r in chosen}),
            **{label: sum(r.label == label for r in chosen) for label in CLASS_NAMES},
        }
    return summary


def stats_report(records: Sequence[ImageRecord], per_split: bool) -> str:
    """The SPEC distribution table; with `per_split`, then one headed table per split."""
    lines = [distribution_table((r.magnification, r.label) for r in records)]
    if per_split:
        summary = split_summary(records)
        lines.append("")
        lines.append(
            "Patients per split: "
            + ", ".join(f"{split} {info['patients']}" for split, info in summary.items())
            + f" (total {len({r.patient for r in records})})"
        )
        for split in summary:
            chosen = [r for r in records if r.split == split]
            lines += [
                "",
                f"## {split}",
                "",
                distribution_table((r.magnification, r.label) for r in chosen),
                "",
                f"Patients: {summary[split]['patients']}; images: {summary[split]['images']} "
                f"({100 * summary[split]['fraction']:.1f}%)",
            ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ prepare


@dataclass
class PrepareResult:
    """What `prepare_split` wrote."""

    out: Path
    records: list[ImageRecord]
    settings: dict
    warnings: list[str]


def check_output_folder(out: str | Path, overwrite: bool) -> Path:
    """Refuses an existing non-empty `out` unless `overwrite`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DatasetError(
            f"--out {out} already exists and is not empty; pass --overwrite to replace it or "
            "choose another --out"
        )
    return out


def _materialize(records, staging: Path, source_kind: str, copy: bool, log: Log) -> None:
    for split in SPLIT_NAMES:
        for label in CLASS_NAMES:
            (staging / split / label).mkdir(parents=True, exist_ok=True)
    for count, record in enumerate(records, start=1):
        destination = staging / manifest_path_of(record)
        if source_kind == "archive":
            os.replace(record.source, destination)
        elif copy:
            shutil.copyfile(record.source, destination)
        else:
            os.symlink(record.source, destination)
        if count % PROGRESS_EVERY == 0:
            log(f"placed {count}/{len(records)} images ...")


def _swap_into_place(staging: Path, out: Path) -> None:
    """Renames the finished staging folder to `out`, replacing an old `out` if there is one."""
    if out.exists() or out.is_symlink():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.rename(out, old)
        os.rename(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, out)


def prepare_split(
    source: str | Path,
    out: str | Path,
    split: str = SPLIT_PATIENT,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = DEFAULT_SEED,
    magnifications: Sequence[int] = MAGNIFICATIONS,
    fold_file: str | Path | None = None,
    copy: bool = False,
    overwrite: bool = False,
    trials: int = DEFAULT_TRIALS,
    log: Log = _silent,
    warn: Log = _silent,
) -> PrepareResult:
    """Indexes `source`, splits it and writes `out/{train,val,test}/{benign,malignant}/` with
    `split.csv` and `prepare.json`, atomically (built beside `out`, renamed at the end).

    Args:
        source: a BreaKHis tar archive or a folder at any level of the tree.
        out: the prepared folder to write.
        split: SPLIT_PATIENT, SPLIT_IMAGE or SPLIT_FOLD.
        ratios: train/val/test image fractions.
        seed: seeds the split.
        magnifications: the magnifications to keep.
        fold_file: the official dsfoldN.txt for SPLIT_FOLD.
        copy: copy images instead of linking them (archives are always extracted).
        overwrite: replace a non-empty `out`.
        trials: random orderings the patient splitter tries.
        log: receives progress lines.
        warn: receives warnings.

    Returns:
        The written folder, its records, resolved settings and the warnings.
    """
    if split not in SPLIT_MODES:
        raise DatasetError(f"unknown --split {split!r}; choose one of {', '.join(SPLIT_MODES)}")
    ratios = validate_ratios(ratios)
    magnifications = tuple(sorted(parse_magnifications(magnifications)))
    fold_groups = None
    if split == SPLIT_FOLD:
        if fold_file is None:
            raise DatasetError("--split fold needs --fold-file FILE (an official dsfoldN.txt)")
        fold_groups = read_fold_file(fold_file)
    source = Path(source)
    if not source.exists():
        raise DatasetError(
            f"source {source} does not exist; pass BreaKHis_v1.tar.gz or the folder it extracts to"
        )
    out = check_output_folder(out, overwrite)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []

    def _warn(message: str) -> None:
        warnings.append(message)
        warn(message)

    staging = Path(
        tempfile.mkdtemp(prefix=f"{out.name}.partial-{os.getpid()}-", dir=out.absolute().parent)
    )
    try:
        from_archive = is_archive(source)
        log(f"indexing {source} ...")
        index = index_source(
            source, extract_to=staging / ".extracted" if from_archive else None, log=log
        )
        if from_archive and not copy:
            _warn(
                "images are extracted from the archive into place (symbolic links are "
                "impossible from a tar archive)"
            )
        for line in index.warnings():
            _warn(line)
        records = filter_magnifications(index.records, magnifications)
        log(
            f"indexed {len(index.records)} images; {len(records)} at magnification(s) "
            f"{', '.join(f'{m}x' for m in magnifications)}"
        )
        if not records:
            raise DatasetError(
                f"no usable image in {source} at magnification(s) "
                f"{' '.join(str(m) for m in magnifications)}; check SOURCE and --magnification"
            )
        fold_report = None
        if split == SPLIT_PATIENT:
            records = split_by_patient(records, ratios, seed, trials=trials)
        elif split == SPLIT_IMAGE:
            _warn(
                "WARNING: --split image splits by image, so the same patient's images land in "
                "train, val and test (patient leakage inflates accuracy); use it only to "
                "reproduce the report; the default --split patient is patient-disjoint"
            )
            records = split_by_image(records, ratios, seed)
        else:
            records, fold_report = split_by_fold(records, fold_groups, ratios, seed, trials)
            for line in fold_report.warnings():
                _warn(line)
        empty = [name for name in SPLIT_NAMES if not any(r.split == name for r in records)]
        if empty:
            raise DatasetError(
                f"split {', '.join(empty)} would be empty ({len(records)} images, "
                f"{len({r.patient for r in records})} patients); use --split image or more data"
            )
        for name in SPLIT_NAMES:
            missing = [
                label
                for label in CLASS_NAMES
                if not any(r.split == name and r.label == label for r in records)
            ]
            if missing:
                _warn(f"split {name} has no {' or '.join(missing)} image")
        _materialize(records, staging, index.source_kind, copy, log)
        shutil.rmtree(staging / ".extracted", ignore_errors=True)
        records = [replace(r, source=str(out.absolute() / manifest_path_of(r))) for r in records]
        write_manifest(records, staging / MANIFEST_NAME)
        settings = {
            "source": str(source.absolute()),
            "source_kind": index.source_kind,
            "breast_root": index.root,
            "split": split,
            "ratios": list(ratios),
            "seed": seed,
            "magnifications": list(magnifications),
            "fold_file": str(Path(fold_file).absolute()) if fold_file else None,
            "layout": "copies" if copy or from_archive else "symlinks",
            "trials": trials if split != SPLIT_IMAGE else None,
            "counts": split_summary(records),
            "skipped": {
                "unparsable": len(index.unparsable),
                "class_mismatch": len(index.class_mismatch),
                "duplicates": len(index.duplicates),
                "unreadable": len(index.unreadable),
                "not_in_fold": len(fold_report.not_in_fold) if fold_report else 0,
            },
            "converted_to_rgb": len(index.converted),
            "warnings": warnings,
        }
        (staging / SETTINGS_NAME).write_text(json.dumps(settings, indent=2) + "\n")
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PrepareResult(out=out, records=records, settings=settings, warnings=warnings)


def record_dict(record: ImageRecord) -> dict:
    """A record as a plain dict (for JSON or DataFrames)."""
    return asdict(record)

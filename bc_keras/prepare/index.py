"""Indexing a BreaKHis tree or tar archive: every image with its class, subtype, patient and
magnification, plus what was skipped and why."""

from __future__ import annotations

import gzip
import os
import tarfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from bc_keras.console import Progress
from bc_keras.errors import DataError, shorten
from bc_keras.histology.breakhis import CLASS_NAMES, MAGNIFICATIONS, parse_filename, slide_id_of
from bc_keras.histology.images import check_bytes, check_image

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
EXPECTED_LAYOUT = (
    "BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<subtype>/<patient>/<mag>X/*.png"
)
# Files per progress line on long work.
PROGRESS_EVERY = 1000
# How many offending file names a warning lists before it only counts.
LISTED_NAMES = 5
# BreaKHis images are PNGs; another format behind a .png name is refused.
PNG_ONLY = ("PNG",)

Log = Callable[[str], None]


def silent(message: str) -> None:
    """A `Log` that drops every message."""
    del message


@dataclass(frozen=True)
class ImageRecord:
    """One indexed image: where it is, what its name says, and (once split) its split.

    `patient` is the dataset's patient folder (`SOB_M_DC-14-13412`), the unit of the patient
    recognition rate; `slide_id` is the patient itself (`14-13412`), which splits, folds,
    label fractions and the audit group by. Left empty, `slide_id` is read from the file name
    (or, for a name that is not BreaKHis', taken from `patient`).
    """

    filename: str
    source: str
    label: str
    subtype: str
    patient: str
    magnification: int
    split: str = ""
    slide_id: str = ""

    def __post_init__(self):
        if not self.slide_id:
            object.__setattr__(self, "slide_id", slide_id_of(self.filename, self.patient))


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
    # Folder links leading to a folder already walked (a link cycle, or a second way in).
    walked_again: list[str] = field(default_factory=list)

    def warnings(self) -> list[str]:
        """One line per kind of problem, listing a few names and the count."""
        return problem_lines(
            (self.unparsable, "skipped {count} .png file(s) whose name does not follow "
             "SOB_<B|M>_<subtype>-<yy>-<slide>-<mag>-<seq>.png: {names}"),
            (self.class_mismatch, "skipped {count} file(s) whose name disagrees with their "
             "benign/malignant folder: {names}"),
            (self.duplicates, "skipped {count} duplicate file name(s) (first copy kept): {names}"),
            ([f"{name} ({reason})" for name, reason in self.unreadable],
             "skipped {count} unreadable image(s): {names}; re-extract or re-download them"),
            ([f"{name} ({mode})" for name, mode in self.converted],
             "kept {count} image(s) that are not RGB; they will be converted to RGB when loaded: "
             "{names}"),
            (self.walked_again, "skipped {count} folder link(s) to a folder already walked (a "
             "link cycle or a second path to the same images): {names}"),
        )  # fmt: skip


def problem_lines(*problems: tuple[Sequence[str], str]) -> list[str]:
    """One warning per non-empty list of names: its template filled with the count and a few
    of the names."""
    return [
        template.format(count=len(names), names=listed(names))
        for names, template in problems
        if names
    ]


def listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:LISTED_NAMES])
    return shown + (
        f", ... ({len(names) - LISTED_NAMES} more)" if len(names) > LISTED_NAMES else ""
    )


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
            raise DataError(
                f"unknown magnification {value!r}; choose from "
                f"{' '.join(str(m) for m in MAGNIFICATIONS)} or all"
            )
        chosen.add(int(text))
    if not chosen:
        raise DataError("--magnification needs at least one of 40 100 200 400 or all")
    return tuple(sorted(chosen))


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
        raise DataError(
            f"source {source} does not exist; pass BreaKHis_v1.tar.gz or the folder it extracts to"
        )
    if not source.is_dir():
        raise DataError(
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
    raise DataError(
        f"source {source} is not a BreaKHis tree: no histology_slides/breast/{{benign,malignant}} "
        f"inside; expected the layout {EXPECTED_LAYOUT}"
    )


def _inspect(name: str, check, result: IndexResult) -> bool:
    """Records an image check's outcome in `result`; True when the image is usable."""
    if not check.ok:
        result.unreadable.append((name, check.problem))
        return False
    if check.mode != "RGB":
        result.converted.append((name, f"mode {check.mode}"))
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
        slide_id=parsed.slide_id,
    )


def _folder_key(path: str) -> tuple[int, int] | None:
    """The (device, inode) of the folder `path` leads to, None if it cannot be read."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def walk_once(root: str | Path, again: list[str] | None = None):
    """`os.walk(root, followlinks=True)` in sorted order that enters every real folder once.

    A folder link is followed the first time its target is met; a link to a folder already
    entered (a cycle back to an ancestor, or a second link to the same folder) is skipped and
    its path appended to `again`, so no tree of links can make the walk go on forever.

    Yields:
        `(directory, sorted file names)` for every folder entered.
    """
    root = str(root)
    seen = {_folder_key(root)}
    for directory, subdirs, files in os.walk(root, followlinks=True):
        kept = []
        for name in sorted(subdirs):
            path = os.path.join(directory, name)
            key = _folder_key(path)
            if key is None or key in seen:
                if again is not None and key is not None:
                    again.append(Path(path).relative_to(root).as_posix())
                continue
            seen.add(key)
            kept.append(name)
        # os.walk descends into what is left in `subdirs`, in this order.
        subdirs[:] = kept
        yield directory, sorted(files)


def index_tree(source: str | Path, check_images: bool = True, log: Log = silent) -> IndexResult:
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
    progress = Progress("indexed", None, log, tty=False, every=PROGRESS_EVERY)
    for directory, files in walk_once(root, result.walked_again):
        for filename in files:
            if not filename.lower().endswith(".png"):
                continue
            path = Path(directory) / filename
            relative = PurePosixPath(path.relative_to(root).as_posix())
            record = _index_one(relative, str(path.absolute()), result, seen)
            if record is None:
                continue
            if check_images and not _inspect(
                str(relative), check_image(path, formats=PNG_ONLY), result
            ):
                seen.discard(filename)
                continue
            result.records.append(record)
            count += 1
            progress.update(count)
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
    archive: str | Path, extract_to: str | Path | None = None, log: Log = silent
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
        raise DataError(
            f"source {archive} does not exist; pass BreaKHis_v1.tar.gz or the folder it extracts to"
        )
    result = IndexResult(records=[], source_kind="archive", root=str(archive.absolute()))
    seen: set[str] = set()
    found_tree = False
    if extract_to is not None:
        Path(extract_to).mkdir(parents=True, exist_ok=True)
    try:
        progress = Progress("extracted", None, log, tty=False, every=PROGRESS_EVERY)
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
                if not _inspect(str(relative), check_bytes(data, formats=PNG_ONLY), result):
                    seen.discard(relative.name)
                    continue
                target.write_bytes(data)
                result.records.append(record)
                progress.update(len(result.records))
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        detail = shorten(error, 160)
        raise DataError(
            f"archive {archive} is corrupt or truncated ({type(error).__name__}: {detail}); "
            "download BreaKHis_v1.tar.gz again or pass its extracted folder"
        ) from error
    if not found_tree:
        raise DataError(
            f"archive {archive} is not BreaKHis: it has no histology_slides/breast folder; "
            f"expected the layout {EXPECTED_LAYOUT}"
        )
    result.records.sort(key=lambda r: r.filename)
    return result


def index_source(
    source: str | Path,
    extract_to: str | Path | None = None,
    check_images: bool = True,
    log: Log = silent,
) -> IndexResult:
    """Indexes a tree (any level) or a tar archive; see `index_tree` and `index_archive`."""
    source = Path(source)
    if is_archive(source):
        return index_archive(source, extract_to=extract_to, log=log)
    if source.is_file():
        raise DataError(
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

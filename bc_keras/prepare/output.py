"""Safe output folders for the data tools: never write over the input or a folder the tools did
not make, build beside the target and rename into place, and clean up after dead runs."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from bc_keras.errors import DataError
from bc_keras.prepare.manifest import MANIFEST_NAME, SETTINGS_NAME, read_manifest

# A folder holding prepare.json was made by a bc_keras data tool (prepare or normalize).
MADE_BY_TOOL = SETTINGS_NAME
_LEFTOVER = re.compile(r"^(?P<name>.+)\.(?:partial|old)-(?P<pid>\d+)(?:-.*)?$")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_folder(
    out, *, sources: Iterable = (), holders: Iterable = (), overwrite: bool = False
) -> Path:
    """Refuses an output folder that would destroy data.

    Args:
        out: the folder to write.
        sources: the inputs read (an image tree, an archive, a prepared split, the folders of
            the images it links to): `out` may be none of them, lie inside one, or contain one.
        holders: folders holding the inputs (e.g. the folder given as SOURCE): `out` may lie
            inside one, beside the images, but may not be one or contain one.
        overwrite: allow replacing an existing `out` -- only one a data tool made (it holds
            prepare.json), never an unrelated folder.

    Returns:
        `out` as a Path.
    """
    out = Path(out)
    target = out.resolve()
    for source in sources:
        source = Path(source).resolve()
        if _inside(target, source):
            raise DataError(
                f"--out {out} is the input {source} or inside it; writing there would destroy "
                "the input: choose a folder outside it"
            )
    for source in [*sources, *holders]:
        source = Path(source).resolve()
        if _inside(source, target):
            raise DataError(
                f"--out {out} is or contains the input {source}; replacing it would delete the "
                "input: choose another --out"
            )
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DataError(f"--out {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(
                f"--out {out} already exists and is not empty; pass --overwrite to replace it "
                "or choose another --out"
            )
        if not (out / MADE_BY_TOOL).is_file():
            raise DataError(
                f"--out {out} is not a folder made by prepare_breakhis.py or normalize_stains.py "
                f"(no {MADE_BY_TOOL}), so --overwrite will not delete it; choose another --out"
            )
    return out


def split_records_and_out(split_dir, out, overwrite: bool = False) -> list:
    """The records of a prepared split, after refusing a missing or empty split and an --out
    that would destroy it or the images it links to."""
    split_dir, out = Path(split_dir), Path(out)
    if not split_dir.is_dir():
        raise DataError(
            f"SPLIT_DIR {split_dir} does not exist or is not a folder; pass a folder made by "
            "data_tools/prepare_breakhis.py"
        )
    if not (split_dir / MANIFEST_NAME).is_file():
        raise DataError(
            f"{split_dir} is not a prepared split (no {MANIFEST_NAME}); make one with "
            "data_tools/prepare_breakhis.py"
        )
    records = read_manifest(split_dir / MANIFEST_NAME)
    if not records:
        raise DataError(f"{split_dir / MANIFEST_NAME} lists no image; prepare the split again")
    sources = {split_dir, *(Path(r.source).resolve().parent for r in records)}
    check_output_folder(out, sources=sources, overwrite=overwrite)
    return records


def process_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_leftovers(out: Path, log=print) -> list[Path]:
    """Removes the `.partial-PID-*` and `.old-PID` folders beside `out` that a killed run of a
    data tool left (their process no longer exists), and reports each."""
    removed = []
    parent = out.absolute().parent
    if not parent.is_dir():
        return removed
    for path in sorted(parent.iterdir()):
        match = _LEFTOVER.match(path.name)
        if match is None or match["name"] != out.name or process_alive(int(match["pid"])):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        log(f"removed {path}, left by an interrupted run (process {match['pid']} is gone)")
    return removed


@contextlib.contextmanager
def staged_output(out, log=print):
    """Yields an empty staging folder beside `out`; when the block succeeds it replaces `out`
    in one rename, and on any failure (Ctrl-C included) it is removed, so `out` is either the
    old folder or the complete new one, never half written."""
    out = Path(out)
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_leftovers(out, log)
        staging = Path(tempfile.mkdtemp(prefix=f"{out.name}.partial-{os.getpid()}-", dir=parent))
    except OSError as error:
        raise DataError(
            f"cannot write beside --out {out} ({error.strerror}); choose a writable --out"
        ) from error
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
        if out.exists():
            old = out.with_name(f"{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

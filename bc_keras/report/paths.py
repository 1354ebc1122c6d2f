"""Paths as run folders write them (TF-free)."""

from __future__ import annotations

import os
from pathlib import Path


def resolve_path(text: str) -> Path:
    """A path made absolute (relative to the current folder) without requiring it to exist."""
    return Path(os.path.abspath(Path(text).expanduser()))


def locate(text: str, run_dir: Path) -> Path:
    """A path from a run's config. A relative one is relative to where the training script
    ran: the current folder when it exists there, else the nearest folder above the run
    folder that holds it (e.g. the project holding runs/ and data/)."""
    path = Path(text).expanduser()
    if path.is_absolute() or path.exists():
        return resolve_path(text)
    for folder in run_dir.parents:
        if (folder / path).exists():
            return Path(os.path.abspath(folder / path))
    return resolve_path(text)


def same_folder(a, b) -> bool:
    """Whether two paths name the same folder, links resolved."""
    return os.path.realpath(a) == os.path.realpath(b)

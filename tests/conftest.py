"""Shared pytest fixtures: synthetic BreaKHis trees, a prepared split and the real reference images."""

from __future__ import annotations

from pathlib import Path

import pytest

from bc_keras.prepare import prepare_split
from bc_keras.synthetic import write_synthetic_tree

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_IMAGES_DIR = (REPO_ROOT / ".." / "shared" / "breakhis" / "real").resolve()
FOLD_EXCERPT = (REPO_ROOT / ".." / "shared" / "breakhis" / "dsfold1_excerpt.txt").resolve()


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory) -> Path:
    """A small synthetic BreaKHis_v1 tree (8 subtypes x 3 patients x 4 magnifications x 2
    images, 48x32 px); returns the folder holding `BreaKHis_v1`."""
    root = tmp_path_factory.mktemp("synthetic_tree")
    write_synthetic_tree(root, patients_per_subtype=3, images_per_patient=2, size=(48, 32), seed=0)
    return root


@pytest.fixture(scope="session")
def synthetic_split(tmp_path_factory, synthetic_tree) -> Path:
    """The small synthetic tree prepared with the default patient split (symlinks); returns the
    prepared folder with {train,val,test}/{benign,malignant}/ and split.csv."""
    out = tmp_path_factory.mktemp("synthetic_split") / "prepared"
    prepare_split(synthetic_tree, out, seed=42)
    return out


@pytest.fixture(scope="session")
def real_images_dir() -> Path:
    """The 16 real BreaKHis PNGs beside the project (benign/, malignant/)."""
    if not REAL_IMAGES_DIR.is_dir():
        pytest.skip(
            "../shared/breakhis/real not found: reference data lives beside the project only in "
            "the developers' and CI's checkouts"
        )
    return REAL_IMAGES_DIR

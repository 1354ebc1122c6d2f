"""Shared pytest fixtures: synthetic BreaKHis trees, a prepared split and the real reference images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bc_keras.histology.synthetic import write_synthetic_tree
from bc_keras.prepare import prepare_split

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = (REPO_ROOT / ".." / "shared").resolve()
# Set by .ci/run: there a missing ../shared fails the tests that need it instead of skipping.
REQUIRE_SHARED = "BC_KERAS_REQUIRE_SHARED"


def shared_path(*parts: str) -> Path:
    """A file or folder of the reference data in ../shared. Absent, the test is skipped (a
    user's clone has no shared/), or fails when $BC_KERAS_REQUIRE_SHARED is 1 (CI)."""
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        message = (
            f"{path} not found: the reference data lives beside the project only in the "
            "developers' and CI's checkouts"
        )
        if os.environ.get(REQUIRE_SHARED) == "1":
            pytest.fail(f"{message}, and ${REQUIRE_SHARED}=1 requires it", pytrace=False)
        pytest.skip(message)
    return path


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
    return shared_path("breakhis", "real")


@pytest.fixture(scope="session")
def fold_excerpt() -> Path:
    """Real lines of an official BreaKHis fold file."""
    return shared_path("breakhis", "dsfold1_excerpt.txt")


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    """The real Keras ImageNet weights of MobileNet alpha 0.25 without top."""
    return shared_path("breakhis", "weights", "mobilenet_2_5_224_tf_no_top.h5")

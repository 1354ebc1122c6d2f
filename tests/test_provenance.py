"""A run folder records what it needs to be replayed: versions, commit, devices, precision and
the fingerprint of its split."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import subprocess
from pathlib import Path

from bc_keras import provenance, runs
from bc_keras.config import CNNConfig

ROOT = Path(__file__).resolve().parent.parent


def test_config_json_records_versions_devices_precision_and_the_split(synthetic_split, tmp_path):
    config = CNNConfig(data=str(synthetic_split), mixed_precision=True)
    runs.write_config(tmp_path, config)
    recorded = json.loads((tmp_path / "config.json").read_text())["_environment"]
    for name in ("numpy", "pillow", "scikit-learn", "h5py", "tensorflow", "keras"):
        assert recorded[name] == importlib.metadata.version(name)
    assert recorded["precision_policy"] == "mixed_float16"
    assert recorded["devices"] and recorded["devices"][0].endswith("CPU:0")
    digest = hashlib.sha256()
    for name in ("split.csv", "prepare.json"):
        digest.update(name.encode() + b"\0" + (synthetic_split / name).read_bytes() + b"\0")
    assert recorded["split_fingerprint"] == {
        "sha256": digest.hexdigest(), "files": ["split.csv", "prepare.json"]
    }  # fmt: skip


def test_the_fingerprint_changes_with_the_split_and_is_none_without_one(synthetic_split, tmp_path):
    copy = tmp_path / "copy"
    for name in provenance.SPLIT_FILES:
        copy.mkdir(exist_ok=True)
        shutil.copyfile(synthetic_split / name, copy / name)
    same = provenance.split_fingerprint(copy)
    assert same == provenance.split_fingerprint(synthetic_split)
    with open(copy / "split.csv", "a") as file:
        file.write("one more line\n")
    assert provenance.split_fingerprint(copy)["sha256"] != same["sha256"]
    assert provenance.split_fingerprint(tmp_path / "nothing") is None


def test_git_state_is_the_clones_commit_and_none_outside_a_clone(tmp_path):
    state = provenance.git_state(ROOT)
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode == 0:  # a clone (CI runs one); an unpacked sdist has no .git
        assert state["commit"] == head.stdout.strip() and isinstance(state["dirty"], bool)
    else:
        assert state is None
    assert provenance.git_state(tmp_path) is None

"""What a run folder records to be replayed and trusted: library versions, the git commit of a
clone (and whether it had uncommitted changes), the devices and precision policy, and a
fingerprint of the prepared split it trained on."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path

# Distributions whose versions change results: Pillow's resampling (the decoder mirrors it),
# numpy and scikit-learn (metrics, splits), h5py (the model files), scipy (the tests).
PACKAGES = (
    "tensorflow", "keras", "numpy", "pillow", "scikit-learn", "scipy", "h5py", "matplotlib",
)  # fmt: skip
# The files a prepared split is defined by (bc_keras.prepare writes them).
SPLIT_FILES = ("split.csv", "prepare.json")


def package_versions() -> dict:
    """Installed version of each of `PACKAGES` (None when not installed)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(folder=None) -> dict | None:
    """`{"commit", "dirty"}` of the git clone holding `folder` (default: this package), or
    None when it is not in a clone (an installed wheel) or git is missing."""
    folder = Path(folder or Path(__file__).resolve().parent)

    def git(*arguments) -> str:
        return subprocess.run(
            ["git", "-C", str(folder), *arguments],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel"))
        if not (top / "bc_keras" / "__init__.py").is_file():
            return None  # some other repository holds an installed bc_keras
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def split_fingerprint(split_dir) -> dict | None:
    """SHA-256 of the prepared split's `split.csv` and `prepare.json` (which images went where,
    and how), or None when the folder holds neither (e.g. a TFRecord folder or a bare tree)."""
    if split_dir is None:
        return None
    digest, found = hashlib.sha256(), []
    for name in SPLIT_FILES:
        path = Path(split_dir) / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
            found.append(name)
    return {"sha256": digest.hexdigest(), "files": found} if found else None


def devices(precision_policy: str | None = None) -> dict:
    """The devices TensorFlow sees and the precision policy (default: Keras' global one; a
    run passes the one its models are built under)."""
    import keras
    import tensorflow as tf

    return {
        "devices": [device.name for device in tf.config.list_logical_devices()],
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "precision_policy": precision_policy or keras.config.dtype_policy().name,
    }


def environment(split_dir=None, precision_policy: str | None = None) -> dict:
    """Everything `config.json` records beside the settings (its `_environment`)."""
    from bc_keras import __version__

    return {
        "bc_keras": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **package_versions(),
        "git": git_state(),
        **devices(precision_policy),
        "split_fingerprint": split_fingerprint(split_dir),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }

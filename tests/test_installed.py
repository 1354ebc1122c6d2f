"""The package as a user installs it: the wheel in a fresh virtual environment (offline, the
dependencies reused from this interpreter), run from a folder outside the clone with the
installed `bc-keras` command alone: every subcommand's --help, then synthetic -> prepare ->
train cnn -> predict -> report."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import REPO_ROOT

from bc_keras.commands import COMMANDS

# What a wheel is built from; copied, so that the build leaves nothing in the clone and no
# stale build/lib of an earlier build gets into the wheel.
WHEEL_SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE", "bc_keras")


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    for name in WHEEL_SOURCES:
        path = REPO_ROOT / name
        if path.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(path, source / name, ignore=ignore)
        elif path.exists():
            shutil.copy2(path, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "-w", str(wheels), str(source)],
        check=True, timeout=120,
    )  # fmt: skip
    (wheel,) = wheels.glob("bc_keras-*.whl")
    return wheel


def _install(wheel: Path, venv: Path) -> Path:
    """A fresh venv holding the wheel; this interpreter's site-packages (never the clone) is
    appended to its path by a .pth file, so the dependencies need no network."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    assert str(REPO_ROOT) not in ours
    (Path(site) / "_bc_keras_test_dependencies.pth").write_text("\n".join(ours) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--quiet", str(wheel)],
        check=True, timeout=120,
    )  # fmt: skip
    return venv / "bin" / "bc-keras"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the installed bc-keras executable, a working folder outside the clone, its env)."""
    root = tmp_path_factory.mktemp("installed")
    assert not root.resolve().is_relative_to(REPO_ROOT)
    executable = _install(_build_wheel(root), root / "venv")
    work = root / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    return executable, work, env


def _run(installed, *args, timeout=300):
    executable, work, env = installed
    result = subprocess.run(
        [str(executable), *map(str, args)],
        cwd=work, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-2000:])
    return result.stdout


@pytest.mark.slow
def test_the_installed_package_is_the_wheel_not_the_clone(installed):
    executable, work, env = installed
    python = executable.parent / "python"
    code = (
        "import importlib.metadata, importlib.util, json, sys, bc_keras, bc_keras.commands\n"
        "wheel = importlib.metadata.distribution('bc_keras')\n"
        "print(json.dumps({'file': bc_keras.__file__, 'path': sys.path,\n"
        "    'script': importlib.util.find_spec('train_cnn') is not None,\n"
        "    'entry': [e.value for e in wheel.entry_points if e.group == 'console_scripts'],\n"
        "    'license': [f.locate().read_text() for f in wheel.files if f.name == 'LICENSE']}))\n"
    )
    result = subprocess.run(
        [str(python), "-c", code], cwd=work, env=env, capture_output=True, text=True, check=True
    )
    found = json.loads(result.stdout)
    venv = executable.parent.parent
    assert Path(found["file"]).resolve().is_relative_to(venv.resolve())
    assert str(REPO_ROOT) not in [str(Path(p).resolve()) for p in found["path"] if p]
    assert not found["script"]  # the root scripts are the clone's, not the package's
    assert found["entry"] == ["bc_keras.commands:main"]
    (license_text,) = found["license"]
    assert license_text.startswith("MIT License") and "2026 the bc_keras authors" in license_text
    assert executable.read_text().startswith(f"#!{python}")


@pytest.mark.slow
def test_every_installed_subcommand_has_help(installed):
    listing = _run(installed, "--help")
    for command in COMMANDS:
        assert f"  {command.name} " in listing and command.summary in listing
        text = _run(installed, *command.name.split(), "--help")
        assert text.startswith("usage: "), (command.name, text[:200])
    modes = _run(installed, "train", "simclr", "pretrain", "--help")
    assert modes.startswith("usage: bc-keras train simclr pretrain ") and "--temperature" in modes


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_prepare_train_predict_report_with_the_installed_command(installed):
    work = installed[1]
    _run(installed, "synthetic", "--out", "tree", "--patients-per-subtype", 2,
         "--images-per-patient", 1, "--size", 48, 32, "--layout", "small")  # fmt: skip
    images = sorted((work / "tree").rglob("*.png"))
    assert len(images) == 8 * 2 * 4  # subtypes x patients x magnifications x 1 image
    _run(installed, "prepare", "tree", "--out", "split")
    split = _rows(work / "split" / "split.csv")
    assert len(split) == len(images)
    _run(installed, "train", "cnn", "--data", "split", "--image-size", 32, "--epochs", 1,
         "--batch-size", 8, "--run-dir", "runs/cnn", "--model-out", "models/cnn.h5")  # fmt: skip
    metrics = json.loads((work / "runs" / "cnn" / "metrics.json").read_text())
    evaluated = {r["filename"]: float(r["probability"])
                 for r in _rows(work / "runs" / "cnn" / "predictions.csv")}  # fmt: skip
    test_images = sorted((work / "split" / "test").rglob("*.png"))
    assert sorted(evaluated) == sorted(p.name for p in test_images)

    _run(installed, "predict", "models/cnn.h5", "split/test", "--out", "predictions.csv")
    predicted = _rows(work / "predictions.csv")
    assert len(predicted) == len(test_images)  # one row per image
    for row in predicted:
        probability = float(row["probability_malignant"])
        # The saved model predicts what the training run scored for that test image.
        assert probability == pytest.approx(evaluated[Path(row["path"]).name], abs=1e-4)
        label = "malignant" if probability >= metrics["threshold"] else "benign"
        assert row["label"] == label

    _run(installed, "report", "runs", "--out", "report")
    assert "| cnn | baseline CNN" in (work / "report" / "REPORT.md").read_text()
    (result,) = [r for r in _rows(work / "report" / "results.csv") if r["run"] == "cnn"]
    assert float(result["accuracy"]) == pytest.approx(metrics["accuracy"])

"""End-to-end tests of data_tools/normalize_stains.py on a small synthetic prepared split."""

import contextlib
import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import load_tool, make_split
from PIL import Image

from bc_keras import cli
from bc_keras.histology.stain import (
    METHOD_MACENKO,
    METHOD_REINHARD,
    NORMALIZATION_METHODS,
    make_normalizer,
    read_rgb,
    tissue_brightness,
)
from bc_keras.prepare import normalize

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOL_PATH = REPO_ROOT / "data_tools" / "normalize_stains.py"


tool = load_tool("normalize_stains")


def run(argv):
    """(exit code, stdout, stderr) of the tool's main."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.run_script(tool.main, [str(a) for a in argv], interrupted=cli.NOTHING_WRITTEN)
    return code, out.getvalue(), err.getvalue()


def read_rows(folder):
    with open(Path(folder) / "split.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def relative_pngs(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*.png"))


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    """96 images of 48x32 px, patient split, symbolic links to the synthetic tree."""
    return make_split(tmp_path_factory, patients_per_subtype=3, images_per_patient=1)


@pytest.fixture(scope="module")
def normalized(split_dir, tmp_path_factory):
    """method -> (output folder, stdout) of a default run with --workers 2."""
    results = {}
    for method in NORMALIZATION_METHODS:
        out = tmp_path_factory.mktemp(f"normalized_{method}") / "out"
        code, stdout, stderr = run([split_dir, "--out", out, "--method", method, "--workers", 2])
        assert code == 0, stderr
        results[method] = (out, stdout)
    return results


def assert_one_line_error(code, stderr, *fragments):
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_nothing_left(folder, expected=()):
    assert sorted(p.name for p in Path(folder).iterdir()) == sorted(expected)


# ------------------------------------------------------------------------------- good runs


def test_help_and_no_tensorflow_import(split_dir, tmp_path):
    completed = subprocess.run(
        [sys.executable, str(TOOL_PATH), "--help"], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr
    for flag in ("SPLIT_DIR", "--out", "--method", "--target", "--workers", "--overwrite"):
        assert flag in completed.stdout
    code = (
        "import runpy, sys; tool = runpy.run_path(sys.argv[1]); "
        "assert tool['main']([sys.argv[2], '--out', sys.argv[3], '--workers', '1']) == 0; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code, str(TOOL_PATH), str(split_dir), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "out" / "normalize.json").is_file()


@pytest.mark.parametrize("method", NORMALIZATION_METHODS)
def test_layout_manifest_and_settings(split_dir, normalized, method):
    out, stdout = normalized[method]
    pngs = relative_pngs(out)
    assert pngs == relative_pngs(split_dir) and len(pngs) == 96
    assert all((out / p).is_file() and not (out / p).is_symlink() for p in pngs)
    for split in ("train", "val", "test"):
        for label in ("benign", "malignant"):
            assert (out / split / label).is_dir()
    assert read_rows(out) == read_rows(split_dir)
    assert (out / "prepare.json").read_bytes() == (split_dir / "prepare.json").read_bytes()
    settings = json.loads((out / "normalize.json").read_text())
    assert settings["method"] == method and settings["images"] == 96
    assert settings["target_choice"]["split_path"].startswith("train/")
    assert settings["target"] == str(split_dir.absolute() / settings["target_choice"]["split_path"])
    expected = make_normalizer(method).fit(read_rgb(settings["target"])).target_statistics()
    assert settings["target_statistics"] == expected
    assert settings["no_tissue"] == []
    assert "normalised 96/96 images (100%)" in stdout and "normalised 10/96" in stdout
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("method", NORMALIZATION_METHODS)
def test_outputs_equal_the_normalizer_and_differ_from_inputs(split_dir, normalized, method):
    out, _ = normalized[method]
    settings = json.loads((out / "normalize.json").read_text())
    normalizer = make_normalizer(method).fit(read_rgb(settings["target"]))
    rows = read_rows(split_dir)
    for row in (rows[0], rows[len(rows) // 2], rows[-1]):
        expected = normalizer.transform(read_rgb(split_dir / row["path"]))
        np.testing.assert_array_equal(read_rgb(out / row["path"]), expected)
    changed = [
        not np.array_equal(read_rgb(out / row["path"]), read_rgb(split_dir / row["path"]))
        for row in rows
    ]
    assert sum(changed) >= 0.9 * len(rows)


def test_default_target_is_the_training_image_of_median_brightness(split_dir, normalized):
    rows = sorted(
        (r for r in read_rows(split_dir) if r["split"] == "train"), key=lambda r: r["path"]
    )
    brightness = np.array([tissue_brightness(read_rgb(split_dir / r["path"])) for r in rows])
    chosen = rows[int(np.argmin(np.abs(brightness - np.median(brightness))))]["path"]
    for method in NORMALIZATION_METHODS:
        out, stdout = normalized[method]
        assert json.loads((out / "normalize.json").read_text())["target_choice"]["split_path"] == (
            chosen
        )
        assert f"target: {chosen} (tissue grey level" in stdout


def test_given_target_and_overwrite(split_dir, tmp_path):
    held_out = next(r for r in read_rows(split_dir) if r["split"] == "test")
    target = split_dir / held_out["path"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    argv = [split_dir, "--out", out, "--method", METHOD_REINHARD, "--target", target]
    code, _, stderr = run([*argv, "--workers", 1])
    assert_one_line_error(code, stderr, "already exists and is not empty", "--overwrite")
    assert_nothing_left(tmp_path, ["out"])
    code, _, stderr = run([*argv, "--workers", 1, "--overwrite"])
    assert_one_line_error(code, stderr, "not a folder made by", "--overwrite will not delete it")
    assert (out / "old.txt").read_text() == "old"
    # A folder a data tool made (prepare.json) is replaced.
    (out / "prepare.json").write_text("{}")
    code, stdout, stderr = run([*argv, "--workers", 1, "--overwrite"])
    assert code == 0, stderr
    assert "warning: --target is a val/test image" in stdout
    assert not (out / "old.txt").exists() and len(relative_pngs(out)) == 96
    settings = json.loads((out / "normalize.json").read_text())
    assert settings["target"] == str(target.absolute())
    expected = make_normalizer(METHOD_REINHARD).fit(read_rgb(target)).target_statistics()
    assert settings["target_statistics"] == expected
    assert_nothing_left(tmp_path, ["out"])


# ------------------------------------------------------------------------------- bad inputs


def test_bad_split_dir_and_target(split_dir, tmp_path):
    out = tmp_path / "out"
    code, _, stderr = run([tmp_path / "missing", "--out", out])
    assert_one_line_error(code, stderr, "does not exist", "prepare_breakhis.py")
    (tmp_path / "empty").mkdir()
    code, _, stderr = run([tmp_path / "empty", "--out", out])
    assert_one_line_error(code, stderr, "is not a prepared split (no split.csv)")
    (tmp_path / "note.png").write_text("not an image")
    code, _, stderr = run([split_dir, "--out", out, "--target", tmp_path / "note.png"])
    assert_one_line_error(code, stderr, "--target", "cannot be read as an image")
    code, _, stderr = run([split_dir, "--out", out, "--target", tmp_path / "absent.png"])
    assert_one_line_error(code, stderr, "--target", "cannot be read as an image")
    Image.fromarray(np.full((16, 16, 3), 250, np.uint8)).save(tmp_path / "blank.png")
    code, _, stderr = run([split_dir, "--out", out, "--target", tmp_path / "blank.png"])
    assert_one_line_error(code, stderr, "no stained tissue", "choose a target")
    with pytest.raises(SystemExit) as stop:
        run([split_dir, "--out", out, "--workers", 0])
    assert stop.value.code == 2
    assert_nothing_left(tmp_path, ["empty", "note.png", "blank.png"])


def test_out_overlapping_the_split_is_refused(split_dir, tmp_path):
    before = sorted(p.name for p in split_dir.parent.iterdir())
    for out, message in (
        (split_dir, "is the input"),
        (split_dir / "normalized", "is the input"),
        (split_dir.parent, "is or contains the input"),
    ):
        code, _, stderr = run([split_dir, "--out", out, "--overwrite"])
        assert_one_line_error(code, stderr, message)
    assert sorted(p.name for p in split_dir.parent.iterdir()) == before
    assert not (split_dir / "normalized").exists()


def test_corrupt_image_and_interrupt_leave_nothing_behind(split_dir, tmp_path, monkeypatch):
    copied = tmp_path / "copied"
    shutil.copytree(split_dir, copied, symlinks=False)
    work = tmp_path / "work"
    work.mkdir()
    # A blank field is copied unchanged by Macenko and listed.
    blank = read_rows(copied)[30]["path"]
    Image.fromarray(np.full((32, 48, 3), 252, np.uint8)).save(copied / blank)
    code, stdout, stderr = run([copied, "--out", work / "out", "--workers", 2])
    assert code == 0, stderr
    assert "1 image(s) without detectable tissue (copied unchanged)" in stdout
    assert json.loads((work / "out" / "normalize.json").read_text())["no_tissue"] == [blank]
    np.testing.assert_array_equal(read_rgb(work / "out" / blank), read_rgb(copied / blank))
    shutil.rmtree(work / "out")

    broken = read_rows(copied)[40]["path"]
    (copied / broken).write_bytes((copied / broken).read_bytes()[:60])
    code, _, stderr = run([copied, "--out", work / "out", "--workers", 2])
    assert_one_line_error(code, stderr, "cannot read image", broken.rsplit("/", 1)[-1])
    assert_nothing_left(work)

    monkeypatch.setattr(normalize, "normalize_file", _interrupt_after(4))
    argv = [split_dir, "--out", work / "out", "--method", METHOD_MACENKO, "--workers", 1]
    code, _, stderr = run(argv)
    assert code == 130 and "interrupted: nothing was written" in stderr
    assert_nothing_left(work)


def _interrupt_after(count):
    """A `normalize_file` that raises KeyboardInterrupt (as Ctrl-C does) after `count` images."""
    from bc_keras.histology.stain import normalize_file

    done = []

    def normalize(normalizer, source, destination):
        if len(done) == count:
            raise KeyboardInterrupt
        done.append(source)
        return normalize_file(normalizer, source, destination)

    return normalize

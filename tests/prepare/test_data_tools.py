"""End-to-end tests of the data_tools scripts on synthetic, archived, broken and real data."""

import csv
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error, load_tool
from helpers import run_tool as run
from PIL import Image

from bc_keras.histology.breakhis import archive_relative_path, parse_filename
from bc_keras.histology.synthetic import write_synthetic_tree
from bc_keras.prepare import layout, read_fold_file

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS = REPO_ROOT / "data_tools"
# The table in SPEC.md section 1, copied by hand: it is the specification, not the code's output.
SPEC_TABLE = """\
| Magnification | Benign | Malignant | Total |
|---|---|---|---|
| 40x | 625 | 1370 | 1995 |
| 100x | 644 | 1437 | 2081 |
| 200x | 623 | 1390 | 2013 |
| 400x | 588 | 1232 | 1820 |
| Total | 2480 | 5429 | 7909 |"""


prepare = load_tool("prepare_breakhis")
stats = load_tool("dataset_stats")
audit = load_tool("audit_split")
make_synthetic = load_tool("make_synthetic_breakhis")


def read_split_csv(directory):
    with open(Path(directory) / "split.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def image_fractions(rows):
    counts = Counter(row["split"] for row in rows)
    return {split: counts[split] / len(rows) for split in ("train", "val", "test")}


@pytest.fixture(scope="module")
def full_archive(tmp_path_factory):
    """The official layout (82 patients, 7,909 images) at 8x8 px."""
    root = tmp_path_factory.mktemp("full_archive")
    assert (
        make_synthetic.main(
            ["--out", str(root), "--layout", "breakhis", "--size", "8", "8", "--seed", "1"]
        )
        == 0
    )
    return root


@pytest.fixture(scope="module")
def full_patient_split(full_archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("full_patient") / "prepared"
    assert prepare.main([str(full_archive), "--out", str(out)]) == 0
    return out


def make_small_tree(root, patients=1, images=1):
    write_synthetic_tree(
        root, patients_per_subtype=patients, images_per_patient=images, size=(8, 8)
    )
    return root / "BreaKHis_v1" / "histology_slides" / "breast"


# ------------------------------------------------------------------------------------- --help


@pytest.mark.parametrize(
    "script, flags",
    [
        (
            "prepare_breakhis",
            [
                "SOURCE",
                "--out",
                "--split",
                "--fold-file",
                "--magnification",
                "--ratios",
                "--seed",
                "--copy",
                "--overwrite",
            ],
        ),
        ("dataset_stats", ["PATH"]),
        ("audit_split", ["DIR"]),
        (
            "make_synthetic_breakhis",
            [
                "--out",
                "--patients-per-subtype",
                "--images-per-patient",
                "--size",
                "--seed",
                "--layout",
            ],
        ),
    ],
)
def test_scripts_run_standalone_and_document_every_flag(script, flags):
    completed = subprocess.run(
        [sys.executable, str(TOOLS / f"{script}.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    for flag in flags:
        assert flag in completed.stdout


# ------------------------------------------------------------------------ full archive layout


def test_stats_on_full_archive_prints_exactly_the_spec_table(full_archive, capsys):
    code, out, _ = run(stats, [full_archive], capsys)
    assert code == 0
    assert out.strip() == SPEC_TABLE
    # Any level of the tree gives the same table.
    code, out, _ = run(
        stats, [full_archive / "BreaKHis_v1" / "histology_slides" / "breast"], capsys
    )
    assert out.strip() == SPEC_TABLE


def test_patient_split_on_full_archive(full_patient_split, capsys):
    rows = read_split_csv(full_patient_split)
    assert list(rows[0]) == [
        "filename",
        "path",
        "label",
        "subtype",
        "patient",
        "magnification",
        "split",
        "slide_id",
    ]
    assert len(rows) == 7909
    for split, target in zip(("train", "val", "test"), (0.70, 0.15, 0.15), strict=True):
        assert abs(image_fractions(rows)[split] - target) <= 0.03, image_fractions(rows)
    patients = {}
    for row in rows:
        # The patient is the slide id: 14-13412 is filed as DC and LC, one patient on one side.
        patients.setdefault(row["slide_id"], set()).add(row["split"])
        assert row["slide_id"] == parse_filename(row["filename"]).slide_id
        assert row["path"] == f"{row['split']}/{row['label']}/{row['filename']}"
    assert len(patients) == 81 and len({row["patient"] for row in rows}) == 82
    assert all(len(s) == 1 for s in patients.values())
    assert {r["patient"] for r in rows if r["slide_id"] == "14-13412"} == {
        "SOB_M_DC-14-13412",
        "SOB_M_LC-14-13412",
    }
    for split in ("train", "val", "test"):
        for label in ("benign", "malignant"):
            assert any(r["split"] == split and r["label"] == label for r in rows)
            folder = full_patient_split / split / label
            assert len(list(folder.iterdir())) == sum(
                r["split"] == split and r["label"] == label for r in rows
            )
    link = full_patient_split / rows[0]["path"]
    assert link.is_symlink() and os.path.isabs(os.readlink(link)) and link.is_file()
    settings = json.loads((full_patient_split / "prepare.json").read_text())
    assert settings["split"] == "patient" and settings["seed"] == 42
    assert settings["magnifications"] == [40, 100, 200, 400]
    assert sum(info["images"] for info in settings["counts"].values()) == 7909

    code, out, _ = run(audit, [full_patient_split], capsys)
    assert code == 0
    assert "no patient in more than one split" in out


def test_stats_on_prepared_split_and_manifest(full_patient_split, capsys):
    code, out, _ = run(stats, [full_patient_split], capsys)
    assert code == 0
    assert out.startswith(SPEC_TABLE)
    for split in ("train", "val", "test"):
        assert f"## {split}" in out
    # Per-split counts are patients (slide ids); the literature's 82 are patient folders.
    assert "Patients per split: train" in out
    assert "(total 81 patients in 82 patient folders)" in out
    code, manifest_out, _ = run(stats, [full_patient_split / "split.csv"], capsys)
    assert manifest_out == out


def test_magnification_filter(full_archive, tmp_path, capsys):
    out = tmp_path / "mag40"
    code, _, _ = run(prepare, [full_archive, "--out", out, "--magnification", "40"], capsys)
    assert code == 0
    rows = read_split_csv(out)
    assert len(rows) == 1995
    assert {row["magnification"] for row in rows} == {"40"}


def write_fold_file(full_archive, path, seed=0):
    """An official-format dsfold file: patient-disjoint, about 70/30 by patient."""
    names = sorted(p.name for p in full_archive.rglob("*.png"))
    patients = sorted({parse_filename(n).patient for n in names})
    rng = np.random.default_rng(seed)
    test_patients = set(rng.choice(patients, size=round(0.3 * len(patients)), replace=False))
    groups = {}
    with open(path, "w") as handle:
        for name in names:
            parsed = parse_filename(name)
            group = "test" if parsed.patient in test_patients else "train"
            groups[name] = group
            handle.write(f"{name}|{parsed.magnification}|1|{group}\n")
    return groups


def test_fold_split_reproduces_the_fold(full_archive, tmp_path, capsys):
    groups = write_fold_file(full_archive, tmp_path / "dsfold1.txt")
    out = tmp_path / "fold"
    code, _, err = run(
        prepare,
        [full_archive, "--out", out, "--split", "fold", "--fold-file", tmp_path / "dsfold1.txt"],
        capsys,
    )
    assert code == 0, err
    rows = read_split_csv(out)
    assert {r["filename"] for r in rows if r["split"] == "test"} == {
        n for n, g in groups.items() if g == "test"
    }
    assert {r["filename"] for r in rows if r["split"] in ("train", "val")} == {
        n for n, g in groups.items() if g == "train"
    }
    val = [r for r in rows if r["split"] == "val"]
    train_group = sum(g == "train" for g in groups.values())
    # val takes 0.15 / 0.85 of the fold's train images, by patient.
    assert abs(len(val) / train_group - 0.15 / 0.85) < 0.03
    code, out_text, _ = run(audit, [out], capsys)
    assert code == 0, out_text


def test_image_split_warns_and_audit_catches_the_leak(full_archive, tmp_path, capsys):
    out = tmp_path / "image"
    code, _, err = run(prepare, [full_archive, "--out", out, "--split", "image"], capsys)
    assert code == 0
    assert "WARNING" in err and "leakage" in err and "reproduce the report" in err
    rows = read_split_csv(out)
    for label in ("benign", "malignant"):
        chosen = [r for r in rows if r["label"] == label]
        fractions = image_fractions(chosen)
        assert abs(fractions["train"] - 0.70) < 0.01 and abs(fractions["test"] - 0.15) < 0.01
    code, report, _ = run(audit, [out], capsys)
    assert code == 1
    assert "LEAK" in report
    # `  14-13412 (SOB_M_DC-14-13412, SOB_M_LC-14-13412) -> train: ...`: the slide, its folders.
    leaked = report.splitlines()[1].split(" -> ")[0].strip()
    slide, folders = leaked.split(" ", 1)
    for folder in folders.strip("()").split(", "):
        assert parse_filename(f"{folder}-40-001.png").slide_id == slide


def test_audit_names_a_leaked_patient_without_manifest(full_patient_split, tmp_path, capsys):
    leaky = tmp_path / "leaky"
    for split in ("train", "val", "test"):
        for label in ("benign", "malignant"):
            (leaky / split / label).mkdir(parents=True)
    rows = read_split_csv(full_patient_split)
    patient = rows[0]["patient"]
    mine = [r for r in rows if r["patient"] == patient][:3]
    others = [r for r in rows if r["patient"] != patient][:5]
    for row in mine[:2] + others:
        (leaky / row["path"]).symlink_to(full_patient_split / row["path"])
    other_split = "val" if mine[2]["split"] != "val" else "test"
    (leaky / other_split / mine[2]["label"] / mine[2]["filename"]).symlink_to(
        full_patient_split / mine[2]["path"]
    )
    code, report, _ = run(audit, [leaky], capsys)
    assert code == 1
    assert patient in report and f"{other_split}: 1 image" in report


# --------------------------------------------------------------------------------- tar source


def test_tar_source_gives_the_same_manifest_as_the_folder(
    synthetic_tree, synthetic_split, tmp_path, capsys
):
    archive = tmp_path / "BreaKHis_v1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(synthetic_tree / "BreaKHis_v1", arcname="BreaKHis_v1")
    out = tmp_path / "from_tar"
    code, _, err = run(prepare, [archive, "--out", out], capsys)
    assert code == 0, err
    assert "symbolic links are impossible" in err
    assert (out / "split.csv").read_text() == (synthetic_split / "split.csv").read_text()
    first = out / read_split_csv(out)[0]["path"]
    assert first.is_file() and not first.is_symlink()
    assert not (out / ".extracted").exists()
    settings = json.loads((out / "prepare.json").read_text())
    assert settings["source_kind"] == "archive" and settings["layout"] == "copies"


def test_copy_mode_writes_real_files(synthetic_tree, tmp_path, capsys):
    out = tmp_path / "copies"
    code, _, _ = run(prepare, [synthetic_tree, "--out", out, "--copy"], capsys)
    assert code == 0
    path = out / read_split_csv(out)[0]["path"]
    assert path.is_file() and not path.is_symlink()


# ---------------------------------------------------------------------------------- atomicity


def test_failed_prepare_leaves_no_output(synthetic_tree, tmp_path, monkeypatch, capsys):
    out = tmp_path / "prepared"

    def fail(*args, **kwargs):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(layout, "write_manifest", fail)
    with pytest.raises(RuntimeError, match="simulated"):
        prepare.main([str(synthetic_tree), "--out", str(out)])
    assert list(tmp_path.iterdir()) == []


def test_interrupted_prepare_leaves_no_output(synthetic_tree, tmp_path, monkeypatch, capsys):
    out = tmp_path / "prepared"
    calls = []
    real_symlink = os.symlink

    def interrupt(*args, **kwargs):
        calls.append(args)
        if len(calls) == 10:
            raise KeyboardInterrupt  # Ctrl-C half-way through laying out the links
        real_symlink(*args, **kwargs)

    monkeypatch.setattr(layout.os, "symlink", interrupt)
    code, _, err = run(prepare, [synthetic_tree, "--out", out], capsys)
    assert code == 130 and "interrupted" in err
    assert len(calls) == 10
    assert list(tmp_path.iterdir()) == []


def test_non_empty_out_is_refused_and_overwrite_replaces_only_a_prepared_folder(
    synthetic_tree, tmp_path, capsys
):
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run(prepare, [synthetic_tree, "--out", out], capsys)
    assert_one_line_error(code, err, "--overwrite", "already exists and is not empty")
    code, _, err = run(prepare, [synthetic_tree, "--out", out, "--overwrite"], capsys)
    assert_one_line_error(code, err, "not a folder made by prepare_breakhis.py", "prepare.json")
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    out.rmdir()
    assert run(prepare, [synthetic_tree, "--out", out], capsys)[0] == 0
    (out / "stale.txt").write_text("from an older prepare")
    code, _, _ = run(prepare, [synthetic_tree, "--out", out, "--overwrite", "--seed", "3"], capsys)
    assert code == 0
    assert not (out / "stale.txt").exists() and (out / "split.csv").is_file()
    assert json.loads((out / "prepare.json").read_text())["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


@pytest.mark.parametrize("where", ["source", "inside", "parent"])
def test_out_never_destroys_the_source(tmp_path, capsys, where):
    tree = tmp_path / "data" / "tree"
    write_synthetic_tree(tree, patients_per_subtype=3, images_per_patient=1, size=(16, 16), seed=2)
    (tmp_path / "data" / "notes.txt").write_text("unrelated")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = {
        "source": tree,
        "inside": tree / "BreaKHis_v1" / "histology_slides" / "breast" / "x",
        "parent": tmp_path / "data",
    }[where]
    code, _, err = run(prepare, [tree, "--out", out, "--overwrite"], capsys)
    assert_one_line_error(code, err, "--out", "input", "choose")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "data" / "notes.txt").read_text() == "unrelated"


def test_leftovers_of_a_killed_prepare_are_removed_and_reported(synthetic_tree, tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    partial = tmp_path / f"prepared.partial-{dead}-abc123"
    (partial / "train" / "benign").mkdir(parents=True)
    (partial / "train" / "benign" / "x.png").write_bytes(b"half")
    mine = tmp_path / f"prepared.partial-{os.getpid()}-alive"
    mine.mkdir()
    code, out, _ = run(prepare, [synthetic_tree, "--out", tmp_path / "prepared"], capsys)
    assert code == 0
    assert f"removed {partial}" in out and f"process {dead} is gone" in out
    assert not partial.exists() and mine.exists(), "a live process's folder is left alone"


# --------------------------------------------------------------------------------- bad inputs


def test_missing_source(tmp_path, capsys):
    code, _, err = run(prepare, [tmp_path / "nowhere", "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "does not exist", "BreaKHis_v1.tar.gz")


def test_source_that_is_not_breakhis(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.png").write_bytes(b"x")
    code, _, err = run(prepare, [tmp_path / "photos", "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "not a BreaKHis tree", "histology_slides/breast")
    archive = tmp_path / "other.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "photos", arcname="photos")
    code, _, err = run(prepare, [archive, "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "is not BreaKHis", "expected the layout")
    assert not (tmp_path / "out").exists()


def test_corrupt_archive(synthetic_tree, tmp_path, capsys):
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"this is not a tar archive" * 100)
    code, _, err = run(prepare, [garbage, "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "corrupt or truncated", "download")
    archive = tmp_path / "BreaKHis_v1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(synthetic_tree / "BreaKHis_v1", arcname="BreaKHis_v1")
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    code, _, err = run(prepare, [truncated, "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "corrupt or truncated")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "BreaKHis_v1.tar.gz",
        "garbage.tar.gz",
        "truncated.tar.gz",
    ]


def test_bad_images_are_skipped_with_warnings(tmp_path, capsys):
    breast = make_small_tree(tmp_path / "tree", patients=1, images=1)
    good = next(breast.rglob("*.png")).read_bytes()
    folder = breast / "malignant" / "SOB" / "ductal_carcinoma" / "SOB_M_DC_14-55555" / "100X"
    folder.mkdir(parents=True)
    (folder / "SOB_M_DC-14-55555-100-001.png").write_bytes(b"")
    (folder / "SOB_M_DC-14-55555-100-002.png").write_bytes(b"GIF89a not really")
    (folder / "SOB_M_DC-14-55555-100-003.png").write_bytes(good[:-30])
    Image.new("L", (8, 8), 90).save(folder / "SOB_M_DC-14-55555-100-004.png")
    Image.new("RGBA", (8, 8), (90, 30, 120, 200)).save(folder / "SOB_M_DC-14-55555-100-005.png")
    (folder / "scan_0001.png").write_bytes(good)
    code, out, err = run(prepare, [tmp_path / "tree", "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    assert "skipped 3 unreadable image(s)" in err
    assert "SOB_M_DC-14-55555-100-001.png (empty file (0 bytes))" in err
    assert "SOB_M_DC-14-55555-100-002.png (not an image file)" in err
    assert "SOB_M_DC-14-55555-100-003.png (corrupt or truncated" in err
    assert "converted to RGB" in err and "(mode L)" in err and "(mode RGBA)" in err
    assert "skipped 1 .png file(s) whose name does not follow" in err and "scan_0001.png" in err
    rows = read_split_csv(tmp_path / "out")
    names = {row["filename"] for row in rows}
    assert "SOB_M_DC-14-55555-100-004.png" in names and "SOB_M_DC-14-55555-100-005.png" in names
    assert len(rows) == 32 + 2
    settings = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert settings["skipped"]["unreadable"] == 3 and settings["converted_to_rgb"] == 2


def test_too_few_patients_for_a_patient_split(tmp_path, capsys):
    breast = make_small_tree(tmp_path / "tree", patients=1, images=2)
    for subtype_folder in ("fibroadenoma", "phyllodes_tumor", "tubular_adenoma"):
        shutil.rmtree(breast / "benign" / "SOB" / subtype_folder)
    code, _, err = run(prepare, [tmp_path / "tree", "--out", tmp_path / "out"], capsys)
    assert_one_line_error(
        code, err, "too few patients", "class benign has 1 patient", "--split image"
    )
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--ratios", "0.8", "0.2"], ["needs 3 values"]),
        (["--ratios", "0.7", "0.2", "0.2"], ["sum to 1"]),
        (["--magnification", "40", "50"], ["unknown magnification '50'", "all"]),
        (["--split", "fold"], ["--split fold needs --fold-file"]),
        (["--split", "fold", "--fold-file", "missing.txt"], ["fold file", "does not exist"]),
    ],
)
def test_bad_arguments(synthetic_tree, tmp_path, capsys, extra, fragments):
    code, _, err = run(prepare, [synthetic_tree, "--out", tmp_path / "out", *extra], capsys)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "out").exists()


def test_malformed_fold_file(synthetic_tree, tmp_path, capsys):
    fold = tmp_path / "dsfold1.txt"
    fold.write_text("SOB_B_A-14-22549AB-100-001.png|100|1|train\nthis line is wrong\n")
    code, _, err = run(
        prepare,
        [synthetic_tree, "--out", tmp_path / "out", "--split", "fold", "--fold-file", fold],
        capsys,
    )
    assert_one_line_error(code, err, "line 2 is malformed")


def test_fold_file_for_another_dataset(synthetic_tree, tmp_path, capsys):
    fold = tmp_path / "dsfold1.txt"
    fold.write_text("SOB_B_A-14-1-100-001.png|100|1|train\nSOB_B_A-14-1-100-002.png|100|1|test\n")
    code, _, err = run(
        prepare,
        [synthetic_tree, "--out", tmp_path / "out", "--split", "fold", "--fold-file", fold],
        capsys,
    )
    assert_one_line_error(code, err, "no image of the tree is listed in the fold file")


def test_stats_and_audit_on_bad_paths(tmp_path, capsys):
    code, _, err = run(stats, [tmp_path / "nowhere"], capsys)
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run(audit, [tmp_path], capsys)
    assert_one_line_error(code, err, "is not a prepared split")


# ------------------------------------------------------------------------------- real images


@pytest.fixture()
def real_tree(real_images_dir, tmp_path):
    """The 16 real PNGs, symlinked into the archive layout."""
    breast = tmp_path / "real" / "BreaKHis_v1" / "histology_slides" / "breast"
    for path in sorted(real_images_dir.glob("*/*.png")):
        target = breast / archive_relative_path(parse_filename(path.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path)
    return tmp_path / "real"


def test_real_images_prepare_stats_and_audit(real_tree, tmp_path, capsys):
    code, out, _ = run(stats, [real_tree], capsys)
    assert code == 0
    assert out.strip().splitlines()[-1] == "| Total | 11 | 5 | 16 |"

    code, _, err = run(
        prepare, [real_tree, "--out", tmp_path / "image", "--split", "image"], capsys
    )
    assert code == 0, err
    rows = read_split_csv(tmp_path / "image")
    assert len(rows) == 16 and {r["split"] for r in rows} == {"train", "val", "test"}
    with Image.open(tmp_path / "image" / rows[0]["path"]) as image:
        assert image.size == (700, 460)

    code, _, err = run(prepare, [real_tree, "--out", tmp_path / "patient"], capsys)
    if code == 0:
        code, report, _ = run(audit, [tmp_path / "patient"], capsys)
        assert code == 0 and "no patient in more than one split" in report
    else:
        assert_one_line_error(code, err, "too few patients", "--split image")


def test_real_images_with_the_official_fold_excerpt(real_tree, fold_excerpt, tmp_path, capsys):

    groups = read_fold_file(fold_excerpt)
    code, _, err = run(
        prepare,
        [real_tree, "--out", tmp_path / "fold", "--split", "fold", "--fold-file", fold_excerpt],
        capsys,
    )
    assert code == 0, err
    assert "fold-file name(s) are not in the tree" in err
    assert "excluded" in err and "that the fold file does not list" in err
    rows = read_split_csv(tmp_path / "fold")
    assert {r["filename"] for r in rows if r["split"] == "test"} == {
        "SOB_B_PT-14-21998AB-40-001.png",
        "SOB_M_DC-14-2523-40-010.png",
    }
    for row in rows:
        expected = "test" if row["split"] == "test" else "train"
        assert groups[row["filename"]] == expected
    code, report, _ = run(audit, [tmp_path / "fold"], capsys)
    assert code == 0, report

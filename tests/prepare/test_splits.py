"""Tests of bc_keras.prepare: indexing, split algorithms and manifests."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import make_records
from PIL import Image

from bc_keras.errors import DataError
from bc_keras.histology.breakhis import (
    MAGNIFICATIONS,
    OFFICIAL_PATIENT_COUNTS,
    parse_filename,
)
from bc_keras.histology.synthetic import write_synthetic_tree
from bc_keras.prepare import (
    find_breast_root,
    index_tree,
    parse_magnifications,
    patient_overlap,
    read_fold_file,
    read_manifest,
    split_by_fold,
    split_by_image,
    split_by_patient,
    validate_ratios,
    write_manifest,
)


def fractions(records):
    counts = Counter(r.split for r in records)
    return {split: counts[split] / len(records) for split in ("train", "val", "test")}


# --------------------------------------------------------------------------------- arguments


def test_validate_ratios():
    assert validate_ratios([0.7, 0.15, 0.15]) == (0.7, 0.15, 0.15)
    with pytest.raises(DataError, match="needs 3 values"):
        validate_ratios([0.8, 0.2])
    with pytest.raises(DataError, match=r"0.8 0.15 0.15 sum to 1.1, not 1; give 3 fractions"):
        validate_ratios([0.8, 0.15, 0.15])
    # The rule the message states is the rule applied: 1 0 0 sums to 1 but leaves val and
    # test empty, which the message names, with why neither may be empty.
    rule = "each above 0 (the training scripts validate on val and score on test"
    with pytest.raises(DataError, match=r"--ratios 1 0 0 leaves val and test with no image") as e:
        validate_ratios([1.0, 0.0, 0.0])
    assert rule in str(e.value) and "that sum to 1, e.g. 0.70 0.15 0.15" in str(e.value)
    with pytest.raises(DataError, match=r"0.9 0.2 -0.1 leaves test with no image"):
        validate_ratios([0.9, 0.2, -0.1])
    with pytest.raises(DataError, match="not a number"):
        validate_ratios([float("nan"), 0.5, 0.5])
    assert validate_ratios([0.98, 0.01, 0.01]) == (0.98, 0.01, 0.01)


def test_parse_magnifications():
    assert parse_magnifications(None) == MAGNIFICATIONS
    assert parse_magnifications(["all"]) == MAGNIFICATIONS
    assert parse_magnifications(["400", "40X", "100x"]) == (40, 100, 400)
    with pytest.raises(DataError, match="unknown magnification '50'; choose from 40 100 200 400"):
        parse_magnifications(["40", "50"])


# ------------------------------------------------------------------------------- patient split


def test_patient_split_is_disjoint_balanced_and_covers_subtypes():
    rng = np.random.default_rng(3)
    sizes = {s: list(rng.integers(10, 300, n)) for s, n in OFFICIAL_PATIENT_COUNTS.items()}
    records = split_by_patient(make_records(sizes), seed=42)
    assert patient_overlap(records) == {}
    for split, target in zip(("train", "val", "test"), (0.70, 0.15, 0.15), strict=True):
        assert abs(fractions(records)[split] - target) <= 0.03
    for subtype, count in OFFICIAL_PATIENT_COUNTS.items():
        splits = {r.split for r in records if r.subtype == subtype}
        if count >= 3:
            assert splits == {"train", "val", "test"}, subtype
    for label in ("benign", "malignant"):
        assert {r.split for r in records if r.label == label} == {"train", "val", "test"}


def test_patient_split_is_seeded():
    records = make_records({"A": [10, 20, 30, 40, 50], "DC": [15, 25, 35, 45, 55, 65]})
    assert split_by_patient(records, seed=1) == split_by_patient(records, seed=1)


def test_patient_split_with_too_few_patients_names_the_class():
    records = make_records({"A": [10, 10], "DC": [10, 10, 10]})
    with pytest.raises(DataError, match="class benign has 2 patient.*--split image"):
        split_by_patient(records)


# --------------------------------------------------------------------------------- image split


def test_image_split_is_stratified_by_class():
    records = split_by_image(make_records({"A": [100, 100], "DC": [150, 150]}), seed=0)
    assert abs(fractions(records)["train"] - 0.70) < 0.01
    for label, total in (("benign", 200), ("malignant", 300)):
        chosen = [r for r in records if r.label == label]
        assert len(chosen) == total
        counts = Counter(r.split for r in chosen)
        assert abs(counts["test"] / total - 0.15) < 0.02
        assert abs(counts["val"] / total - 0.15) < 0.02
    # It leaks patients: that is the point of the warning.
    assert patient_overlap(records)
    assert records == split_by_image(make_records({"A": [100, 100], "DC": [150, 150]}), seed=0)


# ---------------------------------------------------------------------------------- fold files


def test_read_fold_file_tolerates_blank_lines_and_spaces(tmp_path):
    path = tmp_path / "dsfold1.txt"
    path.write_text(
        "SOB_B_A-14-22549AB-100-001.png|100|1|train\n\n"
        "  SOB_M_DC-14-2523-40-010.png | 40 | 1 | test  \r\n\n"
    )
    assert read_fold_file(path) == {
        "SOB_B_A-14-22549AB-100-001.png": "train",
        "SOB_M_DC-14-2523-40-010.png": "test",
    }


def test_read_fold_file_names_the_malformed_line(tmp_path):
    path = tmp_path / "dsfold1.txt"
    path.write_text(
        "SOB_B_A-14-22549AB-100-001.png|100|1|train\n\nSOB_B_A-14-1-100-002.png|100|1\n"
    )
    with pytest.raises(DataError, match="line 3 is malformed.*filename\\|mag\\|fold\\|grp"):
        read_fold_file(path)
    path.write_text("x.png|100|1|validation\n")
    with pytest.raises(DataError, match="line 1 is malformed"):
        read_fold_file(path)
    with pytest.raises(DataError, match="does not exist"):
        read_fold_file(tmp_path / "missing.txt")


def test_fold_split_keeps_test_group_and_carves_val_by_patient():
    records = make_records({"A": [20, 30, 25, 10], "F": [12, 18], "DC": [40, 30, 20, 50, 10]})
    patients = sorted({r.patient for r in records})
    test_patients = set(patients[::3])
    groups = {r.filename: "test" if r.patient in test_patients else "train" for r in records}
    groups["SOB_B_A-14-9999-40-001.png"] = "train"  # listed but absent from the tree
    extra = make_records({"PT": [3]})  # in the tree but absent from the fold file
    result, report = split_by_fold(records + extra, groups, seed=0)
    assert report.not_in_tree == ["SOB_B_A-14-9999-40-001.png"]
    assert report.not_in_fold == sorted(r.filename for r in extra)
    assert {r.filename for r in result if r.split == "test"} == {
        f for f, g in groups.items() if g == "test"
    }
    assert {r.filename for r in result if r.split in ("train", "val")} == {
        r.filename for r in records if groups[r.filename] == "train"
    }
    assert patient_overlap(result) == {}
    assert {r.split for r in result} == {"train", "val", "test"}


# ---------------------------------------------------------------------------- trees and checks


def test_find_breast_root_at_every_level(synthetic_tree):
    breast = synthetic_tree / "BreaKHis_v1" / "histology_slides" / "breast"
    for level in (synthetic_tree, breast.parent.parent, breast.parent, breast):
        assert find_breast_root(level) == breast
    with pytest.raises(DataError, match="is not a BreaKHis tree.*expected the layout"):
        find_breast_root(breast / "benign")


def test_index_tree_reads_labels_and_patients_from_names(synthetic_tree):
    result = index_tree(synthetic_tree)
    # 4 benign and 4 malignant subtypes x 3 patients x 4 magnifications; benign patients have 1
    # image per magnification, malignant ones 2 (the BreaKHis-like class balance).
    assert len(result.records) == 4 * 3 * 4 * (1 + 2)
    assert result.warnings() == []
    record = result.records[0]
    parsed = parse_filename(record.filename)
    assert (record.label, record.subtype, record.patient, record.magnification) == (
        parsed.label,
        parsed.subtype,
        parsed.patient,
        parsed.magnification,
    )
    assert Path(record.source).is_file()


def test_index_tree_skips_and_notes_bad_files(tmp_path):
    write_synthetic_tree(tmp_path, patients_per_subtype=1, images_per_patient=1, size=(8, 8))
    breast = tmp_path / "BreaKHis_v1" / "histology_slides" / "breast"
    folder = breast / "benign" / "SOB" / "adenosis" / "SOB_B_A_14-77777" / "40X"
    folder.mkdir(parents=True)
    good = next(breast.rglob("*.png")).read_bytes()
    (folder / "SOB_B_A-14-77777-40-001.png").write_bytes(b"")
    (folder / "SOB_B_A-14-77777-40-002.png").write_text("not a png at all")
    (folder / "SOB_B_A-14-77777-40-003.png").write_bytes(good[: len(good) // 2])
    Image.new("L", (8, 8), 128).save(folder / "SOB_B_A-14-77777-40-004.png")
    Image.new("RGBA", (8, 8), (200, 100, 200, 255)).save(folder / "SOB_B_A-14-77777-40-005.png")
    (folder / "holiday.png").write_bytes(good)
    (folder / "SOB_M_DC-14-77777-40-001.png").write_bytes(good)  # malignant name, benign folder
    (folder / "Thumbs.db").write_bytes(b"ignored")
    result = index_tree(tmp_path)
    reasons = dict(result.unreadable)
    assert reasons["benign/SOB/adenosis/SOB_B_A_14-77777/40X/SOB_B_A-14-77777-40-001.png"] == (
        "empty file (0 bytes)"
    )
    assert reasons["benign/SOB/adenosis/SOB_B_A_14-77777/40X/SOB_B_A-14-77777-40-002.png"] == (
        "not an image file"
    )
    assert reasons[
        "benign/SOB/adenosis/SOB_B_A_14-77777/40X/SOB_B_A-14-77777-40-003.png"
    ].startswith("corrupt or truncated")
    assert [mode for _, mode in result.converted] == ["mode L", "mode RGBA"]
    assert len(result.unparsable) == 1 and result.unparsable[0].endswith("holiday.png")
    assert len(result.class_mismatch) == 1 and "name says malignant" in result.class_mismatch[0]
    kept = {r.filename for r in result.records}
    assert {"SOB_B_A-14-77777-40-004.png", "SOB_B_A-14-77777-40-005.png"} <= kept
    assert len(result.records) == 32 + 2
    warnings = "\n".join(result.warnings())
    assert "skipped 3 unreadable image(s)" in warnings
    assert "converted to RGB" in warnings
    assert "skipped 1 .png file(s) whose name does not follow" in warnings


# ---------------------------------------------------------------------------------- manifests


def test_manifest_round_trip(tmp_path):
    records = split_by_patient(make_records({"A": [3, 4, 5], "DC": [2, 3, 4]}))
    write_manifest(records, tmp_path / "split.csv")
    header = (tmp_path / "split.csv").read_text().splitlines()[0]
    assert header == "filename,path,label,subtype,patient,magnification,split,slide_id"
    loaded = read_manifest(tmp_path / "split.csv")
    assert [(r.filename, r.label, r.patient, r.magnification, r.split) for r in loaded] == [
        (r.filename, r.label, r.patient, r.magnification, r.split) for r in records
    ]
    assert [r.slide_id for r in loaded] == [parse_filename(r.filename).slide_id for r in records]
    assert loaded[0].source == str(
        tmp_path / loaded[0].split / loaded[0].label / loaded[0].filename
    )

"""Tests of cross-validation folds: patient-grouped K folds, official fold files, the shared image
store with relative links, and the command line's checks."""

import json
import os
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from helpers import assert_one_line_error, load_tool, make_records, run_tool
from PIL import Image

from bc_keras import cli
from bc_keras.errors import DataError
from bc_keras.histology.breakhis import CLASS_NAMES, SUBTYPES, parse_filename
from bc_keras.histology.synthetic import write_synthetic_tree
from bc_keras.prepare import (
    folds,
    index_tree,
    patient_overlap,
    read_manifest,
    split_kfold_by_patient,
    split_summary,
)

TOOLS = Path(__file__).resolve().parents[2] / "data_tools"
SPLITS = ("train", "val", "test")
K = 3
# The tree below: 4 patients per subtype, so 16 per class, each with one image at each of the
# 4 magnifications: 4 images per patient, 64 per class, 128 in all.
PATIENTS_PER_SUBTYPE = 4
IMAGES_PER_PATIENT = 4
# The keys of a single prepared split's prepare.json, unchanged by the folds.
SINGLE_SPLIT_KEYS = {
    "source",
    "source_kind",
    "breast_root",
    "split",
    "ratios",
    "seed",
    "magnifications",
    "fold_file",
    "layout",
    "trials",
    "counts",
    "skipped",
    "converted_to_rgb",
    "warnings",
}
FOLD_KEYS = SINGLE_SPLIT_KEYS | {"fold", "val_share", "image_store", "image_store_layout"}
TOP_KEYS = {
    "source",
    "source_kind",
    "breast_root",
    "split",
    "folds",
    "fold_kind",
    "fold_files",
    "seed",
    "ratios",
    "val_share",
    "magnifications",
    "trials",
    "image_store",
    "image_store_layout",
    "fold_folders",
    "images",
    "patients",
    "counts",
    "skipped",
    "converted_to_rgb",
    "warnings",
}


prepare = load_tool("prepare_breakhis")


def run(argv, capsys):
    return run_tool(prepare, argv, capsys)


def fold_records(out, count=K):
    return [read_manifest(out / f"fold_{k}" / "split.csv") for k in range(1, count + 1)]


def fold_settings(out, count=K):
    return [
        json.loads((out / f"fold_{k}" / "prepare.json").read_text()) for k in range(1, count + 1)
    ]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("folds_tree")
    write_synthetic_tree(
        root,
        patients_per_subtype=PATIENTS_PER_SUBTYPE,
        images_per_patient=1,
        size=(16, 16),
        seed=4,
    )
    return root


@pytest.fixture(scope="module")
def all_records(tree):
    return index_tree(tree).records


@pytest.fixture(scope="module")
def kfold_out(tree, tmp_path_factory):
    """The tree prepared as 3 patient-grouped folds (symbolic links, the default seed)."""
    out = tmp_path_factory.mktemp("kfold") / "folds"
    code = cli.run_script(prepare.main, [str(tree), "--out", str(out), "--folds", str(K)])
    assert code == 0
    return out


# ------------------------------------------------------------------------- the fold algorithm


def test_kfold_output_tests_every_patient_once_and_keeps_folds_patient_disjoint(
    kfold_out, all_records
):
    assert len(all_records) == 2 * 4 * PATIENTS_PER_SUBTYPE * IMAGES_PER_PATIENT == 128
    every = {r.filename for r in all_records}
    records = fold_records(kfold_out)
    tested = Counter()
    test_sets = []
    for chosen in records:
        assert sorted(r.filename for r in chosen) == sorted(every)
        assert patient_overlap(chosen) == {}
        assert {(r.split, r.label) for r in chosen} == {
            (s, label) for s in SPLITS for label in CLASS_NAMES
        }
        test_sets.append({r.filename for r in chosen if r.split == "test"})
        tested.update({r.patient for r in chosen if r.split == "test"})
    assert tested == Counter({r.patient for r in all_records})  # each patient exactly once
    assert set().union(*test_sets) == every
    assert sum(len(s) for s in test_sets) == len(every)  # so the test folds are disjoint


def test_kfold_balances_each_class_and_spreads_subtypes(kfold_out):
    records = fold_records(kfold_out)
    for label in CLASS_NAMES:
        counts = [sum(r.split == "test" and r.label == label for r in c) for c in records]
        # 16 equal patients (4 images each) cannot go 3 ways evenly: 6/5/5 patients is the best
        # a patient-grouped split can do, so the folds differ by exactly one patient's images.
        assert sorted(counts) == [20, 20, 24], label
        for chosen in records:
            # Validation takes 0.15 / 0.85 of the fold's non-test images, within one patient.
            rest = [r for r in chosen if r.label == label and r.split != "test"]
            val = sum(r.split == "val" for r in rest)
            assert abs(val / len(rest) - 0.15 / 0.85) <= IMAGES_PER_PATIENT / len(rest)
    # Every subtype has 4 >= 3 patients, so each test fold holds every subtype.
    for chosen in records:
        assert {r.subtype for r in chosen if r.split == "test"} == set(SUBTYPES)
    # The classes' folds are paired so that the folds' totals balance too.
    totals = sorted(sum(r.split == "test" for r in c) for c in records)
    assert totals == [40, 44, 44]


def test_kfold_is_deterministic_per_seed_and_matches_the_command_line(kfold_out, all_records):
    first = split_kfold_by_patient(all_records, K, seed=42)
    assert first == split_kfold_by_patient(all_records, K, seed=42)
    other = split_kfold_by_patient(all_records, K, seed=7)
    assert [[r.split for r in c] for c in other] != [[r.split for r in c] for c in first]
    written = fold_records(kfold_out)
    for library, disk in zip(first, written, strict=True):
        assert {(r.filename, r.split) for r in library} == {(r.filename, r.split) for r in disk}


def test_kfold_balance_with_unequal_patients():
    sizes = {"A": [30, 5, 12, 8], "F": [20, 3, 9], "DC": [40, 10, 25, 7, 15], "LC": [6, 33, 18]}
    records = make_records(sizes)
    result = split_kfold_by_patient(records, 3, seed=1)
    for label in CLASS_NAMES:
        largest = max(n for s, ns in sizes.items() if SUBTYPES[s][0] == label for n in ns)
        counts = [sum(r.split == "test" and r.label == label for r in c) for c in result]
        # Greedy largest-first dealing stays within one (largest) patient of perfect balance.
        assert max(counts) - min(counts) <= largest, (label, counts)
    for chosen in result:
        assert patient_overlap(chosen) == {}
        assert Counter(r.split for r in chosen).keys() == set(SPLITS)


def test_kfold_refuses_too_few_patients():
    records = make_records({"A": [10, 10], "DC": [10, 10, 10]})
    with pytest.raises(DataError, match=r"3-fold.*class benign has 2 patient\(s\).*add data"):
        split_kfold_by_patient(records, 3)
    # 3 patients in 2 folds: one fold tests 2 of them, leaving 1 for train and val.
    records = make_records({"A": [10, 10, 10], "DC": [10, 10, 10, 10]})
    with pytest.raises(DataError, match=r"class benign has 3 .*leave 1 .*--folds 3 to 3"):
        split_kfold_by_patient(records, 2)
    assert len(split_kfold_by_patient(records, 3)) == 3


# ------------------------------------------------------------------------------ the layout


def test_store_holds_each_image_once_and_folds_link_relatively(kfold_out, all_records):
    source_of = {r.filename: Path(r.source) for r in all_records}
    store = kfold_out / "images"
    entries = sorted(os.listdir(store))
    assert entries == sorted(source_of)
    for name in entries:
        assert (store / name).is_symlink()
        assert Path(os.readlink(store / name)) == source_of[name]
    for k, chosen in enumerate(fold_records(kfold_out), start=1):
        files = sorted((kfold_out / f"fold_{k}").glob("*/*/*.png"))
        assert len(files) == len(chosen) == len(entries)
        for path in files:
            assert os.readlink(path) == f"../../../images/{path.name}"
            assert path.resolve() == source_of[path.name].resolve()
    assert sorted(p.name for p in kfold_out.iterdir()) == [
        "fold_1",
        "fold_2",
        "fold_3",
        "images",
        "prepare.json",
    ]


def test_prepare_json_per_fold_and_at_the_top(kfold_out, tree):
    records = fold_records(kfold_out)
    for k, settings in enumerate(fold_settings(kfold_out), start=1):
        assert set(settings) == FOLD_KEYS
        assert settings["split"] == "kfold"
        assert settings["fold"] == {"index": k, "count": K, "kind": "kfold", "fold_file": None}
        assert settings["seed"] == 42 and settings["ratios"] == [0.7, 0.15, 0.15]
        assert settings["source"] == str(tree.absolute())
        assert settings["layout"] == "relative_symlinks"
        assert settings["image_store"] == "../images"
        assert settings["image_store_layout"] == "symlinks"
        assert settings["counts"] == split_summary(records[k - 1])
    top = json.loads((kfold_out / "prepare.json").read_text())
    assert set(top) == TOP_KEYS
    assert (top["split"], top["folds"], top["fold_kind"], top["seed"]) == ("kfold", K, "kfold", 42)
    # 32 patient folders, 31 patients: the tree files one slide as DC and LC, as 14-13412 is.
    assert (top["images"], top["patients"], top["fold_files"]) == (128, 31, None)
    assert top["counts"] == {f"fold_{k}": split_summary(records[k - 1]) for k in (1, 2, 3)}
    assert top["skipped"]["not_in_fold"] == 0


def test_summary_per_fold_is_printed(tree, tmp_path, capsys):
    code, out, err = run([tree, "--out", tmp_path / "folds", "--folds", "2"], capsys)
    assert code == 0, err
    assert "2 patient-grouped folds of 128 images (31 patients)" in out
    settings = fold_settings(tmp_path / "folds", 2)
    for k in (1, 2):
        test = settings[k - 1]["counts"]["test"]
        line = (
            f"test :    {test['images']} images ({100 * test['fraction']:.1f}%), {test['benign']} "
            f"benign, {test['malignant']} malignant, {test['patients']} patients"
        )
        assert f"  fold_{k}\n" in out and line in out


def test_copied_folds_survive_a_move_and_feed_training(tree, tmp_path, capsys):
    from bc_keras.data import list_split_files

    out = tmp_path / "here" / "folds"
    code, _, err = run([tree, "--out", out, "--folds", str(K), "--copy", "--seed", "3"], capsys)
    assert code == 0, err
    store = out / "images"
    assert all(p.is_file() and not p.is_symlink() for p in store.iterdir())
    assert fold_settings(out)[0]["image_store_layout"] == "copies"
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(out, moved)
    for k, chosen in enumerate(fold_records(moved), start=1):
        for record in chosen[:: len(chosen) // 4]:
            path = moved / f"fold_{k}" / record.split / record.label / record.filename
            assert Path(record.source) == path
            with Image.open(path) as image:
                assert image.size == (16, 16)
    files = list_split_files(moved / "fold_1", "train")
    train = [r for r in fold_records(moved)[0] if r.split == "train"]
    assert sorted(Path(p).name for p in files.paths) == sorted(r.filename for r in train)
    labels = {r.filename: CLASS_NAMES.index(r.label) for r in train}
    assert [labels[Path(p).name] for p in files.paths] == list(files.labels)
    assert files.skipped == []


def test_archive_source_extracts_into_the_store(tree, kfold_out, tmp_path, capsys):
    archive = tmp_path / "BreaKHis_v1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree / "BreaKHis_v1", arcname="BreaKHis_v1")
    out = tmp_path / "folds"
    code, _, err = run([archive, "--out", out, "--folds", str(K)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in kfold_out.iterdir())
    assert sorted(os.listdir(out / "images")) == sorted(os.listdir(kfold_out / "images"))
    assert not any(p.is_symlink() for p in (out / "images").iterdir())
    for k in range(1, K + 1):
        split_csv = (out / f"fold_{k}" / "split.csv").read_text()
        assert split_csv == (kfold_out / f"fold_{k}" / "split.csv").read_text()


# ---------------------------------------------------------------------------- official folds


def write_fold_files(records, folder):
    """Two official-format fold files testing on different patients; the second one omits one
    image of a patient it trains on. A patient is a slide id, so the DC and LC folders of the
    tree's shared slide (14-13412) are on the same side."""
    patients = sorted({r.slide_id for r in records})
    groups = [
        {r.filename: "test" if r.slide_id in chosen else "train" for r in records}
        for chosen in (set(patients[0::3]), set(patients[1::3]))
    ]
    omitted = next(r.filename for r in records if groups[1][r.filename] == "train")
    del groups[1][omitted]
    paths = []
    for k, group in enumerate(groups, start=1):
        path = folder / f"dsfold{k}.txt"
        path.write_text(
            "".join(
                f"{name}|{parse_filename(name).magnification}|{k}|{grp}\n"
                for name, grp in sorted(group.items())
            )
        )
        paths.append(path)
    return paths, groups, omitted


def test_official_fold_files_give_their_test_groups_exactly(all_records, tree, tmp_path, capsys):
    paths, groups, omitted = write_fold_files(all_records, tmp_path)
    out = tmp_path / "official"
    code, _, err = run([tree, "--out", out, "--split", "fold", "--fold-file", *paths], capsys)
    assert code == 0, err
    assert "fold_2 (dsfold2.txt): excluded 1 image(s)" in err
    records = fold_records(out, 2)
    for chosen, group in zip(records, groups, strict=True):
        assert {r.filename for r in chosen if r.split == "test"} == {
            name for name, grp in group.items() if grp == "test"
        }
        assert {r.filename for r in chosen if r.split != "test"} == {
            name for name, grp in group.items() if grp == "train"
        }
        assert patient_overlap(chosen) == {}
        assert {r.split for r in chosen} == set(SPLITS)
    assert omitted not in {r.filename for r in records[1]}
    # The store holds every image some fold uses, once: the omitted one is in fold 1.
    assert sorted(os.listdir(out / "images")) == sorted(r.filename for r in all_records)
    for k, settings in enumerate(fold_settings(out, 2), start=1):
        assert settings["split"] == "fold"
        assert settings["fold"] == {
            "index": k,
            "count": 2,
            "kind": "official",
            "fold_file": str(paths[k - 1].absolute()),
        }
        assert settings["skipped"]["not_in_fold"] == (k == 2)
        excluded = (
            "fold_2 (dsfold2.txt): excluded 1 image(s) of the tree that the fold file does not "
            f"list: {omitted}"
        )
        assert [w for w in settings["warnings"] if "excluded" in w] == ([excluded] * (k == 2))
    top = json.loads((out / "prepare.json").read_text())
    assert (top["split"], top["folds"], top["fold_kind"]) == ("fold", 2, "official")
    assert top["fold_files"] == [str(p.absolute()) for p in paths]


def test_one_fold_file_keeps_the_single_split_layout(all_records, tree, tmp_path, capsys):
    paths, groups, _ = write_fold_files(all_records, tmp_path)
    out = tmp_path / "single"
    code, _, err = run([tree, "--out", out, "--split", "fold", "--fold-file", paths[0]], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "prepare.json",
        "split.csv",
        "test",
        "train",
        "val",
    ]
    settings = json.loads((out / "prepare.json").read_text())
    assert set(settings) == SINGLE_SPLIT_KEYS
    assert settings["fold_file"] == str(paths[0].absolute())
    assert {r.filename for r in read_manifest(out / "split.csv") if r.split == "test"} == {
        name for name, grp in groups[0].items() if grp == "test"
    }


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--folds", "17"], ["17-fold", "class benign has 16 patient(s)", "--folds 3 to 16"]),
        (["--folds", "3", "--split", "image"], ["--folds", "cannot split by image"]),
        (["--folds", "1"], ["--folds 1 is not cross-validation", "--folds 2 or more"]),
        (["--folds", "0"], ["--folds 0 is not cross-validation"]),
        (["--folds", "2", "--split", "fold", "--fold-file", "x.txt"], ["drop --folds"]),
        (["--folds", "2", "--fold-file", "x.txt"], ["--fold-file goes with --split fold"]),
        (["--fold-file", "a.txt", "b.txt"], ["2 --fold-file files need --split fold"]),
    ],
)
def test_bad_fold_requests_are_one_line_errors_that_leave_nothing(
    tree, tmp_path, capsys, extra, fragments
):
    code, _, err = run([tree, "--out", tmp_path / "out", *extra], capsys)
    assert_one_line_error(code, err, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_help_documents_the_fold_flags():
    help_text = prepare.build_parser().format_help()
    assert "--folds K" in help_text and "DIR/fold_1 .. DIR/fold_K" in help_text
    assert "--fold-file FILE [FILE ...]" in help_text


def test_interrupted_folds_leave_nothing(tree, tmp_path, monkeypatch, capsys):
    calls = []
    real_symlink = os.symlink

    def interrupt(*args, **kwargs):
        calls.append(args)
        if len(calls) == 200:  # after the store, in the middle of fold_1's links
            raise KeyboardInterrupt
        real_symlink(*args, **kwargs)

    monkeypatch.setattr(folds.os, "symlink", interrupt)
    code, _, err = run([tree, "--out", tmp_path / "out", "--folds", str(K)], capsys)
    assert code == 130 and "interrupted" in err
    assert len(calls) == 200
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_a_folds_folder(tree, tmp_path, capsys):
    out = tmp_path / "folds"
    assert run([tree, "--out", out, "--folds", "2"], capsys)[0] == 0
    code, _, err = run([tree, "--out", out, "--folds", "2"], capsys)
    assert_one_line_error(code, err, "already exists", "--overwrite")
    code, _, err = run(
        [tree, "--out", out, "--folds", str(K), "--overwrite", "--seed", "5"], capsys
    )
    assert code == 0, err
    top = json.loads((out / "prepare.json").read_text())
    assert (top["folds"], top["seed"]) == (K, 5)
    assert sorted(p.name for p in out.iterdir()) == [
        "fold_1",
        "fold_2",
        "fold_3",
        "images",
        "prepare.json",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folds"]

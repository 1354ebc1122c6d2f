"""Sharded TFRecords: the export tool, reading shards as the folder pipeline, unlabelled images."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_one_line_error, load_tool, make_split, run_tool

from bc_keras import cli, data
from bc_keras.data import tfrecords
from bc_keras.errors import DataError
from bc_keras.histology.breakhis import CLASS_NAMES

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOL_PATH = REPO_ROOT / "data_tools" / "export_tfrecords.py"
SHARDS = 3


export_tool = load_tool("export_tfrecords")


def run_export(argv, capsys):
    return run_tool(export_tool, argv, capsys)


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    """A small prepared split: 8 subtypes x 2 patients x 4 magnifications x 1 image, 48x32 px."""
    return make_split(tmp_path_factory, patients_per_subtype=2, images_per_patient=1)


@pytest.fixture(scope="module")
def record_dir(split_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("records") / "shards"
    code = cli.run_script(export_tool.main, [str(split_dir), "--out", str(out), "--shards", "3"])
    assert code == 0
    return out


def _batches(dataset: data.ImageDataset):
    batches = [(x.numpy(), y.numpy()) for x, y in dataset.data]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def _relative(paths, root):
    return [Path(os.path.relpath(path, root)).as_posix() for path in paths]


def _read_shard(path):
    examples = []
    for serialized in tf.data.TFRecordDataset(str(path)):
        feature = tf.train.Example.FromString(serialized.numpy()).features.feature
        examples.append(
            {
                key: (
                    feature[key].bytes_list.value[0]
                    if feature[key].bytes_list.value
                    else feature[key].int64_list.value[0]
                )
                for key in tfrecords.FEATURE_DESCRIPTIONS
            }
        )
    return examples


# ------------------------------------------------------------------------------------ export


def test_export_writes_every_image_once_with_its_bytes_and_metadata(split_dir, record_dir):
    index = json.loads((record_dir / tfrecords.INDEX_NAME).read_text())
    with open(split_dir / "split.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert index["manifest"] == rows
    by_path = {row["path"]: row for row in rows}
    assert (record_dir / "split.csv").read_bytes() == (split_dir / "split.csv").read_bytes()
    assert (record_dir / "prepare.json").read_bytes() == (split_dir / "prepare.json").read_bytes()
    total = 0
    for subset in data.SUBSETS:
        folder = data.list_split_files(split_dir, subset)
        entry = index["subsets"][subset]
        expected_counts = {
            name: int(np.sum(folder.labels == i)) for i, name in enumerate(CLASS_NAMES)
        }
        assert entry["classes"] == expected_counts
        assert entry["images"] == len(folder.paths) == sum(expected_counts.values())
        assert entry["shards"] == [f"{subset}-{i:05d}-of-00003.tfrecord" for i in range(SHARDS)]
        shards = [_read_shard(record_dir / name) for name in entry["shards"]]
        # Image k is record k // 3 of shard k % 3: shard sizes differ by at most one.
        assert [len(s) for s in shards] == [
            len(range(i, len(folder.paths), SHARDS)) for i in range(SHARDS)
        ]
        examples = sorted((e for s in shards for e in s), key=lambda e: e["image/index"])
        assert [e["image/index"] for e in examples] == list(range(len(folder.paths)))
        for example, path, label in zip(examples, folder.paths, folder.labels, strict=True):
            relative = f"{subset}/{CLASS_NAMES[label]}/{Path(path).name}"
            assert example["image/filename"].decode() == Path(path).name
            assert example["image/encoded"] == Path(path).read_bytes()
            assert example["image/format"] == b"png"
            assert example["image/class/label"] == label
            assert example["image/class/text"].decode() == CLASS_NAMES[label]
            assert example["image/patient"].decode() == by_path[relative]["patient"]
            assert example["image/magnification"] == int(by_path[relative]["magnification"])
            assert example["image/subtype"].decode() == by_path[relative]["subtype"]
        total += entry["images"]
    assert index["images"] == total == len(rows)


def test_list_split_files_of_shards_equals_the_folders(split_dir, record_dir):
    for subset in data.SUBSETS:
        folder = data.list_split_files(split_dir, subset)
        shards = data.list_split_files(record_dir, subset)
        assert _relative(shards.paths, record_dir) == _relative(folder.paths, split_dir)
        np.testing.assert_array_equal(shards.labels, folder.labels)
        assert shards.labels.dtype == folder.labels.dtype


def test_shards_are_read_in_parallel_in_the_folder_order(split_dir, record_dir):
    for subset in data.SUBSETS:
        names = [
            tf.train.Example.FromString(serialized.numpy())
            .features.feature["image/filename"]
            .bytes_list.value[0]
            .decode()
            for serialized in tfrecords.record_dataset(record_dir, subset)
        ]
        assert names == [Path(p).name for p in data.list_split_files(split_dir, subset).paths]


def test_read_encoded_fetches_an_images_bytes_from_its_shard(split_dir, record_dir):
    folder = data.list_split_files(split_dir, "test")
    shards = data.list_split_files(record_dir, "test")
    for path, record_path in zip(folder.paths, shards.paths, strict=True):
        assert tfrecords.read_encoded(record_path) == Path(path).read_bytes()
    assert tfrecords.read_encoded(folder.paths[0]) == Path(folder.paths[0]).read_bytes()
    for wrong in (record_dir / "test" / "benign" / "nothing.png", record_dir / "x" / "y.png"):
        with pytest.raises(DataError, match="neither an image file nor an image of a TFRecord"):
            tfrecords.read_encoded(wrong)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("image_size", [32, 48])
def test_shards_give_the_folders_unaugmented_tensors(
    split_dir, record_dir, image_size, interpolation
):
    options = dict(image_size=image_size, batch_size=5, augment=False, interpolation=interpolation)
    for subset, shuffle in (("train", True), ("test", False)):
        folder = data.build_dataset(split_dir, subset, shuffle=shuffle, **options)
        shards = data.build_dataset(record_dir, subset, shuffle=shuffle, cache=False, **options)
        x_folder, y_folder = _batches(folder)
        x_shards, y_shards = _batches(shards)
        assert x_shards.shape == (len(folder.paths), image_size, image_size, 3)
        np.testing.assert_array_equal(x_shards, x_folder)
        np.testing.assert_array_equal(y_shards, y_folder)
        assert shards.steps == folder.steps
        assert _relative(shards.paths, record_dir) == _relative(folder.paths, split_dir)


def test_augmented_training_stream_equals_the_folders(split_dir, record_dir):
    """Same seed, same epochs: the same shuffled, warped, stain-perturbed batches; and a run
    resumed at epoch 4 sees what the uninterrupted run saw there."""
    options = dict(image_size=32, batch_size=8, seed=5, stain_strength=0.05, start_epoch=3)
    folder = data.build_dataset(split_dir, "train", epochs=2, **options)
    shards = data.build_dataset(record_dir, "train", epochs=2, **options)
    x_folder, y_folder = _batches(folder)
    x_shards, y_shards = _batches(shards)
    np.testing.assert_array_equal(x_shards, x_folder)
    np.testing.assert_array_equal(y_shards, y_folder)
    count = len(folder.paths)
    assert not np.array_equal(x_shards[:count], x_shards[count:]), "epochs must differ"
    resumed = data.build_dataset(record_dir, "train", epochs=1, **{**options, "start_epoch": 4})
    x_resumed, y_resumed = _batches(resumed)
    np.testing.assert_array_equal(x_resumed, x_shards[count:])
    np.testing.assert_array_equal(y_resumed, y_shards[count:])


def test_a_subsequence_of_files_reads_only_those(split_dir, record_dir):
    """A label-fraction subset of the files reads just those images, in their order."""
    folder_files = data.list_split_files(split_dir, "train")
    shard_files = data.list_split_files(record_dir, "train")
    keep = np.arange(1, len(folder_files.paths), 3)
    options = dict(image_size=32, batch_size=4, augment=False, shuffle=False)

    def subset(files):
        return data.SplitFiles([files.paths[i] for i in keep], files.labels[keep])

    folder = data.build_dataset(split_dir, "train", files=subset(folder_files), **options)
    shards = data.build_dataset(record_dir, "train", files=subset(shard_files), **options)
    x_folder, y_folder = _batches(folder)
    x_shards, y_shards = _batches(shards)
    assert len(x_shards) == len(keep)
    np.testing.assert_array_equal(x_shards, x_folder)
    np.testing.assert_array_equal(y_shards, y_folder)
    backwards = data.SplitFiles(shard_files.paths[::-1], shard_files.labels[::-1])
    with pytest.raises(ValueError, match="subsequence of list_split_files' order"):
        data.build_dataset(record_dir, "train", files=backwards, **options)
    stranger = data.SplitFiles([str(record_dir / "train" / "benign" / "x.png")], np.zeros(1))
    with pytest.raises(DataError, match="is not a train image of the TFRecord folder"):
        data.build_dataset(record_dir, "train", files=stranger, **options)


# ---------------------------------------------------------------------- safety and bad inputs


def test_interrupted_export_leaves_nothing(split_dir, tmp_path, monkeypatch, capsys):
    calls = []
    real = tfrecords.make_example

    def interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt  # Ctrl-C with shards half written
        return real(*args, **kwargs)

    monkeypatch.setattr(tfrecords, "make_example", interrupt)
    code, _, err = run_export([split_dir, "--out", tmp_path / "shards"], capsys)
    assert code == 130 and cli.NOTHING_WRITTEN in err
    assert len(calls) == 10
    assert list(tmp_path.iterdir()) == []


def test_progress_lines_and_overwrite(split_dir, tmp_path, capsys):
    out = tmp_path / "shards"
    code, stdout, _ = run_export([split_dir, "--out", out, "--shards", "2"], capsys)
    assert code == 0
    progress = [line for line in stdout.splitlines() if line.startswith("exported ")]
    total = json.loads((out / tfrecords.INDEX_NAME).read_text())["images"]
    assert 5 <= len(progress) <= 11
    assert progress[-1].startswith(f"exported {total}/{total} images (100%), ")
    assert "train:" in stdout and "in 2 shard(s)" in stdout
    code, _, err = run_export([split_dir, "--out", out], capsys)
    assert_one_line_error(code, err, "already exists", "--overwrite")
    (out / "stale.txt").write_text("old")
    assert run_export([split_dir, "--out", out, "--overwrite"], capsys)[0] == 0
    assert not (out / "stale.txt").exists()
    index = json.loads((out / tfrecords.INDEX_NAME).read_text())
    assert [len(e["shards"]) for e in index["subsets"].values()] == [1, 1, 1]  # default: by size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_bad_inputs_give_one_line_errors(split_dir, record_dir, tmp_path, capsys):
    code, _, err = run_export([tmp_path / "missing", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "does not exist", "prepare_breakhis.py")
    (tmp_path / "plain" / "train").mkdir(parents=True)
    code, _, err = run_export([tmp_path / "plain", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "is not a prepared split", "split.csv")
    code, _, err = run_export([split_dir, "--out", split_dir / "shards"], capsys)
    assert_one_line_error(code, err, "inside it", "choose a folder outside it")
    assert not (split_dir / "shards").exists()
    code, _, err = run_export([record_dir, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "already holds TFRecords")
    assert not (tmp_path / "o").exists()
    with pytest.raises(DataError, match="only --pipeline tfdata reads") as caught:
        data.build_dataset(record_dir, "train", pipeline="generator", image_size=32)
    assert "\n" not in str(caught.value)


def test_help_documents_every_flag():
    completed = subprocess.run(
        [sys.executable, str(TOOL_PATH), "--help"], capture_output=True, text=True, check=True
    )
    for flag in ("SPLIT_DIR", "--out", "--shards", "--overwrite"):
        assert flag in completed.stdout


def test_unreadable_images_are_skipped_with_a_warning(split_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(split_dir, copy, symlinks=False)
    broken = sorted((copy / "val" / "malignant").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:40])
    code, _, err = run_export([copy, "--out", tmp_path / "shards"], capsys)
    assert code == 0
    assert f"warning: skipping 1 unreadable image(s) in {copy / 'val'}: {broken.name}" in err
    with pytest.warns(UserWarning, match="skipping 1 unreadable image"):
        folder = data.list_split_files(copy, "val")
    shards = data.list_split_files(tmp_path / "shards", "val")
    assert _relative(shards.paths, tmp_path / "shards") == _relative(folder.paths, copy)
    entry = json.loads((tmp_path / "shards" / tfrecords.INDEX_NAME).read_text())["subsets"]["val"]
    assert [name for name, _ in entry["skipped"]] == [f"malignant/{broken.name}"]


def test_a_missing_shard_is_named(record_dir, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(record_dir, copy)
    (copy / "test-00001-of-00003.tfrecord").unlink()
    with pytest.raises(DataError, match="lacks 1 shard.*test-00001-of-00003.*export"):
        data.list_split_files(copy, "train")


# ------------------------------------------------------------------------- unlabelled images


def test_unlabeled_images_from_a_folder_and_a_tfrecord_folder(split_dir, record_dir, tmp_path):
    images = tmp_path / "unlabelled"
    shutil.copytree(split_dir / "val", images / "nested" / "val")
    (images / "notes.txt").write_text("not an image")
    dataset, count = tfrecords.unlabeled_images([images, record_dir], 32)
    val = data.list_split_files(split_dir, "val")
    train = data.list_split_files(split_dir, "train")
    assert count == len(val.paths) + len(train.paths)
    assert dataset.cardinality().numpy() == count
    got = np.stack([image.numpy() for image in dataset])
    assert got.dtype == np.uint8 and got.shape == (count, 32, 32, 3)
    # Folder images in sorted path order, then the TFRecord folder's training images.
    expected_paths = sorted(val.paths, key=lambda p: os.path.relpath(p, split_dir / "val"))
    expected_paths += train.paths
    expected = data.decoded_dataset(expected_paths, np.zeros(count), 32, "bilinear", cache=False)
    np.testing.assert_array_equal(got, np.stack([image.numpy() for image, _ in expected]))
    # A prepared split contributes its training images only, like the TFRecord folder.
    from_split, split_count = tfrecords.unlabeled_images(split_dir, 32, subsets=("train",))
    assert split_count == len(train.paths)
    np.testing.assert_array_equal(
        np.stack([image.numpy() for image in from_split]), got[len(val.paths) :]
    )


def test_unlabeled_images_errors(record_dir, tmp_path):
    with pytest.raises(DataError, match="does not exist; pass image folders or TFRecord"):
        tfrecords.unlabeled_images([tmp_path / "missing"], 32)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match="holds no readable image .*searched recursively"):
        tfrecords.unlabeled_images(tmp_path / "empty", 32)
    with pytest.raises(DataError, match="is not a folder"):
        tfrecords.unlabeled_images(tmp_path / "empty" / "sub" / "readme.txt", 32)
    with pytest.raises(DataError, match="given twice"):
        tfrecords.unlabeled_images([record_dir, record_dir], 32)

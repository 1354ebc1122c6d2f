"""Nothing lost, nothing silently wrong: locked run folders, refused resumes, divergence, one-class
data, missing files, odd images and unusable outputs each end in one clear line, with nothing
half-written left looking complete."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import h5py
import numpy as np
import pytest
from helpers import load_script, probe_callbacks
from PIL import Image

from bc_keras import cli, data, runs
from bc_keras.errors import RunError
from bc_keras.evaluation import classifier as evaluation_classifier
from bc_keras.evaluation import metrics
from bc_keras.histology.synthetic import write_synthetic_tree
from bc_keras.prepare import prepare_split

train_cnn = load_script("train_cnn")
predict = load_script("predict")
audit = load_script("data_tools/audit_split")
stats = load_script("data_tools/dataset_stats")


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """A tiny prepared split (copies, so tests may damage it in their own copy)."""
    root = tmp_path_factory.mktemp("safety")
    write_synthetic_tree(root, patients_per_subtype=3, images_per_patient=1, size=(32, 32), seed=4)
    prepare_split(root, root / "prepared", seed=42, copy=True)
    return root / "prepared"


def _args(split, folder, *extra):
    return ["--data", str(split), "--image-size", "32", "--batch-size", "8", "--epochs", "1",
            "--run-dir", str(folder / "run"), "--model-out", str(folder / "cnn.h5"), *extra]  # fmt: skip


def _error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], lines
    return errors[0]


def test_a_second_run_on_a_locked_folder_stops_before_writing(split, tmp_path, capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = tmp_path / "run"
        folder.mkdir()
        (folder / runs.LOCK_FILE).write_text(f"{sleeper.pid} {os.uname().nodename} then\n")
        assert cli.run_script(train_cnn.main, _args(split, tmp_path)) == 2
        line = _error_line(capsys)
        assert f"is in use by another run (process {sleeper.pid}" in line
        assert sorted(p.name for p in folder.iterdir()) == [runs.LOCK_FILE], "nothing written"
    finally:
        sleeper.kill()
        sleeper.wait()
    # The lock of a process that is gone is taken over, with a note.
    assert cli.run_script(train_cnn.main, _args(split, tmp_path)) == 0
    assert f"took over the lock of {folder} from process {sleeper.pid}" in capsys.readouterr().out
    assert not (folder / runs.LOCK_FILE).exists(), "a finished run releases its lock"


@pytest.mark.parametrize("learning_rate", ["1e6", "1e30"])
def test_a_diverging_run_saves_nothing_and_says_so(split, tmp_path, capsys, learning_rate):
    good = tmp_path / "cnn.h5"
    good.write_bytes(b"a good model from an earlier run")
    code = cli.run_script(
        train_cnn.main, _args(split, tmp_path, "--lr", learning_rate, "--epochs", "2")
    )
    assert code == 2
    line = _error_line(capsys)
    assert "training diverged" in line and "lower --lr" in line
    assert good.read_bytes() == b"a good model from an earlier run"
    assert not (tmp_path / "run" / runs.METRICS_FILE).exists()


def test_predict_refuses_a_model_with_broken_weights(split, tmp_path, capsys):
    assert cli.run_script(train_cnn.main, _args(split, tmp_path)) == 0
    with h5py.File(tmp_path / "cnn.h5", "a") as file:
        output = file["model_weights"]["malignant_probability"]["malignant_probability"]
        output["kernel"][...] = np.nan
    out = tmp_path / "predictions.csv"
    code = cli.run_script(
        predict.main, [str(tmp_path / "cnn.h5"), str(split / "test"), "--out", str(out)]
    )
    assert code == 2 and "has non-finite weights" in _error_line(capsys)
    assert not out.exists()


def test_resume_with_other_settings_is_refused_and_config_kept(split, tmp_path, capsys):
    from helpers import probe_callbacks

    records: list = []
    monkeypatch = pytest.MonkeyPatch()
    try:
        probe_callbacks(monkeypatch, records, stop_after=1)
        args = _args(split, tmp_path, "--epochs", "3")
        assert cli.run_script(train_cnn.main, args) == 130
    finally:
        monkeypatch.undo()
    config_file = tmp_path / "run" / runs.CONFIG_FILE
    before = config_file.read_bytes()
    changed = args + ["--resume", "--lr", "0.1", "--image-size", "40", "--batch-size", "4"]
    assert cli.run_script(train_cnn.main, changed) == 2
    line = _error_line(capsys)
    assert "--resume with other settings" in line
    for difference in ("learning_rate 0.001 -> 0.1", "image_size 32 -> 40", "batch_size 8 -> 4"):
        assert difference in line
    assert config_file.read_bytes() == before
    assert cli.run_script(train_cnn.main, args + ["--resume"]) == 0


def test_a_setting_added_after_the_run_started_does_not_block_its_resume(tmp_path, capsys):
    from bc_keras.config import CNNConfig

    config = CNNConfig(data="d", run_dir=str(tmp_path))
    runs.write_config(tmp_path, config)
    stored = json.loads((tmp_path / runs.CONFIG_FILE).read_text())
    del stored["tensorboard"]  # as written by a bc_keras without that setting
    (tmp_path / runs.CONFIG_FILE).write_text(json.dumps(stored))
    runs.check_resume_config(tmp_path, config)
    assert "predates tensorboard (resuming with False)" in capsys.readouterr().out
    stored["epochs"] = 7
    (tmp_path / runs.CONFIG_FILE).write_text(json.dumps(stored))
    with pytest.raises(RunError, match="epochs 7 -> 100"):
        runs.check_resume_config(tmp_path, config)


def test_outputs_are_checked_before_training(split, tmp_path, capsys):
    args = _args(split, tmp_path)
    args[args.index("--model-out") + 1] = str(tmp_path / "model.pt")
    assert cli.run_script(train_cnn.main, args) == 2
    assert "must end in .h5 (HDF5, the default) or .keras" in _error_line(capsys)
    assert not (tmp_path / "run").exists(), "refused before the run folder is made"
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    args = _args(split, tmp_path)
    args[args.index("--run-dir") + 1] = str(blocker / "run")
    assert cli.run_script(train_cnn.main, args) == 2
    assert "cannot create the run folder" in _error_line(capsys)
    args = _args(split, tmp_path)
    args[args.index("--model-out") + 1] = str(blocker / "cnn.h5")
    assert cli.run_script(train_cnn.main, args) == 2
    assert "--model-out" in _error_line(capsys)


def _copy_without(split, tmp_path, subset, label):
    copied = tmp_path / "copy"
    shutil.copytree(split, copied)
    for path in (copied / subset / label).iterdir():
        path.unlink()
    return copied


def test_one_class_training_split_stops_before_training(split, tmp_path, capsys):
    one_class = _copy_without(split, tmp_path, "train", "benign")
    assert cli.run_script(train_cnn.main, _args(one_class, tmp_path)) == 2
    line = _error_line(capsys)
    assert "the train split" in line and "holds only malignant images" in line
    assert not (tmp_path / "run" / runs.BACKUP_DIR).exists()
    assert not (tmp_path / "cnn.h5").exists()
    assert not (tmp_path / "run").exists(), "a run refused before training leaves no folder"


def test_one_class_test_split_is_flagged_in_metrics_and_warned(split, tmp_path, capsys):
    one_class = _copy_without(split, tmp_path, "test", "benign")
    assert cli.run_script(train_cnn.main, _args(one_class, tmp_path, "--tune-threshold")) == 0
    result = json.loads((tmp_path / "run" / runs.METRICS_FILE).read_text())
    assert metrics.FLAG_ONLY_MALIGNANT in result["flags"]
    assert result["auc_roc"] is None and result["specificity"] is None
    assert "warning: test evaluation: only malignant images" in capsys.readouterr().err


def test_stats_and_audit_find_missing_image_files(split, tmp_path, capsys):
    copied = tmp_path / "copy"
    shutil.copytree(split, copied)
    victims = sorted((copied / "train" / "benign").iterdir())[:3]
    for path in victims:
        path.unlink()
    for tool in (audit, stats):
        assert cli.run_script(tool.main, [str(copied)]) == 1
        out = capsys.readouterr().out
        assert "MISSING: 3 of" in out and "prepare the split again" in out


def _png_with_header(path, width, height, bit_depth=8, colour_type=2):
    """A PNG whose header claims `width` x `height` (the pixel data is a tiny valid stream)."""

    def chunk(kind, payload):
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
                     + chunk(b"IEND", b""))  # fmt: skip


def test_odd_images_are_refused_or_decoded_like_pil(split, tmp_path, capsys):
    copied = tmp_path / "copy"
    shutil.copytree(split, copied)
    folder = copied / "test" / "benign"
    _png_with_header(folder / "bomb.png", 20000, 20000)
    Image.fromarray(np.arange(48 * 32, dtype=np.uint16).reshape(32, 48) * 40).save(
        folder / "deep.png"
    )
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(folder / "palette.png")
    Image.fromarray(rgb).save(folder / "SOB_B_A-14-99999-40-001.PNG")
    with pytest.warns(UserWarning) as caught:
        files = data.list_split_files(copied, "test")
    messages = " ".join(str(w.message) for w in caught)
    assert "bomb.png: too large to decode safely" in messages
    assert "deep.png: 16-bit PNG; convert it to 8-bit RGB" in messages
    names = [os.path.basename(p) for p in files.paths]
    assert "palette.png" in names and "SOB_B_A-14-99999-40-001.PNG" in names
    options = dict(image_size=32, batch_size=8, augment=False, shuffle=False, files=files)
    generator = data.build_dataset(copied, "test", pipeline="generator", **options)
    tfdata = data.build_dataset(copied, "test", pipeline="tfdata", **options)
    x_generator = np.concatenate([generator.data[i][0] for i in range(generator.steps)])
    x_tfdata = np.concatenate([x.numpy() for x, _ in tfdata.data])
    np.testing.assert_array_equal(x_generator, x_tfdata)
    from bc_keras.histology.breakhis import describe_files

    patients, _ = describe_files(["SOB_B_A-14-99999-40-001.PNG"])
    assert patients == ["SOB_B_A-14-99999"]


def test_predict_bad_model_files_and_outputs_give_one_line(split, tmp_path, capsys):
    assert cli.run_script(train_cnn.main, _args(split, tmp_path)) == 0
    model = tmp_path / "cnn.h5"
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    assert cli.run_script(predict.main, [str(truncated), str(split / "test")]) == 2
    assert "truncated or corrupt" in _error_line(capsys)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert (
        cli.run_script(predict.main, [str(model), str(split / "test"), "--out", str(folder)]) == 2
    )
    assert "is a folder" in _error_line(capsys)
    assert list(folder.iterdir()) == [] and not list(tmp_path.glob(".*.tmp"))


def test_outputs_follow_the_users_umask(split, tmp_path):
    previous = os.umask(0o022)
    try:
        assert cli.run_script(train_cnn.main, _args(split, tmp_path)) == 0
        prepared = tmp_path / "prepared"
        prepare_split(split.parent, prepared, seed=1)
    finally:
        os.umask(previous)
    assert (tmp_path / "cnn.h5").stat().st_mode & 0o777 == 0o644
    assert prepared.stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755


def test_the_backup_stays_until_model_and_metrics_are_written(split, tmp_path, monkeypatch):

    def broken(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(evaluation_classifier, "write_predictions", broken)
    with pytest.raises(OSError, match="simulated"):
        cli.run_script(train_cnn.main, _args(split, tmp_path, "--epochs", "2"))
    assert runs.has_backup(tmp_path / "run"), "training is not thrown away"
    assert not (tmp_path / "run" / runs.METRICS_FILE).exists()
    monkeypatch.undo()
    assert cli.run_script(train_cnn.main, _args(split, tmp_path, "--epochs", "2", "--resume")) == 0
    assert not runs.has_backup(tmp_path / "run")


# ---------------------------------------------- refused runs leave nothing; folders never collide

train_transfer = load_script("train_transfer")


def test_a_run_refused_for_a_missing_split_leaves_no_folder(split, tmp_path, capsys):
    copied = tmp_path / "copy"
    shutil.copytree(split, copied)
    shutil.rmtree(copied / "val")
    deep = tmp_path / "new" / "runs" / "here"
    args = _args(copied, tmp_path)
    args[args.index("--run-dir") + 1] = str(deep)
    assert cli.run_script(train_cnn.main, args) == 2
    assert "is not a prepared split" in _error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"], "the folders it made are gone"


def test_a_transfer_run_refused_for_bad_weights_leaves_no_folder(split, tmp_path, capsys):
    args = ["--backbone", "mobilenet", "--alpha", "0.25", "--weights", str(tmp_path / "no.h5"),
            *_args(split, tmp_path)]  # fmt: skip
    assert cli.run_script(train_transfer.main, args) == 2
    assert "no.h5 does not exist" in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_simclr_run_refused_for_a_missing_encoder_leaves_no_folder(split, tmp_path, capsys):
    train_simclr = load_script("train_simclr")
    args = ["linear", "--encoder", str(tmp_path / "encoder.h5"), *_args(split, tmp_path)]
    args[args.index("--model-out") + 1] = str(tmp_path / "linear.h5")
    assert cli.run_script(train_simclr.main, args) == 2
    assert "encoder.h5 does not exist" in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_an_automatic_run_folder_refused_leaves_no_runs_folder(
    split, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    args = _args(split / "missing", tmp_path)
    del args[args.index("--run-dir") : args.index("--run-dir") + 2]
    assert cli.run_script(train_cnn.main, args) == 2
    assert "does not exist" in _error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_a_refused_run_never_removes_a_folder_it_did_not_make(split, tmp_path, capsys):
    one_class = _copy_without(split, tmp_path, "train", "benign")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert cli.run_script(train_cnn.main, _args(one_class, tmp_path)) == 2
    _error_line(capsys)
    assert (folder / "notes.txt").read_text() == "mine"
    # Nor an interrupted run refused on --resume.
    records: list = []
    with pytest.MonkeyPatch.context() as patch:
        probe_callbacks(patch, records, stop_after=1)
        args = _args(split, tmp_path / "b", "--epochs", "2")
        assert cli.run_script(train_cnn.main, args) == 130
    assert cli.run_script(train_cnn.main, args + ["--resume", "--lr", "0.1"]) == 2
    assert "--resume with other settings" in _error_line(capsys)
    assert runs.has_backup(tmp_path / "b" / "run")


def test_remove_run_dir_removes_only_what_starting_a_run_writes(tmp_path):
    made = tmp_path / "made"
    run = made / "cnn" / "run"
    run.mkdir(parents=True)
    (run / runs.CONFIG_FILE).write_text("{}")
    (run / "history.csv").write_text("epoch\n")
    assert not runs.remove_run_dir(run, made, (runs.CONFIG_FILE,))
    assert (run / "history.csv").exists() and (run / runs.CONFIG_FILE).exists()
    (run / "history.csv").unlink()
    (made / "other").mkdir()  # someone else's: kept, and so is the folder holding it
    assert runs.remove_run_dir(run, made, (runs.CONFIG_FILE,))
    assert sorted(p.name for p in made.iterdir()) == ["other"]
    assert not runs.remove_run_dir(tmp_path / "elsewhere", made, (runs.CONFIG_FILE,))


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runs, "timestamp", lambda: "20250101-120000")
    first, created = runs.claim_run_dir(None, "cnn", False, runs_root=tmp_path / "runs")
    assert first == tmp_path / "runs" / "cnn" / "20250101-120000" and created == tmp_path / "runs"
    second, created = runs.claim_run_dir(None, "cnn", False, runs_root=tmp_path / "runs")
    third, _ = runs.claim_run_dir(None, "cnn", False, runs_root=tmp_path / "runs")
    assert (second.name, third.name) == ("20250101-120000-2", "20250101-120000-3")
    assert created == second and second.is_dir() and third.is_dir()
    assert f"using {second}" in capsys.readouterr().out
    # An explicit --run-dir is the user's choice: used as given.
    given, created = runs.claim_run_dir(first, "cnn", False, runs_root=tmp_path / "runs")
    assert (given, created) == (first, None)

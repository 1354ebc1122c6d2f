"""--teacher end to end: a distilled CNN resumes exactly (and refuses a changed teacher), its run
folder, model and card record the teacher, the saved model is the plain student; a two-phase
transfer student on the generator pipeline gets a teacher of another size and preprocessing; bad
inputs get one line."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import assert_one_line_error, load_script, probe_callbacks

from bc_keras import cli, models, runs
from bc_keras.config import CNNConfig
from bc_keras.errors import ConfigError
from bc_keras.experiments import common
from bc_keras.models import distill

train_cnn = load_script("train_cnn")
train_transfer = load_script("train_transfer")
predict = load_script("predict")

TEACHER_METADATA = {
    "kind": "classifier", "experiment": "cnn", "architecture": "baseline_cnn", "image_size": 32,
    "preprocess": "rescale", "interpolation": "nearest", "threshold": 0.4, "recipe": "report",
}  # fmt: skip


def _save_teacher(path: Path, seed: int = 3, size: int = 32, **metadata) -> Path:
    """A (randomly initialised) CNN saved as a bc_keras classifier: a teacher as the files
    train_cnn.py writes, without training one."""
    import keras

    keras.utils.set_random_seed(seed)
    model = models.build_baseline_cnn(size, 16, name="teacher_cnn")
    return models.save_model(model, path, {**TEACHER_METADATA, "image_size": size, **metadata})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return _save_teacher(tmp_path_factory.mktemp("teacher") / "teacher.h5")


def _cnn_args(split, folder: Path, teacher: Path, *extra) -> list[str]:
    return [
        "--data", str(split), "--image-size", "32", "--batch-size", "8", "--epochs", "4",
        "--bn-momentum", "0.9", "--reduce-lr-patience", "1", "--patience", "4", "--seed", "7",
        "--class-weight", "balanced", "--recalibrate-bn", "--teacher", str(teacher),
        "--distill-alpha", "0.4", "--distill-temperature", "3", "--run-dir", str(folder / "run"),
        "--model-out", str(folder / "cnn.h5"), *extra,
    ]  # fmt: skip


def _read_csv(path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.slow
def test_a_distilled_cnn_resumes_exactly_and_records_its_teacher(
    synthetic_split, teacher, tmp_path, monkeypatch, capsys
):
    uninterrupted: list = []
    probe_callbacks(monkeypatch, uninterrupted)
    assert cli.run_script(train_cnn.main, _cnn_args(synthetic_split, tmp_path / "a", teacher)) == 0
    reference, metadata = models.load_model(tmp_path / "a" / "cnn.h5")

    # The same teacher under another name, changed while the run is interrupted.
    copy = shutil.copy(teacher, tmp_path / "teacher_copy.h5")
    args = _cnn_args(synthetic_split, tmp_path / "b", copy)
    interrupted: list = []
    probe_callbacks(monkeypatch, interrupted, stop_after=2)
    assert cli.run_script(train_cnn.main, args) == 130
    record = json.loads((tmp_path / "b" / "run" / "backup" / common.TEACHER_RECORD).read_text())
    assert record["sha256"] == runs.file_sha256(teacher)
    _save_teacher(tmp_path / "teacher_copy.h5", seed=4)
    capsys.readouterr()
    code = cli.run_script(train_cnn.main, args + ["--resume"])
    assert_one_line_error(code, capsys.readouterr().err, "changed since the interrupted run",
                          "put the original file back")  # fmt: skip
    assert runs.has_backup(tmp_path / "b" / "run"), "the refused resume kept the backup"
    shutil.copy(teacher, copy)
    resumed: list = []
    probe_callbacks(monkeypatch, resumed)
    assert cli.run_script(train_cnn.main, args + ["--resume"]) == 0
    # The probe sees the trainer: its weights and optimizer are the student's.
    state, before = resumed[0][2], interrupted[-1][2]
    assert state["iterations"] == before["iterations"] > 0 and state["wait"] == before["wait"]
    for ours, theirs in zip(state["weights"] + state["best_weights"],
                            before["weights"] + before["best_weights"], strict=True):  # fmt: skip
        np.testing.assert_array_equal(ours, theirs)
    final, _ = models.load_model(tmp_path / "b" / "cnn.h5")
    for ours, theirs in zip(final.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)

    # What the finished run records of its teacher.
    run = tmp_path / "a" / "run"
    expected = {
        "teacher": str(teacher), "sha256": runs.file_sha256(teacher), "experiment": "cnn",
        "architecture": "baseline_cnn", "image_size": 32, "preprocess": "rescale",
        "threshold": 0.4, "alpha": 0.4, "temperature": 3.0,
    }  # fmt: skip
    config = json.loads((run / runs.CONFIG_FILE).read_text())
    assert config[common.DISTILLATION_KEY] == expected and config["teacher"] == str(teacher)
    assert metadata[common.DISTILLATION_KEY] == expected
    assert metadata["card"]["model"]["training"].startswith(f"distilled from {teacher} (cnn, ")
    card = (tmp_path / "a" / "cnn.card.md").read_text()
    assert f"SHA-256 {expected['sha256'][:12]}...) with alpha 0.4, T 3" in card
    assert not (run / runs.BACKUP_DIR).exists()
    # The saved model is the plain student (no teacher inside), and predict.py reads it as any.
    with h5py.File(tmp_path / "a" / "cnn.h5") as file:
        assert b"teacher_cnn" not in file.attrs["model_config"].encode()
    out = tmp_path / "predicted.csv"
    assert predict.main([str(tmp_path / "a" / "cnn.h5"), str(synthetic_split / "test"),
                         "--out", str(out), "--quiet"]) == 0  # fmt: skip
    predicted = {Path(r["path"]).name: float(r["probability_malignant"]) for r in _read_csv(out)}
    stored = {r["filename"]: float(r["probability"]) for r in _read_csv(run / "predictions.csv")}
    assert predicted.keys() == stored.keys()
    for name, probability in stored.items():
        assert predicted[name] == pytest.approx(probability, abs=1e-5)


@pytest.mark.slow
def test_a_transfer_student_on_the_generator_gets_a_larger_teacher(
    synthetic_split, tmp_path, monkeypatch
):
    # MobileNet's [-1, 1] inputs at 32 px become the teacher's caffe inputs at 48 px.
    teacher = _save_teacher(tmp_path / "teacher48.h5", size=48, preprocess="resnet50")
    seen = []
    convert = distill.teacher_inputs

    def spy(images, *args):
        seen.append((tuple(images.shape[1:]), *args))
        return convert(images, *args)

    monkeypatch.setattr(distill, "teacher_inputs", spy)
    args = [
        "--backbone", "mobilenet", "--alpha", "0.25", "--weights", "none", "--preprocess",
        "backbone", "--data", str(synthetic_split), "--image-size", "32", "--batch-size", "8",
        "--phase1-epochs", "1", "--phase2-epochs", "1", "--pipeline", "generator", "--teacher",
        str(teacher), "--run-dir", str(tmp_path / "run"), "--model-out", str(tmp_path / "m.h5"),
    ]  # fmt: skip
    assert cli.run_script(train_transfer.main, args) == 0
    # Traced in both phases (each compiles its own trainer), with the conversion asked for.
    assert set(seen) == {((32, 32, 3), "mobilenet", "resnet50", 48)}
    assert len(seen) >= 2
    model, metadata = models.load_model(tmp_path / "m.h5")
    assert metadata[common.DISTILLATION_KEY]["image_size"] == 48
    assert model.input_shape == (None, 32, 32, 3)
    history = runs.read_history(tmp_path / "run")
    assert history["phase"] == [1.0, 2.0] and all(np.isfinite(history["val_loss"]))


def _refused(split, tmp_path, capsys, *fragments, teacher=None, extra=()):
    args = _cnn_args(split, tmp_path, teacher or tmp_path / "missing.h5", *extra)
    code = cli.run_script(train_cnn.main, args)
    assert_one_line_error(code, capsys.readouterr().err, *fragments)
    assert not (tmp_path / "run").exists(), "a run refused before training leaves nothing"


def test_bad_teachers_and_settings_get_one_line(synthetic_split, teacher, tmp_path, capsys):
    _refused(synthetic_split, tmp_path, capsys, "--teacher: Model file", "does not exist")
    encoder = _save_teacher(tmp_path / "encoder.h5", kind="simclr_encoder")
    _refused(synthetic_split, tmp_path, capsys, "is a simclr_encoder, not a classifier",
             teacher=encoder)  # fmt: skip
    normalised = _save_teacher(tmp_path / "normalised.h5",
                               stain_normalizer={"method": "reinhard", "target_statistics": [1]})  # fmt: skip
    _refused(synthetic_split, tmp_path, capsys, "saw images normalised otherwise",
             "normalize_stains.py", teacher=normalised)  # fmt: skip
    _refused(synthetic_split, tmp_path, capsys, "is the --model-out file",
             teacher=tmp_path / "cnn.h5", extra=("--model-out", str(tmp_path / "cnn.h5")))  # fmt: skip
    for flag, value, rule in (("--distill-alpha", "1.5", "must be in [0, 1], got 1.5"),
                              ("--distill-temperature", "0", "must be positive, got 0")):  # fmt: skip
        with pytest.raises(SystemExit) as exit:  # argparse's own one line
            cli.run_script(
                train_cnn.main, _cnn_args(synthetic_split, tmp_path, teacher, flag, value)
            )
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit.value.code == 2 and f"error: argument {flag}: {rule}" in lines[-1]
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "values, message",
    [
        ({"distill_alpha": -0.1}, "--distill-alpha -0.1: must be in [0, 1]"),
        ({"distill_temperature": 0.0}, "--distill-temperature 0.0: must be positive"),
        ({"teacher": " "}, "--teacher ' ': must be the PATH of a file"),
        ({"teacher": 3}, "--teacher 3 is not text"),
    ],
)
def test_python_configs_refuse_what_the_flags_refuse(values, message):
    with pytest.raises(ConfigError) as error:
        CNNConfig(data="split", **values)
    assert message in str(error.value)

"""Interrupted runs resume exactly: every piece of training state comes back, and a resumed run
ends with the weights of an uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import load_script, probe_callbacks

from bc_keras import cli, models, runs
from bc_keras.models import transfer

train_cnn = load_script("train_cnn")
train_transfer = load_script("train_transfer")


def _assert_same_state(resumed: dict, interrupted: dict) -> None:
    assert resumed["iterations"] == interrupted["iterations"] > 0
    assert resumed["learning_rate"] == pytest.approx(interrupted["learning_rate"], rel=1e-7)
    assert (resumed["wait"], resumed["best"]) == (interrupted["wait"], interrupted["best"])
    assert resumed["plateau_wait"] == interrupted["plateau_wait"]
    for ours, theirs in zip(resumed["weights"], interrupted["weights"], strict=True):
        np.testing.assert_array_equal(ours, theirs)
    for ours, theirs in zip(resumed["best_weights"], interrupted["best_weights"], strict=True):
        np.testing.assert_array_equal(ours, theirs)


def _cnn_args(split, folder, *extra):
    return [
        "--data", str(split), "--image-size", "32", "--batch-size", "8", "--epochs", "5",
        "--bn-momentum", "0.9", "--reduce-lr-patience", "1", "--patience", "4", "--seed", "7",
        "--run-dir", str(folder / "run"), "--model-out", str(folder / "cnn.h5"), *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_cnn_resume_restores_the_state_and_ends_like_an_uninterrupted_run(
    synthetic_split, tmp_path, monkeypatch, capsys
):
    uninterrupted: list = []
    probe_callbacks(monkeypatch, uninterrupted)
    assert cli.run_script(train_cnn.main, _cnn_args(synthetic_split, tmp_path / "a")) == 0
    reference, _ = models.load_model(tmp_path / "a" / "cnn.h5")

    interrupted: list = []
    probe_callbacks(monkeypatch, interrupted, stop_after=3)
    args = _cnn_args(synthetic_split, tmp_path / "b")
    assert cli.run_script(train_cnn.main, args) == 130
    assert "--resume" in capsys.readouterr().err
    assert runs.has_backup(tmp_path / "b" / "run") and not (tmp_path / "b" / "cnn.h5").exists()
    # Starting afresh in the same folder is refused rather than losing the backup.
    assert cli.run_script(train_cnn.main, args) == 2
    assert "holds an interrupted run; pass --resume" in capsys.readouterr().err

    resumed: list = []
    probe_callbacks(monkeypatch, resumed)
    assert cli.run_script(train_cnn.main, args + ["--resume"]) == 0
    at_interruption = interrupted[-1]
    assert at_interruption[0] == 2 and resumed[0][0] == "begin"
    _assert_same_state(resumed[0][2], at_interruption[2])
    # The learning-rate schedule acted before the interruption, so its state mattered.
    assert at_interruption[2]["learning_rate"] < 1e-3 or at_interruption[2]["plateau_wait"] > 0
    history = runs.read_history(tmp_path / "b" / "run")
    assert history["epoch"][:4] == [0.0, 1.0, 2.0, 3.0] and len(set(history["epoch"])) == len(
        history["epoch"]
    )
    final, _ = models.load_model(tmp_path / "b" / "cnn.h5")
    for ours, theirs in zip(final.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert not runs.has_backup(tmp_path / "b" / "run")


@pytest.mark.slow
def test_transfer_interrupted_in_phase_2_resumes_there(synthetic_split, tmp_path, monkeypatch):
    started = []
    start_phase = transfer.start_phase

    def spy(model, phase, *args, **kwargs):
        started.append(phase)
        return start_phase(model, phase, *args, **kwargs)

    monkeypatch.setattr(transfer, "start_phase", spy)
    interrupted: list = []
    probe_callbacks(monkeypatch, interrupted, stop_after=1, stop_phase=2)
    args = [
        "--backbone", "mobilenet", "--alpha", "0.25", "--weights", "none", "--data",
        str(synthetic_split), "--image-size", "32", "--batch-size", "8", "--phase1-epochs", "2",
        "--phase2-epochs", "3", "--run-dir", str(tmp_path / "run"), "--model-out",
        str(tmp_path / "mobilenet.h5"),
    ]  # fmt: skip
    assert cli.run_script(train_transfer.main, args) == 130
    assert started == [1, 2]
    resumed: list = []
    probe_callbacks(monkeypatch, resumed)
    assert cli.run_script(train_transfer.main, args + ["--resume"]) == 0
    assert started == [1, 2, 2], "phase 1 was not trained again"
    assert resumed[0][:2] == ("begin", 2)
    _assert_same_state(resumed[0][2], interrupted[-1][2])
    history = runs.read_history(tmp_path / "run")
    assert history["phase"] == [1.0, 1.0, 2.0, 2.0, 2.0]
    assert history["epoch"] == [0.0, 1.0, 0.0, 1.0, 2.0]
    assert (tmp_path / "mobilenet.h5").is_file() and not runs.has_backup(tmp_path / "run")

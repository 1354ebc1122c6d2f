"""Interrupted runs resume exactly: every piece of training state comes back, and a resumed run
ends with the weights of an uninterrupted one."""

from __future__ import annotations

import contextlib
import json

import keras
import numpy as np
import pytest
from helpers import TRAINING_CALLBACKS, load_script, probe_callbacks

from bc_keras import cli, evaluation, models, runs, training
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


def _spy_on_techniques(monkeypatch) -> set:
    """The names of the issue-22 techniques a run used: batch mixing and RandAugment in its
    training stream, a smoothed loss."""
    from bc_keras.data import pipeline
    from bc_keras.models import classifier

    used: set = set()
    for name in ("mix_batch", "randaugment"):
        original = getattr(pipeline, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            used.add(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(pipeline, name, spy)
    loss = classifier.classifier_loss

    def smoothed(label_smoothing=0.0):
        if label_smoothing:
            used.add("smoothed")
        return loss(label_smoothing)

    monkeypatch.setattr(classifier, "classifier_loss", smoothed)
    return used


# The training-data techniques of issue 22, all at once, with class weights carried per image.
TECHNIQUES = ("--mixup", "0.4", "--cutmix", "1", "--randaugment", "2", "5",
              "--label-smoothing", "0.1", "--class-weight", "balanced")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("techniques", [(), TECHNIQUES], ids=["report", "mixed-randaugment"])
def test_cnn_resume_restores_the_state_and_ends_like_an_uninterrupted_run(
    synthetic_split, tmp_path, monkeypatch, capsys, techniques
):
    used = _spy_on_techniques(monkeypatch)
    uninterrupted: list = []
    probe_callbacks(monkeypatch, uninterrupted)
    reference_args = _cnn_args(synthetic_split, tmp_path / "a", *techniques)
    assert cli.run_script(train_cnn.main, reference_args) == 0
    reference, _ = models.load_model(tmp_path / "a" / "cnn.h5")
    # The flags reached the training stream and the loss, or the test would prove nothing.
    expected = {"mix_batch", "randaugment", "smoothed"} if techniques else set()
    assert used == expected

    interrupted: list = []
    probe_callbacks(monkeypatch, interrupted, stop_after=3)
    args = _cnn_args(synthetic_split, tmp_path / "b", *techniques)
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


# ------------------------------------------------------- crashes between training and outputs


def _crash_after_fit(monkeypatch):
    """fit returns, then the process dies (before anything fit_phases does next)."""
    from bc_keras.training import distribute

    scope = distribute.fit_scope

    @contextlib.contextmanager
    def crashing(*args, **kwargs):
        with scope(*args, **kwargs):
            yield
        raise KeyboardInterrupt

    monkeypatch.setattr(distribute, "fit_scope", crashing)


def _crash_before_marker(monkeypatch):
    """Inside fit's end: early stopping has restored the best weights, the marker is unwritten."""
    end = training.BestOverPhasesEarlyStopping.on_train_end

    def crashing(self, logs=None):
        end(self, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training.BestOverPhasesEarlyStopping, "on_train_end", crashing)


def _crash_in(module, name):
    def crash(monkeypatch):
        def crashing(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(module, name, crashing)

    return crash


CRASHES = {
    "inside fit, before the marker": _crash_before_marker,
    "after fit returns": _crash_after_fit,
    "after the marker, before save_model": _crash_in(models, "save_model"),
    "after save_model, before the metrics": _crash_in(evaluation, "evaluate_classifier"),
}


def _count_epochs(monkeypatch, epochs: list):
    """Every fit records the epochs it trains."""

    class Counter(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs.append(epoch)

    monkeypatch.setattr(
        training, "training_callbacks", lambda *a, **k: TRAINING_CALLBACKS(*a, **k) + [Counter()]
    )


@pytest.fixture(scope="module")
def uninterrupted(synthetic_split, tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    args = _cnn_args(synthetic_split, folder, "--epochs", "2", "--patience", "1")
    assert cli.run_script(train_cnn.main, args) == 0
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("crash", sorted(CRASHES))
def test_a_crash_after_training_resumes_without_training_again(
    crash, synthetic_split, uninterrupted, tmp_path, monkeypatch
):
    args = _cnn_args(synthetic_split, tmp_path, "--epochs", "2", "--patience", "1")
    with pytest.MonkeyPatch.context() as patch:
        trained: list = []
        _count_epochs(patch, trained)
        CRASHES[crash](patch)
        assert cli.run_script(train_cnn.main, args) == 130
    assert trained == [0, 1]
    run = tmp_path / "run"
    assert runs.has_backup(run) and not (run / runs.METRICS_FILE).exists()
    resumed: list = []
    _count_epochs(monkeypatch, resumed)
    assert cli.run_script(train_cnn.main, args + ["--resume"]) == 0
    assert resumed == [], "no epoch is trained again"
    history = runs.read_history(run)
    assert history["epoch"] == [0.0, 1.0], "one history row per epoch"
    assert (run / runs.METRICS_FILE).is_file() and not runs.has_backup(run)
    # The model kept is the one the uninterrupted run kept.
    final, _ = models.load_model(tmp_path / "cnn.h5")
    reference, _ = models.load_model(uninterrupted / "cnn.h5")
    for ours, theirs in zip(final.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_a_phase_that_had_stopped_early_when_killed_trains_no_further(
    synthetic_split, tmp_path, monkeypatch
):
    # Early stopping fires at the end of epoch 2 (patience 1 with no improvement after epoch 1
    # is likely but not certain on such data, so the stop is forced).
    stop = training.BestOverPhasesEarlyStopping.on_epoch_end

    def stop_at_epoch_1(self, epoch, logs=None):
        stop(self, epoch, logs)
        if epoch == 1:
            self.stopped_epoch, self.model.stop_training = epoch, True

    args = _cnn_args(synthetic_split, tmp_path, "--epochs", "4")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training.BestOverPhasesEarlyStopping, "on_epoch_end", stop_at_epoch_1)
        trained: list = []
        _count_epochs(patch, trained)
        _crash_before_marker(patch)
        assert cli.run_script(train_cnn.main, args) == 130
    assert trained == [0, 1]
    resumed: list = []
    _count_epochs(monkeypatch, resumed)
    assert cli.run_script(train_cnn.main, args + ["--resume"]) == 0
    assert resumed == [] and runs.read_history(tmp_path / "run")["epoch"] == [0.0, 1.0]


@pytest.mark.slow
def test_an_epoch_logged_but_not_backed_up_is_logged_once(synthetic_split, tmp_path, monkeypatch):
    records: list = []
    args = _cnn_args(synthetic_split, tmp_path, "--epochs", "3")
    with pytest.MonkeyPatch.context() as patch:
        probe_callbacks(patch, records, stop_after=2)
        assert cli.run_script(train_cnn.main, args) == 130
    # As if killed after epoch 2's history row but before its backup: the backup says epoch 1.
    metadata = tmp_path / "run" / runs.BACKUP_DIR / "training_metadata.json"
    metadata.write_text(json.dumps({"epoch": 1, "batch": -1}))
    assert runs.read_history(tmp_path / "run")["epoch"] == [0.0, 1.0]
    resumed: list = []
    _count_epochs(monkeypatch, resumed)
    assert cli.run_script(train_cnn.main, args + ["--resume"]) == 0
    assert resumed == [1, 2]
    assert runs.read_history(tmp_path / "run")["epoch"] == [0.0, 1.0, 2.0]


def test_trim_history_drops_the_rows_a_resumed_phase_writes_again(tmp_path):
    path = tmp_path / runs.HISTORY_FILE
    path.write_text("epoch,loss,phase\n0,1.0,1\n1,0.9,1\n0,0.8,2\n1,0.7,2\n2,0.6,2\n")
    assert training.trim_history(path, 1, phase=2) == 2
    assert path.read_text().splitlines() == ["epoch,loss,phase", "0,1.0,1", "1,0.9,1", "0,0.8,2"]
    assert training.trim_history(path, 5, phase=2) == 0
    assert training.trim_history(path, 1) == 1  # every phase from epoch 1
    assert training.trim_history(tmp_path / "missing.csv", 0) == 0

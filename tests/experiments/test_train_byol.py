"""End-to-end tests of `train_simclr.py pretrain --method byol` (issue 21): BYOL pretraining then
linear evaluation and fine-tuning, an exact resume, the hybrid path (a registry backbone from
the real MobileNet 0.25 ImageNet weights, pretrained, then `train_transfer.py --weights
ENCODER.h5`) and the one-line refusals."""

from __future__ import annotations

import json

import h5py
import keras
import numpy as np
import pytest
from helpers import assert_one_line_error, load_script, make_split, probe_callbacks, run_tool

from bc_keras import cli, models, runs
from bc_keras.experiments import common
from bc_keras.experiments import simclr as ssl_experiment
from bc_keras.models import saving, ssl, transfer

train_simclr = load_script("train_simclr")
train_transfer = load_script("train_transfer")

SIZE = "32"
VIEW_FLAGS = ["--crop-scale-min", "0.5", "--jitter-strength", "0.2", "--blur-probability", "0"]
PRETRAIN_FLAGS = ["--method", "byol", "--encoder-init", "random", "--image-size", SIZE,
                  "--batch-size", "16", "--seed", "3", *VIEW_FLAGS]  # fmt: skip


@pytest.fixture(scope="module")
def overlap_split(tmp_path_factory):
    """The `overlap` synthetic proxy: each patient's morphology follows an atypia whose
    benign and malignant ranges overlap, as on real tissue."""
    return make_split(tmp_path_factory, patients_per_subtype=3, images_per_patient=2,
                      difficulty="overlap")  # fmt: skip


@pytest.fixture(scope="module")
def byol_encoder(overlap_split, tmp_path_factory):
    """A short BYOL pretraining of the report's ResNet-18: (run folder, encoder .h5)."""
    root = tmp_path_factory.mktemp("byol_pretrain")
    argv = ["pretrain", "--data", overlap_split, "--epochs", "2", "--run-dir", root / "run",
            "--model-out", root / "encoder.h5", *PRETRAIN_FLAGS]  # fmt: skip
    assert train_simclr.main([str(a) for a in argv]) == 0
    return root / "run", root / "encoder.h5"


def _classifier(mode, split, encoder, out, *extra):
    argv = [mode, "--data", split, "--encoder", encoder, "--run-dir", out, "--model-out",
            out / "classifier.h5", "--image-size", SIZE, "--batch-size", "16", *extra]  # fmt: skip
    assert train_simclr.main([str(a) for a in argv]) == 0
    return json.loads((out / runs.METRICS_FILE).read_text())


@pytest.mark.slow
def test_byol_pretraining_saves_an_encoder_that_a_linear_head_evaluates(
    byol_encoder, overlap_split, tmp_path
):
    run_dir, encoder_path = byol_encoder
    summary = json.loads((run_dir / runs.METRICS_FILE).read_text())
    # From about 4 (unrelated predictions and targets) to clearly below it.
    assert (
        summary["method"] == "byol" and summary["best_val_loss"] < 0.8 * summary["initial_val_loss"]
    )
    assert "initial_val_contrastive_accuracy" not in summary
    encoder, metadata = models.load_model(encoder_path)
    assert (metadata["kind"], metadata["method"], metadata["architecture"]) == (
        "encoder", "byol", "resnet18",
    )  # fmt: skip
    assert encoder.output.shape == (None, 512) and metadata["preprocess"] == "rescale"
    card = encoder_path.with_name("encoder.card.md").read_text()
    assert "BYOL loss" in card and "method: BYOL" in card and "NT-Xent" not in card
    assert json.loads((run_dir / runs.CONFIG_FILE).read_text())["method"] == "byol"

    out = tmp_path / "linear"
    metrics = _classifier("linear", overlap_split, encoder_path, out, "--epochs", "1")
    assert 0.0 <= metrics["auc_roc"] <= 1.0 and metrics["counts"]["images"] > 0
    classifier, classifier_metadata = models.load_model(out / "classifier.h5")
    assert classifier_metadata["architecture"] == "byol_resnet18"
    assert classifier_metadata["encoder_method"] == "byol"
    # Linear evaluation: the encoder is the pretrained one, frozen.
    frozen = next(layer for layer in classifier.layers if isinstance(layer, keras.Model))
    for ours, theirs in zip(frozen.get_weights(), encoder.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.slow
def test_a_byol_encoder_fine_tunes_with_a_label_fraction(byol_encoder, overlap_split, tmp_path):
    _, encoder_path = byol_encoder
    out = tmp_path / "finetune"
    _classifier("finetune", overlap_split, encoder_path, out, "--epochs", "1",
                "--label-fraction", "0.5")  # fmt: skip
    labelled = (out / common.LABELLED_FILES).read_text().split()
    assert 0.35 * 96 <= len(labelled) <= 0.65 * 96  # of the split's 96 training images
    classifier, metadata = models.load_model(out / "classifier.h5")
    assert metadata["mode"] == "finetune" and metadata["encoder_method"] == "byol"
    assert classifier.name == "byol_resnet18_classifier"
    # The encoder trained: its first kernel moved away from the pretrained one.
    pretrained_encoder, _ = models.load_model(encoder_path)
    tuned = next(layer for layer in classifier.layers if isinstance(layer, keras.Model))
    assert not np.array_equal(tuned.get_weights()[0], pretrained_encoder.get_weights()[0])


def _small_encoder(backbone, image_size, alpha=1.0, start=None, synchronized_batch_norm=False):
    """Two convolutions with BatchNorm, pooled: a cheap stand-in for the encoder (resuming
    does not depend on the architecture)."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(synchronized=synchronized_batch_norm)(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(keras.layers.ReLU()(x))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="small_encoder")


@pytest.mark.slow
def test_an_interrupted_byol_run_resumes_to_the_weights_of_an_uninterrupted_one(
    overlap_split, tmp_path, monkeypatch
):
    monkeypatch.setattr(ssl, "build_encoder", _small_encoder)
    finished = {}
    finish = ssl_experiment._finish_pretraining

    def record(trainer, config, run, *args):
        finished[run.run_dir.name] = {
            "weights": [np.array(w) for w in trainer.get_weights()],
            "ema_step": int(trainer.ema_step.numpy()),
            "iterations": int(trainer.optimizer.iterations.numpy()),
        }
        return finish(trainer, config, run, *args)

    monkeypatch.setattr(ssl_experiment, "_finish_pretraining", record)

    def argv(name):
        return ["pretrain", "--data", str(overlap_split), "--epochs", "3", "--run-dir",
                str(tmp_path / name), "--model-out", str(tmp_path / f"{name}.h5"),
                *PRETRAIN_FLAGS]  # fmt: skip

    assert cli.run_script(train_simclr.main, argv("whole")) == 0
    probe_callbacks(monkeypatch, [], stop_after=2)
    assert cli.run_script(train_simclr.main, argv("resumed")) == 130
    assert runs.has_backup(tmp_path / "resumed") and "resumed" not in finished
    probe_callbacks(monkeypatch, [])
    assert cli.run_script(train_simclr.main, argv("resumed") + ["--resume"]) == 0
    assert runs.read_history(tmp_path / "resumed")["epoch"] == [0.0, 1.0, 2.0]
    whole, resumed = finished["whole"], finished["resumed"]
    steps = 96 // 16 * 3  # the overlap split's 96 training images, batches of 16, 3 epochs
    assert whole["ema_step"] == resumed["ema_step"] == whole["iterations"] == steps
    # Online, predictor and target networks, their BatchNorm statistics and the EMA step.
    assert len(whole["weights"]) > 2 * len(_small_encoder("x", 32).weights)
    for ours, theirs in zip(resumed["weights"], whole["weights"], strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_the_hybrid_path_pretrains_mobilenet_from_its_imagenet_file_then_transfers(
    mobilenet_weights, synthetic_split, tmp_path, monkeypatch
):
    # The report's hybrid (`pretrain --encoder resnet50 --encoder-init imagenet`, then transfer
    # from the encoder) on the real MobileNet 0.25 ImageNet file, with SimCLR (the default).
    encoder_path = tmp_path / "encoder.h5"
    argv = ["pretrain", "--data", synthetic_split, "--encoder", "mobilenet", "--alpha", "0.25",
            "--encoder-init", mobilenet_weights, "--epochs", "1", "--image-size", SIZE,
            "--batch-size", "32", "--lr", "1e-4", "--run-dir", tmp_path / "pretrain",
            "--model-out", encoder_path]  # fmt: skip
    assert train_simclr.main([str(a) for a in argv]) == 0
    encoder, metadata = models.load_model(encoder_path)
    assert (metadata["kind"], metadata["method"], metadata["architecture"], metadata["alpha"]) == (
        "encoder", "simclr", "mobilenet", 0.25,
    )  # fmt: skip
    assert metadata["preprocess"] == "mobilenet"
    assert metadata["encoder_init"] == str(mobilenet_weights)
    imagenet = transfer.build_backbone("mobilenet", 32, mobilenet_weights, alpha=0.25)
    pretrained = ssl.encoder_backbone(encoder).get_weights()
    # It started from the ImageNet file and trained from there (one epoch, a small rate).
    kernel, imagenet_kernel = pretrained[0].ravel(), imagenet.get_weights()[0].ravel()
    assert not np.array_equal(kernel, imagenet_kernel)
    assert np.corrcoef(kernel, imagenet_kernel)[0, 1] > 0.99

    started = []
    build = transfer.build_transfer_model

    def spy(*args, **kwargs):
        model = build(*args, **kwargs)
        started.append(transfer.get_backbone(model).get_weights())
        return model

    monkeypatch.setattr(transfer, "build_transfer_model", spy)
    argv = ["--backbone", "mobilenet", "--alpha", "0.25", "--weights", encoder_path,
            "--preprocess", "backbone", "--data", synthetic_split, "--image-size", SIZE,
            "--epochs", "1", "--batch-size", "16", "--run-dir", tmp_path / "transfer",
            "--model-out", tmp_path / "transfer.h5"]  # fmt: skip
    assert train_transfer.main([str(a) for a in argv]) == 0
    assert len(started) == 1
    for ours, theirs in zip(started[0], pretrained, strict=True):
        np.testing.assert_array_equal(ours, theirs)  # the transfer starts from the encoder
    _, transfer_metadata = models.load_model(tmp_path / "transfer.h5")
    assert transfer_metadata["weights"] == str(encoder_path)
    assert transfer_metadata["preprocess"] == "mobilenet"


def _pretrain_error(split, tmp_path, capsys, *flags):
    argv = ["pretrain", "--data", split, "--run-dir", tmp_path / "run", "--image-size", SIZE,
            "--model-out", tmp_path / "encoder.h5", *flags]  # fmt: skip
    code, _, err = run_tool(train_simclr, argv, capsys)
    assert not (tmp_path / "run").exists() and not (tmp_path / "encoder.h5").exists()
    return code, err


def test_bad_pretraining_inputs_are_one_line(synthetic_split, tmp_path, capsys):
    code, err = _pretrain_error(synthetic_split, tmp_path, capsys, "--method", "byol",
                                "--batch-size", "1")  # fmt: skip
    assert_one_line_error(code, err, "--batch-size 1 leaves BYOL nothing to learn",
                          "pass --batch-size 2 or more")  # fmt: skip
    code, err = _pretrain_error(synthetic_split, tmp_path, capsys, "--batch-size", "1")
    assert_one_line_error(code, err, "--batch-size 1 gives SimCLR no negatives")
    code, err = _pretrain_error(synthetic_split, tmp_path, capsys, "--method", "byol",
                                "--ema-decay", "1")  # fmt: skip
    assert_one_line_error(code, err, "--ema-decay 1.0 is outside [0, 1)")
    code, err = _pretrain_error(synthetic_split, tmp_path, capsys, "--encoder", "resnet99")
    assert_one_line_error(code, err, "--encoder: unknown backbone 'resnet99'", "or resnet18")
    code, err = _pretrain_error(synthetic_split, tmp_path, capsys, "--alpha", "0.25")
    assert_one_line_error(code, err, "--alpha 0.25 applies to registry encoders", "resnet18")
    code, err = _pretrain_error(synthetic_split, tmp_path, capsys, "--encoder", "vgg16",
                                "--alpha", "0.25")  # fmt: skip
    assert_one_line_error(code, err, "--alpha (the width multiplier) applies to mobilenet")
    # A keras-hub preset folder starts ResNet-18 only; a registry encoder takes a no-top file.
    (tmp_path / "preset").mkdir()
    code, err = _pretrain_error(synthetic_split, tmp_path, capsys, "--encoder", "resnet50",
                                "--encoder-init", tmp_path / "preset")  # fmt: skip
    assert_one_line_error(code, err, "is a folder (keras-hub presets start --encoder resnet18")
    # argparse names the methods there are, in its last line.
    with pytest.raises(SystemExit) as stop:
        _pretrain_error(synthetic_split, tmp_path, capsys, "--method", "swav")
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and "invalid choice: 'swav' (choose from 'simclr', 'byol')" in last


def test_linear_and_finetune_refuse_an_encoder_of_an_unknown_method(tmp_path, capsys):
    path = tmp_path / "swav.h5"
    encoder = _small_encoder("resnet18", 32)
    models.save_model(encoder, path, {"kind": "encoder", "architecture": "resnet18",
                                      "method": "swav", "image_size": 32})  # fmt: skip
    for mode in ("linear", "finetune"):
        argv = [mode, "--data", tmp_path, "--encoder", path, "--image-size", SIZE,
                "--run-dir", tmp_path / "run", "--model-out", tmp_path / "m.h5"]  # fmt: skip
        code, _, err = run_tool(train_simclr, argv, capsys)
        assert_one_line_error(code, err, "was pretrained with method 'swav'", "simclr, byol")
        assert not (tmp_path / "run").exists()
    # And an encoder whose architecture this version does not know.
    with h5py.File(path, "a") as file:
        record = json.loads(file.attrs[saving.METADATA_ATTRIBUTE])
        file.attrs[saving.METADATA_ATTRIBUTE] = json.dumps({**record, "method": "byol",
                                                      "architecture": "resnet99"})  # fmt: skip
    argv = ["linear", "--data", tmp_path, "--encoder", path, "--image-size", SIZE,
            "--run-dir", tmp_path / "run", "--model-out", tmp_path / "m.h5"]  # fmt: skip
    code, _, err = run_tool(train_simclr, argv, capsys)
    assert_one_line_error(code, err, "architecture 'resnet99'")

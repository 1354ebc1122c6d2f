"""End-to-end tests of train_transfer.py on a tiny synthetic split (weights none, 32 px)."""

import csv
import json

import keras
import numpy as np
import pytest
from helpers import load_script, probe_callbacks

from bc_keras import cli, models, runs
from bc_keras.config import TransferConfig
from bc_keras.errors import ConfigError
from bc_keras.histology.synthetic import write_synthetic_tree
from bc_keras.models import transfer
from bc_keras.prepare import prepare_split

train_transfer = load_script("train_transfer")


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    """48 synthetic images (8 subtypes x 3 patients x 2 images, one magnification)."""
    root = tmp_path_factory.mktemp("transfer_tree")
    write_synthetic_tree(root, patients_per_subtype=3, images_per_patient=2, size=(48, 32), seed=1)
    out = root / "prepared"
    prepare_split(root, out, seed=42, magnifications=(40,))
    return out


def quick_args(split, tmp_path, backbone, *extra):
    return [
        "--backbone",
        backbone,
        "--data",
        str(split),
        "--weights",
        "none",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--run-dir",
        str(tmp_path / "run"),
        "--model-out",
        str(tmp_path / f"{backbone}.h5"),
        *extra,
    ]


def test_help_documents_batchnorm_inference_mode(capsys):
    with pytest.raises(SystemExit) as exited:
        train_transfer.main(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "BatchNorm layers of a pretrained backbone stay in inference mode during fine-tuning"
        in text
    )
    for flag in ("--phase1-epochs", "--phase2-epochs", "--lr1", "--lr2", "--weights", "--alpha"):
        assert flag in text
    assert "(default: 15)" in text and "(default: 0.0001)" in text


def test_flags_resolve_phases_model_out_and_preprocess():
    config = train_transfer.parse_args(
        ["--backbone", "vgg16", "--data", "d", "--epochs", "3", "--phase2-epochs", "1"]
    )
    assert (config.phase1_epochs, config.phase2_epochs) == (3, 1)
    assert config.model_out == "models/transfer_model_vgg16_breast_cancer.h5"
    assert config.preprocess == "rescale" and config.weights == "imagenet"
    assert config.freeze_batchnorm
    config = train_transfer.parse_args(
        ["--backbone", "resnet50", "--data", "d", "--preprocess", "backbone", "--weights", "None"]
    )
    assert config.preprocess == "resnet50" and config.weights == "none"
    assert not config.freeze_batchnorm


def test_an_unknown_backbone_is_one_line_before_anything_is_written(tmp_path, capsys):
    argv = ["--backbone", "resnet99", "--data", str(tmp_path), "--run-dir", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as exited:
        train_transfer.main(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "invalid choice: 'resnet99'" in error and "'mobilenet'" in error
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="unknown backbone 'resnet99'; choose one of resnet50"):
        TransferConfig(backbone="resnet99", data="d")


def test_offline_imagenet_weights_give_one_clear_error(tiny_split, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline_get_file(*args, **kwargs):
        raise Exception("URL fetch failure: offline")

    monkeypatch.setattr(keras.utils, "get_file", offline_get_file)
    argv = quick_args(tiny_split, tmp_path, "vgg16")
    argv[argv.index("none")] = "imagenet"
    assert cli.run_script(train_transfer.main, argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ImageNet weights for vgg16 are not available offline")
    assert f"vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 in {tmp_path / 'models'}" in error


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backbone", "extra"),
    [
        ("resnet50", ()),
        ("vgg16", ("--preprocess", "backbone")),
        ("mobilenet", ("--alpha", "0.25")),
    ],
)
def test_trains_both_phases_end_to_end(tiny_split, tmp_path, monkeypatch, backbone, extra):
    # Snapshot the backbone as each phase starts, to see what each phase changed.
    snapshots = []
    start_phase = transfer.start_phase

    def spy(model, phase, *args, **kwargs):
        weights = transfer.get_backbone(model).weights
        snapshots.append({v.path: np.array(v.numpy()) for v in weights})
        return start_phase(model, phase, *args, **kwargs)

    monkeypatch.setattr(transfer, "start_phase", spy)
    # And the backbone at the end of phase 2's epoch, before the best weights are restored.
    records: list = []
    probe_callbacks(monkeypatch, records)
    assert train_transfer.main(quick_args(tiny_split, tmp_path, backbone, *extra)) == 0

    run_dir = tmp_path / "run"
    model_path = tmp_path / f"{backbone}.h5"
    model, metadata = models.load_model(model_path)
    initial, after_phase1 = snapshots
    for path, value in after_phase1.items():
        np.testing.assert_array_equal(value, initial[path], err_msg=f"phase 1 changed {path}")
    phase2_end = next(state for epoch, phase, state in records if epoch == 0 and phase == 2)
    phase1_end = next(state for epoch, phase, state in records if epoch == 0 and phase == 1)
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(phase2_end["weights"], phase1_end["weights"], strict=True)
    ]
    assert sum(changed) > len(changed) // 2, "phase 2 fine-tunes the backbone"
    # The model kept is the better of the two phases on validation loss.
    history = runs.read_history(run_dir)
    kept = phase2_end if history["val_loss"][1] < history["val_loss"][0] else phase1_end
    for saved, expected in zip(model.get_weights(), kept["weights"], strict=True):
        np.testing.assert_allclose(saved, expected, rtol=0, atol=1e-6)

    assert metadata["preprocess"] == (backbone if extra[:1] == ("--preprocess",) else "rescale")
    assert metadata["backbone"] == backbone and metadata["image_size"] == 32
    config = json.loads((run_dir / runs.CONFIG_FILE).read_text())
    assert config["backbone"] == backbone and config["phase2_epochs"] == 1
    history = runs.read_history(run_dir)
    assert history["phase"] == [1.0, 2.0]
    assert {"loss", "val_loss", "accuracy", "val_auc"} <= set(history)
    for name in ("metrics.json", "predictions.csv", "training_curves.png", "roc_curve.png"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / runs.BACKUP_DIR).exists()

    # A plain keras load after `import bc_keras` predicts the same, and predict.py works.
    test_images = sorted((tiny_split / "test").rglob("*.png"))
    assert test_images
    plain = keras.models.load_model(model_path)
    batch = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(plain.predict(batch, verbose=0), model.predict(batch, verbose=0))
    out = tmp_path / "predictions.csv"
    predict = load_script("predict")
    assert predict.main([str(model_path), str(tiny_split / "test"), "--out", str(out)]) == 0
    with open(out, newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(test_images)
    assert all(0.0 <= float(row["probability_malignant"]) <= 1.0 for row in rows)


@pytest.mark.slow
def test_a_phase_2_that_only_hurts_hands_back_phase_1s_model(tiny_split, tmp_path, monkeypatch):
    """Defect 1 of the robust-recipe issue: phase 2 must beat phase 1's best on validation, or
    phase 1's weights are what gets saved."""
    start_phase = transfer.start_phase

    def sabotage(model, phase, *args, **kwargs):
        start_phase(model, phase, *args, **kwargs)
        if phase == transfer.PHASE_FINE_TUNE:
            # Scramble the head: with a tiny learning rate phase 2 cannot repair it.
            for layer in (model.get_layer("dense"), model.get_layer(models.OUTPUT_NAME)):
                kernel = layer.kernel
                kernel.assign(np.random.default_rng(0).normal(0, 5, kernel.shape))
        return model

    monkeypatch.setattr(transfer, "start_phase", sabotage)
    records: list = []
    probe_callbacks(monkeypatch, records)
    argv = quick_args(tiny_split, tmp_path, "mobilenet", "--alpha", "0.25", "--phase1-epochs", "2")
    argv += ["--phase2-epochs", "2", "--finetune-lr", "1e-9"]
    assert train_transfer.main(argv) == 0
    history = runs.read_history(tmp_path / "run")
    phases = np.array(history["phase"])
    assert min(np.array(history["val_loss"])[phases == 2]) > min(
        np.array(history["val_loss"])[phases == 1]
    )
    phase1_states = [state for epoch, phase, state in records if phase == 1 and epoch != "begin"]
    best_epoch = int(np.argmin(np.array(history["val_loss"])[phases == 1]))
    model, _ = models.load_model(tmp_path / "mobilenet.h5")
    for saved, expected in zip(
        model.get_weights(), phase1_states[best_epoch]["weights"], strict=True
    ):
        np.testing.assert_array_equal(saved, expected)

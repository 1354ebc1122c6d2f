"""End-to-end tests of train_transfer.py on a tiny synthetic split (weights none, 32 px)."""

import csv
import importlib.util
import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from bc_keras import cli, models, runs, transfer
from bc_keras.prepare import prepare_split
from bc_keras.synthetic import write_synthetic_tree

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO_ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


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
    assert train_transfer.main(quick_args(tiny_split, tmp_path, backbone, *extra)) == 0

    run_dir = tmp_path / "run"
    model_path = tmp_path / f"{backbone}.h5"
    model, metadata = models.load_model(model_path)
    initial, after_phase1 = snapshots
    final = {v.path: v.numpy() for v in transfer.get_backbone(model).weights}
    for path, value in after_phase1.items():
        np.testing.assert_array_equal(value, initial[path], err_msg=f"phase 1 changed {path}")
    kernels = [path for path in final if path.endswith("kernel")]
    assert kernels and all(not np.array_equal(final[p], after_phase1[p]) for p in kernels)

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
def test_resume_after_phase1_goes_straight_to_phase2(tiny_split, tmp_path, monkeypatch):
    started = []
    start_phase = transfer.start_phase

    def interrupt_phase2(model, phase, *args, **kwargs):
        started.append(phase)
        if phase == transfer.PHASE_FINE_TUNE and len(started) == 2:
            raise KeyboardInterrupt  # Ctrl-C once phase 1 is done
        return start_phase(model, phase, *args, **kwargs)

    monkeypatch.setattr(transfer, "start_phase", interrupt_phase2)
    argv = quick_args(tiny_split, tmp_path, "mobilenet", "--alpha", "0.25")
    assert cli.run_script(train_transfer.main, argv) == 130
    assert runs.has_backup(tmp_path / "run")
    assert cli.run_script(train_transfer.main, argv) == 2  # no silent restart without --resume

    assert train_transfer.main([*argv, "--resume"]) == 0
    assert started == [1, 2, 2]  # phase 1 was not trained again
    assert runs.read_history(tmp_path / "run")["phase"] == [1.0, 2.0]
    assert (tmp_path / "mobilenet.h5").is_file() and not runs.has_backup(tmp_path / "run")

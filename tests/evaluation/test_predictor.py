"""The Python API: configs checked on construction, bc_keras.train's result, and the Predictor
that applies a saved model's input contract to files, folders and arrays alike."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

import bc_keras
from bc_keras import data, models
from bc_keras.errors import ConfigError, ModelFileError
from bc_keras.evaluation.inference import predict_probabilities


@pytest.fixture(scope="module")
def saved_classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("predictor") / "cnn.h5"
    model = models.build_baseline_cnn(32, 8, 0.5, 0.99)
    metadata = {"kind": "classifier", "image_size": 32, "preprocess": "rescale",
                "interpolation": "bilinear", "threshold": 0.4, "tta": True}  # fmt: skip
    models.save_model(model, path, metadata)
    return path


def test_importing_bc_keras_is_light_and_names_the_api():
    assert set(bc_keras.__all__) >= {"train", "load_model", "Predictor", "CNNConfig"}
    code = "import sys, bc_keras; bc_keras.CNNConfig; print('tensorflow' in sys.modules)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_arrays_files_and_folders_give_the_same_probabilities(saved_classifier, synthetic_split):
    predictor = bc_keras.load_model(saved_classifier)
    assert (predictor.image_size, predictor.threshold, predictor.tta) == (32, 0.4, True)
    files = data.list_split_files(synthetic_split, "test").paths
    arrays = [np.asarray(Image.open(path).convert("RGB")) for path in files]  # 48 x 32 px
    from_files = predictor.predict_proba(files)
    np.testing.assert_array_equal(predictor.predict_proba(arrays), from_files)
    folder = sorted(str(p) for p in (synthetic_split / "test").rglob("*.png"))
    by_folder = dict(zip(folder, predictor.predict_proba(synthetic_split / "test"), strict=True))
    np.testing.assert_array_equal([by_folder[str(p)] for p in files], from_files)
    # The stored contract, applied by hand: bilinear resize, 1/255, mean over the 8 views.
    test = data.build_dataset(
        synthetic_split, "test", image_size=32, batch_size=8, interpolation="bilinear"
    )
    expected = predict_probabilities(predictor.keras_model, test.data, tta=True)
    np.testing.assert_allclose(from_files, expected, atol=1e-6)
    np.testing.assert_array_equal(predictor.predict(files), (from_files >= 0.4).astype(int))
    one = predictor.predict_proba(arrays[0])
    assert one.shape == (1,) and one[0] == pytest.approx(from_files[0], abs=1e-6)


def test_bad_inputs_are_refused_with_what_to_pass(saved_classifier, tmp_path):
    predictor = bc_keras.load_model(saved_classifier)
    with pytest.raises(ValueError, match="must be uint8 RGB"):
        predictor.predict_proba(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="shape \\(32, 32\\)"):
        predictor.predict_proba(np.zeros((32, 32), np.uint8)[None][0])
    encoder = tmp_path / "encoder.h5"
    models.save_model(models.build_baseline_cnn(32, 8, 0.5, 0.99), encoder,
                      {"kind": "simclr_encoder", "image_size": 32})  # fmt: skip
    with pytest.raises(ModelFileError, match="simclr_encoder model, not a classifier"):
        bc_keras.load_model(encoder)


def test_a_config_built_in_python_is_complete_or_refused_before_any_folder(tmp_path):
    config = bc_keras.CNNConfig(data="d", recipe="robust")
    assert config.threshold == "youden" and config.class_weight == "balanced"
    assert config.cross_fit == 0 and config.tta is True
    for values, message in (
        (dict(batch_size=0), "--batch-size 0: must be a positive integer"),
        (dict(label_fraction=1.5), "--label-fraction 1.5: must be in \\(0, 1\\]"),
        (dict(pipeline="fast"), "--pipeline 'fast' is not one of generator, tfdata"),
        (dict(epochs="3"), "--epochs '3' is not a number"),
        (dict(threshold=1.0), "--threshold 1.0: must be a probability in \\(0, 1\\)"),
    ):
        with pytest.raises(ConfigError, match=message):
            bc_keras.CNNConfig(data="d", run_dir=str(tmp_path / "run"), **values)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_returns_the_run_folder_model_and_metrics(synthetic_split, tmp_path):
    config = bc_keras.CNNConfig(
        data=str(synthetic_split), image_size=32, batch_size=8, epochs=1, batch_norm_momentum=0.9,
        run_dir=str(tmp_path / "run"), model_out=str(tmp_path / "cnn.h5"),
    )  # fmt: skip
    result = bc_keras.train(config)
    assert result.run_dir == tmp_path / "run" and result.model_path == tmp_path / "cnn.h5"
    assert (result.run_dir / "metrics.json").is_file()
    with open(result.run_dir / "predictions.csv", newline="") as file:
        stored = [float(row["probability"]) for row in csv.DictReader(file)]
    files = data.list_split_files(synthetic_split, "test").paths
    assert isinstance(result.model, bc_keras.Predictor)
    np.testing.assert_allclose(result.model.predict_proba(files), stored, atol=1e-5)
    labels = data.list_split_files(synthetic_split, "test").labels
    assert result.metrics["auc_roc"] == pytest.approx(roc_auc_score(labels, stored), abs=1e-5)


def test_importing_the_plots_keeps_a_notebooks_backend_and_commands_use_agg():
    import os
    import subprocess

    keep = (
        "import matplotlib; matplotlib.use('svg'); "
        "import bc_keras.evaluation.plots, bc_keras.evaluation.gradcam; "
        "print(matplotlib.get_backend())"
    )
    command = (
        "import matplotlib; from bc_keras import cli; "
        "cli.run_script(lambda argv: print(matplotlib.get_backend()))"
    )
    environment = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    for code, expected in ((keep, "svg"), (command, "agg")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env=environment)  # fmt: skip
        assert out.stdout.strip().lower() == expected

"""The native .keras format beside .h5 (issue 20 item 1): `--model-out X.keras` saves a Keras
archive whose metadata travels inside the zip, every reader of a bc_keras model takes it (load,
predict.py, export), it computes as the .h5 of the same model does, and the model-file checks
(code in the file, no metadata, an exported model, corruption) apply to it too."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import assert_one_line_error, load_script, run_tool

from bc_keras import cli, data, models
from bc_keras.errors import ModelFileError, RunError
from bc_keras.export import formats
from bc_keras.models import saving

train_cnn = load_script("train_cnn")
predict = load_script("predict")
SIZE = 32
METADATA = {"kind": "classifier", "image_size": SIZE, "preprocess": "rescale", "threshold": 0.4}


def _rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_a_model_saved_as_keras_computes_as_its_h5_and_keeps_its_metadata(tmp_path):
    keras.utils.set_random_seed(3)
    model = models.build_baseline_cnn(SIZE, dense_units=4)
    h5 = models.save_model(model, tmp_path / "m.h5", METADATA)
    native = models.save_model(model, tmp_path / "m.keras", METADATA)
    assert zipfile.is_zipfile(native) and not zipfile.is_zipfile(h5)
    with zipfile.ZipFile(native) as archive:
        assert json.loads(archive.read(saving.METADATA_MEMBER)) == METADATA
    assert saving.read_metadata(native) == saving.read_metadata(h5) == METADATA
    images = np.random.default_rng(0).uniform(0, 1, (5, SIZE, SIZE, 3)).astype("float32")
    from_h5, _ = models.load_model(h5)
    from_native, metadata = models.load_model(native)
    assert metadata == METADATA
    np.testing.assert_array_equal(from_native.predict(images, verbose=0),
                                  from_h5.predict(images, verbose=0))  # fmt: skip
    np.testing.assert_allclose(from_native.predict(images, verbose=0),
                               model.predict(images, verbose=0), atol=1e-7)  # fmt: skip


@pytest.mark.slow
def test_train_predict_and_export_take_a_keras_model(synthetic_split, tmp_path, capsys):
    run, model_out = tmp_path / "run", tmp_path / "cnn.keras"
    argv = ["--data", synthetic_split, "--image-size", SIZE, "--batch-size", 8, "--epochs", 1,
            "--dense-units", 4, "--run-dir", run, "--model-out", model_out]  # fmt: skip
    assert cli.run_script(train_cnn.main, [str(a) for a in argv]) == 0
    assert zipfile.is_zipfile(model_out) and not model_out.with_suffix(".h5").exists()
    metadata = saving.read_metadata(model_out)
    assert metadata["image_size"] == SIZE and json.loads((run / "config.json").read_text())[
        "model_out"
    ] == str(model_out)
    # predict.py on the test images gives the run's own test predictions.
    expected = {
        row["filename"]: float(row["probability"]) for row in _rows(run / "predictions.csv")
    }
    out = tmp_path / "predicted.csv"
    test_dir = Path(synthetic_split) / "test"
    assert len(data.list_split_files(synthetic_split, "test").paths) == len(expected)
    code, _, err = run_tool(predict, [str(model_out), str(test_dir), "--out", str(out)], capsys)
    assert code == 0, err
    got = {Path(row["path"]).name: float(row["probability_malignant"]) for row in _rows(out)}
    assert len(got) == len(expected) > 0
    for name, probability in expected.items():
        assert got[name] == pytest.approx(probability, abs=1e-5), name
    exported = formats.export_model(model_out, tmp_path / "export", fmt=formats.FORMAT_KERAS)
    assert exported.is_file()


def test_bad_model_files_and_names_get_one_line(tmp_path, capsys):
    with pytest.raises(RunError, match=r"must end in \.h5 \(HDF5, the default\) or \.keras"):
        saving.check_model_out(tmp_path / "m.pt")
    # Code inside a .keras archive is refused before Keras reads it.
    inputs = keras.Input((SIZE, SIZE, 3))
    lam = keras.layers.Lambda(lambda t: t * 2.0, name="evil")(inputs)
    hostile = keras.Model(inputs, models.sigmoid_output(keras.layers.GlobalAveragePooling2D()(lam)))
    path = models.save_model(hostile, tmp_path / "hostile.keras", METADATA)
    with pytest.raises(ModelFileError, match=r"carries code \(a Lambda layer 'evil'\)"):
        models.load_model(path)
    code, _, err = run_tool(predict, [str(path), str(tmp_path)], capsys)
    assert_one_line_error(code, err, "carries code", str(path))
    # A Keras archive without bc_keras metadata, an exported inference model, a broken zip.
    plain = tmp_path / "plain.keras"
    models.build_baseline_cnn(SIZE, dense_units=4).save(plain)
    with pytest.raises(ModelFileError, match="is a Keras model without bc_keras metadata"):
        saving.read_metadata(plain)
    with zipfile.ZipFile(plain, "a") as archive:
        archive.writestr(formats.METADATA_NAME, "{}")
    with pytest.raises(ModelFileError, match="is an exported inference model .* not a trained"):
        saving.read_metadata(plain)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ModelFileError, match=r"broken\.keras is not a \.keras archive .*truncated"):
        models.load_model(broken)

"""Model files are untrusted input: a .h5 carrying code (a Lambda layer, an unregistered class
or function) is refused before Keras reads it by every entry point, non-finite weights are
refused on load, and load failures say what went wrong on one line."""

from __future__ import annotations

import json

import h5py
import keras
import numpy as np
import pytest
from helpers import assert_one_line_error, load_script, run_tool

from bc_keras import models
from bc_keras.errors import ModelFileError, shorten
from bc_keras.models import saving

SIZE = 32
predict = load_script("predict")
train_transfer = load_script("train_transfer")
train_simclr = load_script("train_simclr")


def _metadata(kind: str = "classifier") -> dict:
    return {"kind": kind, "image_size": SIZE, "preprocess": "rescale", "threshold": 0.5}


def _save_hostile(path, metadata: dict):
    """Saves a bc_keras model whose Lambda layer, nested in a sub-model, writes a marker file
    beside `path` when it runs; returns (the model file, the marker path)."""
    marker = path.parent / "owned.txt"
    # The path is a constant of the lambda's code, so the saved bytecode carries it.
    payload = eval(f"lambda t: (open({str(marker)!r}, 'w').close(), t)[1]")  # noqa: S307
    inner_input = keras.Input((SIZE, SIZE, 3))
    inner = keras.Model(inner_input, keras.layers.Lambda(payload, name="evil")(inner_input))
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(inner(inputs))
    model = keras.Model(inputs, models.sigmoid_output(x))
    path = models.save_model(model, path, metadata)
    marker.unlink()  # building the model ran the lambda once
    return path, marker


@pytest.fixture
def hostile(tmp_path):
    """(a saved hostile model, the marker its Lambda writes when it runs)."""
    return _save_hostile(tmp_path / "hostile.h5", _metadata())


def test_the_hostile_file_really_runs_its_code_when_loaded_unsafely(hostile):
    path, marker = hostile
    keras.models.load_model(path, compile=False, safe_mode=False)
    assert marker.exists()


def test_load_model_refuses_a_lambda_before_keras_reads_the_file(hostile):
    path, marker = hostile
    with pytest.raises(ModelFileError) as refused:
        models.load_model(path)
    message = str(refused.value)
    assert message == (
        f"{path} carries code (a Lambda layer 'evil') that bc_keras will not run; retrain the "
        "model without it, or load it with Keras yourself only if you trust its author"
    )
    assert not marker.exists()


def test_predict_refuses_a_lambda(hostile, tmp_path, capsys):
    path, marker = hostile
    code, _, err = run_tool(predict, [path, tmp_path, "--out", tmp_path / "p.csv"], capsys)
    assert_one_line_error(code, err, "carries code (a Lambda layer 'evil')", str(path))
    assert not marker.exists() and not (tmp_path / "p.csv").exists()


def test_transfer_weights_refuse_a_lambda(hostile, synthetic_split, tmp_path, capsys):
    path, marker = hostile
    argv = ["--backbone", "mobilenet", "--alpha", "0.25", "--data", synthetic_split,
            "--weights", path, "--image-size", SIZE, "--epochs", "1",
            "--run-dir", tmp_path / "run", "--model-out", tmp_path / "m.h5"]  # fmt: skip
    code, _, err = run_tool(train_transfer, argv, capsys)
    assert_one_line_error(code, err, "carries code (a Lambda layer 'evil')", str(path))
    assert not marker.exists() and not (tmp_path / "m.h5").exists()
    assert not (tmp_path / "run").exists()  # the refused run leaves nothing


def test_simclr_encoder_refuses_a_lambda(hostile, synthetic_split, tmp_path, capsys):
    path, marker = hostile
    argv = ["linear", "--data", synthetic_split, "--encoder", path, "--image-size", SIZE,
            "--epochs", "1", "--run-dir", tmp_path / "run",
            "--model-out", tmp_path / "m.h5"]  # fmt: skip
    code, _, err = run_tool(train_simclr, argv, capsys)
    assert_one_line_error(code, err, "carries code (a Lambda layer 'evil')", str(path))
    assert not marker.exists() and not (tmp_path / "m.h5").exists()
    assert not (tmp_path / "run").exists()  # the refused run leaves nothing


def test_the_report_skips_the_grad_cam_of_a_hostile_model(tmp_path):
    from bc_keras import report

    helpers = load_script("tests/report/test_report")  # the report tests' run-folder writers
    SOURCE, file_names, scores = helpers.SOURCE, helpers.file_names, helpers.scores
    section, write_run, write_split = helpers.section, helpers.write_run, helpers.write_split

    names = file_names(["SOB_B_A-14-1001", "SOB_M_DC-14-2001"], (1,))
    write_split(tmp_path / "data" / "patient", names, {"split": "patient", **SOURCE})
    runs = tmp_path / "runs"
    metadata = {**_metadata(), "experiment": "cnn", "run_dir": str(runs / "hostile")}
    (tmp_path / "models").mkdir()
    path, marker = _save_hostile(tmp_path / "models" / "hostile.h5", metadata)
    config = {"experiment": "cnn", "data": str(tmp_path / "data" / "patient"),
              "model_out": str(path)}  # fmt: skip
    write_run(runs / "hostile", config, names, scores(names, 2.0, 0))
    report.build_report([runs], tmp_path / "out")
    text = (tmp_path / "out" / "REPORT.md").read_text()
    assert "Grad-CAM failed (" in section(text, "## Models")
    assert "carries code (a Lambda layer 'evil')" in section(text, "## Models")
    assert not marker.exists()


def _unsafe_keras(monkeypatch):
    """Makes Keras load every file with safe mode off, as Keras before 3.11.3 did for .h5."""
    original = keras.models.load_model

    def load_unsafely(*args, **kwargs):
        return original(*args, **{**kwargs, "safe_mode": False})

    monkeypatch.setattr(keras.models, "load_model", load_unsafely)


def test_the_refusal_does_not_rest_on_keras_safe_mode(hostile, monkeypatch):
    path, marker = hostile
    _unsafe_keras(monkeypatch)
    with pytest.raises(ModelFileError, match="carries code \\(a Lambda layer 'evil'\\)"):
        models.load_model(path)
    assert not marker.exists()


def _paste_lambda(hostile_path, folder):
    """A bc_keras model whose configuration, two models deep (a Sequential inside a
    Functional), has the hostile Lambda's marshalled code pasted in by hand: no Keras saved
    this Lambda."""
    with h5py.File(hostile_path, "r") as file:
        layers = json.loads(file.attrs["model_config"])["config"]["layers"]
    inner = next(layer for layer in layers if layer["class_name"] == "Functional")
    evil = next(layer for layer in inner["config"]["layers"] if layer["class_name"] == "Lambda")
    inputs = keras.Input((SIZE, SIZE, 3))
    block = keras.Sequential([keras.layers.Identity(name="plain")], name="block")
    nested = keras.Model(inputs, block(inputs), name="nested")
    x = keras.layers.GlobalAveragePooling2D()(nested(inputs))
    model = keras.Model(inputs, models.sigmoid_output(x))
    path = models.save_model(model, folder / "pasted.h5", _metadata())
    with h5py.File(path, "a") as file:
        config = json.loads(file.attrs["model_config"])
        outer = next(layer for layer in config["config"]["layers"] if layer["name"] == "nested")
        block = next(layer for layer in outer["config"]["layers"] if layer["name"] == "block")
        plain = block["config"]["layers"][-1]
        plain.update(class_name="Lambda", config={**evil["config"], "name": "pasted"})
        file.attrs["model_config"] = json.dumps(config)
    return path


def test_a_lambda_pasted_into_a_clean_model_is_live_without_the_check(
    hostile, tmp_path, monkeypatch
):
    hostile_path, marker = hostile
    path = _paste_lambda(hostile_path, tmp_path)
    _unsafe_keras(monkeypatch)
    monkeypatch.setattr(saving, "check_model_file", lambda path: None)
    models.load_model(path)
    assert marker.exists(), "the pasted code runs when nothing inspects the file"


def test_a_lambda_pasted_into_a_clean_model_is_refused(hostile, tmp_path, monkeypatch):
    hostile_path, marker = hostile
    path = _paste_lambda(hostile_path, tmp_path)
    _unsafe_keras(monkeypatch)
    with pytest.raises(ModelFileError, match="carries code \\(a Lambda layer 'pasted'\\)"):
        models.load_model(path)
    assert not marker.exists()


def test_weights_only_files_and_bc_keras_models_pass_the_check(tmp_path):
    model = models.compile_classifier(models.build_baseline_cnn(SIZE, dense_units=4), 1e-3)
    weights = tmp_path / "only.weights.h5"
    model.save_weights(weights)
    saving.check_model_file(weights)
    path = models.save_model(model, tmp_path / "cnn.h5", _metadata())
    with h5py.File(path, "r") as file:
        assert "training_config" in file.attrs  # the compiled model's losses are checked too
    loaded, metadata = models.load_model(path, compile=True)
    assert metadata == _metadata()
    for saved, read in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, read)


class Unregistered(keras.layers.Layer):
    def call(self, inputs):
        return inputs


@keras.saving.register_keras_serializable(package="elsewhere")
class OtherPackage(keras.layers.Layer):
    def call(self, inputs):
        return inputs


def doubled(x):
    return x * 2


@pytest.mark.parametrize(
    ("layer", "found"),
    [
        (Unregistered, "a class 'Unregistered' that is neither Keras' nor bc_keras'"),
        (OtherPackage, "a class 'elsewhere>OtherPackage' that is neither Keras' nor bc_keras'"),
        (
            lambda: keras.layers.Dense(2, activation=doubled),
            "an unregistered function 'doubled' of module 'builtins'",
        ),
    ],
)
def test_unknown_classes_and_functions_are_refused(layer, found, tmp_path):
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layer()(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, models.sigmoid_output(x))
    path = models.save_model(model, tmp_path / "custom.h5", _metadata())
    with pytest.raises(ModelFileError, match=f"carries code \\({found}\\)"):
        models.load_model(path)


def _first_kernel(file: h5py.File) -> str:
    kernels = []
    file["model_weights"].visititems(
        lambda name, item: kernels.append(name) if name.endswith("kernel") else None
    )
    return f"model_weights/{kernels[0]}"


def test_a_model_with_nan_weights_is_refused(tmp_path, capsys):
    model = models.build_baseline_cnn(SIZE, dense_units=4)
    path = models.save_model(model, tmp_path / "nan.h5", _metadata())
    with h5py.File(path, "a") as file:
        kernel = file[_first_kernel(file)]
        kernel[...] = np.full(kernel.shape, np.nan, dtype=kernel.dtype)
    with pytest.raises(ModelFileError, match="has non-finite weights \\(1 variables, e.g. "):
        models.load_model(path)
    code, out, err = run_tool(predict, [path, tmp_path, "--out", tmp_path / "p.csv"], capsys)
    assert_one_line_error(code, err, "non-finite weights", "diverged run", "retrain it")
    assert "predicting" not in out and not (tmp_path / "p.csv").exists()


def test_a_folder_is_named_a_folder(tmp_path, capsys):
    folder = tmp_path / "model.h5"
    folder.mkdir()
    code, _, err = run_tool(predict, [folder, tmp_path], capsys)
    assert_one_line_error(code, err, f"Model file {folder} is a folder; pass the .h5 file")


def test_a_load_failure_gives_its_reason_not_truncation(tmp_path):
    model = models.build_baseline_cnn(SIZE, dense_units=4)
    path = models.save_model(model, tmp_path / "odd.h5", _metadata())
    with h5py.File(path, "a") as file:
        config = json.loads(file.attrs["model_config"])
        dense = next(layer for layer in config["config"]["layers"] if layer["name"] == "dense")
        dense["config"]["units"] = "many"
        file.attrs["model_config"] = json.dumps(config)
    with pytest.raises(ModelFileError) as refused:
        models.load_model(path)
    message = str(refused.value)
    assert message.startswith(f"{path} cannot be loaded: ") and "\n" not in message
    assert "truncated" not in message and "many" in message
    assert message.endswith("; use a .h5 saved by a bc_keras training script with this version "
                            "of Keras")  # fmt: skip


def test_long_reasons_are_cut_between_words():
    text = " ".join(f"word{index}" for index in range(200))
    short = shorten(ValueError(text), limit=50)
    assert short == "word0 word1 word2 word3 word4 word5 word6 word7 ..."
    assert shorten(ValueError("a\n  b")) == "a b"


def _with_model_config(tmp_path, text: str):
    """A bc_keras CNN file whose model_config attribute is `text`."""
    path = models.save_model(models.build_baseline_cnn(SIZE, dense_units=4), tmp_path / "c.h5",
                             _metadata())  # fmt: skip
    with h5py.File(path, "a") as file:
        file.attrs["model_config"] = text
    return path


@pytest.mark.parametrize("wrapper", ["TorchModuleWrapper", "JaxLayer", "FlaxLayer", "TFSMLayer"])
def test_layers_wrapping_code_from_elsewhere_are_refused(wrapper, tmp_path):
    layer = {"module": "keras.layers", "class_name": wrapper, "config": {"name": "wrapped"}}
    config = {"class_name": "Functional", "config": {"name": "m", "layers": [layer]}}
    path = _with_model_config(tmp_path, json.dumps(config))
    with pytest.raises(ModelFileError, match=f"carries code \\(a {wrapper} layer 'wrapped'\\)"):
        models.load_model(path)


def test_a_configuration_nested_too_deeply_or_not_json_is_refused(tmp_path, capsys):
    deep = _with_model_config(tmp_path, '{"config": ' * 100_000 + "0" + "}" * 100_000)
    code, _, err = run_tool(predict, [deep, tmp_path], capsys)
    assert_one_line_error(code, err, "has a model_config nested too deeply to inspect")
    garbage = _with_model_config(tmp_path, "{not json")
    code, _, err = run_tool(predict, [garbage, tmp_path], capsys)
    assert_one_line_error(code, err, "has a model_config that is not JSON")

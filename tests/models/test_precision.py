"""Mixed precision and XLA for every model type: float32 outputs, a finite loss, and a saved
model that reloads computing in float32."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import load_script

from bc_keras import cli, models
from bc_keras.models import simclr, transfer
from bc_keras.models.resnet import build_resnet18

SIZE = 32
BUILDERS = {
    "cnn": lambda: models.build_baseline_cnn(SIZE, dense_units=8),
    "resnet50": lambda: transfer.build_transfer_model("resnet50", SIZE, weights=None),
    "vgg16": lambda: transfer.build_transfer_model("vgg16", SIZE, weights=None),
    "mobilenet": lambda: transfer.build_transfer_model("mobilenet", SIZE, weights=None, alpha=0.25),
    "simclr_classifier": lambda: simclr.build_classifier(build_resnet18(SIZE), SIZE),
    "simclr_encoder": lambda: build_resnet18(SIZE),
}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_mixed_precision_model_trains_and_reloads_in_float32(kind, tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (4, SIZE, SIZE, 3)).astype("float32")
    with models.model_scope(mixed_precision=True):
        model = BUILDERS[kind]()
        assert any(layer.dtype_policy.name == "mixed_float16" for layer in model.layers)
        if kind == "simclr_encoder":
            trainer = simclr.build_simclr_trainer(model)
            views = tf.data.Dataset.from_tensors((images, images[::-1]))
            logs = {
                key: values[-1]
                for key, values in trainer.fit(views, shuffle=False, verbose=0).history.items()
            }
        else:
            models.compile_classifier(model, 1e-3)
            logs = model.train_on_batch(images, np.array([0, 1, 0, 1], "float32"), return_dict=True)
    assert np.isfinite(logs["loss"])
    outputs = model.predict(images, verbose=0)
    assert outputs.dtype == np.float32
    path = models.save_model(model, tmp_path / f"{kind}.h5", {"kind": kind})
    loaded = keras.models.load_model(path, compile=False)
    assert {layer.dtype_policy.name for layer in _all_layers(loaded)} == {"float32"}
    reloaded = loaded.predict(images, verbose=0)
    assert reloaded.dtype == np.float32
    np.testing.assert_allclose(reloaded, outputs, atol=0.05 if kind != "cnn" else 0.02)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


@pytest.mark.slow
def test_jit_compiled_training_runs_and_is_recorded(synthetic_split, tmp_path):
    train_cnn = load_script("train_cnn")
    argv = ["--data", str(synthetic_split), "--image-size", "32", "--batch-size", "8",
            "--epochs", "1", "--jit-compile", "--run-dir", str(tmp_path / "run"),
            "--model-out", str(tmp_path / "cnn.h5")]  # fmt: skip
    assert cli.run_script(train_cnn.main, argv) == 0
    import json

    assert json.loads((tmp_path / "run" / "config.json").read_text())["jit_compile"] is True
    model, _ = models.load_model(tmp_path / "cnn.h5")
    assert model.output.dtype == "float32"

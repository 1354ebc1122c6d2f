"""The backbone registry: every fact about a backbone in one record, and a backbone added by one
record is usable everywhere (config, weights file names, preprocessing, build, titles)."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from bc_keras import backbones, config, experiments
from bc_keras.backbones import mobilenet_v3
from bc_keras.data import apply_preprocess, preprocess_function
from bc_keras.data.pipeline import keep_pixels
from bc_keras.errors import ConfigError
from bc_keras.models import transfer

# A registry record made at run time: MobileNetV3-Small's minimalistic variant (3x3 kernels,
# ReLU, no squeeze-excite), which bc_keras does not register itself.
EXTRA = dataclasses.replace(mobilenet_v3("small", minimalistic=True), name="small_v3")


@pytest.fixture
def extra_backbone():
    backbones.register_backbone(EXTRA)
    yield EXTRA
    del backbones.BACKBONES[EXTRA.name]


def test_keras_applications_names_and_weight_files_of_the_registered_backbones():
    for record in backbones.BACKBONES.values():
        assert callable(getattr(keras.applications, record.application))
        module = getattr(keras.applications, record.preprocess_module)
        # A backbone that preprocesses inside takes the pixels as they are.
        expected = keep_pixels if record.includes_preprocessing else module.preprocess_input
        assert preprocess_function(record.name) is expected
    # The file names keras.applications fetches (keras/src/applications/*.py).
    assert transfer.imagenet_weights_file("mobilenet", 160, 0.25).file_name == (
        "mobilenet_2_5_160_tf_no_top.h5"
    )
    assert transfer.imagenet_weights_file("mobilenet", 48, 1.0).file_name == (
        "mobilenet_1_0_224_tf_no_top.h5"
    )
    resnet = transfer.imagenet_weights_file("resnet50", 64)
    assert resnet.url.endswith("resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert resnet.file_hash == "4d473c1dd8becc155b73f8504c6f6626"


def test_an_unknown_backbone_or_alpha_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown backbone 'nope'; choose one of resnet50"):
        config.TransferConfig(data="d", backbone="nope")
    with pytest.raises(
        ConfigError,
        match="applies to mobilenet, mobilenet_v3_small, mobilenet_v3_large only; drop it for vgg16",
    ):
        config.TransferConfig(data="d", backbone="vgg16", alpha=0.5)


def test_one_record_adds_a_backbone_to_config_preprocessing_build_and_titles(extra_backbone):
    # Config: a valid choice, its alpha checked, the robust recipe's backbone preprocessing.
    robust = config.TransferConfig(data="d", backbone="small_v3", recipe="robust", alpha=0.75)
    assert robust.preprocess == "small_v3" and robust.alpha == 0.75
    assert robust.model_out == "models/transfer_model_small_v3_breast_cancer.h5"
    assert "small_v3" in config.BACKBONES
    # Preprocessing: inside the model (pixels in [0, 255] as they are).
    assert preprocess_function("small_v3") is keep_pixels
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(apply_preprocess(pixels, "small_v3"), pixels)
    # Weights: the file name and hash from the record (Keras has alpha 1.0 alone for it).
    weights = transfer.imagenet_weights_file("small_v3", 224, 1.0)
    assert weights.file_name == "weights_mobilenet_v3_small_minimalistic_224_1.0_float_no_top_v2.h5"
    assert weights.url.endswith("/keras-applications/mobilenet_v3/" + weights.file_name)
    assert weights.file_hash == "cde8136e733e811080d9fcd8a252f7e4"
    with pytest.raises(transfer.WeightsError, match=r"alpha in \(1.0,\) only"):
        transfer.imagenet_weights_file("small_v3", 224, 0.75)
    # Build: the record's builder and options (minimalistic: ReLU, no squeeze-excite gates).
    model = transfer.build_transfer_model("small_v3", 32, weights="none", alpha=0.75)
    inner = transfer.get_backbone(model)
    assert not any(isinstance(layer, keras.layers.Multiply) for layer in inner.layers)
    probabilities = model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0)
    assert probabilities.shape == (2, 1) and np.all((probabilities > 0) & (probabilities < 1))
    assert transfer.get_backbone(model).name == transfer.BACKBONE_LAYER_NAME
    # Titles of figures and tables.
    experiment = experiments.experiment_of(robust)
    assert experiment.title_for("small_v3") == "Transfer MobileNetV3-Small (minimalistic)"
    assert experiment.label_for("small_v3") == "transfer small_v3"


def test_a_backbone_name_is_spelled_in_the_registry_alone():
    from pathlib import Path

    package = Path(backbones.__file__).parent
    holders = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if any(f'"{name}"' in path.read_text() for name in backbones.BACKBONES)
    )
    assert holders == ["backbones.py"]

"""The backbone registry: every fact about a backbone in one record, and a backbone added by one
record is usable everywhere (config, weights file names, preprocessing, build, titles)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from bc_keras import backbones, config, experiments
from bc_keras.backbones import Backbone
from bc_keras.data import preprocess_function
from bc_keras.errors import ConfigError
from bc_keras.models import transfer

EXTRA = Backbone(
    name="small_v3",
    title="MobileNetV3-Small (minimalistic)",
    application="MobileNetV3Small",
    preprocess_module="mobilenet_v3",
    weights_file="weights_mobilenet_v3_small_minimalistic_{alpha}_{size}_tf_no_top.h5",
    weights_folder="mobilenet_v3/",
    alphas=((1.0, "1.0"), (0.75, "0.75")),
    builder_options={"minimalistic": True, "include_preprocessing": False},
)


@pytest.fixture
def extra_backbone():
    backbones.register_backbone(EXTRA)
    yield EXTRA
    del backbones.BACKBONES[EXTRA.name]


def test_keras_applications_names_and_weight_files_of_the_registered_backbones():
    for record in backbones.BACKBONES.values():
        assert callable(getattr(keras.applications, record.application))
        module = getattr(keras.applications, record.preprocess_module)
        assert preprocess_function(record.name) is module.preprocess_input
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
    with pytest.raises(ConfigError, match="applies to mobilenet only; drop it for vgg16"):
        config.TransferConfig(data="d", backbone="vgg16", alpha=0.5)


def test_one_record_adds_a_backbone_to_config_preprocessing_build_and_titles(extra_backbone):
    # Config: a valid choice, its alpha checked, the robust recipe's backbone preprocessing.
    robust = config.TransferConfig(data="d", backbone="small_v3", recipe="robust", alpha=0.75)
    assert robust.preprocess == "small_v3"
    assert robust.model_out == "models/transfer_model_small_v3_breast_cancer.h5"
    assert "small_v3" in config.BACKBONES
    # Preprocessing: the record's keras.applications module.
    function = preprocess_function("small_v3")
    assert function is keras.applications.mobilenet_v3.preprocess_input
    # Weights: the file name from the record's pattern.
    weights = transfer.imagenet_weights_file("small_v3", 224, 0.75)
    assert weights.file_name == "weights_mobilenet_v3_small_minimalistic_0.75_224_tf_no_top.h5"
    # Build: the record's builder and options, with random weights.
    model = transfer.build_transfer_model("small_v3", 32, weights="none", alpha=0.75)
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
        if any(f'"{name}"' in path.read_text() for name in ("resnet50", "vgg16", "mobilenet"))
    )
    assert holders == ["backbones.py"]

"""Tests of the transfer-learning backbones, their weights, the head and the two phases."""

import shutil
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from bc_keras import models
from bc_keras.models import transfer

IMAGE_SIZE = 32
KERAS3_NAMES = {"depthwise_kernel": "kernel"}
# The big backbones take tens of seconds to train even at 32 px on a CPU.
ALL_BACKBONES = [
    pytest.param("resnet50", marks=pytest.mark.slow),
    pytest.param("vgg16", marks=pytest.mark.slow),
    "mobilenet",
]


def alpha_for(backbone):
    return 0.25 if backbone == "mobilenet" else 1.0


def build(backbone, weights=None, **kwargs):
    with models.model_scope():
        return transfer.build_transfer_model(
            backbone, IMAGE_SIZE, weights=weights, alpha=alpha_for(backbone), **kwargs
        )


def tiny_batch(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, (4, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    return images, np.array([0, 1, 0, 1], dtype="float32")


def weights_by_path(layer):
    return {variable.path: np.array(variable.numpy()) for variable in layer.weights}


def offline_get_file(*args, **kwargs):
    # What keras.utils.get_file raises when the URL cannot be fetched.
    raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- offline")


def assert_equal_to_file(backbone_model, path):
    """Every array of a legacy no-top .h5 equals the backbone weight of the same name."""
    compared = 0
    with h5py.File(path, "r") as file:
        for layer_name in file.attrs["layer_names"]:
            layer_name = layer_name.decode()
            group = file[layer_name]
            names = [name.decode() for name in group.attrs["weight_names"]]
            if not names:
                continue
            layer = backbone_model.get_layer(layer_name)
            assert len(layer.weights) == len(names), layer_name
            # Keras loads a layer's arrays in order; Keras 3 renamed "depthwise_kernel" "kernel".
            for variable, name in zip(layer.weights, names, strict=True):
                short = name.split("/")[-1].split(":")[0]  # "conv1_bn/gamma:0" -> "gamma"
                assert KERAS3_NAMES.get(short, short) == variable.name, name
                np.testing.assert_array_equal(variable.numpy(), group[name][()], err_msg=name)
                compared += 1
    assert compared > 50  # MobileNet has 137 arrays; a vacuous comparison must fail.


@pytest.mark.parametrize("backbone", ALL_BACKBONES)
def test_each_backbone_builds_at_smallest_size(backbone):
    model = build(backbone)
    assert model.output_shape == (None, 1)
    assert model.get_layer(transfer.BACKBONE_LAYER_NAME).input_shape == (None, 32, 32, 3)
    assert [layer.name for layer in model.layers[2:]] == [
        "global_average_pooling",
        "dense",
        models.OUTPUT_NAME,
    ]
    assert model.get_layer("dense").units == 128


def test_too_small_image_size_is_refused():
    with pytest.raises(ValueError, match="at least 32"):
        transfer.build_backbone("mobilenet", 16, weights=None)


def batchnorm_paths(backbone_model):
    return {
        variable.path
        for layer in backbone_model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for variable in layer.weights
    }


def changed_paths(after, before, paths):
    return {path for path in paths if not np.array_equal(after[path], before[path])}


@pytest.mark.parametrize("backbone", ALL_BACKBONES)
def test_phase1_trains_head_only_and_phase2_fine_tunes_backbone(backbone):
    # Random weights (--weights none), so BatchNorm trains too: no statistics to keep.
    keras.utils.set_random_seed(0)
    model = build(backbone)
    backbone_model = transfer.get_backbone(model)
    images, labels = tiny_batch()

    transfer.start_phase(model, transfer.PHASE_FROZEN)
    assert model.optimizer.learning_rate.numpy() == pytest.approx(1e-3)
    assert backbone_model.trainable_weights == []
    before = weights_by_path(backbone_model)
    head_before = weights_by_path(model.get_layer("dense"))
    model.fit(images, labels, batch_size=2, epochs=1, verbose=0)
    after_phase1 = weights_by_path(backbone_model)
    assert changed_paths(after_phase1, before, before) == set()  # moving statistics included
    head_after = weights_by_path(model.get_layer("dense"))
    assert changed_paths(head_after, head_before, head_before) != set()

    transfer.start_phase(model, transfer.PHASE_FINE_TUNE, freeze_batchnorm=False)
    assert model.optimizer.learning_rate.numpy() == pytest.approx(1e-4)
    model.fit(images, labels, batch_size=2, epochs=1, verbose=0)
    after = weights_by_path(backbone_model)
    trainable = {variable.path for variable in backbone_model.trainable_weights}
    assert changed_paths(after, before, trainable) == trainable


@pytest.mark.parametrize("backbone", ALL_BACKBONES)
def test_unfrozen_backbone_keeps_batchnorm_frozen(backbone):
    model = build(backbone)
    backbone_model = transfer.get_backbone(model)
    transfer.start_phase(model, transfer.PHASE_FINE_TUNE)
    trainable = {variable.path for variable in backbone_model.trainable_weights}
    batchnorm = batchnorm_paths(backbone_model)
    assert (len(batchnorm) > 0) == (backbone != "vgg16")
    assert trainable == set(weights_by_path(backbone_model)) - batchnorm
    transfer.start_phase(model, transfer.PHASE_FINE_TUNE, freeze_batchnorm=False)
    gamma_beta = {path for path in batchnorm if "moving_" not in path}
    assert {variable.path for variable in backbone_model.trainable_weights} >= gamma_beta


def test_fine_tuning_pretrained_backbone_keeps_batchnorm_in_inference_mode(mobilenet_weights):
    keras.utils.set_random_seed(0)
    model = build("mobilenet", weights=mobilenet_weights)
    backbone_model = transfer.get_backbone(model)
    images, labels = tiny_batch()
    before = weights_by_path(backbone_model)
    transfer.start_phase(model, transfer.PHASE_FINE_TUNE)
    model.fit(images, labels, batch_size=2, epochs=1, verbose=0)
    after = weights_by_path(backbone_model)
    batchnorm = batchnorm_paths(backbone_model)
    # Every convolution is fine-tuned, while the ImageNet BatchNorm statistics stay as they were.
    assert changed_paths(after, before, set(after) - batchnorm) == set(after) - batchnorm
    assert changed_paths(after, before, batchnorm) == set()


def test_start_phase_rejects_unknown_phase():
    with pytest.raises(ValueError, match="phase must be 1"):
        transfer.start_phase(build("mobilenet"), 3)


def test_weights_path_loads_the_real_mobilenet_file(mobilenet_weights):
    backbone_model = transfer.build_backbone(
        "mobilenet", IMAGE_SIZE, weights=str(mobilenet_weights), alpha=0.25
    )
    assert_equal_to_file(backbone_model, mobilenet_weights)


def test_imagenet_weights_come_from_the_keras_cache(tmp_path, monkeypatch, mobilenet_weights):
    (tmp_path / "models").mkdir()
    shutil.copy(mobilenet_weights, tmp_path / "models" / mobilenet_weights.name)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    # 32 px has no weights of its own: like Keras, the 224 file is used. No download allowed.
    backbone_model = transfer.build_backbone(
        "mobilenet", IMAGE_SIZE, alpha=0.25, download=offline_get_file
    )
    assert_equal_to_file(backbone_model, mobilenet_weights)


@pytest.mark.parametrize("backbone", transfer.BACKBONES)
def test_offline_imagenet_error_names_file_and_folder(tmp_path, monkeypatch, backbone):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    calls = []

    def download(*args, **kwargs):
        calls.append((args, kwargs))
        offline_get_file()

    expected = transfer.imagenet_weights_file(backbone, IMAGE_SIZE, alpha_for(backbone))
    with pytest.raises(transfer.WeightsError) as raised:
        transfer.build_backbone(
            backbone, IMAGE_SIZE, weights="imagenet", alpha=alpha_for(backbone), download=download
        )
    message = str(raised.value)
    assert message.startswith(f"ImageNet weights for {backbone} are not available offline")
    assert f"put {expected.file_name} in {tmp_path / 'models'} " in message
    assert expected.url in message and "--weights PATH" in message and "--weights none" in message
    # The download was asked for the same file, into the same folder.
    (file_name, url), options = calls[0]
    assert (file_name, url) == (expected.file_name, expected.url)
    assert options["cache_dir"] == str(tmp_path) and options["cache_subdir"] == "models"


def test_imagenet_file_names_match_keras_applications():
    names = {
        (backbone, size, alpha): transfer.imagenet_weights_file(backbone, size, alpha).file_name
        for backbone, size, alpha in [
            ("resnet50", 224, 1.0),
            ("vgg16", 32, 1.0),
            ("mobilenet", 224, 1.0),
            ("mobilenet", 160, 0.75),
            ("mobilenet", 128, 0.5),
            ("mobilenet", 32, 0.25),
            ("mobilenet", 200, 0.25),
        ]
    }
    assert list(names.values()) == [
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "mobilenet_1_0_224_tf_no_top.h5",
        "mobilenet_7_5_160_tf_no_top.h5",
        "mobilenet_5_0_128_tf_no_top.h5",
        "mobilenet_2_5_224_tf_no_top.h5",
        "mobilenet_2_5_224_tf_no_top.h5",
    ]
    assert transfer.imagenet_weights_file("resnet50", 224).url == (
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )
    with pytest.raises(transfer.WeightsError, match="alpha in"):
        transfer.imagenet_weights_file("mobilenet", 224, 0.3)


def test_keras_models_dir_follows_keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert transfer.keras_models_dir() == tmp_path / "models"
    # Keras falls back to /tmp/.keras when its home folder is not writable.
    assert transfer.keras_models_dir(tmp_path / "missing") == Path("/tmp/.keras/models")
    monkeypatch.delenv("KERAS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".keras").mkdir()  # Keras creates it on import
    assert transfer.keras_models_dir() == tmp_path / ".keras" / "models"


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ValueError, match="choose one of resnet50, vgg16, mobilenet"):
        transfer.build_transfer_model("resnet18", IMAGE_SIZE, weights=None)
    with pytest.raises(ValueError, match="applies to mobilenet, mobilenet_v3_small, .* only"):
        transfer.build_transfer_model("vgg16", IMAGE_SIZE, weights=None, alpha=0.5)


def test_weights_path_errors_name_the_file(tmp_path):
    missing = tmp_path / "nothing.h5"
    with pytest.raises(transfer.WeightsError, match=f"{missing} does not exist"):
        transfer.build_backbone("mobilenet", IMAGE_SIZE, weights=missing, alpha=0.25)
    not_hdf5 = tmp_path / "text.h5"
    not_hdf5.write_text("not weights")
    with pytest.raises(transfer.WeightsError, match="not an HDF5"):
        transfer.build_backbone("mobilenet", IMAGE_SIZE, weights=not_hdf5, alpha=0.25)
    # A model of another architecture: a baseline CNN saved as .h5.
    other = tmp_path / "cnn.h5"
    models.build_baseline_cnn(IMAGE_SIZE).save(other)
    with pytest.raises(transfer.WeightsError) as raised:
        transfer.build_backbone("mobilenet", IMAGE_SIZE, weights=other, alpha=0.25)
    message = str(raised.value)
    assert "cnn.h5" in message and "does not match the mobilenet backbone" in message
    assert "no-top mobilenet weights" in message and "alpha 0.25" in message


def test_a_weights_folder_is_named_a_folder(tmp_path):
    folder = tmp_path / "weights.h5"
    folder.mkdir()
    with pytest.raises(transfer.WeightsError, match=f"Weights file {folder} is a folder; pass"):
        transfer.build_backbone("mobilenet", IMAGE_SIZE, weights=folder, alpha=0.25)


def test_non_finite_weights_are_refused(tmp_path):
    backbone = transfer.build_backbone("mobilenet", IMAGE_SIZE, weights=None, alpha=0.25)
    path = tmp_path / "diverged.weights.h5"
    backbone.save_weights(path)
    transfer.build_backbone("mobilenet", IMAGE_SIZE, weights=path, alpha=0.25)  # finite: loads
    with h5py.File(path, "a") as file:
        kernels = []  # the convolution kernels (4-D datasets)
        file.visititems(
            lambda name, item: kernels.append(name) if getattr(item, "ndim", 0) == 4 else None
        )
        file[kernels[0]][...] = np.inf
    with pytest.raises(transfer.WeightsError) as refused:
        transfer.build_backbone("mobilenet", IMAGE_SIZE, weights=path, alpha=0.25)
    assert str(refused.value).startswith(
        f"Weights file {path} holds non-finite weights (1 variables, e.g. "
    )
    assert "diverged run" in str(refused.value)


def test_weights_of_another_width_do_not_match(mobilenet_weights):
    with pytest.raises(transfer.WeightsError, match="mobilenet_2_5_224_tf_no_top.h5 .* alpha 0.5"):
        transfer.build_backbone("mobilenet", IMAGE_SIZE, weights=mobilenet_weights, alpha=0.5)


@pytest.mark.parametrize("backbone", ALL_BACKBONES)
def test_save_then_plain_keras_load_gives_same_predictions(tmp_path, backbone):
    import bc_keras  # noqa: F401  (what a user does before keras.models.load_model)

    keras.utils.set_random_seed(1)
    model = build(backbone)
    transfer.start_phase(model, transfer.PHASE_FINE_TUNE)
    images, _ = tiny_batch(seed=2)
    path = models.save_model(model, tmp_path / f"{backbone}.h5", {"backbone": backbone})
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
    assert models.read_metadata(path) == {"backbone": backbone}
    # The fine-tuning state travels with the file: BatchNorm still frozen, the rest trainable.
    loaded_backbone = transfer.get_backbone(loaded)
    assert len(loaded_backbone.trainable_weights) == len(
        transfer.get_backbone(model).trainable_weights
    )

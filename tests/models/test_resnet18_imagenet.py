"""`--encoder-init`: keras-hub's ResNet-18 weights mapped onto the project's encoder, tested on a
local preset saved from a randomly initialised keras-hub ResNet-18 (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import load_script

from bc_keras import models, runs
from bc_keras.config import PretrainConfig
from bc_keras.config.options import RECIPE_VALUES
from bc_keras.config.values import ENCODER_INIT_IMAGENET, ENCODER_INIT_RANDOM
from bc_keras.errors import ConfigError, WeightsError
from bc_keras.experiments import simclr as simclr_experiment
from bc_keras.models import pretrained
from bc_keras.models.resnet import INPUT_NORMALIZATION_NAME, build_resnet18

# ImageNet's mean and standard deviation, as keras-hub's converter applies them to pixels.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CONVERTER_SCALE = [1 / 255 / s for s in STD]
CONVERTER_OFFSET = [-m / s for m, s in zip(MEAN, STD, strict=True)]


def _offline(keras_hub):
    raise ConnectionError("Failed to resolve 'api.kaggle.com'")


def _hub_backbone(keras_hub, seed: int = 0):
    """A keras-hub ResNet-18 with the preset's config, random weights and random BatchNorm
    statistics (so inference-mode BatchNorm is not the identity)."""
    backbone = keras_hub.models.ResNetBackbone(
        image_shape=(None, None, 3), **pretrained.RESNET18_HUB_CONFIG
    )
    rng = np.random.default_rng(seed)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = (w.shape for w in layer.get_weights())
            values = (rng.uniform(0.5, 1.5, gamma), rng.normal(0, 0.1, beta),
                      rng.normal(0, 0.1, mean), rng.uniform(0.5, 2.0, variance))  # fmt: skip
            layer.set_weights(list(values))
    return backbone


@pytest.fixture(scope="module")
def keras_hub():
    return pytest.importorskip("keras_hub")


@pytest.fixture(scope="module")
def hub_preset(keras_hub, tmp_path_factory):
    """(preset folder with an ImageNet image converter, the keras-hub backbone, its converter)."""
    folder = tmp_path_factory.mktemp("hub") / "resnet_18_random"
    backbone = _hub_backbone(keras_hub)
    backbone.save_to_preset(str(folder))
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(224, 224), scale=CONVERTER_SCALE, offset=CONVERTER_OFFSET
    )
    converter.save_to_preset(str(folder))
    return folder, backbone, converter


def test_the_hub_config_is_the_imagenet_presets_architecture(keras_hub):
    """The config checked in a preset folder builds a backbone with the parameter count
    keras-hub lists for resnet_18_imagenet, and the cached folder's handle is keras-hub's."""
    record = keras_hub.models.ResNetBackbone.presets[pretrained.IMAGENET_PRESET]
    assert record["kaggle_handle"] == f"kaggle://{pretrained.IMAGENET_PRESET_HANDLE}"
    backbone = keras_hub.models.ResNetBackbone(**pretrained.RESNET18_HUB_CONFIG)
    assert backbone.count_params() == record["metadata"]["params"] == 11_186_112
    assert build_resnet18(224).count_params() == backbone.count_params()


def test_every_weighted_hub_layer_has_its_encoder_layer(keras_hub):
    backbone = keras_hub.models.ResNetBackbone(**pretrained.RESNET18_HUB_CONFIG)
    hub_names = [layer.name for layer in backbone.layers if layer.weights]
    mapped = [pretrained.encoder_layer_name(name) for name in hub_names]
    encoder = build_resnet18(32)
    assert sorted(mapped) == sorted(layer.name for layer in encoder.layers if layer.weights)
    assert len(mapped) == 40  # stem conv + BN, 8 blocks x 2 (conv + BN), 3 projections x 2
    assert pretrained.encoder_layer_name("conv1_conv") == "stem_conv"
    assert pretrained.encoder_layer_name("stack1_block0_0_bn") == "stage3_block1_projection_bn"
    assert pretrained.encoder_layer_name("stack3_block1_2_conv") == "stage5_block2_conv2"
    assert pretrained.encoder_layer_name("pool1_pool") is None


def test_a_preset_gives_the_encoder_keras_hubs_features(hub_preset, tmp_path):
    folder, backbone, converter = hub_preset
    preset = pretrained.load_preset_weights(folder)
    # The converter's scale and offset, as applied to the [0, 1] images the encoder gets.
    np.testing.assert_allclose(preset.input_scale, [255 * s for s in CONVERTER_SCALE])
    np.testing.assert_allclose(preset.input_offset, CONVERTER_OFFSET)
    # At the converter's own size, so that its resizing leaves the images as they are.
    encoder = pretrained.build_encoder(224, preset)
    pixels = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3)).astype("float32")
    # keras-hub: converter then backbone, pooled as the encoder pools its last feature map.
    expected = keras.ops.convert_to_numpy(backbone(converter(pixels))).mean(axis=(1, 2))
    features = encoder.predict(pixels / 255.0, verbose=0)
    assert np.abs(features - expected).max() < 1e-4
    assert np.abs(expected).max() > 0.1  # not a trivially zero comparison
    # The stem kernel is keras-hub's, value for value.
    np.testing.assert_array_equal(
        encoder.get_layer("stem_conv").get_weights()[0],
        backbone.get_layer("conv1_conv").get_weights()[0],
    )
    # Keras layers only: it saves to .h5 and loads with the safe loader, same features.
    path = models.save_model(encoder, tmp_path / "encoder.h5", {"kind": "simclr_encoder"})
    loaded, _ = models.load_model(path)
    assert {type(layer).__module__.split(".")[0] for layer in loaded.layers} == {"keras"}
    np.testing.assert_allclose(loaded.predict(pixels / 255.0, verbose=0), features, atol=1e-6)


def test_a_preset_without_a_converter_takes_the_images_as_they_are(keras_hub, tmp_path):
    backbone = _hub_backbone(keras_hub, seed=2)
    backbone.save_to_preset(str(tmp_path / "preset"))
    preset = pretrained.load_preset_weights(tmp_path / "preset")
    assert (preset.input_scale, preset.input_offset) == (None, None)
    encoder = pretrained.build_encoder(32, preset)
    assert INPUT_NORMALIZATION_NAME not in [layer.name for layer in encoder.layers]
    images = np.random.default_rng(3).random((2, 32, 32, 3), dtype=np.float32)
    expected = keras.ops.convert_to_numpy(backbone(images)).mean(axis=(1, 2))
    assert np.abs(encoder.predict(images, verbose=0) - expected).max() < 1e-4


def test_a_preset_with_non_finite_weights_or_a_broken_converter_is_refused(keras_hub, tmp_path):
    backbone = _hub_backbone(keras_hub, seed=4)
    kernel = backbone.get_layer("stack2_block1_2_conv").get_weights()[0]
    kernel[0, 0, 0, 0] = np.nan
    backbone.get_layer("stack2_block1_2_conv").set_weights([kernel])
    backbone.save_to_preset(str(tmp_path / "diverged"))
    with pytest.raises(WeightsError, match="non-finite weights .*stage4_block2_conv2"):
        pretrained.load_preset_weights(tmp_path / "diverged")
    _hub_backbone(keras_hub).save_to_preset(str(tmp_path / "converter"))
    config = {"config": {"scale": [1.0, 2.0], "offset": 0.0}}
    (tmp_path / "converter" / "image_converter.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="unusable image converter .*1 or 3 finite numbers"):
        pretrained.load_preset_weights(tmp_path / "converter")


def test_the_cached_imagenet_preset_is_read_without_the_network(hub_preset, tmp_path):
    folder, backbone, _ = hub_preset
    cache = tmp_path / "kagglehub"
    cached = pretrained.imagenet_preset_dir(cache)
    assert cached == cache / "models" / "keras/resnetv1/keras/resnet_18_imagenet/3"
    cached.parent.mkdir(parents=True)
    cached.symlink_to(folder)
    preset = pretrained.load_preset_weights(ENCODER_INIT_IMAGENET, cache_dir=cache,
                                            download=_offline)  # fmt: skip
    np.testing.assert_array_equal(
        preset.weights["stage5_block2_conv2"][0],
        backbone.get_layer("stack3_block1_2_conv").get_weights()[0],
    )
    assert preset.source == str(cached)


def test_imagenet_not_cached_goes_through_keras_hubs_own_loading(hub_preset, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    """The download branch: keras-hub's from_preset of the backbone and of its converter (here
    pointed at the local folder instead of the Kaggle handle)."""
    folder, backbone, _ = hub_preset
    monkeypatch.setattr(pretrained, "IMAGENET_PRESET", str(folder))
    preset = pretrained.load_preset_weights(ENCODER_INIT_IMAGENET, cache_dir=tmp_path / "empty")
    assert preset.source == f"keras-hub preset {folder}"
    np.testing.assert_allclose(preset.input_scale, [255 * s for s in CONVERTER_SCALE], rtol=1e-6)
    np.testing.assert_array_equal(
        preset.weights["stem_bn"][3], backbone.get_layer("conv1_bn").get_weights()[3]
    )


def test_imagenet_offline_and_not_cached_is_one_line_naming_what_to_place_where(
    keras_hub, tmp_path
):
    cache = tmp_path / "empty_cache"
    with pytest.raises(WeightsError) as error:
        pretrained.load_preset_weights(ENCODER_INIT_IMAGENET, cache_dir=cache, download=_offline)
    message = str(error.value)
    assert "\n" not in message
    assert "(keras-hub preset 'resnet_18_imagenet') is not available offline" in message
    assert f"to {cache}/models/keras/resnetv1/keras/resnet_18_imagenet/3," in message
    assert "--encoder-init PATH" in message and "--encoder-init random" in message
    assert "Failed to resolve" in message


def test_pretraining_offline_without_the_preset_stops_before_the_run_folder(
    keras_hub, synthetic_split, tmp_path, monkeypatch
):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(pretrained, "_download_imagenet", _offline)
    run_dir = tmp_path / "run"
    argv = ["pretrain", "--data", str(synthetic_split), "--image-size", "32", "--run-dir",
            str(run_dir), "--model-out", str(tmp_path / "encoder.h5")]  # fmt: skip
    # The report recipe's default is the ImageNet start.
    with pytest.raises(WeightsError, match=f"to {tmp_path / 'empty_cache'}/models/"):
        load_script("train_simclr").main(argv)
    assert not run_dir.exists()


def _write_config(folder: Path, **changes) -> Path:
    folder.mkdir(parents=True)
    values = {"image_shape": [None, None, 3], **pretrained.RESNET18_HUB_CONFIG}
    config = {"registered_name": pretrained.BACKBONE_CLASS, "config": values}
    for key, value in changes.items():
        (config if key == "registered_name" else values)[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.weights.h5").write_bytes(b"stand-in")
    return folder


@pytest.mark.parametrize(
    "changes, expected",
    [({"registered_name": "keras_hub>BertBackbone"},
      "holds a keras_hub>BertBackbone model, not a keras-hub ResNetBackbone"),
     ({"block_type": "bottleneck_block", "stackwise_num_blocks": [3, 4, 6, 3]},
      "with stackwise_num_blocks=[3, 4, 6, 3], not ResNet-18's [2, 2, 2, 2]"),
     ({"block_type": "basic_block_vd"}, "with block_type='basic_block_vd'"),
     ({"use_pre_activation": True}, "with use_pre_activation=True"),
     ({"image_shape": [None, None, 1]}, "for inputs of shape [None, None, 1], not RGB images")],
)  # fmt: skip
def test_a_folder_that_is_not_a_resnet18_preset_is_one_line(tmp_path, changes, expected):
    folder = _write_config(tmp_path / "preset", **changes)
    with pytest.raises(WeightsError, match="pass a keras-hub ResNet-18 preset folder") as error:
        pretrained.check_preset_folder(folder)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_missing_or_incomplete_folders_are_one_line(tmp_path):
    with pytest.raises(WeightsError, match="/no/such does not exist"):
        pretrained.check_preset_folder("/no/such")
    (tmp_path / "file.h5").write_bytes(b"x")
    with pytest.raises(WeightsError, match="file.h5 is a file"):
        pretrained.check_preset_folder(tmp_path / "file.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="empty has no config.json"):
        pretrained.check_preset_folder(tmp_path / "empty")
    folder = _write_config(tmp_path / "no_weights")
    (folder / "model.weights.h5").unlink()
    with pytest.raises(WeightsError, match="no_weights has no model.weights.h5"):
        pretrained.check_preset_folder(folder)
    (folder / "model.weights.h5").write_bytes(b"x")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="config.json is unreadable"):
        pretrained.check_preset_folder(folder)
    # A well-formed config passes and its values come back.
    assert pretrained.check_preset_folder(_write_config(tmp_path / "good"))["block_type"] == (
        "basic_block"
    )


def test_without_keras_hub_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "keras_hub_installed", lambda: False)
    for start in (ENCODER_INIT_IMAGENET, str(tmp_path)):
        with pytest.raises(ConfigError, match=r'pip install "bc_keras\[hub\]"'):
            pretrained.load_preset_weights(start)


def test_a_random_start_never_reads_a_preset(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a random start read a preset")

    monkeypatch.setattr(pretrained, "load_preset_weights", refuse)
    config = PretrainConfig(data="d", encoder_init="Random")
    assert config.encoder_init == ENCODER_INIT_RANDOM
    assert simclr_experiment.encoder_start(config) is None


def test_the_recipes_start_from_imagenet_and_a_flag_overrides_them():
    assert RECIPE_VALUES["report"]["encoder_init"] == ENCODER_INIT_IMAGENET
    assert RECIPE_VALUES["robust"]["encoder_init"] == ENCODER_INIT_IMAGENET
    train_simclr = load_script("train_simclr")
    assert train_simclr.parse_args(["pretrain", "--data", "d"]).encoder_init == "imagenet"
    parsed = train_simclr.parse_args(["pretrain", "--data", "d", "--encoder-init", "ImageNet"])
    assert parsed.encoder_init == "imagenet"
    parsed = train_simclr.parse_args(["pretrain", "--data", "d", "--encoder-init", "hub/r18"])
    assert parsed.encoder_init == "hub/r18"
    with pytest.raises(ConfigError, match="--encoder-init 3 is not text"):
        PretrainConfig(data="d", encoder_init=3)


@pytest.mark.slow
def test_pretraining_from_a_preset_starts_from_its_weights(
    hub_preset, synthetic_split, tmp_path, monkeypatch
):
    folder, backbone, _ = hub_preset
    built = []
    original = pretrained.build_encoder

    def spy(*args, **kwargs):
        encoder = original(*args, **kwargs)
        built.append(encoder.get_layer("stage4_block1_conv1").get_weights()[0].copy())
        return encoder

    monkeypatch.setattr(pretrained, "build_encoder", spy)
    run_dir, encoder_path = tmp_path / "run", tmp_path / "encoder.h5"
    argv = ["pretrain", "--data", str(synthetic_split), "--encoder-init", str(folder),
            "--image-size", "32", "--batch-size", "64", "--epochs", "1", "--run-dir",
            str(run_dir), "--model-out", str(encoder_path)]  # fmt: skip
    assert load_script("train_simclr").main(argv) == 0
    preset_kernel = backbone.get_layer("stack2_block0_1_conv").get_weights()[0]
    assert len(built) == 1
    np.testing.assert_array_equal(built[0], preset_kernel)
    encoder, metadata = models.load_model(encoder_path)
    assert metadata["encoder_init"] == str(folder)
    assert json.loads((run_dir / runs.CONFIG_FILE).read_text())["encoder_init"] == str(folder)
    # It trained from there: the kernel moved, but not far in one epoch.
    trained = encoder.get_layer("stage4_block1_conv1").get_weights()[0]
    assert not np.array_equal(trained, preset_kernel)
    assert np.corrcoef(trained.ravel(), preset_kernel.ravel())[0, 1] > 0.9
    assert INPUT_NORMALIZATION_NAME in [layer.name for layer in encoder.layers]
    card = tmp_path / "encoder.card.md"
    assert f"- start: the keras-hub preset folder {folder}" in card.read_text()

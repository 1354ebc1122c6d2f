"""Tests for the ResNet-18 encoder."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from bc_keras.models import save_model
from bc_keras.models.resnet import INPUT_NORMALIZATION_NAME, apply_basic_block, build_resnet18

# torchvision's resnet18 has 11,689,512 parameters, of which its 1000-way classifier holds
# 512 * 1000 + 1000; what remains is the encoder's trainable weights.
TORCHVISION_RESNET18_WITHOUT_FC = 11_689_512 - (512 * 1000 + 1000)


def expected_resnet18_parameters() -> tuple[int, int]:
    """(trainable, non-trainable) parameters of ResNet-18 without its classifier, by hand.

    Convolutions have no bias (BatchNorm follows each); a BatchNorm of c channels has c scales
    and c offsets (trainable) and c moving means and c moving variances (not trainable).
    """
    trainable = 7 * 7 * 3 * 64 + 2 * 64  # stem convolution + its BatchNorm
    moving = 2 * 64
    in_channels = 64
    for out_channels in (64, 128, 256, 512):
        for block in range(2):
            block_in = in_channels if block == 0 else out_channels
            trainable += 3 * 3 * block_in * out_channels + 2 * out_channels  # conv1 + bn1
            trainable += 3 * 3 * out_channels * out_channels + 2 * out_channels  # conv2 + bn2
            moving += 2 * out_channels * 2
            if block == 0 and block_in != out_channels:
                trainable += block_in * out_channels + 2 * out_channels  # 1x1 projection + bn
                moving += 2 * out_channels
        in_channels = out_channels
    return trainable, moving


def test_resnet18_output_is_a_512_vector():
    encoder = build_resnet18(image_size=32)
    assert encoder.name == "resnet18_encoder"
    assert encoder.output.shape == (None, 512)
    images = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    embeddings = encoder.predict(images, verbose=0)
    assert embeddings.shape == (2, 512)
    # Pooled ReLU activations are non-negative.
    assert (embeddings >= 0).all()


def test_resnet18_parameter_count_matches_hand_computation():
    encoder = build_resnet18(image_size=224)
    trainable, moving = expected_resnet18_parameters()
    assert trainable == TORCHVISION_RESNET18_WITHOUT_FC
    trainable_count = sum(int(np.prod(w.shape)) for w in encoder.trainable_weights)
    moving_count = sum(int(np.prod(w.shape)) for w in encoder.non_trainable_weights)
    assert trainable_count == trainable
    assert moving_count == moving
    assert encoder.count_params() == trainable + moving
    # The parameter count does not depend on the input size.
    assert build_resnet18(image_size=64).count_params() == encoder.count_params()


def test_resnet18_has_eight_basic_blocks_and_three_projection_shortcuts():
    encoder = build_resnet18(image_size=32)
    names = [layer.name for layer in encoder.layers]
    assert sum(name.endswith("_add") for name in names) == 8
    projections = sorted(name for name in names if name.endswith("_projection_conv"))
    assert projections == [f"stage{s}_block1_projection_conv" for s in (3, 4, 5)]


def test_basic_block_shapes():
    inputs = keras.Input((8, 8, 64))
    same = apply_basic_block(inputs, 64, stride=1, name="same")
    assert same.shape == (None, 8, 8, 64)
    down = apply_basic_block(inputs, 128, stride=2, name="down")
    assert down.shape == (None, 4, 4, 128)
    model = keras.Model(inputs, [same, down])
    names = {layer.name for layer in model.layers}
    assert "down_projection_conv" in names
    assert "same_projection_conv" not in names


@pytest.mark.parametrize(
    "call",
    [
        lambda: build_resnet18(image_size=16),
        lambda: apply_basic_block(keras.Input((8, 8, 4)), 4, stride=3),
        lambda: apply_basic_block(keras.Input((8, 8, 4)), 0),
    ],
)
def test_bad_arguments_raise_value_error(call):
    with pytest.raises(ValueError, match="Received:"):
        call()


def test_encoder_save_load_gives_same_outputs(tmp_path):
    encoder = build_resnet18(image_size=32)
    images = np.random.default_rng(1).random((3, 32, 32, 3), dtype=np.float32)
    expected = encoder.predict(images, verbose=0)
    path = save_model(encoder, tmp_path / "encoder.h5", {"kind": "simclr_encoder"})
    loaded = keras.models.load_model(path)
    assert loaded.name == encoder.name
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, atol=1e-5)


def batch_norm_layers(model: keras.Model) -> list:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def test_synchronized_batch_norm_is_opt_in_and_survives_save_load(tmp_path):
    default = build_resnet18(image_size=32)
    synchronized = build_resnet18(image_size=32, synchronized_batch_norm=True)
    # The stem, two per basic block and three projection shortcuts.
    assert len(batch_norm_layers(synchronized)) == 1 + 2 * 8 + 3
    assert all(layer.synchronized for layer in batch_norm_layers(synchronized))
    assert not any(layer.synchronized for layer in batch_norm_layers(default))
    assert [layer.name for layer in synchronized.layers] == [layer.name for layer in default.layers]
    synchronized.set_weights(default.get_weights())
    images = np.random.default_rng(2).random((4, 32, 32, 3), dtype=np.float32)
    expected = default.predict(images, verbose=0)
    np.testing.assert_allclose(synchronized.predict(images, verbose=0), expected, atol=1e-6)
    # Without a strategy the batch statistics are the local ones in training mode too, up to
    # rounding: the synchronized layer computes the variance as E[x^2] - E[x]^2.
    np.testing.assert_allclose(
        synchronized(images, training=True), default(images, training=True), atol=1e-3
    )
    path = save_model(synchronized, tmp_path / "encoder.h5", {"kind": "simclr_encoder"})
    loaded = keras.models.load_model(path)
    assert all(layer.synchronized for layer in batch_norm_layers(loaded))
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), synchronized.predict(images, verbose=0), atol=1e-5
    )


def test_input_normalisation_is_opt_in_and_maps_each_channel_before_the_stem(tmp_path):
    plain = build_resnet18(image_size=32)
    scale, offset = [2.0, 3.0, 4.0], [-1.0, 0.5, 0.0]
    normalised = build_resnet18(image_size=32, input_scale=scale, input_offset=offset)
    # Today's random-start encoder has no such layer; the normalisation holds no weights.
    assert INPUT_NORMALIZATION_NAME not in [layer.name for layer in plain.layers]
    assert normalised.layers[1].name == INPUT_NORMALIZATION_NAME
    assert normalised.count_params() == plain.count_params()
    normalised.set_weights(plain.get_weights())
    images = np.random.default_rng(4).random((2, 32, 32, 3), dtype=np.float32)
    mapped = images * np.array(scale, np.float32) + np.array(offset, np.float32)
    expected = plain.predict(mapped, verbose=0)
    np.testing.assert_allclose(normalised.predict(images, verbose=0), expected, atol=1e-5)
    # A scale alone keeps a zero offset; it survives save -> load.
    scaled = build_resnet18(image_size=32, input_scale=0.5)
    scaled.set_weights(plain.get_weights())
    path = save_model(scaled, tmp_path / "encoder.h5", {"kind": "simclr_encoder"})
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), plain.predict(images * 0.5, verbose=0), atol=1e-5
    )
    with pytest.raises(ValueError, match="input_scale must be a number or 3 numbers"):
        build_resnet18(image_size=32, input_scale=[1.0, 2.0])

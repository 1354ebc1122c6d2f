"""Transfer from a self-supervised encoder (`train_transfer.py --weights ENCODER.h5`): the
encoder's backbone weights become the transfer model's, checked to be the same backbone and
width, and the model records where its weights came from."""

import keras
import numpy as np
import pytest

from bc_keras import models, runs
from bc_keras.errors import WeightsError
from bc_keras.models import transfer
from bc_keras.models.resnet import build_resnet18

IMAGE_SIZE = 32


def save_encoder(path, backbone, alpha=1.0, method="simclr", weights=None, seed=7):
    """An encoder file by the pretraining contract: the registry backbone as the layer
    "backbone" followed by pooling, metadata kind "encoder". Returns the backbone."""
    keras.utils.set_random_seed(seed)
    inner = transfer.build_backbone(backbone, IMAGE_SIZE, weights=weights, alpha=alpha)
    if weights is None:
        # Statistics unlike a fresh build's too (zeros and ones), so that a copy shows.
        rng = np.random.default_rng(seed)
        inner.set_weights(
            [w + rng.uniform(0.1, 0.2, w.shape).astype(w.dtype) for w in inner.get_weights()]
        )
        for layer in inner.layers:
            if isinstance(layer, keras.layers.Normalization):
                layer.finalize_state()  # it computes with a copy of its variables
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    features = keras.layers.GlobalAveragePooling2D()(inner(inputs))
    encoder = keras.Model(inputs, features, name="encoder")
    metadata = {"kind": "encoder", "architecture": backbone, "alpha": alpha, "method": method,
                "image_size": IMAGE_SIZE, "preprocess": "rescale"}  # fmt: skip
    models.save_model(encoder, path, metadata)
    return inner


def first_convolution(backbone):
    """The backbone up to its first convolution: its own preprocessing, then one layer."""
    first = next(layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D))
    return keras.Model(backbone.input, first.output)


def assert_same_weights(model, expected):
    actual = transfer.get_backbone(model).get_weights()
    assert len(actual) == len(expected) > 50
    for a, b in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("backbone", "alpha"), [("mobilenet", 0.25), ("efficientnet_b0", 1.0)])
def test_transfer_starts_from_the_encoders_backbone(tmp_path, backbone, alpha):
    path = tmp_path / "encoder.h5"
    encoder = save_encoder(path, backbone, alpha, method="byol")
    expected = encoder.get_weights()
    model = transfer.build_transfer_model(backbone, IMAGE_SIZE, weights=path, alpha=alpha)
    assert_same_weights(model, expected)
    # Not a vacuous copy: a fresh build differs, and the copied backbone computes as the
    # encoder's did, its input Normalization (EfficientNet) included.
    fresh = transfer.build_backbone(backbone, IMAGE_SIZE, weights=None, alpha=alpha)
    assert not np.array_equal(fresh.get_weights()[0], expected[0])
    pixels = np.random.default_rng(0).uniform(0, 1, (2, IMAGE_SIZE, IMAGE_SIZE, 3))
    ours, theirs = (
        first_convolution(backbone_model).predict(pixels, verbose=0)
        for backbone_model in (transfer.get_backbone(model), encoder)
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    provenance = transfer.weights_provenance(path)
    assert provenance == {
        "weights_source": "encoder",
        "weights_file": str(path),
        "weights_sha256": runs.file_sha256(path),
        "encoder_method": "byol",
        "encoder_alpha": alpha,
        "encoder_architecture": backbone,
        "encoder_image_size": IMAGE_SIZE,
        "encoder_preprocess": "rescale",
    }


def test_an_encoder_of_another_backbone_or_width_is_one_line(tmp_path):
    path = tmp_path / "mobilenet_encoder.h5"
    save_encoder(path, "mobilenet", 0.25, method="byol")
    with pytest.raises(WeightsError) as raised:
        transfer.build_transfer_model("efficientnet_b0", IMAGE_SIZE, weights=path)
    assert str(raised.value) == (
        "mobilenet_encoder.h5 is a byol mobilenet encoder, not an efficientnet_b0 one; pretrain "
        "with --encoder efficientnet_b0 or pass --backbone mobilenet --alpha 0.25"
    )
    with pytest.raises(WeightsError) as raised:
        transfer.build_transfer_model("mobilenet", IMAGE_SIZE, weights=path, alpha=0.5)
    assert str(raised.value) == (
        "mobilenet_encoder.h5 is a byol mobilenet encoder of alpha 0.25, not 0.5; pass --alpha "
        "0.25, or pretrain a mobilenet encoder of alpha 0.5"
    )


def test_a_resnet18_simclr_encoder_is_refused_for_a_keras_applications_backbone(tmp_path):
    # The encoder train_simclr.py pretrain saved before issue 21: a ResNet-18, kind
    # "simclr_encoder", no method or alpha in its metadata.
    path = tmp_path / "simclr_resnet18_encoder.h5"
    metadata = {"kind": "simclr_encoder", "architecture": "resnet18", "image_size": IMAGE_SIZE}
    models.save_model(build_resnet18(IMAGE_SIZE), path, metadata)
    with pytest.raises(WeightsError) as raised:
        transfer.build_backbone("mobilenet", IMAGE_SIZE, weights=path, alpha=0.25)
    assert str(raised.value) == (
        "simclr_resnet18_encoder.h5 is a simclr resnet18 encoder, not a mobilenet one; pretrain "
        f"with --encoder mobilenet or fine-tune it with `train_simclr.py finetune --encoder {path}`"
    )
    assert transfer.weights_provenance(path)["encoder_method"] == "simclr"


def test_other_bc_keras_files_are_refused_in_one_line(tmp_path):
    classifier = tmp_path / "classifier.h5"
    models.save_model(
        models.build_baseline_cnn(IMAGE_SIZE), classifier, {"kind": "classifier",
                                                            "architecture": "baseline_cnn"}
    )  # fmt: skip
    with pytest.raises(WeightsError, match=r"^classifier.h5 is a bc_keras classifier \(baseline"):
        transfer.build_backbone("mobilenet", IMAGE_SIZE, weights=classifier, alpha=0.25)
    # An encoder whose metadata says mobilenet but whose "backbone" layer is not one.
    liar = tmp_path / "liar.h5"
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    inner = keras.Sequential([keras.layers.Conv2D(4, 3)], name="backbone")
    lying = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inner(inputs)))
    models.save_model(lying, liar, {"kind": "encoder", "architecture": "mobilenet", "alpha": 0.25})
    with pytest.raises(
        WeightsError,
        match="liar.h5 is a simclr mobilenet encoder without a mobilenet 'backbone' layer",
    ):
        transfer.build_backbone("mobilenet", IMAGE_SIZE, weights=liar, alpha=0.25)


def test_a_plain_weights_file_keeps_working_and_says_so(tmp_path):
    keras.utils.set_random_seed(3)
    backbone = transfer.build_backbone("mobilenet", IMAGE_SIZE, weights=None, alpha=0.25)
    path = tmp_path / "no_top.weights.h5"
    backbone.save_weights(path)
    loaded = transfer.build_backbone("mobilenet", IMAGE_SIZE, weights=path, alpha=0.25)
    for a, b in zip(loaded.get_weights(), backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert transfer.weights_provenance(path) == {
        "weights_source": "file",
        "weights_file": str(path),
        "weights_sha256": runs.file_sha256(path),
    }
    assert transfer.weights_provenance("imagenet") == {"weights_source": "imagenet"}
    assert transfer.weights_provenance("None") == {"weights_source": "none"}
    assert transfer.weights_provenance(None) == {"weights_source": "none"}


def test_the_real_mobilenet_weights_travel_through_an_encoder(tmp_path, mobilenet_weights):
    path = tmp_path / "real_encoder.h5"
    expected = save_encoder(path, "mobilenet", 0.25, weights=mobilenet_weights).get_weights()
    imagenet = transfer.build_backbone("mobilenet", IMAGE_SIZE, mobilenet_weights, alpha=0.25)
    for a, b in zip(expected, imagenet.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the encoder holds the real ImageNet weights
    model = transfer.build_transfer_model("mobilenet", IMAGE_SIZE, weights=path, alpha=0.25)
    assert_same_weights(model, expected)
    transfer.start_phase(model, transfer.PHASE_FINE_TUNE)
    images = np.random.default_rng(0).uniform(0, 1, (4, IMAGE_SIZE, IMAGE_SIZE, 3))
    model.fit(images, np.array([0.0, 1.0, 0.0, 1.0]), batch_size=2, epochs=1, verbose=0)
    assert not np.array_equal(transfer.get_backbone(model).get_weights()[0], expected[0])

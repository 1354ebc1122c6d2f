"""The light backbones (MobileNetV3-Small/Large, EfficientNet-B0, EfficientNetV2-B0): their Keras
weight files, their own preprocessing, the two phases, Grad-CAM, saving, and both recipes end to
end with random weights."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import bc_keras
from bc_keras import config, models, runs
from bc_keras.backbones import BACKBONES, mobilenet_v3
from bc_keras.commands import train_transfer
from bc_keras.data import apply_preprocess, preprocess_function
from bc_keras.data.pipeline import keep_pixels
from bc_keras.evaluation import gradcam
from bc_keras.histology.synthetic import write_synthetic_tree
from bc_keras.models import transfer
from bc_keras.prepare import prepare_split

LIGHT_BACKBONES = [
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnetv2_b0",
]
IMAGE_SIZE = 32


class KerasFetched(Exception):
    """Raised in place of Keras' download, carrying what Keras asked for."""


def keras_weights_request(monkeypatch, builder, **options):
    """(file name, URL, hash) of the no-top ImageNet file a keras.applications builder fetches,
    caught at Keras' own `get_file` call."""
    from keras.src.utils import file_utils

    def fetch(file_name, origin, **kwargs):
        raise KerasFetched(file_name, origin, kwargs.get("file_hash"))

    monkeypatch.setattr(file_utils, "get_file", fetch)
    with pytest.raises(KerasFetched) as fetched:
        builder(include_top=False, weights="imagenet", input_shape=(224, 224, 3), **options)
    return fetched.value.args


@pytest.mark.parametrize(
    ("backbone", "builder", "options", "alpha"),
    [
        ("mobilenet_v3_small", "MobileNetV3Small", {}, 1.0),
        ("mobilenet_v3_small", "MobileNetV3Small", {}, 0.75),
        ("mobilenet_v3_large", "MobileNetV3Large", {}, 1.0),
        ("mobilenet_v3_large", "MobileNetV3Large", {}, 0.75),
        ("efficientnet_b0", "EfficientNetB0", {}, 1.0),
        ("efficientnetv2_b0", "EfficientNetV2B0", {}, 1.0),
    ],
)
def test_weight_files_are_those_keras_applications_fetches(
    monkeypatch, backbone, builder, options, alpha
):
    record = BACKBONES[backbone]
    assert record.application == builder
    width = {"alpha": alpha} if record.has_alpha else {}
    requested = keras_weights_request(monkeypatch, getattr(keras.applications, builder), **width)
    expected = transfer.imagenet_weights_file(backbone, IMAGE_SIZE, alpha)
    assert (expected.file_name, expected.url, expected.file_hash) == requested


def test_minimalistic_mobilenet_v3_records_follow_keras_naming(monkeypatch):
    from keras.src.applications import mobilenet_v3 as keras_mobilenet_v3

    for model_type in ("small", "large"):
        record = mobilenet_v3(model_type, minimalistic=True)
        builder = getattr(keras.applications, record.application)
        requested = keras_weights_request(monkeypatch, builder, minimalistic=True)
        assert (record.weights_file_name(224), record.weights_file_hash()) == requested[::2]
        assert record.alphas == ((1.0, "1.0"),)  # Keras has no other width for them
    # Every no-top hash Keras has for MobileNetV3 is a registry record's.
    hashes = {
        mobilenet_v3(kind, minimal).weights_file_hash(alpha)
        for kind in ("small", "large")
        for minimal in (False, True)
        for alpha, _ in mobilenet_v3(kind, minimal).alphas
    }
    assert hashes == {no_top for _, no_top in keras_mobilenet_v3.WEIGHTS_HASHES.values()}
    assert BACKBONES["mobilenet_v3_small"].alphas == ((1.0, "1.0"), (0.75, "0.75"))
    with pytest.raises(transfer.WeightsError, match=r"alpha in \(1.0, 0.75\) only"):
        transfer.imagenet_weights_file("mobilenet_v3_large", 224, 0.5)


def test_their_own_preprocessing_is_inside_the_model_and_the_pipeline_keeps_pixels():
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    for backbone in LIGHT_BACKBONES:
        record = BACKBONES[backbone]
        assert record.includes_preprocessing and record.min_image_size == IMAGE_SIZE
        assert preprocess_function(backbone) is keep_pixels
        np.testing.assert_array_equal(apply_preprocess(pixels, backbone), pixels)
        # Keras' own preprocess_input for them is the identity too: the model preprocesses.
        keras_function = getattr(keras.applications, record.preprocess_module).preprocess_input
        np.testing.assert_array_equal(keras_function(pixels.copy()), pixels)
        # 'rescale' is still the report's x / 255, and each recipe resolves as before.
        np.testing.assert_allclose(apply_preprocess(pixels, "rescale"), pixels / 255.0, rtol=1e-6)
        robust = config.TransferConfig(data="d", backbone=backbone, recipe="robust")
        report = config.TransferConfig(data="d", backbone=backbone)
        assert (robust.preprocess, report.preprocess) == (backbone, "rescale")
    # The first layers after the input are the model's preprocessing.
    assert [
        type(layer).__name__
        for layer in transfer.build_backbone("efficientnet_b0", IMAGE_SIZE, weights=None).layers[:3]
    ] == ["InputLayer", "Rescaling", "Normalization"]
    small = transfer.build_backbone("mobilenet_v3_small", IMAGE_SIZE, weights=None)
    scaling = small.layers[1]
    assert isinstance(scaling, keras.layers.Rescaling)
    assert (scaling.scale, scaling.offset) == pytest.approx(
        (1 / 127.5, -1.0)
    )  # [0, 255] -> [-1, 1]


def test_mobilenet_v3_gates_are_layers_computing_what_keras_ops_compute():
    from keras.src.applications import mobilenet_v3 as keras_mobilenet_v3

    original = keras_mobilenet_v3.hard_sigmoid
    keras.utils.set_random_seed(0)
    ours = transfer.build_backbone("mobilenet_v3_small", IMAGE_SIZE, weights=None, alpha=0.75)
    assert keras_mobilenet_v3.hard_sigmoid is original  # Keras' builder is left as it was
    theirs = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), alpha=0.75
    )
    theirs.set_weights(ours.get_weights())  # the same variables, in the same order
    pixels = np.random.default_rng(1).uniform(0, 255, (2, IMAGE_SIZE, IMAGE_SIZE, 3))
    np.testing.assert_allclose(
        ours.predict(pixels, verbose=0), theirs.predict(pixels, verbose=0), rtol=0, atol=1e-6
    )

    # Keras' own graph holds raw ops (x + 3.0) that its .h5 loader cannot rebuild; ours none.
    def modules(model):
        return {layer["module"] for layer in json.loads(model.to_json())["config"]["layers"]}

    assert modules(theirs) == {"keras.layers", "keras.src.ops.numpy"}
    assert modules(ours) == {"keras.layers"}


def normalization_of(model):
    (layer,) = [layer for layer in model.layers if isinstance(layer, keras.layers.Normalization)]
    return layer


def efficientnet_imagenet_like(path, mean, stddev):
    """A stand-in for Keras' efficientnetb0_notop.h5: random weights, and the file's input
    Normalization, whose variance holds the standard deviations (tensorflow#49930)."""
    model = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3)
    )
    normalization_of(model).set_weights([np.array(mean), np.array(stddev), np.array(1000)])
    model.save(path)
    return model


def test_efficientnet_imagenet_file_is_normalised_as_keras_loads_it(tmp_path, monkeypatch):
    from keras.src.applications import efficientnet as keras_efficientnet

    record = BACKBONES["efficientnet_b0"]
    assert list(record.stddev_as_variance) == keras_efficientnet.IMAGENET_STDDEV_RGB
    mean, stddev = [0.485, 0.456, 0.406], list(record.stddev_as_variance)
    cache = tmp_path / "models"
    cache.mkdir()
    name = transfer.imagenet_weights_file("efficientnet_b0", IMAGE_SIZE).file_name
    stand_in = efficientnet_imagenet_like(cache / name, mean, stddev)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise AssertionError("the cached file is used, nothing is downloaded")

    backbone = transfer.build_backbone("efficientnet_b0", IMAGE_SIZE, download=offline)
    normalized = keras.Model(backbone.input, normalization_of(backbone).output)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, IMAGE_SIZE, IMAGE_SIZE, 3))
    # Keras divides by sqrt(stddev) twice (the Normalization, then its extra Rescaling): by s.
    expected = (pixels / 255.0 - np.array(mean)) / np.array(stddev)
    np.testing.assert_allclose(normalized.predict(pixels, verbose=0), expected, atol=1e-5)
    # Every other weight is the file's; the correction is applied once, not again on reload.
    for ours, theirs in zip(backbone.layers, stand_in.layers, strict=True):
        if not isinstance(ours, keras.layers.Normalization):
            for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
                np.testing.assert_array_equal(a, b)
    backbone.save(tmp_path / "bc_keras_saved.h5")
    again = transfer.build_backbone("efficientnet_b0", IMAGE_SIZE, tmp_path / "bc_keras_saved.h5")
    variance = normalization_of(again).get_weights()[1]
    np.testing.assert_allclose(variance, np.square(stddev), rtol=1e-6)
    # Random weights are not "corrected": the Normalization stays the identity.
    fresh = transfer.build_backbone("efficientnet_b0", IMAGE_SIZE, weights=None)
    np.testing.assert_array_equal(normalization_of(fresh).get_weights()[1], [1, 1, 1])


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_a_reloaded_imagenet_efficientnet_normalises_as_before_saving(suffix, tmp_path):
    """Keras' .h5 loader finalises only top-level Normalization layers: bc_keras' load_model
    finalises the nested backbone's, so the reloaded model computes as the saved one."""
    stand_in = tmp_path / "efficientnetb0_notop.h5"
    efficientnet_imagenet_like(stand_in, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    model = transfer.build_transfer_model("efficientnet_b0", IMAGE_SIZE, weights=stand_in)
    path = models.save_model(model, tmp_path / f"model{suffix}", {"kind": "classifier"})
    loaded, _ = models.load_model(path)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, IMAGE_SIZE, IMAGE_SIZE, 3))
    before, after = (
        keras.Model(inner.input, normalization_of(inner).output).predict(pixels, verbose=0)
        for inner in (transfer.get_backbone(model), transfer.get_backbone(loaded))
    )
    np.testing.assert_allclose(after, before, rtol=1e-6)
    assert np.abs(before - pixels).max() > 1.0  # the normalisation is not the identity
    np.testing.assert_allclose(loaded.predict(pixels, verbose=0), model.predict(pixels, verbose=0),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("backbone", LIGHT_BACKBONES)
def test_phases_freeze_the_backbone_then_all_but_batchnorm(backbone):
    model = transfer.build_transfer_model(backbone, IMAGE_SIZE, weights=None)
    inner = transfer.get_backbone(model)
    assert inner.name == transfer.BACKBONE_LAYER_NAME
    transfer.start_phase(model, transfer.PHASE_FROZEN)
    assert inner.trainable_weights == []
    assert {v.path for v in model.trainable_weights} == {
        v.path for name in ("dense", models.OUTPUT_NAME) for v in model.get_layer(name).weights
    }
    transfer.start_phase(model, transfer.PHASE_FINE_TUNE)
    learnable = {
        variable.path
        for layer in inner.layers
        if not isinstance(layer, keras.layers.BatchNormalization | keras.layers.Normalization)
        for variable in layer.weights
    }
    assert len(learnable) > 50
    assert {variable.path for variable in inner.trainable_weights} == learnable


def manual_gradcam(model, images):
    """Grad-CAM of the last backbone feature map, computed directly from the layers."""
    backbone, dense, output = (
        model.get_layer(name) for name in ("backbone", "dense", models.OUTPUT_NAME)
    )
    with tf.GradientTape() as tape:
        features = backbone(images, training=False)
        tape.watch(features)
        hidden = dense(tf.reduce_mean(features, axis=(1, 2)))
        logits = tf.matmul(hidden, output.kernel) + output.bias
        score = tf.reduce_sum(logits)
    gradients = tape.gradient(score, features)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    maps = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))[..., None]
    maps = tf.image.resize(maps, images.shape[1:3], method="bilinear")[..., 0].numpy()
    peaks = maps.max(axis=(1, 2), keepdims=True)
    return np.where(peaks > 0, maps / np.where(peaks > 0, peaks, 1), 0), tf.sigmoid(logits)


@pytest.mark.parametrize("backbone", LIGHT_BACKBONES)
def test_gradcam_reaches_the_last_feature_map(backbone):
    keras.utils.set_random_seed(3)
    model = transfer.build_transfer_model(backbone, 64, weights=None)  # 2 x 2 feature maps
    images = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    path = gradcam.find_target_layer(model)
    assert path[0] == "backbone" and path[1] == transfer.get_backbone(model).layers[-1].name
    heatmaps, probabilities = gradcam.gradcam(model, images, return_probabilities=True)
    np.testing.assert_array_equal(heatmaps.max(axis=(1, 2)), 1.0)  # maps with evidence
    expected, expected_probabilities = manual_gradcam(model, tf.constant(images))
    np.testing.assert_allclose(heatmaps, expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(probabilities, np.ravel(expected_probabilities), atol=1e-6)
    np.testing.assert_allclose(probabilities, np.ravel(model.predict(images, verbose=0)), atol=1e-6)


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    """24 synthetic images (8 subtypes x 3 patients x 1 image, one magnification): 16 to train
    (one batch), 4 to validate, 4 to test."""
    root = tmp_path_factory.mktemp("light_tree")
    write_synthetic_tree(root, patients_per_subtype=3, images_per_patient=1, size=(48, 32), seed=1)
    out = root / "prepared"
    prepare_split(root, out, seed=42, magnifications=(40,))
    return out


# Each backbone end to end in one recipe, each family (MobileNetV3, EfficientNet) in both: a run
# costs 6-17 s here even with eager steps, and the other four pairs pass as well (run by hand
# when a backbone changes: pass their pairs to run_end_to_end).
END_TO_END = [
    ("mobilenet_v3_small", "report"),
    ("mobilenet_v3_large", "robust"),
    ("efficientnet_b0", "robust"),
    ("efficientnetv2_b0", "report"),
]


def eager_training(monkeypatch):
    """Training steps run eagerly: tracing a phase's graph costs more than its one step here."""
    fit = keras.Model.fit

    def eager_fit(self, *args, **kwargs):
        self.run_eagerly = True
        try:
            return fit(self, *args, **kwargs)
        finally:
            self.run_eagerly = False

    monkeypatch.setattr(keras.Model, "fit", eager_fit)


def run_end_to_end(split, out, monkeypatch, backbone, recipe):
    """train_transfer.py with random weights, one epoch per phase; checks the saved model."""
    eager_training(monkeypatch)
    pixels = np.random.default_rng(0).integers(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    before_saving = []
    save_model = models.save_model

    def spy(model, path, metadata):
        inputs = apply_preprocess(pixels.astype("float32"), metadata["preprocess"])
        before_saving.append(np.ravel(model.predict(inputs, verbose=0)))
        return save_model(model, path, metadata)

    monkeypatch.setattr(models, "save_model", spy)
    model_out = out / f"{backbone}_{recipe}.h5"
    argv = ["--backbone", backbone, "--recipe", recipe, "--data", str(split), "--weights", "none",
            "--image-size", str(IMAGE_SIZE), "--batch-size", "16", "--epochs", "1",
            "--no-tensorboard", "--run-dir", str(out / "run"), "--model-out", str(model_out)]  # fmt: skip
    assert train_transfer.main(argv) == 0
    history = runs.read_history(out / "run")
    assert history["phase"] == [1.0, 2.0] and np.all(np.isfinite(history["loss"]))
    predictor = bc_keras.load_model(model_out)
    metadata = predictor.metadata
    assert (metadata["backbone"], metadata["recipe"]) == (backbone, recipe)
    # The report's rescale (x / 255), even for a model that expects [0, 255]; robust: its own.
    assert metadata["preprocess"] == ("rescale" if recipe == "report" else backbone)
    assert metadata["tta"] == (recipe == "robust")
    # Reloaded, the model gives the probabilities it gave before it was saved.
    (expected,) = before_saving
    probabilities = predictor.predict_proba(pixels, tta=False)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


@pytest.mark.parametrize(("backbone", "recipe"), END_TO_END)
def test_trains_and_saves_end_to_end(tiny_split, tmp_path, monkeypatch, backbone, recipe):
    run_end_to_end(tiny_split, tmp_path, monkeypatch, backbone, recipe)
    assert {b for b, _ in END_TO_END} == set(LIGHT_BACKBONES)

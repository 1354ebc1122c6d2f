"""Tests of the stain normalisers in TensorFlow ops (`bc_keras.export.stain`): the uint8 images
they give against `bc_keras.histology.stain`'s NumPy transforms, on real BreaKHis crops and
synthetic tissue, in float64 (SavedModel) and in float32 converted to LiteRT with builtin ops
only and run by the TFLite interpreter."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from bc_keras.errors import DataError
from bc_keras.export import stain as export_stain
from bc_keras.histology import stain
from bc_keras.histology.synthetic import generate_tissue_image

METHODS = (stain.METHOD_REINHARD, stain.METHOD_MACENKO)
IMAGE_SIGNATURE = [tf.TensorSpec([None, None, 3], tf.uint8)]
# (label, subtype, magnification) of the synthetic fields.
SYNTHETIC_FIELDS = [("benign", "F", 40), ("malignant", "DC", 100), ("benign", "A", 200),
                    ("malignant", "LC", 400)]  # fmt: skip
# Agreement with NumPy, per image, with margin over what was measured. float64: equal but for
# .5 rounding ties (measured: no pixel differs on any synthetic field, real crop or full-size
# PNG). float32 LiteRT: measured at most 1 grey level, on at most 0.033% of an image's values
# and 0.004% on average (synthetic fields, real crops and the 16 full-size PNGs).
SAVEDMODEL_MAX_FRACTION = 1e-3
LITERT_MAX_FRACTION = 1e-3
LITERT_MEAN_FRACTION = 2e-4

# TF 2.21 warns that tf.lite.Interpreter moves to the ai_edge_litert package; it still works.
pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")


def differences(reference: np.ndarray, output: np.ndarray) -> tuple[int, float]:
    """The largest |difference| in grey levels and the share of values that differ."""
    assert output.shape == reference.shape and output.dtype == np.uint8
    difference = np.abs(reference.astype(np.int32) - output.astype(np.int32))
    return int(difference.max()), float(np.mean(difference > 0))


def fitted_record(method: str, target: np.ndarray) -> tuple[dict, object]:
    """The metadata record of a normaliser fitted on `target`, and the NumPy normaliser."""
    normalizer = stain.make_normalizer(method).fit(target)
    return {"method": method, "target_statistics": normalizer.target_statistics()}, normalizer


def traced(record: dict, litert: bool = False):
    return tf.function(
        export_stain.normalizer_graph(record, litert), input_signature=IMAGE_SIGNATURE
    )


def litert_function(record: dict):
    """The record's float32 graph as a LiteRT model run by the TFLite interpreter."""
    return to_litert(traced(record, litert=True))


def to_litert(function):
    """A traced function converted with TFLITE_BUILTINS only (no Flex ops: this interpreter has
    no Flex delegate), as a NumPy function that resizes the model's input to each array."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], function
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    source = interpreter.get_input_details()[0]["index"]
    result = interpreter.get_output_details()[0]["index"]

    def run(images: np.ndarray) -> np.ndarray:
        interpreter.resize_tensor_input(source, list(images.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(source, images)
        interpreter.invoke()
        return interpreter.get_tensor(result)

    return run


@pytest.fixture(scope="module")
def synthetic_fields() -> list[np.ndarray]:
    """Eight synthetic H&E fields (64 x 96), two per subtype and magnification."""
    return [
        generate_tissue_image(
            np.random.default_rng(seed), label, subtype, magnification, size=(96, 64)
        )
        for seed, (label, subtype, magnification) in enumerate(SYNTHETIC_FIELDS * 2)
    ]


@pytest.fixture(scope="module")
def records() -> dict:
    """Per method: the record and the NumPy normaliser fitted on a 128 x 192 synthetic field
    stained otherwise than the test images."""
    target = generate_tissue_image(np.random.default_rng(99), "malignant", "DC", 40, (192, 128))
    return {method: fitted_record(method, target) for method in METHODS}


@pytest.fixture(scope="module")
def real_images(real_images_dir) -> list[np.ndarray]:
    """A 64 x 96 crop of each of the 16 real PNGs, away from the edges, and one full-size
    image (460 x 700: sums over 322 000 pixels)."""
    images = [stain.read_rgb(path) for path in sorted(real_images_dir.rglob("*.png"))]
    return [image[200:264, 300:396] for image in images] + images[5:6]


# ------------------------------------------------------------------------------ the pieces


def test_percentile_equals_numpy_with_and_without_a_mask():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(2, 1001))
    mask = rng.random(1001) < 0.3
    for q in (0.0, 0.01, 0.37, 0.5, 0.99, 1.0):
        got = export_stain.percentile(tf.constant(values), q).numpy()
        np.testing.assert_array_equal(got, np.percentile(values, 100 * q, axis=-1))
        got = export_stain.percentile(tf.constant(values[0]), q, mask=tf.constant(mask)).numpy()
        np.testing.assert_array_equal(got, np.percentile(values[0][mask], 100 * q))
        got32 = export_stain.percentile(tf.constant(values, tf.float32), q).numpy()
        np.testing.assert_allclose(got32, np.percentile(values, 100 * q, axis=-1), atol=1e-6)


def test_jacobi_eigh_matches_numpy_eigh():
    rng = np.random.default_rng(1)
    matrices = [np.zeros((3, 3)), np.eye(3), np.diag([3.0, 1.0, 2.0]), np.ones((3, 3))]
    matrices += [np.cov(rng.normal(size=(40, 3)) * rng.uniform(1e-3, 1.0, 3), rowvar=False)
                 for _ in range(20)]  # fmt: skip
    for matrix in matrices:
        expected = np.linalg.eigh(matrix)[0]
        scale = max(np.abs(expected).max(), 1e-30)
        for dtype, tolerance in ((tf.float64, 1e-13), (tf.float32, 3e-6)):
            values, vectors = (
                t.numpy().astype(np.float64)
                for t in export_stain.jacobi_eigh(tf.constant(matrix, dtype))
            )
            np.testing.assert_allclose(values, expected, atol=tolerance * scale)
            np.testing.assert_allclose(matrix @ vectors, vectors * values, atol=tolerance * scale)
            np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=tolerance)


def test_malformed_record_raises_data_error():
    with pytest.raises(DataError, match="retrain on a split written by normalize_stains.py"):
        export_stain.normalizer_graph({"method": stain.METHOD_MACENKO, "target_statistics": {}})


# -------------------------------------------------------------------- agreement with NumPy


def agreement(method: str, litert: bool, records: dict, images: list[np.ndarray]):
    """Per image, the largest difference from NumPy and the share of values that differ, of
    the traced float64 graph or of the LiteRT model."""
    record, normalizer = records[method]
    function = litert_function(record) if litert else traced(record)
    measured = []
    for image in images:
        reference = normalizer.transform(image)
        assert np.mean(reference != image) > 0.5  # the normaliser does change the image
        output = function(image) if litert else function(tf.constant(image)).numpy()
        measured.append(differences(reference, output))
    if not litert:
        assert function.experimental_get_tracing_count() == 1
    return np.array(measured)


def assert_agreement(measured: np.ndarray, litert: bool) -> None:
    largest, fractions = measured[:, 0], measured[:, 1]
    assert largest.max() <= 1, measured
    assert fractions.max() < (LITERT_MAX_FRACTION if litert else SAVEDMODEL_MAX_FRACTION), measured
    if litert:
        assert fractions.mean() < LITERT_MEAN_FRACTION, measured


@pytest.mark.parametrize("litert", [False, True], ids=["savedmodel", "litert"])
@pytest.mark.parametrize("method", METHODS)
def test_graph_matches_numpy_on_synthetic_tissue(method, litert, records, synthetic_fields):
    assert_agreement(agreement(method, litert, records, synthetic_fields), litert)


@pytest.mark.parametrize("litert", [False, True], ids=["savedmodel", "litert"])
@pytest.mark.parametrize("method", METHODS)
def test_graph_matches_numpy_on_real_breakhis_images(method, litert, records, real_images):
    assert_agreement(agreement(method, litert, records, real_images), litert)


# ------------------------------------------------------------------------------ edge cases


def test_tissue_free_image_comes_back_unchanged_under_macenko(records):
    record, normalizer = records[stain.METHOD_MACENKO]
    rng = np.random.default_rng(2)
    background = rng.integers(230, 256, size=(48, 64, 3)).astype(np.uint8)
    background[:3, :3] = [120, 60, 140]  # 9 tissue pixels, fewer than MIN_TISSUE_PIXELS
    assert stain.tissue_brightness(background) is None
    np.testing.assert_array_equal(normalizer.transform(background), background)
    np.testing.assert_array_equal(traced(record)(tf.constant(background)).numpy(), background)
    np.testing.assert_array_equal(litert_function(record)(background), background)


FLAT_COLOURS = ([200, 150, 180], [120, 60, 140], [0, 0, 0])


def test_flat_image_becomes_the_target_mean_colour_under_reinhard(records):
    # Every channel is flat (deviation 0), so it is only shifted onto the target's mean; in
    # float32 too (the moments are taken about the first pixel, so the deviation is exactly 0).
    record, normalizer = records[stain.METHOD_REINHARD]
    target_colour = np.rint(stain.lalphabeta_to_rgb(normalizer.means))
    savedmodel, litert = traced(record), litert_function(record)
    for colour in FLAT_COLOURS + ([255, 255, 255],):
        flat = np.full((32, 48, 3), colour, dtype=np.uint8)
        reference = normalizer.transform(flat)
        np.testing.assert_array_equal(reference, np.broadcast_to(target_colour, flat.shape))
        np.testing.assert_array_equal(savedmodel(tf.constant(flat)).numpy(), reference)
        np.testing.assert_array_equal(litert(flat), reference)


def test_flat_tissue_becomes_the_target_maximum_colour_under_macenko(records):
    # One colour: both stain vectors are the same (a rank-1 least-squares problem, split
    # equally as np.linalg.lstsq's minimum-norm solution), each amount is its own maximum and
    # is scaled to the target's.
    record, normalizer = records[stain.METHOD_MACENKO]
    target_od = normalizer.max_concentrations @ normalizer.stain_vectors
    target_colour = np.rint(stain.intensity_from_optical_density(target_od))
    savedmodel, litert = traced(record), litert_function(record)
    for colour in FLAT_COLOURS:
        flat = np.full((32, 48, 3), colour, dtype=np.uint8)
        reference = normalizer.transform(flat)
        np.testing.assert_array_equal(reference, np.broadcast_to(target_colour, flat.shape))
        np.testing.assert_array_equal(savedmodel(tf.constant(flat)).numpy(), reference)
        np.testing.assert_array_equal(litert(flat), reference)


@pytest.mark.parametrize("litert", [False, True])
def test_one_trace_serves_two_sizes(litert, records, synthetic_fields):
    for method in METHODS:
        record, normalizer = records[method]
        function = traced(record, litert)
        for image in (synthetic_fields[0], synthetic_fields[1][:48, :80]):
            output = function(tf.constant(image)).numpy()
            largest, fraction = differences(normalizer.transform(image), output)
            bound = LITERT_MAX_FRACTION if litert else SAVEDMODEL_MAX_FRACTION
            assert largest <= 1 and fraction < bound, (largest, fraction)
        assert function.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("litert", [False, True])
def test_map_images_normalises_each_image_of_a_batch(litert, records, synthetic_fields):
    # The batch loop of the exported graph (tf.map_fn does not convert to LiteRT with a
    # dynamic image size); each image is normalised on its own statistics.
    record, normalizer = records[stain.METHOD_MACENKO]
    function = export_stain.normalizer_graph(record, litert)
    batched = tf.function(
        lambda images: export_stain.map_images(function, images),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)],
    )
    run = to_litert(batched) if litert else (lambda images: batched(tf.constant(images)).numpy())
    for batch in (np.stack(synthetic_fields[:3]), synthetic_fields[3][None, :48, :80]):
        output = run(batch)
        reference = np.stack([normalizer.transform(image) for image in batch])
        largest, fraction = differences(reference, output)
        bound = LITERT_MAX_FRACTION if litert else SAVEDMODEL_MAX_FRACTION
        assert largest <= 1 and fraction < bound, (largest, fraction)


def test_a_batch_or_a_float_image_is_refused(records):
    function = export_stain.normalizer_graph(records[stain.METHOD_REINHARD][0])
    with pytest.raises(
        ValueError, match=r"Expected one uint8 RGB image .* Received: dtype=float32"
    ):
        function(tf.zeros([8, 8, 3]))
    with pytest.raises(ValueError, match=r"Received: dtype=uint8, shape=\(2, 8, 8, 3\)"):
        function(tf.zeros([2, 8, 8, 3], tf.uint8))

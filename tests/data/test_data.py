"""The input pipelines: generator/tf.data equivalence, augmentation, SimCLR views, bad images."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow.keras.preprocessing.image import ImageDataGenerator

from bc_keras import data
from bc_keras.data import augment
from bc_keras.data.decode import INTERPOLATIONS
from bc_keras.errors import DataError
from bc_keras.histology.breakhis import CLASS_NAMES


def _materialise(dataset: data.ImageDataset):
    if dataset.pipeline == data.PIPELINE_GENERATOR:
        batches = [dataset.data[i] for i in range(dataset.steps)]
    else:
        batches = [(x.numpy(), y.numpy()) for x, y in dataset.data]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def _make_split(root, images_by_class, subsets=("train", "val", "test")):
    """A prepared-split layout with the given {class: [(name, array)]} in every subset."""
    for subset in subsets:
        for name in CLASS_NAMES:
            folder = root / subset / name
            folder.mkdir(parents=True, exist_ok=True)
            for file_name, array in images_by_class.get(name, []):
                Image.fromarray(array).save(folder / file_name)
    return root


PREPROCESSES = ("rescale", "resnet50", "vgg16", "mobilenet")


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("image_size", [32, 48])
def test_pipelines_give_identical_unaugmented_tensors(synthetic_split, image_size, interpolation):
    """Every resize filter and every preprocessing a script can combine with --pipeline
    generator gives the generator's tensors exactly (up to float rounding of the backbones'
    own preprocess_input)."""
    for preprocess in PREPROCESSES:
        options = dict(
            image_size=image_size,
            batch_size=5,
            augment=False,
            shuffle=False,
            interpolation=interpolation,
            preprocess=preprocess,
        )
        generator = data.build_dataset(synthetic_split, "test", pipeline="generator", **options)
        tfdata = data.build_dataset(synthetic_split, "test", pipeline="tfdata", **options)
        x_generator, y_generator = _materialise(generator)
        x_tfdata, y_tfdata = _materialise(tfdata)
        assert generator.paths == tfdata.paths
        np.testing.assert_allclose(x_generator, x_tfdata, rtol=0, atol=1e-5, err_msg=preprocess)
        if preprocess == "rescale":
            np.testing.assert_array_equal(x_generator, x_tfdata)
            assert x_tfdata.min() >= 0.0 and x_tfdata.max() <= 1.0
        np.testing.assert_array_equal(y_generator, y_tfdata)
    # Labels follow the class folder: benign 0, malignant 1.
    expected = [CLASS_NAMES.index(os.path.basename(os.path.dirname(p))) for p in tfdata.paths]
    np.testing.assert_array_equal(y_tfdata, expected)


def test_pipelines_identical_on_real_breakhis_images(real_images_dir, tmp_path):
    for subset in ("train", "val", "test"):
        for name in CLASS_NAMES:
            folder = tmp_path / subset / name
            folder.mkdir(parents=True)
            for source in sorted((real_images_dir / name).glob("*.png")):
                os.symlink(source, folder / source.name)
    for interpolation, preprocess in (("nearest", "rescale"), ("bilinear", "resnet50")):
        options = dict(
            image_size=64,
            batch_size=4,
            augment=False,
            shuffle=False,
            preprocess=preprocess,
            interpolation=interpolation,
        )
        x_generator, _ = _materialise(
            data.build_dataset(tmp_path, "test", pipeline="generator", **options)
        )
        x_tfdata, _ = _materialise(
            data.build_dataset(tmp_path, "test", pipeline="tfdata", **options)
        )
        assert x_tfdata.shape == (16, 64, 64, 3)
        np.testing.assert_allclose(x_generator, x_tfdata, rtol=0, atol=1e-4)


def test_random_warp_draws_the_generators_parameter_ranges():
    """The tf.data warp draws rotation, shifts, zooms and flips from the distributions of
    ImageDataGenerator.get_random_transform (two-sample Kolmogorov-Smirnov tests)."""
    from scipy import stats

    height, width, draws = 40, 56, 4000
    theta, tx, ty, zx, zy, flip = (
        np.asarray(v)
        for v in augment.random_affine_parameters(
            tf.constant([1, 2]), draws, height, width, augment.REPORT_AUGMENTATION
        )
    )
    generator = ImageDataGenerator(**augment.REPORT_AUGMENTATION.generator_kwargs())
    np.random.seed(0)
    legacy = [generator.get_random_transform((height, width, 3)) for _ in range(draws)]
    for ours, key in ((theta, "theta"), (tx, "tx"), (ty, "ty"), (zx, "zx"), (zy, "zy")):
        theirs = np.array([t[key] for t in legacy], dtype=float)
        assert stats.ks_2samp(ours, theirs).pvalue > 0.001, key
        assert ours.min() >= theirs.min() - 0.05 * np.ptp(theirs)
        assert ours.max() <= theirs.max() + 0.05 * np.ptp(theirs)
    assert np.abs(theta).max() <= 20.0 and np.abs(tx).max() <= 0.2 * height
    assert np.abs(ty).max() <= 0.2 * width and zx.min() >= 0.8 and zy.max() <= 1.2
    legacy_flip = np.mean([t["flip_horizontal"] for t in legacy])
    assert abs(flip.mean() - 0.5) < 0.03 and abs(legacy_flip - 0.5) < 0.03


def test_fused_warp_equals_image_data_generator_transform():
    rng = np.random.default_rng(0)
    generator = ImageDataGenerator(fill_mode="nearest")
    for height, width in [(32, 32), (40, 56)]:
        # A smooth image keeps bilinear round-off small.
        image = tf.image.resize(
            rng.uniform(0, 255, (1, 8, 8, 3)).astype("float32"), (height, width)
        )[0].numpy()
        for params in (
            dict(theta=15.0, tx=3.0, ty=-5.0, zx=1.1, zy=0.9, flip_horizontal=True),
            dict(theta=-7.0, tx=-2.0, ty=1.0, zx=0.85, zy=1.15, flip_horizontal=False),
        ):
            expected = generator.apply_transform(image.copy(), params)
            values = [tf.constant([params[k]]) for k in ("theta", "tx", "ty", "zx", "zy")]
            transforms = augment.affine_transforms(
                *values, tf.constant([params["flip_horizontal"]]), height, width
            )
            warped = augment.warp_images(tf.constant(image[None]), transforms)[0].numpy()
            np.testing.assert_allclose(warped, expected, atol=1e-3)


def test_augmented_batches_differ_per_epoch_stay_in_range_and_keep_labels(tmp_path):
    # Constant images survive any affine warp with nearest fill, so each augmented image still
    # shows which class it came from: dark = benign, bright = malignant.
    dark = [(f"b{i}.png", np.full((40, 40, 3), 30 + i, np.uint8)) for i in range(6)]
    bright = [(f"m{i}.png", np.full((40, 40, 3), 220 + i, np.uint8)) for i in range(6)]
    textured = [
        (f"t{i}.png", np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8))
        for i in range(4)
    ]
    split = _make_split(tmp_path / "constant", {"benign": dark, "malignant": bright})
    dataset = data.build_dataset(
        split, "train", image_size=32, batch_size=4, augment=True, shuffle=True
    )
    for x, y in dataset.data:
        means = x.numpy().mean(axis=(1, 2, 3))
        np.testing.assert_array_equal(means > 0.5, y.numpy() == 1)
    split = _make_split(tmp_path / "textured", {"benign": textured, "malignant": textured})
    options = dict(image_size=32, batch_size=8, shuffle=False, augment=True, seed=5)
    tfdata = data.build_dataset(split, "train", pipeline="tfdata", epochs=2, **options)
    both, _ = _materialise(tfdata)
    first, second = both[: len(both) // 2], both[len(both) // 2 :]
    generator = data.build_dataset(split, "train", pipeline="generator", **options)
    generator_first, _ = _materialise(generator)
    generator.data.on_epoch_end()
    generator_second, _ = _materialise(generator)
    for name, (a, b) in {
        "tfdata": (first, second),
        "generator": (generator_first, generator_second),
    }.items():
        assert a.min() >= 0.0 and a.max() <= 1.0
        assert np.abs(a - b).mean() > 0.01, f"{name}: two epochs gave the same augmentation"


@pytest.mark.parametrize("pipeline", ["tfdata", "generator"])
def test_an_epoch_is_a_pure_function_of_seed_and_epoch(synthetic_split, pipeline):
    """A run resumed at epoch 2 sees exactly the batches an uninterrupted run sees there."""
    options = dict(
        pipeline=pipeline, image_size=32, batch_size=8, augment=True, shuffle=True, seed=3
    )
    if pipeline == "tfdata":
        uninterrupted = data.build_dataset(synthetic_split, "train", epochs=3, **options)
        images, labels = _materialise(uninterrupted)
        third = slice(2 * len(images) // 3, None)
        expected_images, expected_labels = images[third], labels[third]
    else:
        uninterrupted = data.build_dataset(synthetic_split, "train", **options)
        for _ in range(2):
            _materialise(uninterrupted)
            uninterrupted.data.on_epoch_end()
        expected_images, expected_labels = _materialise(uninterrupted)
    resumed = data.build_dataset(synthetic_split, "train", start_epoch=2, **options)
    images, labels = _materialise(resumed)
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)
    other_seed = data.build_dataset(
        synthetic_split, "train", start_epoch=2, **{**options, "seed": 4}
    )
    assert not np.array_equal(_materialise(other_seed)[1], labels) or not np.array_equal(
        _materialise(other_seed)[0], images
    )


def test_the_tfdata_order_ignores_the_global_seed_even_zero(synthetic_split):
    """`--seed 0` sets TensorFlow's global seed to 0, which once broke the shuffle's trace;
    the order and warps must come from the pipeline seed only."""
    options = dict(image_size=32, batch_size=8, augment=True, shuffle=True, seed=3, epochs=1)
    runs = []
    for global_seed in (0, 5):
        keras.utils.set_random_seed(global_seed)
        runs.append(_materialise(data.build_dataset(synthetic_split, "train", **options)))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_validation_and_test_are_not_augmented_by_default(synthetic_split):
    for subset in ("val", "test"):
        dataset = data.build_dataset(synthetic_split, subset, image_size=32, batch_size=8)
        first, _ = _materialise(dataset)
        second, _ = _materialise(dataset)
        np.testing.assert_array_equal(first, second)


def test_bad_images_are_skipped_with_a_warning_and_non_rgb_converted(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    split = _make_split(
        tmp_path, {"benign": [("good.png", rgb)], "malignant": [("good2.png", rgb)]}
    )
    folder = split / "test" / "benign"
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("this is not an image")
    full = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(full[: len(full) // 2])
    Image.fromarray(rgb[:, :, 0]).save(folder / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((20, 20), 128, np.uint8)])).save(folder / "rgba.png")
    with pytest.warns(UserWarning) as caught:
        files = data.list_split_files(split, "test")
    messages = " ".join(str(w.message) for w in caught)
    assert "skipping 3 unreadable image(s)" in messages
    assert "empty file" in messages and "not an image" in messages and "truncated" in messages
    assert "converted to RGB" in messages
    names = sorted(os.path.basename(p) for p in files.paths)
    assert names == ["good.png", "good2.png", "gray.png", "rgba.png"]
    for pipeline in ("tfdata", "generator"):
        with pytest.warns(UserWarning):
            dataset = data.build_dataset(
                split, "test", pipeline=pipeline, image_size=20, batch_size=8, augment=False
            )
        x, y = _materialise(dataset)
        gray_index = [os.path.basename(p) for p in dataset.paths].index("gray.png")
        rgba_index = [os.path.basename(p) for p in dataset.paths].index("rgba.png")
        expected_gray = (
            np.asarray(Image.open(folder / "gray.png").convert("RGB"), np.float32) / 255.0
        )
        expected_rgba = (
            np.asarray(Image.open(folder / "rgba.png").convert("RGB"), np.float32) / 255.0
        )
        np.testing.assert_allclose(x[gray_index], expected_gray, atol=1e-6)
        np.testing.assert_allclose(x[rgba_index], expected_rgba, atol=1e-6)


def test_not_a_prepared_split_and_empty_split_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist; prepare one"):
        data.build_dataset(tmp_path / "missing", "train")
    (tmp_path / "train" / "benign").mkdir(parents=True)
    with pytest.raises(DataError, match="is not a prepared split: missing .*malignant"):
        data.build_dataset(tmp_path, "train")
    (tmp_path / "train" / "malignant").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no readable image"):
        data.build_dataset(tmp_path, "train")
    with pytest.raises(ValueError, match="Received: pipeline='keras'"):
        data.build_dataset(tmp_path, "train", pipeline="keras")
    with pytest.raises(ValueError, match="Unknown preprocessing"):
        data.build_dataset(tmp_path, "train", preprocess="inception")


def test_simclr_views_are_two_different_valid_views_and_reproducible(synthetic_split):
    files = data.list_split_files(synthetic_split, "train")
    config = augment.SimCLRAugmentation(jitter_probability=1.0, blur_probability=1.0)

    def first_batch():
        dataset = data.simclr_dataset_from_files(
            files.paths[:8], image_size=32, batch_size=4, augmentation=config, seed=3
        )
        return [v.numpy() for v in next(iter(dataset))]

    view_a, view_b = first_batch()
    assert view_a.shape == view_b.shape == (4, 32, 32, 3)
    assert view_a.min() >= 0.0 and view_a.max() <= 1.0
    assert np.abs(view_a - view_b).mean() > 0.01
    again_a, _ = first_batch()
    np.testing.assert_allclose(view_a, again_a)
    with pytest.raises(ValueError, match="crop_scale"):
        augment.SimCLRAugmentation(crop_scale=(0.0, 1.0))


def test_gaussian_blur_keeps_mean_and_smooths():
    image = tf.constant(np.random.default_rng(0).uniform(0, 1, (16, 16, 3)).astype("float32"))
    blurred = augment._gaussian_blur(image, tf.constant(1.5), 4).numpy()
    assert blurred.shape == (16, 16, 3)
    assert abs(blurred.mean() - float(tf.reduce_mean(image))) < 0.02
    assert blurred.std() < 0.5 * float(tf.math.reduce_std(image))

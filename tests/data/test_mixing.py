"""MixUp, CutMix and label smoothing (issue 22 item 3): mixed pixels, labels and class weights
against NumPy, CutMix boxes against their label shares, the smoothed loss against a NumPy BCE,
the seeded, resumable training stream, and the one-line refusals of bad settings."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_one_line_error, load_script, run_tool

from bc_keras import data
from bc_keras.config import CNNConfig, config_values
from bc_keras.data import generator, mixing
from bc_keras.errors import ConfigError
from bc_keras.models.classifier import classifier_loss, compile_classifier

train_cnn = load_script("train_cnn")
SEED = tf.constant([3, 14], tf.int64)


def _batch(count=8, size=12):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (count, size, size, 3)).astype(np.float32)
    labels = np.array([0, 1] * (count // 2), np.float32)
    return images, labels


def _bce(targets, probabilities):
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    return -(targets * np.log(p) + (1 - targets) * np.log(1 - p))


def test_mixup_blends_pixels_and_labels_by_the_same_share():
    images, labels = _batch()
    mixed = mixing.mixup(images, labels, SEED, alpha=0.4)
    share, partner = mixed.share.numpy(), mixed.partner.numpy()
    assert sorted(partner) == list(range(len(labels))) and np.all((share >= 0) & (share <= 1))
    kept = share[:, None, None, None]
    np.testing.assert_allclose(
        mixed.images.numpy(), kept * images + (1 - kept) * images[partner], rtol=1e-6, atol=1e-4
    )
    np.testing.assert_allclose(
        mixed.labels.numpy(), share * labels + (1 - share) * labels[partner], atol=1e-7
    )
    assert mixed.weights is None


def test_class_weights_of_a_mixed_image_weigh_each_source_image_as_its_own():
    """W * BCE(target, p) = lam w_i BCE(y_i, p) + (1 - lam) w_j BCE(y_j, p) for any p."""
    images, labels = _batch()
    weights = (0.7, 1.9)
    for mix in (mixing.mixup, mixing.cutmix):
        mixed = mix(images, labels, SEED, 1.0, class_weight=weights)
        share, partner = mixed.share.numpy(), mixed.partner.numpy()
        own = np.where(labels == 1, weights[1], weights[0])
        np.testing.assert_allclose(
            mixed.weights.numpy(), share * own + (1 - share) * own[partner], rtol=1e-6
        )
        p = np.random.default_rng(1).uniform(0.05, 0.95, len(labels))
        expected = share * own * _bce(labels, p) + (1 - share) * own[partner] * _bce(
            labels[partner], p
        )
        got = mixed.weights.numpy() * _bce(mixed.labels.numpy(), p)
        np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_cutmix_pastes_one_box_whose_area_is_the_partners_label_weight():
    count, size = 8, 16
    # Every image one flat value of its own, so the pasted box is where the value changed.
    images = np.repeat(np.arange(1.0, count + 1)[:, None, None, None] * 20.0, size, 1)
    images = np.repeat(np.repeat(images, size, 2), 3, 3).astype(np.float32)
    labels = np.array([0, 1, 1, 0, 1, 0, 0, 1], np.float32)
    for seed in range(6):
        mixed = mixing.cutmix(images, labels, tf.constant([seed, 1], tf.int64), alpha=1.0)
        share, partner = mixed.share.numpy(), mixed.partner.numpy()
        out = mixed.images.numpy()
        for i in range(count):
            box = out[i, :, :, 0] != images[i, 0, 0, 0]
            if partner[i] == i:
                assert share[i] == pytest.approx(1.0 - box.sum() / size**2) or not box.any()
                continue
            assert 1.0 - share[i] == pytest.approx(box.sum() / size**2, abs=1e-7)
            rows, columns = np.nonzero(box)
            if box.any():  # one rectangle of the partner's pixels
                rectangle = np.zeros_like(box)
                rectangle[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1] = True
                np.testing.assert_array_equal(box, rectangle)
                np.testing.assert_array_equal(out[i][box], images[partner[i]][box])
        np.testing.assert_allclose(
            mixed.labels.numpy(), share * labels + (1 - share) * labels[partner], atol=1e-7
        )


def test_beta_shares_have_the_beta_distributions_moments():
    share = mixing.beta_share(SEED, 0.2, 20000).numpy()
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
    assert share.mean() == pytest.approx(0.5, abs=0.01)
    assert share.var() == pytest.approx(1 / (4 * 1.4), abs=0.006)


def test_both_alphas_switch_between_mixup_and_cutmix_per_batch():
    images, labels = _batch()
    kinds = set()
    for seed in range(12):
        seed = tf.constant([seed, 2], tf.int64)
        both = mixing.mix_batch(images, labels, seed, mixup_alpha=0.4, cutmix_alpha=1.0)
        seeds = tf.random.experimental.stateless_split(seed, num=3)
        blended = mixing.mixup(images, labels, seeds[0], 0.4)
        pasted = mixing.cutmix(images, labels, seeds[1], 1.0)
        same = [np.array_equal(both.images.numpy(), m.images.numpy()) for m in (blended, pasted)]
        assert same.count(True) == 1
        kinds.add(same.index(True))
    assert kinds == {0, 1}


def test_label_smoothing_is_the_bce_of_the_smoothed_targets():
    labels = np.array([0, 1, 1, 0, 1], np.float32)
    p = np.array([0.1, 0.8, 0.4, 0.6, 0.999], np.float32)
    for eps in (0.0, 0.1, 0.3):
        loss = float(classifier_loss(eps)(labels, p))
        assert loss == pytest.approx(_bce(labels * (1 - eps) + eps / 2, p).mean(), rel=1e-5)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    assert compile_classifier(model, 1e-3).loss.get_config()["label_smoothing"] == 0.0
    assert compile_classifier(model, 1e-3, label_smoothing=0.2).loss.label_smoothing == 0.2


def _stream(paths, labels, epochs=2, **options):
    options = data.PipelineOptions(
        image_size=16, batch_size=4, augment=True, shuffle=True, seed=5, **options
    )
    return data.tfdata_from_files(paths, labels, options, epochs=epochs)


def test_the_mixed_stream_is_a_function_of_seed_epoch_and_batch(synthetic_split):
    files = data.list_split_files(synthetic_split, "train")
    chosen = np.concatenate([np.flatnonzero(files.labels == c)[:6] for c in (0, 1)])
    paths, labels = [files.paths[i] for i in chosen], files.labels[chosen]
    techniques = dict(mixup_alpha=0.4, cutmix_alpha=1.0, randaugment=(2, 5))
    first = [b for b in _stream(paths, labels, **techniques)]
    # A second stream, resumed at epoch 1, delivers the first one's epoch 1 exactly.
    resumed = [b for b in _stream(paths, labels, 1, start_epoch=1, **techniques)]
    assert len(first) == 6 and len(resumed) == 3
    for ours, theirs in zip(first[3:], resumed, strict=True):
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    plain = next(iter(_stream(paths, labels)))
    assert not np.array_equal(first[0][0].numpy(), plain[0].numpy())
    assert not np.array_equal(first[0][0].numpy(), first[3][0].numpy())  # epochs differ
    # Labels are mixed (some strictly between 0 and 1); class weights travel per image.
    targets = np.concatenate([b[1].numpy() for b in first])
    assert np.any((targets > 0.01) & (targets < 0.99))
    weighted = next(iter(_stream(paths, labels, mixup_alpha=0.4, class_weight=(0.5, 2.0))))
    assert len(weighted) == 3 and np.all((weighted[2].numpy() >= 0.5) & (weighted[2] <= 2.0))


def test_the_generator_and_bad_options_are_refused_in_python():
    options = data.PipelineOptions(mixup_alpha=0.2, randaugment=(1, 3))
    with pytest.raises(ValueError, match="--randaugment and --mixup need the tf.data pipeline"):
        generator.generator_from_files(["a.png"], [0], options)
    with pytest.raises(ValueError, match="mixup_alpha must be 0"):
        data.PipelineOptions(mixup_alpha=-0.1)
    with pytest.raises(ValueError, match="N must be in 1..14"):
        data.PipelineOptions(randaugment=(0, 3))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"mixup": -0.2}, "--mixup -0.2: must be 0 or more"),
        ({"cutmix": -1.0}, "--cutmix -1.0: must be 0 or more"),
        ({"label_smoothing": 1.0}, "--label-smoothing 1.0: must be in [0, 1)"),
        ({"label_smoothing": -0.1}, "--label-smoothing -0.1: must be in [0, 1)"),
        ({"randaugment": [0, 5]}, "--randaugment 0 5: out of range"),
        ({"randaugment": [2, 11]}, "--randaugment 2 11: out of range"),
        ({"randaugment": [2]}, "--randaugment 2: two integers N M are needed"),
        ({"randaugment": [2, 2.5]}, "--randaugment 2 2.5: N and M are integers"),
        ({"mixup": 0.2, "pipeline": "generator"}, "--mixup need --pipeline tfdata"),
        ({"label_smoothing": 0.1, "teacher": "t.h5"}, "--label-smoothing does not combine"),
    ],
)
def test_python_configs_refuse_bad_settings_in_one_line(values, message):
    with pytest.raises(ConfigError) as error:
        CNNConfig(data="split", **values)
    assert message in str(error.value) and "\n" not in str(error.value)


def _args(split, tmp_path, *extra):
    return ["--data", split, "--epochs", "1", "--image-size", "16",
            "--run-dir", tmp_path / "run", "--model-out", tmp_path / "m.h5", *extra]  # fmt: skip


def test_flags_are_parsed_recorded_and_refused_in_one_line(synthetic_split, tmp_path, capsys):
    flags = "--mixup 0.2 --cutmix 1 --randaugment 2 5 --label-smoothing 0.1".split()
    config = train_cnn.parse_args([str(a) for a in _args(synthetic_split, tmp_path, *flags)])
    recorded = json.loads(json.dumps(config_values(config)))
    assert (recorded["mixup"], recorded["cutmix"]) == (0.2, 1.0)
    assert (recorded["randaugment"], recorded["label_smoothing"]) == ([2, 5], 0.1)
    report = train_cnn.parse_args([str(a) for a in _args(synthetic_split, tmp_path)])
    assert (report.mixup, report.cutmix, report.randaugment, report.label_smoothing) == (
        0.0, 0.0, None, 0.0,
    )  # fmt: skip
    for extra, fragments in (
        (("--randaugment", "15", "2"), ("--randaugment 15 2: out of range", "1..14")),
        (("--cutmix", "1", "--pipeline", "generator"), ("--cutmix need --pipeline tfdata",)),
    ):
        code, _, err = run_tool(train_cnn, _args(synthetic_split, tmp_path, *extra), capsys)
        assert_one_line_error(code, err, *fragments)
        assert not (tmp_path / "run").exists()
    for flag, value, rule in (("--mixup", "-0.5", "must be 0 or more, got -0.5"),
                              ("--label-smoothing", "1", "must be in [0, 1), got 1")):  # fmt: skip
        with pytest.raises(SystemExit) as exit:  # argparse's own one line
            run_tool(train_cnn, _args(synthetic_split, tmp_path, flag, value), capsys)
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit.value.code == 2 and f"error: argument {flag}: {rule}" in lines[-1]

"""Both input pipelines end to end: the report's ImageDataGenerator trains every classifier
experiment on an image folder, and tf.data trains on a TFRecord folder to the last figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error, load_script, load_tool, run_tool

from bc_keras import cli, data, evaluation, models, runs
from bc_keras.data import generator, tfrecords
from bc_keras.evaluation import classifier as evaluation_classifier

train_cnn = load_script("train_cnn")
train_transfer = load_script("train_transfer")
train_simclr = load_script("train_simclr")
export_tool = load_tool("export_tfrecords")

FIGURES = runs.CLASSIFIER_RUN_FIGURES
PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--image-size", "32", "--batch-size", "8", "--epochs", "1", "--seed", "3"]
EXPERIMENTS = {
    "cnn": (train_cnn, []),
    "transfer": (
        train_transfer,
        ["--weights", "none", "--backbone", "mobilenet", "--alpha", "0.25"],
    ),
    "simclr_linear": (train_simclr, ["linear", "--encoder", "none"]),
    "simclr_finetune": (train_simclr, ["finetune", "--encoder", "none"]),
}


@pytest.fixture(scope="module")
def shards(synthetic_split, tmp_path_factory):
    """The synthetic split exported as 2 TFRecord shards per subset."""
    out = tmp_path_factory.mktemp("records") / "shards"
    code = cli.run_script(
        export_tool.main, [str(synthetic_split), "--out", str(out), "--shards", "2"]
    )
    assert code == 0
    return out


def _assert_finished(folder, model):
    run = folder / "run"
    assert models.load_model(model)[1]["kind"] == "classifier"
    metrics = json.loads((run / runs.METRICS_FILE).read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["label_fraction_used"] == 1.0
    for name in FIGURES:
        assert (run / name).read_bytes()[:8] == PNG, name
    assert not runs.has_backup(run), "a finished run leaves no backup"
    return run


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_generator_pipeline_trains_every_experiment_on_an_image_folder(
    experiment, synthetic_split, tmp_path, monkeypatch
):
    script, flags = EXPERIMENTS[experiment]
    flows = []
    original = generator.generator_from_files

    def spy(paths, labels, options, **kwargs):
        flows.append((len(paths), options.augment, options.shuffle))
        return original(paths, labels, options, **kwargs)

    monkeypatch.setattr(generator, "generator_from_files", spy)
    model = tmp_path / "model.h5"
    argv = [*flags, "--data", synthetic_split, "--pipeline", "generator", *TINY]
    argv += ["--run-dir", tmp_path / "run", "--model-out", model]
    assert cli.run_script(script.main, [str(a) for a in argv]) == 0
    run = _assert_finished(tmp_path, model)
    assert json.loads((run / runs.CONFIG_FILE).read_text())["pipeline"] == "generator"
    train = len(data.list_split_files(synthetic_split, "train").paths)
    # The training stream (one per phase; transfer has two) came from the ImageDataGenerator.
    assert flows and all(flow == (train, True, True) for flow in flows), flows


@pytest.mark.slow
def test_tfdata_trains_on_a_tfrecord_folder_to_the_last_figure(
    synthetic_split, shards, tmp_path, monkeypatch
):
    drawn = []
    original = evaluation.decoded_images

    def spy(dataset, indices):
        images = original(dataset, indices)
        drawn.append((dataset.paths, np.asarray(indices), images))
        return images

    monkeypatch.setattr(evaluation_classifier, "decoded_images", spy)
    model = tmp_path / "cnn.h5"
    argv = ["--data", shards, *TINY, "--run-dir", tmp_path / "run", "--model-out", model]
    assert cli.run_script(train_cnn.main, [str(a) for a in argv]) == 0
    run = _assert_finished(tmp_path, model)
    predictions = evaluation.read_predictions(run)
    assert len(predictions["label"]) == len(data.list_split_files(shards, "test").paths)
    # The sample predictions were drawn from the shards' decoded pixels: the very images the
    # folder's files decode to (no file exists at those paths).
    assert len(drawn) == 1
    paths, indices, images = drawn[0]
    assert len(indices) == 12 and images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
    assert not any(Path(paths[i]).exists() for i in indices)
    folder = data.build_dataset(synthetic_split, "test", image_size=32)
    np.testing.assert_array_equal(images, evaluation.decoded_images(folder, indices))


def test_the_generator_is_refused_only_on_a_tfrecord_folder(shards, tmp_path, capsys):
    argv = ["--data", shards, "--pipeline", "generator", *TINY]
    argv += ["--run-dir", tmp_path / "run", "--model-out", tmp_path / "cnn.h5"]
    code, _, err = run_tool(train_cnn, argv, capsys)
    assert_one_line_error(code, err, "holds TFRecord shards", "--pipeline tfdata")
    assert not (tmp_path / "run").exists(), "a refused run leaves no folder"
    tfrecords.check_pipeline(shards, "tfdata")
    tfrecords.check_pipeline(tmp_path, "generator")  # an image folder: any pipeline reads it


def test_sample_figure_images_follow_the_indices_asked_for(synthetic_split):
    test = data.build_dataset(synthetic_split, "test", image_size=32)
    forward = evaluation.decoded_images(test, [0, 3, 5])
    backward = evaluation.decoded_images(test, [5, 3, 0])
    np.testing.assert_array_equal(forward[::-1], backward)
    alone = evaluation.decoded_images(test, [3])
    np.testing.assert_array_equal(alone[0], forward[1])

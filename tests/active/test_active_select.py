"""`python -m bc_keras.active select`: the CSV of the images to annotate next, against the
strategies recomputed from the model's own probabilities and penultimate features; the
patient cap; the bad inputs, one line each."""

from __future__ import annotations

import csv
import importlib
import subprocess
import sys
from collections import Counter

import keras
import numpy as np
import pytest

import bc_keras
from bc_keras import models
from bc_keras.active import select, strategies
from bc_keras.histology.breakhis import slide_id_of
from tests.helpers import REPO_ROOT, assert_one_line_error, run_tool

COMMAND = importlib.import_module("bc_keras.active.__main__")
THRESHOLD = 0.6


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained baseline CNN at 32 px saved as a classifier with a 0.6 threshold (the
    strategies need a model's outputs, not a good one)."""
    keras.utils.set_random_seed(0)
    model = models.build_baseline_cnn(32, 16, 0.5)
    path = tmp_path_factory.mktemp("model") / "cnn.h5"
    metadata = {
        "kind": "classifier",
        "image_size": 32,
        "preprocess": "rescale",
        "threshold": THRESHOLD,
    }
    return models.save_model(model, path, metadata)


@pytest.fixture(scope="module")
def pool(synthetic_split):
    return synthetic_split / "train"


def _rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _select(model_file, pool, out, capsys, *extra):
    code, _, err = run_tool(
        COMMAND, ["select", model_file, "--pool", pool, "--out", out, "--quiet", *extra], capsys
    )
    assert code == 0, err
    return _rows(out)


def test_uncertainty_csv_equals_the_strategy_on_the_predictors_probabilities(
    model_file, pool, tmp_path, capsys
):
    files = select.pool_images(pool)
    predictor = bc_keras.load_model(model_file)
    probabilities = predictor.predict_proba(files)
    keys = strategies.patient_keys(files)
    for name, scores in (
        ("entropy", strategies.entropy_scores(probabilities)),
        ("margin", 1 - np.abs(probabilities - THRESHOLD) / THRESHOLD),
    ):
        rows = _select(
            model_file, pool, tmp_path / f"{name}.csv", capsys, "--budget", "12", "--strategy", name
        )
        assert list(rows[0]) == ["path", "patient", "score", "rank"]
        expected = strategies.ranked_with_cap(scores, keys, 12, 3)  # cap ceil(12 / 4)
        assert [row["path"] for row in rows] == [files[i] for i in expected]
        np.testing.assert_allclose([float(r["score"]) for r in rows], scores[expected], rtol=1e-7)
        assert [int(r["rank"]) for r in rows] == list(range(1, 13))
        assert [r["patient"] for r in rows] == [slide_id_of(files[i]) for i in expected]
        assert max(Counter(r["patient"] for r in rows).values()) <= 3


def test_coreset_uses_the_penultimate_features_and_the_labelled_images(
    model_file, pool, synthetic_split, tmp_path, capsys
):
    labelled_dir = pool / "benign"
    rows = _select(
        model_file,
        pool,
        tmp_path / "coreset.csv",
        capsys,
        "--budget",
        "5",
        "--strategy",
        "coreset",
        "--labelled",
        labelled_dir,
        "--patient-cap",
        "1",
    )
    files = select.pool_images(pool, [labelled_dir])
    assert all("/malignant/" in f for f in files)  # the labelled benign images left the pool
    labelled = select.pool_images(labelled_dir)
    predictor = bc_keras.load_model(model_file)
    # The CNN's penultimate features: Dense(16) after dropout (the identity at inference).
    network = predictor.keras_model
    dense = keras.Model(network.inputs, network.get_layer("dense").output)
    images = np.concatenate([batch[0].numpy() for batch in predictor.inputs(files)[0]])
    features = select.image_features(predictor, files)
    np.testing.assert_allclose(features, dense.predict(images, verbose=0), rtol=1e-5, atol=1e-6)
    expected, scores = strategies.k_center_greedy(
        features, 5, select.image_features(predictor, labelled), strategies.patient_keys(files), 1
    )
    assert [row["path"] for row in rows] == [files[i] for i in expected]
    np.testing.assert_allclose([float(r["score"]) for r in rows], scores, rtol=1e-6)
    assert len({r["patient"] for r in rows}) == 5  # one image per patient (--patient-cap 1)


def test_random_is_seeded_and_the_issue_form_is_select(model_file, pool, tmp_path, capsys):
    first = _select(
        model_file,
        pool,
        tmp_path / "a.csv",
        capsys,
        "--budget",
        "6",
        "--strategy",
        "random",
        "--seed",
        "7",
    )
    code, _, err = run_tool(
        COMMAND,
        [
            model_file,
            "--pool",
            pool,
            "--budget",
            "6",
            "--strategy",
            "random",
            "--seed",
            "7",
            "--out",
            tmp_path / "b.csv",
        ],
        capsys,
    )
    assert code == 0, err
    assert _rows(tmp_path / "b.csv") == first
    other = _select(
        model_file,
        pool,
        tmp_path / "c.csv",
        capsys,
        "--budget",
        "6",
        "--strategy",
        "random",
        "--seed",
        "8",
    )
    assert [r["path"] for r in other] != [r["path"] for r in first]


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--strategy", "bald"], ["unknown strategy 'bald'", "entropy, margin, random, coreset"]),
        (["--budget", "1000"], ["--budget 1000 is more than the", "--budget 96 or less"]),
        (["--budget", "0"], ["--budget 0 must be 1 or more"]),
        (["--pool", "EMPTY"], ["holds no image", "folder of unlabelled images"]),
        (["--pool", "MISSING"], ["is not a folder"]),
        (["--budget", "8", "--patient-cap", "1", "--pool", "ONE_PATIENT"], ["--patient-cap 1"]),
    ],
)
def test_bad_inputs_are_one_line(
    argv, fragments, model_file, pool, synthetic_split, tmp_path, capsys
):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    one_patient = tmp_path / "one"
    one_patient.mkdir()
    for path in sorted((pool / "malignant").iterdir())[:8]:
        (one_patient / path.name).symlink_to(path.resolve())
    # Eight images of fewer than eight patients: one image per patient cannot fill 8.
    places = {
        "EMPTY": tmp_path / "empty",
        "MISSING": tmp_path / "missing",
        "ONE_PATIENT": one_patient,
    }
    given = {"--pool": pool, "--budget": "4", "--strategy": "entropy"}
    pairs = dict(zip(argv[::2], argv[1::2], strict=True))
    given.update({k: places.get(v, v) for k, v in pairs.items()})
    flat = [str(x) for item in given.items() for x in item]
    code, _, err = run_tool(
        COMMAND, ["select", model_file, *flat, "--out", tmp_path / "s.csv"], capsys
    )
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "s.csv").exists()


def test_help_documents_every_flag_without_importing_tensorflow():
    parser = COMMAND.build_parser()
    for action in parser._subparsers._group_actions[0].choices.values():
        for option in action._actions:
            assert option.help, option.option_strings
    code = (
        "import sys\nfrom bc_keras.active import __main__ as active\n"
        "for argv in (['--help'], ['select', '--help'], ['simulate', '--help']):\n"
        "    try:\n        active.main(argv)\n    except SystemExit:\n        pass\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "--strategies" in result.stdout and "--patient-cap" in result.stdout

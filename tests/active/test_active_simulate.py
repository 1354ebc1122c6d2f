"""`python -m bc_keras.active simulate` end to end on the small synthetic split (2 rounds of
entropy and random, 32 px, 1 epoch): label counts, selections, AUCs equal to the saved
predictions, the paired difference and verdict, the figure, the resume and the bad inputs."""

from __future__ import annotations

import csv
import importlib
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as sk

import bc_keras
from bc_keras import data
from bc_keras.active import results, select, strategies
from bc_keras.evaluation.metrics import bootstrap_by_patient
from bc_keras.prepare.subsets import label_fraction_indices, patients_of_paths
from tests.helpers import assert_one_line_error, run_tool

COMMAND = importlib.import_module("bc_keras.active.__main__")
BUDGET, ROUNDS, SAMPLES, SEED = 8, 2, 200, 42


def _argv(split, out, *extra):
    return [
        "simulate",
        "--data",
        split,
        "--out",
        out,
        "--start-fraction",
        "0.2",
        "--rounds",
        str(ROUNDS),
        "--budget",
        str(BUDGET),
        "--strategies",
        "entropy,random",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--bootstrap-samples",
        str(SAMPLES),
        "--quiet",
        *extra,
    ]


@pytest.fixture(scope="module")
def simulation(synthetic_split, tmp_path_factory):
    out = tmp_path_factory.mktemp("active") / "sim"
    code = bc_keras.cli.run_script(COMMAND.main, [str(a) for a in _argv(synthetic_split, out)])
    assert code == 0
    return out


def _predictions(run_dir):
    with open(Path(run_dir) / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    return (
        np.array([int(r["label"]) for r in rows]),
        np.array([float(r["probability"]) for r in rows]),
        [r["patient"] for r in rows],
    )


@pytest.mark.slow
def test_label_counts_selections_and_the_labelled_splits(simulation, synthetic_split):
    result = json.loads((simulation / "active.json").read_text())
    train = data.list_split_files(synthetic_split, "train")
    start = label_fraction_indices(train.labels, patients_of_paths(train.paths), 0.2, seed=SEED)
    start_files = {train.paths[i] for i in start}
    for strategy in ("entropy", "random"):
        records = result["curves"][strategy]
        assert [r["labels"] for r in records] == [
            len(start) + BUDGET * k for k in range(ROUNDS + 1)
        ]
        labelled = set(start_files)
        for record in records[1:]:
            chosen = record["selected"]
            assert len(chosen) == len(set(chosen)) == BUDGET and not labelled & set(chosen)
            patients = Counter(strategies.patient_keys(chosen))
            assert max(patients.values()) <= 2  # ceil(8 / 4)
            assert record["patients_chosen"] == len(patients)
            labelled |= set(chosen)
            linked = select.pool_images(Path(record["run_dir"]).parent / "split" / "train")
            assert sorted(os.path.basename(p) for p in linked) == sorted(
                os.path.basename(p) for p in labelled
            )
    # Round 1 of entropy: the start model's probabilities on the pool, ranked with the cap.
    pool = [p for p in train.paths if p not in start_files]
    start_model = bc_keras.load_model(Path(result["curves"]["entropy"][0]["run_dir"]) / "model.h5")
    scores = strategies.entropy_scores(start_model.predict_proba(pool))
    expected = strategies.ranked_with_cap(scores, strategies.patient_keys(pool), BUDGET, 2)
    assert result["curves"]["entropy"][1]["selected"] == [pool[i] for i in expected]
    # Random is seeded by seed + round.
    expected, _, _ = strategies.choose(
        "random", BUDGET, strategies.patient_keys(pool), seed=SEED + 1
    )
    assert result["curves"]["random"][1]["selected"] == [pool[i] for i in expected]


@pytest.mark.slow
def test_aucs_intervals_and_verdict_equal_the_saved_predictions(simulation):
    result = json.loads((simulation / "active.json").read_text())
    aucs = {}
    for strategy, records in result["curves"].items():
        for record in records:
            labels, probabilities, patients = _predictions(record["run_dir"])
            auc = sk.roc_auc_score(labels, probabilities)
            assert 0.0 <= record["auc_roc"] <= 1.0 and record["auc_roc"] == pytest.approx(auc)
            interval = bootstrap_by_patient(
                labels, probabilities, patients, samples=SAMPLES, seed=SEED
            )["auc_roc"]
            assert record["auc_95ci"] == pytest.approx(interval)
            aucs[strategy, record["round"]] = auc
    rounds = result["versus_random"]["entropy"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["difference"] == pytest.approx(
            aucs["entropy", r["round"]] - aucs["random", r["round"]]
        )
        low, high = r["difference_95ci"]
        assert low <= high
    low, high = rounds[-1]["difference_95ci"]
    line = result["verdicts"][0]
    expected = "beats random" if low > 0 else "worse than random" if high < 0 else "not shown"
    assert line.startswith("entropy vs random at equal labels") and expected in line
    assert line in (simulation / "active.md").read_text()
    assert (simulation / "active_auc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in simulation.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_a_second_run_resumes_without_training_and_other_settings_are_refused(
    simulation, synthetic_split, capsys
):
    before = json.loads((simulation / "active.json").read_text())
    model = Path(before["curves"]["random"][-1]["run_dir"]) / "model.h5"
    stamp = model.stat().st_mtime_ns
    code, _, err = run_tool(COMMAND, _argv(synthetic_split, simulation), capsys)
    assert code == 0, err
    assert json.loads((simulation / "active.json").read_text()) == before
    assert model.stat().st_mtime_ns == stamp
    code, _, err = run_tool(COMMAND, _argv(synthetic_split, simulation, "--seed", "1"), capsys)
    assert_one_line_error(code, err, "holds a simulation with other settings (seed)")


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--strategies", "entropy,bald"], ["unknown strategy 'bald'"]),
        (["--rounds", "20"], ["--rounds 20 x --budget 8 is more than the", "unlabelled"]),
        (["--experiment", "linear"], ["--experiment linear needs --encoder"]),
        (["--experiment", "svm"], ["unknown --experiment 'svm'"]),
        (["--recipe", "fast"], ["unknown --recipe 'fast'"]),
    ],
)
def test_bad_inputs_are_one_line(extra, fragments, synthetic_split, tmp_path, capsys):
    code, _, err = run_tool(COMMAND, _argv(synthetic_split, tmp_path / "sim", *extra), capsys)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "sim").exists()


def test_paired_difference_is_the_difference_of_two_aucs_on_one_bootstrap():
    labels = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    patients = np.array(["a", "a", "b", "b", "c", "c", "d", "d"])
    a = {
        "filename": list("abcdefgh"),
        "label": labels,
        "patient": patients,
        "probability": np.array([0.1, 0.9, 0.2, 0.8, 0.7, 0.3, 0.6, 0.4]),
    }
    b = {**a, "probability": np.array([0.6, 0.4, 0.2, 0.8, 0.3, 0.7, 0.6, 0.5])}
    paired = results.paired_auc_difference(a, b, samples=300, seed=0)
    assert paired["difference"] == pytest.approx(1.0 - sk.roc_auc_score(labels, b["probability"]))
    # Against itself the difference is 0 in every resample.
    assert results.paired_auc_difference(a, a, samples=50)["difference_95ci"] == [0.0, 0.0]
    with pytest.raises(bc_keras.errors.DataError, match="different test images"):
        results.paired_auc_difference(a, {**b, "filename": list("abcdefgx")})


def test_the_study_budget_fits_the_split(synthetic_split):
    from bc_keras.active.simulate import round_budget

    train = data.list_split_files(synthetic_split, "train")
    start = label_fraction_indices(train.labels, patients_of_paths(train.paths), 0.1, seed=SEED)
    left = len(train.paths) - len(start)
    # 96 training images: 5% is 5 a round while 2 rounds fit in what the start leaves.
    assert len(train.paths) == 96 and round_budget(synthetic_split, 2) == min(5, left // 2)
    # 50 rounds do not fit 5 a round: the budget drops to what does.
    assert round_budget(synthetic_split, 50) == max(1, left // 50) < 5

"""The comparison table is rebuilt from run folders alone."""

from __future__ import annotations

import csv
import json

import pytest

from bc_keras.report import compare


def _run(root, name, config, metrics=None):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if metrics is not None:
        text = metrics if isinstance(metrics, str) else json.dumps(metrics)
        (folder / "metrics.json").write_text(text)


SCORES = {
    "accuracy": 0.8,
    "balanced_accuracy": 0.75,
    "specificity": 0.6,
    "precision": 0.75,
    "recall": 0.9,
    "f1": 0.8181818,
    "auc_roc": 0.91,
    "patient_recognition_rate": 0.7,
    "counts": {"images": 40},
    "flags": [],
}


def test_comparison_table_from_saved_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    _run(runs, "cnn/a", {"experiment": "cnn", "recipe": "report", "data": "split"}, SCORES)
    _run(
        runs,
        "transfer/b",
        {"experiment": "transfer", "recipe": "robust", "data": "split", "backbone": "resnet50"},
        {**SCORES, "accuracy": 0.9},
    )
    _run(
        runs,
        "simclr/c",
        {"experiment": "simclr_linear", "data": "split", "encoder": "e.h5", "label_fraction": 0.1},
        SCORES,
    )
    _run(runs, "simclr/pre", {"experiment": "simclr_pretrain"}, {"best_val_loss": 3.2})
    collapsed = {**SCORES, "flags": ["predicts malignant for every image"], "specificity": 0.0}
    _run(runs, "cnn/collapsed", {"experiment": "cnn", "recipe": "report"}, collapsed)
    _run(runs, "cnn/unfinished", {"experiment": "cnn"})
    _run(runs, "cnn/broken", {"experiment": "cnn"}, "")
    assert compare.main([str(runs)]) == 0
    err = capsys.readouterr().err
    assert "cnn/unfinished: unfinished" in err and "cnn/broken: unreadable" in err
    with open(runs / "comparison.csv", newline="") as file:
        rows = {row["run"]: row for row in csv.DictReader(file)}
    assert set(rows) == {"cnn/a", "transfer/b", "simclr/c", "cnn/collapsed"}, (
        "the pretraining run has no classifier metrics; unfinished and broken runs are left out"
    )
    assert rows["transfer/b"]["model"] == "transfer resnet50"
    assert rows["transfer/b"]["recipe"] == "robust" and float(rows["transfer/b"]["accuracy"]) == 0.9
    assert rows["simclr/c"]["model"] == "linear ResNet-18 (SimCLR, 10% labels)"
    assert rows["cnn/a"]["model"] == "baseline CNN" and rows["cnn/a"]["test_images"] == "40"
    table = (runs / "comparison.md").read_text()
    assert (
        "| cnn/a | baseline CNN | report | split | 1.000 | 0.800 | 0.750 | 0.600 | 0.750 | 0.900 "
        "| 0.818 | 0.910 | 0.700 | 40 |  |" in table
    )
    assert "**predicts malignant for every image**" in table
    assert compare.main([str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


GOOD = {"experiment": "cnn", "recipe": "report", "data": "split"}
# Run folders of a shape no training script writes: (config.json, metrics.json, the reason
# printed). A text is written as is, anything else as JSON.
BAD_RUNS = {
    "truncated": (GOOD, json.dumps(SCORES)[:40], "unreadable metrics.json"),
    "list": (GOOD, [SCORES], "unreadable metrics.json (holds a list, not an object)"),
    "number": (GOOD, 0.8, "unreadable metrics.json (holds a float, not an object)"),
    "text_metric": (
        GOOD,
        {**SCORES, "accuracy": "0.8"},
        "malformed metrics.json (accuracy is '0.8', not a finite number)",
    ),
    "nan": (GOOD, '{"accuracy": NaN}', "malformed metrics.json (accuracy is nan, not a finite"),
    "infinite_interval": (
        GOOD,
        {**SCORES, "bootstrap_95ci_by_patient": {"accuracy": [0.1, float("inf")]}},
        "malformed metrics.json (bootstrap_95ci_by_patient is not",
    ),
    "boolean_metric": (GOOD, {**SCORES, "f1": True}, "f1 is True, not a finite number"),
    "text_count": (GOOD, {**SCORES, "counts": {"images": "40"}}, "counts.images is '40'"),
    "flag_not_text": (GOOD, {**SCORES, "flags": [1]}, "flags is not a list of texts"),
    "no_scores": (GOOD, {"loss": 1.0}, "holds neither classifier scores nor a pretraining"),
    "config_corrupt": ('{"experiment": "cnn",', SCORES, "unreadable config.json"),
    "config_list": (["cnn"], SCORES, "unreadable config.json (holds a list, not an object)"),
    "config_missing": (None, SCORES, "no config.json"),
    "config_fraction_text": (
        {**GOOD, "label_fraction": "0.1"},
        SCORES,
        "malformed config.json (label_fraction is '0.1', not a share in (0, 1])",
    ),
    "config_experiment_list": (
        {**GOOD, "experiment": ["cnn"]},
        SCORES,
        "malformed config.json (experiment is ['cnn'], not a text)",
    ),
    "fraction_used_zero": (
        GOOD,
        {**SCORES, "label_fraction_used": 0},
        "malformed metrics.json (label_fraction_used is 0, not a share in (0, 1])",
    ),
}


@pytest.mark.parametrize("bad", sorted(BAD_RUNS))
def test_a_run_folder_of_the_wrong_shape_is_left_out_with_a_note(tmp_path, capsys, bad):
    """Run folders are untrusted: a bad one is named with its reason and counted; the good
    runs stay in the table, every cell of which is a number or a text, never a traceback."""
    runs = tmp_path / "runs"
    _run(runs, "cnn/good", GOOD, SCORES)
    config, metrics, reason = BAD_RUNS[bad]
    folder = runs / "cnn" / bad
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "config.json").write_text(
            config if isinstance(config, str) else json.dumps(config)
        )
    (folder / "metrics.json").write_text(
        metrics if isinstance(metrics, str) else json.dumps(metrics)
    )
    assert compare.main([str(runs)]) == 0
    out, err = capsys.readouterr()
    assert f"left out cnn/{bad}: " in err and reason in err, err
    assert "1 classifier run(s); 1 run folder(s) left out" in out
    with open(runs / "comparison.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["run"] for row in rows] == ["cnn/good"]
    assert float(rows[0]["accuracy"]) == 0.8 and rows[0]["test_images"] == "40"


def test_only_bad_runs_is_one_error_line(tmp_path, capsys):
    runs = tmp_path / "runs"
    _run(runs, "cnn/nan", GOOD, '{"accuracy": NaN}')
    assert compare.main([str(runs)]) == 2
    err = capsys.readouterr().err
    assert "left out cnn/nan: malformed metrics.json" in err
    assert err.strip().splitlines()[-1].startswith("error: no finished run")
    assert not (runs / "comparison.md").exists()


def test_label_fraction_of_every_experiment_is_the_share_actually_used(tmp_path, capsys):
    """label_fraction_used (metrics.json, else config.json) wins over the requested share,
    for the CNN and transfer runs as for SimCLR."""
    runs = tmp_path / "runs"
    _run(runs, "cnn/tiny", {**GOOD, "label_fraction": 0.001, "label_fraction_used": 0.125},
         {**SCORES, "label_fraction_used": 0.125})  # fmt: skip
    transfer = {"experiment": "transfer", "backbone": "resnet50", "data": "split"}
    _run(runs, "transfer/half", {**transfer, "label_fraction_used": 0.5}, SCORES)
    _run(runs, "transfer/quarter", {**transfer, "label_fraction": 0.25}, SCORES)
    _run(runs, "transfer/all", transfer, SCORES)
    linear = {"experiment": "simclr_linear", "encoder": "none", "label_fraction": 0.1}
    _run(runs, "simclr/random", linear, {**SCORES, "label_fraction_used": 0.2})
    assert compare.main([str(runs)]) == 0
    capsys.readouterr()
    with open(runs / "comparison.csv", newline="") as file:
        rows = {row["run"]: row for row in csv.DictReader(file)}
    fractions = {name: float(row["label_fraction"]) for name, row in rows.items()}
    assert fractions == {"cnn/tiny": 0.125, "transfer/half": 0.5, "transfer/quarter": 0.25,
                         "transfer/all": 1.0, "simclr/random": 0.2}  # fmt: skip
    assert rows["cnn/tiny"]["model"] == "baseline CNN (12.5% labels)"
    assert rows["transfer/quarter"]["model"] == "transfer resnet50 (25% labels)"
    assert rows["transfer/all"]["model"] == "transfer resnet50"
    assert rows["simclr/random"]["model"] == "linear ResNet-18 (random init, 20% labels)"
    assert (
        "| cnn/tiny | baseline CNN (12.5% labels) | report | split | 0.125 |"
        in (runs / "comparison.md").read_text()
    )


def test_a_cross_fitted_run_is_one_model_and_its_members_are_not_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    config = {"experiment": "cnn", "recipe": "robust", "data": "split", "cross_fit": 3,
              "cross_fit_final": "refit"}  # fmt: skip
    _run(runs, "cnn/crossed", config, SCORES)
    for fold in (1, 2, 3):  # a member: config.json, no metrics.json of its own
        _run(runs, f"cnn/crossed/members/fold{fold}", {"experiment": "cnn", "cross_fit": 0})
    _run(runs, "cnn/single", {**config, "cross_fit": 0}, SCORES)
    assert compare.main([str(runs)]) == 0
    assert "left out" not in capsys.readouterr().err
    with open(runs / "comparison.csv", newline="") as file:
        rows = {row["run"]: row["model"] for row in csv.DictReader(file)}
    assert rows == {"cnn/crossed": "baseline CNN (cross-fit 3 refit)", "cnn/single": "baseline CNN"}

"""The comparison table is rebuilt from run folders alone."""

from __future__ import annotations

import csv
import json

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
        "| cnn/a | baseline CNN | report | split | 0.800 | 0.750 | 0.600 | 0.750 | 0.900 | 0.818 "
        "| 0.910 | 0.700 | 40 |  |" in table
    )
    assert "**predicts malignant for every image**" in table
    assert compare.main([str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err

"""The comparison table is rebuilt from run folders alone."""

from __future__ import annotations

import csv
import json

from bc_keras import compare


def _run(root, name, config, metrics):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_comparison_table_from_saved_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    scores = {
        "accuracy": 0.8,
        "precision": 0.75,
        "recall": 0.9,
        "f1": 0.8181818,
        "auc_roc": 0.91,
        "patient_recognition_rate": 0.7,
        "counts": {"images": 40},
    }
    _run(runs, "cnn/a", {"data": "split", "dense_units": 128}, scores)
    _run(runs, "transfer/b", {"data": "split", "backbone": "resnet50"}, {**scores, "accuracy": 0.9})
    _run(
        runs,
        "simclr/c",
        {"data": "split", "mode": "linear", "encoder": "enc.h5", "label_fraction": 0.1},
        scores,
    )
    _run(runs, "simclr/pre", {"data": "split", "mode": "pretrain"}, {"best_val_loss": 3.2})
    assert compare.main([str(runs)]) == 0
    with open(runs / "comparison.csv", newline="") as file:
        rows = {row["run"]: row for row in csv.DictReader(file)}
    assert set(rows) == {"cnn/a", "transfer/b", "simclr/c"}, (
        "the pretraining run has no classifier metrics"
    )
    assert (
        rows["transfer/b"]["model"] == "transfer resnet50"
        and float(rows["transfer/b"]["accuracy"]) == 0.9
    )
    assert rows["simclr/c"]["model"] == "linear ResNet-18 (SimCLR, 10% labels)"
    assert rows["cnn/a"]["model"] == "baseline CNN" and rows["cnn/a"]["test_images"] == "40"
    table = (runs / "comparison.md").read_text()
    assert (
        "| cnn/a | baseline CNN | split | 0.800 | 0.750 | 0.900 | 0.818 | 0.910 | 0.700 | 40 |"
        in table
    )
    assert compare.main([str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err

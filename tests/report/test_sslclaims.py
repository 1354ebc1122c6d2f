"""Claims 5 and 6 of the report (issue 21): BYOL vs SimCLR on the same classifier, and transfer
from a self-supervised encoder vs the same transfer from ImageNet, read from run folders, each
pair tested (DeLong's AUC test on one split) in the main text."""

from __future__ import annotations

import re

import numpy as np
from helpers import load_script

from bc_keras import report
from bc_keras.evaluation import statistics
from bc_keras.histology.breakhis import describe_files
from bc_keras.report.claims import NOT_MEASURABLE_CELL
from bc_keras.report.sslclaims import BYOL_HEADING, TRANSFER_HEADING
from bc_keras.runs import write_json

_helpers = load_script("tests/report/test_report")
BENIGN, MALIGNANT, SOURCE = _helpers.BENIGN, _helpers.MALIGNANT, _helpers.SOURCE
file_names, scores, section, table = (
    _helpers.file_names, _helpers.scores, _helpers.section, _helpers.table)  # fmt: skip
write_run, write_split = _helpers.write_run, _helpers.write_split


def _pretrain(runs, name, model_out, **config):
    folder = runs / name
    folder.mkdir(parents=True)
    write_json(folder / "config.json", {"experiment": "simclr_pretrain", "model_out": model_out,
                                        "encoder_init": "random", "epochs": 100, "patience": 15,
                                        "batch_size": 96, **config})  # fmt: skip
    write_json(folder / "metrics.json", {"best_val_loss": 3.0, "initial_val_loss": 4.0})


def _p(text: str) -> float:
    return float(re.search(r"p = ([0-9.e-]+),", text).group(1))


def test_byol_vs_simclr_and_hybrid_transfer_vs_imagenet_are_paired_and_tested(tmp_path):
    names = file_names(BENIGN + MALIGNANT, (1, 2, 3))
    data = tmp_path / "data" / "patient"
    write_split(data, names, {"split": "patient", **SOURCE})
    runs = tmp_path / "runs"
    _pretrain(runs, "simclr_pretrain", "models/simclr.h5")
    _pretrain(runs, "byol_pretrain", "models/byol.h5", method="byol")
    _pretrain(runs, "byol_sweep", "models/byol_16.h5", method="byol", batch_size=16,
              epochs=4, patience=4)  # fmt: skip
    _pretrain(runs, "hybrid_pretrain", "models/hybrid.h5", encoder_backbone="resnet50",
              encoder_init="imagenet")  # fmt: skip
    specs = {  # name: (config, quality, shift)
        "simclr_linear": ({"experiment": "simclr_linear", "encoder": "models/simclr.h5"}, 0.5,
                          0.0),
        "byol_linear": ({"experiment": "simclr_linear", "encoder": "models/byol.h5"}, 2.5, 0.0),
        # The sweep's encoder is no twin of simclr_linear (another batch size, fixed epochs).
        "byol_16_linear": ({"experiment": "simclr_linear", "encoder": "models/byol_16.h5"},
                           1.0, 0.0),
        "simclr_finetune": ({"experiment": "simclr_finetune", "encoder": "models/simclr.h5"},
                            1.5, 0.0),
        # A BYOL fine-tune predicting benign for every image: not measurable.
        "byol_finetune": ({"experiment": "simclr_finetune", "encoder": "models/byol.h5"}, 1.0,
                          -8.0),
        "transfer_imagenet": ({"experiment": "transfer", "backbone": "resnet50",
                               "recipe": "robust"}, 1.0, 0.0),
        "transfer_hybrid": ({"experiment": "transfer", "backbone": "resnet50",
                             "recipe": "robust", "weights": "models/hybrid.h5"}, 2.0, 0.0),
    }  # fmt: skip
    written = {}
    for seed, (name, (config, quality, shift)) in enumerate(specs.items()):
        probabilities = np.round(scores(names, quality, seed, shift), 6)
        metrics = write_run(runs / name, {**config, "data": str(data)}, names, probabilities)
        written[name] = (metrics, probabilities)
    report.build_report([runs], tmp_path / "out")
    text = (tmp_path / "out" / "REPORT.md").read_text()
    labels = np.array([int(n.startswith("SOB_M")) for n in names])
    patients, _ = describe_files(names)

    byol = table(section(text, BYOL_HEADING), "test set")
    assert [(row["BYOL"], row["SimCLR"]) for row in byol] == [
        ("ResNet-18 linear, BYOL encoder (report recipe)",
         "ResNet-18 linear, SimCLR encoder (report recipe)"),
        ("ResNet-18 fine-tuned, BYOL encoder (report recipe)",
         "ResNet-18 fine-tuned, SimCLR encoder (report recipe)"),
    ]  # fmt: skip
    linear = byol[0]
    difference = written["byol_linear"][0]["auc_roc"] - written["simclr_linear"][0]["auc_roc"]
    assert linear["AUC difference"] == f"{difference:+.3f}"
    expected = statistics.auc_difference_test(
        labels, written["byol_linear"][1], written["simclr_linear"][1], patients
    )
    assert "DeLong" in linear["test"] and np.isclose(
        _p(linear["test"]), float(f"{expected['p_value']:.3g}"), rtol=1e-2
    )
    assert byol[1]["test"] == NOT_MEASURABLE_CELL
    assert "predicts one class for every test image" in section(text, BYOL_HEADING)

    (transfer,) = table(section(text, TRANSFER_HEADING), "test set")
    assert transfer["self-supervised init"] == (
        "resnet50 transfer (SimCLR encoder from ImageNet) (robust recipe)"
    )
    assert transfer["ImageNet init"] == "resnet50 transfer (robust recipe)"
    expected = statistics.auc_difference_test(
        labels, written["transfer_hybrid"][1], written["transfer_imagenet"][1], patients
    )
    assert np.isclose(_p(transfer["test"]), float(f"{expected['p_value']:.3g}"), rtol=1e-2)
    # Both pairs are in the main text's comparison table with their reason.
    assert "claim 5 (BYOL vs SimCLR)" in text
    assert "claim 6 (self-supervised vs ImageNet initialisation)" in text


def test_without_the_runs_each_claim_says_what_it_needs(tmp_path):
    names = file_names(BENIGN + MALIGNANT, (1,))
    data = tmp_path / "data" / "patient"
    write_split(data, names, {"split": "patient", **SOURCE})
    write_run(tmp_path / "runs" / "cnn", {"experiment": "cnn", "data": str(data)}, names,
              scores(names, 1.0, 0))  # fmt: skip
    report.build_report([tmp_path / "runs"], tmp_path / "out")
    text = (tmp_path / "out" / "REPORT.md").read_text()
    assert "on a BYOL and on a SimCLR encoder" in section(text, BYOL_HEADING)
    assert "train_transfer.py --weights ENCODER.h5" in section(text, TRANSFER_HEADING)

"""The "Batch size" claim: linear runs are matched to the fixed-epoch pretraining runs that
wrote their encoders, tabled and drawn per method, and the claim is tested between the
smallest and largest batch on the same test images."""

from __future__ import annotations

import numpy as np

from bc_keras.evaluation import statistics
from bc_keras.report.batchsize import batch_size_lines, batch_size_points, claim_test
from bc_keras.report.figures import PNG_SIGNATURE, Figures
from bc_keras.report.runs import Run

RNG = np.random.default_rng(0)
LABELS = np.array([0, 1] * 20)
PATIENTS = [f"SOB_B_A-14-{i // 4}" for i in range(40)]


def _pretrain(tmp_path, method, size, patience=12):
    encoder = tmp_path / f"{method}_{size}.h5"
    encoder.write_bytes(b"x")
    config = {"experiment": "simclr_pretrain", "method": method, "batch_size": size,
              "epochs": 12, "patience": patience, "model_out": str(encoder)}  # fmt: skip
    return Run(f"{method}_{size}_pretrain", tmp_path, config, {"loss": 1.0}), encoder


def _linear(tmp_path, name, encoder, separation):
    probabilities = 1 / (1 + np.exp(-(separation * (LABELS - 0.5) + RNG.normal(0, 1, 40))))
    predictions = {"filename": [f"f{i}.png" for i in range(40)], "patient": PATIENTS,
                   "magnification": [""] * 40, "label": LABELS, "probability": probabilities}  # fmt: skip
    metrics = {"accuracy": 0.5, "auc_roc": 0.7, "bootstrap_95ci_by_patient": {"auc_roc": [0.6, 0.8]}}
    config = {"experiment": "simclr_linear", "encoder": str(encoder)}
    return Run(name, tmp_path, config, metrics, predictions=predictions)


def test_points_table_figure_and_verdict(tmp_path):
    runs = []
    for method, separations in (("simclr", (0.2, 6.0)), ("byol", (3.0, 3.0))):
        for size, separation in zip((16, 96), separations, strict=True):
            pretrain, encoder = _pretrain(tmp_path, method, size)
            runs += [pretrain, _linear(tmp_path, f"{method}_{size}_linear", encoder, separation)]
    # Early-stopped pretraining (the study's simclr_pretrain) is not a point.
    stopped, encoder = _pretrain(tmp_path, "simclr", 32, patience=5)
    runs += [stopped, _linear(tmp_path, "simclr_linear", encoder, 1.0)]
    points = batch_size_points(runs)
    assert {m: [s for s, _ in rows] for m, rows in points.items()} == {
        "byol": [16, 96], "simclr": [16, 96]}  # fmt: skip
    small, large = points["simclr"][0][1], points["simclr"][1][1]
    expected = statistics.auc_difference_test(LABELS, small.predictions["probability"],
                                              large.predictions["probability"], PATIENTS)  # fmt: skip
    assert claim_test(small, large) == expected and expected["difference"] < 0
    out = tmp_path / "report"
    lines = batch_size_lines(runs, Figures(out))
    assert "| simclr | 16 | 0.700 | 0.600 - 0.800 | `simclr_16_linear` |" in lines
    assert (out / "figures" / "claims" / "batch_size.png").read_bytes().startswith(PNG_SIGNATURE)
    (simclr,) = [line for line in lines if line.startswith("- simclr:")]
    verdict = "holds" if expected["p_value"] < 0.05 else "does not hold"
    assert f"{expected['difference']:+.3f}" in simclr and f"claim {verdict}" in simclr
    (byol,) = [line for line in lines if line.startswith("- byol:")]
    assert "does not hold" in byol or "holds" in byol


def test_without_points_it_says_not_measured(tmp_path):
    pretrain, encoder = _pretrain(tmp_path, "simclr", 32)
    lines = batch_size_lines([pretrain, _linear(tmp_path, "l", encoder, 1.0)], Figures(tmp_path))
    assert any(line.startswith("Not measured") for line in lines)
    # A pretraining run that records no batch size is no point.
    del pretrain.config["batch_size"]
    assert batch_size_points([pretrain, _linear(tmp_path, "l", encoder, 1.0)]) == {}

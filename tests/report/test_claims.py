"""The report's claims on models that can answer them (a model predicting one class for every
test image is not measurable; the robust recipe answers instead), cross-fitted runs as their own
models, and the patient-level scores beside the image-level ones."""

from __future__ import annotations

import csv
import json

import numpy as np
from helpers import load_script

from bc_keras import report
from bc_keras.evaluation.metrics import (
    FLAG_ALL_PREDICTED_BENIGN,
    FLAG_ALL_PREDICTED_MALIGNANT,
    binary_scores,
)
from bc_keras.histology.breakhis import describe_files
from bc_keras.report.claims import NOT_MEASURABLE
from bc_keras.runs import write_json

_helpers = load_script("tests/report/test_report")  # the report tests' run-folder writers
BENIGN, MALIGNANT, SOURCE = _helpers.BENIGN, _helpers.MALIGNANT, _helpers.SOURCE
file_names, scores, section, table = (
    _helpers.file_names,
    _helpers.scores,
    _helpers.section,
    _helpers.table,
)
metrics_of, write_run, write_split = _helpers.metrics_of, _helpers.write_run, _helpers.write_split
LEAK = "### 1. The patient leak"
LINEAR = "### 2. Linear evaluation: SimCLR encoder vs random encoder"
EFFICIENCY = "### 3. Label efficiency: balanced accuracy and AUC with 10%-100% of the labels"


def test_claims_on_a_model_predicting_one_class_are_not_measurable(tmp_path):
    """The report recipe's CNN predicts malignant for every image on both splits and at 10%
    labels, and the random-encoder linear model benign for every image: those claims print
    "not measurable" instead of a number, and the leak and label efficiency are read from the
    robust recipe's runs, shown beside them and marked."""
    names = file_names(BENIGN + MALIGNANT, (1, 2))
    image_names = file_names(BENIGN + MALIGNANT, (11,))
    data = tmp_path / "data"
    write_split(data / "patient", names, {"split": "patient", **SOURCE})
    write_split(data / "image", image_names, {"split": "image", **SOURCE})
    runs = tmp_path / "runs"
    # name: (config, split folder, quality, shift); a shift of +-8 puts every image on one side.
    specs = {
        "report_image": ({"experiment": "cnn"}, "image", 1.0, 8.0),
        "report_patient": ({"experiment": "cnn"}, "patient", 1.0, 8.0),
        "report_10": ({"experiment": "cnn", "label_fraction": 0.1}, "patient", 1.0, 8.0),
        "robust_image": ({"experiment": "cnn", "recipe": "robust"}, "image", 3.0, 0.0),
        "robust_patient": ({"experiment": "cnn", "recipe": "robust"}, "patient", 2.0, 0.0),
        "robust_10": ({"experiment": "cnn", "recipe": "robust", "label_fraction": 0.1},
                      "patient", 1.0, 0.0),
        "linear_simclr": ({"experiment": "simclr_linear", "encoder": "enc.h5"}, "patient", 1.5,
                          0.0),
        "linear_random": ({"experiment": "simclr_linear", "encoder": "none"}, "patient", 0.5,
                          -8.0),
    }  # fmt: skip
    for seed, (name, (config, folder, quality, shift)) in enumerate(specs.items()):
        images = image_names if folder == "image" else names
        config = {**config, "data": str(data / folder)}
        write_run(runs / name, config, images, scores(images, quality, seed, shift))
    for name in ("report_image", "report_patient", "report_10"):
        assert metrics_of(tmp_path, name)["flags"] == [FLAG_ALL_PREDICTED_MALIGNANT], name
    assert metrics_of(tmp_path, "linear_random")["flags"] == [FLAG_ALL_PREDICTED_BENIGN]
    assert not any(metrics_of(tmp_path, name)["flags"] for name in specs if "robust" in name)
    report.build_report([runs], tmp_path / "out")
    claims = section((tmp_path / "out" / "REPORT.md").read_text(), "## The report's claims")

    leak_text = section(claims, LEAK)
    leak = {row["model"]: row for row in table(leak_text, "model")}
    degenerate, robust = leak["baseline CNN (report recipe)"], leak["baseline CNN (robust recipe)"]
    for title in ("balanced accuracy", "AUC", "accuracy"):
        assert degenerate[f"{title} inflation"] == "not measurable", title
    assert degenerate["claim"] == "not measurable" and robust["claim"] == "measured"
    image, patient = metrics_of(tmp_path, "robust_image"), metrics_of(tmp_path, "robust_patient")
    for title, key in (("balanced accuracy", "balanced_accuracy"), ("AUC", "auc_roc")):
        assert robust[f"{title} inflation"] == f"{image[key] - patient[key]:+.3f}", title
    assert (
        f"- baseline CNN (report recipe): {NOT_MEASURABLE}: `report_image` "
        f"{FLAG_ALL_PREDICTED_MALIGNANT}; `report_patient` {FLAG_ALL_PREDICTED_MALIGNANT}."
    ) in leak_text
    assert (
        "- The report recipe's baseline CNN (report recipe) predicts one class for every test "
        "image, so the leak is read from baseline CNN (robust recipe) (marked measured above)."
    ) in leak_text

    [linear] = table(section(claims, LINEAR), "test set")
    assert linear["balanced accuracy difference"] == linear["AUC test"] == "not measurable"
    assert f"{NOT_MEASURABLE}: `linear_random` {FLAG_ALL_PREDICTED_BENIGN}." in claims

    efficiency = section(claims, EFFICIENCY)
    rows = {row["run"]: row for row in table(efficiency, "model")}
    assert rows["report_10"]["balanced accuracy drop from all labels (points)"] == "not measurable"
    assert rows["report_10"]["AUC test vs all labels"] == "not measurable"
    full, ten = metrics_of(tmp_path, "robust_patient"), metrics_of(tmp_path, "robust_10")
    drop = (full["balanced_accuracy"] - ten["balanced_accuracy"]) * 100
    assert rows["robust_10"]["balanced accuracy drop from all labels (points)"] == f"{drop:+.1f}"
    assert rows["robust_10"]["AUC test vs all labels"].startswith("clustered DeLong (Obuchowski)")
    assert (
        f"- baseline CNN (report recipe): {NOT_MEASURABLE}: `report_10` "
        f"{FLAG_ALL_PREDICTED_MALIGNANT}; `report_patient` {FLAG_ALL_PREDICTED_MALIGNANT}."
    ) in efficiency
    assert "so label efficiency is read from baseline CNN (robust recipe)" in efficiency
    # The constant model's accuracy stands beside it, but the claim never reads it as a drop.
    accuracy = metrics_of(tmp_path, "report_10")["accuracy"]
    assert rows["report_10"]["accuracy"].startswith(f"{accuracy:.3f}")


def _patient_level(names, probabilities, threshold=0.5):
    """metrics.json "patient_level" as the training code writes it: each patient's mean
    probability against the threshold, scored as the images are."""
    patients, _ = describe_files(names)
    keys = sorted(set(patients))
    labels = np.array([int(names[patients.index(key)].startswith("SOB_M")) for key in keys])
    means = np.array([np.mean(probabilities[np.array(patients) == key]) for key in keys])
    return {**binary_scores(labels, means, threshold), "patients": len(keys)}


def test_cross_fitted_runs_and_patient_level_scores(tmp_path):
    """A cross-fitted run is its own model, named and sorted after its single-split twin, with
    its out-of-fold threshold and spread; patient-level scores come from metrics.json (n/a for
    a run without them); a malformed cross_fit or patient_level leaves the run out."""
    names = file_names(BENIGN + MALIGNANT, (1, 2))
    data = tmp_path / "data" / "patient"
    write_split(data, names, {"split": "patient", **SOURCE})
    runs = tmp_path / "runs"
    robust = {"experiment": "cnn", "recipe": "robust", "data": str(data)}
    cross_fit = {
        "k": 5,
        "final": "ensemble",
        "fold_thresholds": [0.3, 0.35, 0.4, 0.45, 0.5],
        "threshold_sd": 0.079,
        "out_of_fold": {"auc_roc": 0.93, "balanced_accuracy": 0.86, "images": 200, "patients": 20},
    }
    twin = write_run(runs / "single", robust, names, scores(names, 1.0, 0))
    twin.pop("patient_level")  # as an older run wrote it
    write_json(runs / "single" / "metrics.json", twin)
    probabilities = np.round(scores(names, 1.5, 1), 6)
    metrics = write_run(runs / "crossfit", {**robust, "cross_fit": 5,
                        "cross_fit_final": "ensemble"}, names, probabilities)  # fmt: skip
    patient_level = _patient_level(names, probabilities)
    assert patient_level == {
        key: value
        for key, value in metrics["patient_level"].items()
        if key not in ("benign_patients", "malignant_patients")
    }, "the training code's patient-level scores, re-derived"
    patient_level = metrics["patient_level"]
    write_json(runs / "crossfit" / "metrics.json", {**metrics, "threshold": 0.41,
               "cross_fit": cross_fit, "patient_level": patient_level})  # fmt: skip
    bad = {
        "bad_k": ({**robust, "cross_fit": 5}, {"cross_fit": {**cross_fit, "k": 1}},
                  "malformed metrics.json (cross_fit.k is 1, not a fold count of 2 or more)"),
        "bad_config": ({**robust, "cross_fit": "5"}, {},
                       "malformed config.json (cross_fit is '5', not 0 (a single split) or a "
                       "fold count)"),
        "bad_final": ({**robust, "cross_fit": 5, "cross_fit_final": "mean"}, {},
                      "malformed config.json (cross_fit_final is 'mean', not 'ensemble' or "
                      "'refit')"),
        "bad_patients": (robust, {"patient_level": {**patient_level, "auc_roc": "high"}},
                         "malformed metrics.json (patient_level.auc_roc is 'high', not a finite "
                         "number)"),
        "bad_matrix": (robust, {"patient_level": {**patient_level, "confusion_matrix": [[1]]}},
                       "malformed metrics.json (patient_level.confusion_matrix is not [[tn, "
                       "fp], [fn, tp]] of counts)"),
        "bad_count": (robust, {"patient_level": {**patient_level, "benign_patients": -1}},
                      "malformed metrics.json (patient_level.benign_patients is -1, not a "
                      "count)"),
        "not_object": (robust, {"patient_level": [0.9]},
                       "malformed metrics.json (patient_level is not an object)"),
    }  # fmt: skip
    for name, (config, extra, _) in bad.items():
        runs.joinpath(name).mkdir(parents=True)
        write_json(runs / name / "config.json", config)
        write_json(runs / name / "metrics.json", {**twin, **extra})
    report.build_report([runs], tmp_path / "out")
    text = (tmp_path / "out" / "REPORT.md").read_text()
    rows = table(section(text, "## Results"), "run")
    assert [(row["run"], row["model"]) for row in rows] == [
        ("single", "baseline CNN (robust recipe)"),
        ("crossfit", "baseline CNN (robust recipe, cross-fit 5 ensemble)"),
    ]
    single, fitted = rows
    assert fitted["threshold"] == "0.410, sd 0.079 over 5 folds" and single["threshold"] == "0.500"
    assert fitted["patient-level balanced accuracy"] == f"{patient_level['balanced_accuracy']:.3f}"
    assert fitted["patient-level AUC"] == f"{patient_level['auc_roc']:.3f}"
    assert patient_level["patients"] == 10 and 0 < patient_level["auc_roc"] <= 1
    assert single["patient-level balanced accuracy"] == single["patient-level AUC"] == "n/a"
    model = section(text, "### baseline CNN (robust recipe, cross-fit 5 ensemble): `crossfit`")
    assert (
        "Cross-fitted over 5 folds of the training patients, final model: ensemble; threshold "
        "0.410, sd 0.079 over 5 folds (per fold: 0.300, 0.350, 0.400, 0.450, 0.500); "
        "out-of-fold AUC 0.930, balanced accuracy 0.860 (200 images, 20 patients)."
    ) in model
    assert "Patient level (10 patients, each patient's mean probability" in model
    [pair] = table(section(text, "## Model comparison"), "model A")
    assert pair["shown for"] == "cross-fit vs single split; vs the best headline model"
    with open(tmp_path / "out" / "results.csv", newline="") as file:
        records = {row["run"]: row for row in csv.DictReader(file)}
    assert records["crossfit"]["cross_fit"] == "5" and records["single"]["cross_fit"] == "0"
    assert float(records["crossfit"]["threshold_sd"]) == 0.079
    assert float(records["crossfit"]["patient_auc_roc"]) == patient_level["auc_roc"]
    assert records["single"]["patient_auc_roc"] == ""
    left_out = section(text, "## Left out")
    assert f"Run folders left out: {len(bad)}." in left_out
    for name, (_, _, reason) in bad.items():
        assert f"- {name}: {reason}" in left_out, name
    assert json.loads((runs / "single" / "metrics.json").read_text()).get("patient_level") is None

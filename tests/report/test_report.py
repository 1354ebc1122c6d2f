"""The study report is rebuilt from run folders alone: its numbers equal metrics.json, its
figures are PNGs, its tests equal bc_keras.evaluation.statistics, and the same runs give the same bytes."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as sk

from bc_keras import cli, report
from bc_keras.evaluation import statistics
from bc_keras.evaluation.metrics import (
    FLAG_ALL_PREDICTED_MALIGNANT,
    bootstrap_by_patient,
    compute_metrics,
)
from bc_keras.histology.breakhis import CLASS_NAMES, describe_files
from bc_keras.report.figures import PNG_SIGNATURE
from bc_keras.report.runs import read_predictions
from bc_keras.report.tables import classification_report_text, p_value
from bc_keras.runs import write_json

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 32
BENIGN = ["SOB_B_A-14-1001", "SOB_B_F-14-1002", "SOB_B_TA-14-1003", "SOB_B_PT-14-1004"]
MALIGNANT = [f"SOB_M_{t}-14-20{i}" for i, t in enumerate(("DC", "LC", "MC", "PC", "DC", "DC"))]
SOURCE = {"source": "/data/BreaKHis_v1", "magnifications": [40, 100]}
HISTORY = "epoch,accuracy,loss,val_accuracy,val_loss\n0,0.6,0.7,0.55,0.69\n1,0.7,0.6,0.6,0.65\n"
HISTORY_PHASES = (
    "epoch,accuracy,loss,val_accuracy,val_loss,phase\n0,0.6,0.7,0.55,0.69,1\n"
    "1,0.7,0.6,0.6,0.65,1\n0,0.8,0.5,0.7,0.6,2\n"
)
# fmt: off
CLASSIFIER_PNGS = ("training_curves", "confusion_matrix", "roc_curve", "precision_recall_curve",
                   "sample_predictions")
TABLE_COLUMNS = {"accuracy": "accuracy", "balanced accuracy": "balanced_accuracy",
                 "precision": "precision", "recall": "recall", "F1": "f1", "AUC": "auc_roc",
                 "patient recognition rate": "patient_recognition_rate"}
# The study's classifier runs: name, experiment, data folder, quality of its scores, seed and
# extra config ("{root}" is the study folder). cv/* runs are added per fold.
RUNS = (
    ("cnn/patient", "cnn", "patient", 2.0, 1, {"model_out": "{root}/models/cnn.h5"}),
    ("cnn/patient_10", "cnn", "patient", 0.9, 2,
     {"label_fraction": 0.1, "model_out": "{root}/models/cnn.h5"}),
    ("finetune/full", "simclr_finetune", "patient", 1.6, 3,
     {"encoder": "{root}/models/encoder.h5", "history": "phases"}),
    ("finetune/ten", "simclr_finetune", "patient", 1.4, 3,
     {"encoder": "{root}/models/encoder.h5", "label_fraction": 0.1, "history": "phases"}),
    ("linear/simclr", "simclr_linear", "patient", 1.2, 4, {"encoder": "{root}/models/enc.h5"}),
    ("linear/random", "simclr_linear", "patient", 0.5, 5, {"encoder": "none"}),
    ("transfer/collapsed", "transfer", "patient", 0.3, 6,
     {"backbone": "resnet50", "shift": 4.0, "model_out": "{root}/models/gone.h5"}),
    ("cnn/image", "cnn", "image", 3.0, 7, {}),
    ("other/no_prepare", "cnn", "nowhere", 1.0, 8, {"recipe": "robust"}),
)
PRETRAINING = {"initial_val_loss": 5.1, "best_val_loss": 4.2, "best_epoch": 3,
               "best_val_contrastive_accuracy": 0.4, "epochs_run": 5}
# fmt: on


def file_names(patients, sequences, magnifications=(40, 100)):
    return [f"{p}-{m}-{s:03d}.png" for p in patients for m in magnifications for s in sequences]


def labels_of(names):
    return np.array([int(name.startswith("SOB_M")) for name in names])


def write_png(path, seed=0, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_split(folder, names, settings):
    """A prepared split's test images and its prepare.json."""
    for index, name in enumerate(names):
        label = CLASS_NAMES[int(name.startswith("SOB_M"))]
        write_png(folder / "test" / label / name, seed=index, size=IMAGE_SIZE)
    (folder / "prepare.json").write_text(json.dumps(settings))


def scores(names, quality, seed, shift=0.0):
    """Malignant probabilities that separate the classes more the higher `quality` is."""
    labels = labels_of(names)
    noise = np.random.default_rng(seed).standard_normal(len(names))
    return 1 / (1 + np.exp(-(quality * (2 * labels - 1) + noise + shift)))


def write_run(folder, config, names, probabilities, history=HISTORY):
    """A finished classifier run: config, metrics (compute_metrics + bootstrap), predictions,
    history and tiny figures."""
    folder.mkdir(parents=True)
    labels = labels_of(names)
    probabilities = np.round(probabilities, 6)  # as predictions.csv stores them
    patients, magnifications = describe_files(names)
    metrics = compute_metrics(
        labels, probabilities, patients=patients, magnifications=magnifications
    )
    metrics["bootstrap_95ci_by_patient"] = bootstrap_by_patient(
        labels, probabilities, patients, samples=40, seed=0
    )
    metrics.update(threshold_method="fixed", tta=False)
    write_json(folder / "config.json", {"recipe": "report", "_environment": {}, **config})
    write_json(folder / "metrics.json", metrics)
    with open(folder / "predictions.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            ("filename", "patient", "magnification", "label", "probability", "predicted")
        )
        for row in zip(names, patients, magnifications, labels, probabilities, strict=True):
            writer.writerow([*row[:4], f"{row[4]:.6f}", int(row[4] >= 0.5)])
    (folder / "history.csv").write_text(history)
    for index, name in enumerate(CLASSIFIER_PNGS):
        write_png(folder / f"{name}.png", seed=index)
    return metrics


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Fake run folders of every kind the report reads, and the report written from them."""
    from bc_keras import models

    root = tmp_path_factory.mktemp("study")
    runs, data = root / "runs", root / "data"
    test_names = file_names(BENIGN + MALIGNANT, (1, 2, 3))
    write_split(data / "patient", test_names, {"split": "patient", **SOURCE})
    image_names = file_names(BENIGN + MALIGNANT, (11, 12))
    write_split(data / "image", image_names, {"split": "image", **SOURCE})
    fold_names = {}
    for k in (1, 2, 3):
        patients = BENIGN[k - 1 :: 3] + MALIGNANT[k - 1 :: 3]
        fold_names[k] = file_names(patients, (21, 22))
        fold = {"index": k, "count": 3, "kind": "kfold", "fold_file": None}
        write_split(data / "folds" / f"fold_{k}", fold_names[k], {"split": "kfold", "fold": fold})
    other_names = file_names(BENIGN[:2] + MALIGNANT[:2], (31,))
    names = {"patient": test_names, "image": image_names, "nowhere": other_names}
    for name, experiment, folder, quality, seed, extra in RUNS:
        config = {"experiment": experiment, "data": str(data / folder)}
        config.update({k: v.format(root=root) if isinstance(v, str) else v
                       for k, v in extra.items()})  # fmt: skip
        shift = config.pop("shift", 0.0)
        history = HISTORY_PHASES if config.pop("history", "") == "phases" else HISTORY
        probabilities = scores(names[folder], quality, seed, shift)
        write_run(runs / name, config, names[folder], probabilities, history)
    for k in (1, 2, 3):
        for experiment, quality in (("cnn", 1.0 + 0.2 * k), ("transfer", 2.0)):
            config = {"experiment": experiment, "data": str(data / "folds" / f"fold_{k}")}
            config |= {"backbone": "resnet50"} if experiment == "transfer" else {}
            probabilities = scores(fold_names[k], quality, 10 * k + len(experiment))
            write_run(runs / f"cv/{experiment}_{k}", config, fold_names[k], probabilities)
    pretrain = runs / "pretrain"
    pretrain.mkdir()
    write_json(pretrain / "config.json", {"experiment": "simclr_pretrain", "data": "x"})
    write_json(pretrain / "metrics.json", PRETRAINING)
    for index, name in enumerate(("training_curves", "tsne_test_embeddings", "augmented_pairs")):
        write_png(pretrain / f"{name}.png", seed=index)
    left_out = {"unfinished": None, "broken": "{not json", "malformed": '{"accuracy": "high"}'}
    for name, metrics in left_out.items():
        (runs / name).mkdir()
        write_json(runs / name / "config.json", {"experiment": "cnn"})
        if metrics is not None:
            (runs / name / "metrics.json").write_text(metrics)
    metadata = {"kind": "classifier", "image_size": IMAGE_SIZE, "preprocess": "rescale",
                "interpolation": "nearest", "threshold": 0.5, "experiment": "cnn",
                "recipe": "report", "run_dir": str(runs / "cnn/patient")}  # fmt: skip
    model = models.build_baseline_cnn(IMAGE_SIZE, dense_units=4)
    models.save_model(model, root / "models" / "cnn.h5", metadata)
    out = root / "report"
    assert report.main([str(runs), "--out", str(out)]) == 0
    return root, out, (out / "REPORT.md").read_text()


def metrics_of(root, name):
    return json.loads((root / "runs" / name / "metrics.json").read_text())


def section(text, heading):
    """The text under a markdown heading, up to the next heading of the same or higher level."""
    level = heading.split(" ")[0]
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    ends = [m.start() for m in re.finditer(rf"\n#{{1,{len(level)}}} ", text[start:])]
    return text[start : start + ends[0]] if ends else text[start:]


def table(text, first_header):
    """The markdown table starting with the header cell `first_header`: a list of dicts."""
    block = text[text.index(f"| {first_header} |") :].split("\n\n")[0]
    lines = [line for line in block.split("\n") if line.startswith("|")]
    header, _, *rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    return [dict(zip(header, row, strict=True)) for row in rows]


def expected_cell(metrics, key):
    """A results-table cell as metrics.json gives it: the value and its 95% interval."""
    pair = metrics["bootstrap_95ci_by_patient"].get(key)
    interval = f" [{pair[0]:.3f}, {pair[1]:.3f}]" if pair else ""
    return f"{metrics[key]:.3f}{interval}"


def test_results_table_equals_every_runs_metrics_json(study):
    root, _, text = study
    rows = table(section(text, "## Results"), "run")
    names = {row["run"] for row in rows}
    cross_validation = {f"cv/{m}_{k}" for m in ("cnn", "transfer") for k in (1, 2, 3)}
    assert names == {spec[0] for spec in RUNS} | cross_validation
    for row in rows:
        metrics = metrics_of(root, row["run"])
        for title, key in TABLE_COLUMNS.items():
            assert row[title] == expected_cell(metrics, key), (row["run"], title)
        counts = metrics["counts"]
        assert row["test images / patients"] == f"{counts['images']} / {counts['patients']}"
    by_name = {row["run"]: row for row in rows}
    assert by_name["cnn/image"]["split"] == "image (leaks patients)"
    assert by_name["cnn/patient"]["split"] == "patient" and by_name["cv/cnn_2"]["fold"] == "2/3"
    assert by_name["other/no_prepare"]["split"] == "unknown", "no prepare.json: protocol unknown"
    published = {name: row["report (acc / prec / rec / F1 / AUC)"] for name, row in by_name.items()}
    assert published["cnn/patient"] == "0.91 / 0.93 / 0.94 / 0.9345 / 0.9659"
    assert published["finetune/full"].startswith("0.8484") and published["finetune/ten"] == ""
    assert published["cv/transfer_1"].startswith("0.98 ")
    assert FLAG_ALL_PREDICTED_MALIGNANT in metrics_of(root, "transfer/collapsed")["flags"]
    assert by_name["transfer/collapsed"]["flags"] == f"**⚠ {FLAG_ALL_PREDICTED_MALIGNANT}**"
    assert all(row["flags"] == "" for name, row in by_name.items() if name != "transfer/collapsed")
    left_out = section(text, "## Left out")
    assert "- broken: unreadable metrics.json" in left_out
    assert "- unfinished: unfinished (no metrics.json)" in left_out
    assert (
        "- malformed: malformed metrics.json (accuracy is 'high', not a finite number)" in left_out
    )


def test_results_csv_holds_the_same_rows_at_full_precision(study):
    root, out, _ = study
    with open(out / "results.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 15
    for row in rows:
        metrics = metrics_of(root, row["run"])
        for key in (*TABLE_COLUMNS.values(), "specificity"):
            assert float(row[key]) == metrics[key]
        for key, (low, high) in metrics["bootstrap_95ci_by_patient"].items():
            assert (float(row[f"{key}_low"]), float(row[f"{key}_high"])) == (low, high)
        predictions = read_predictions(root / "runs" / row["run"] / "predictions.csv")
        labels, probabilities = predictions["label"], predictions["probability"]
        assert float(row["brier_score"]) == statistics.brier_score(labels, probabilities)
        assert float(row["expected_calibration_error"]) == (
            statistics.expected_calibration_error(labels, probabilities, 10)
        )
    by_name = {row["run"]: row for row in rows}
    assert by_name["cnn/patient"]["published_accuracy"] == "0.91"
    assert by_name["cv/cnn_3"]["fold"] == "3" and by_name["cv/cnn_3"]["fold_count"] == "3"
    assert by_name["linear/random"]["encoder"] == "random encoder"
    assert by_name["transfer/collapsed"]["flags"] == FLAG_ALL_PREDICTED_MALIGNANT


def test_every_image_link_is_a_png_and_every_figure_is_there(study):
    _, out, text = study
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == len(set(links)) > 40
    for link in links:
        path = out / link
        assert path.is_file() and path.stat().st_size > len(PNG_SIGNATURE), link
        assert path.read_bytes()[: len(PNG_SIGNATURE)] == PNG_SIGNATURE, link
    shared = ("roc_overlay", "precision_recall_overlay", "reliability_diagram",
              "label_efficiency_accuracy", "label_efficiency_balanced_accuracy")  # fmt: skip
    expected = [
        *(f"figures/test-1/{name}.png" for name in shared),
        "figures/cv-1/roc_overlay.png", "figures/cnn__patient/gradcam.png",
        "figures/pretrain/tsne_test_embeddings.png", "figures/pretrain/augmented_pairs.png",
        *(f"figures/finetune__full/{name}.png" for name in CLASSIFIER_PNGS),
    ]  # fmt: skip
    assert set(expected) <= set(links)
    copied = (out / "figures/finetune__full/training_curves.png").read_bytes()
    assert copied == (out.parent / "runs/finetune/full/training_curves.png").read_bytes()
    assert not (out / report.STAGING).exists()


def test_grad_cam_only_for_models_that_still_belong_to_their_run(study):
    root, out, text = study
    models = section(text, "## Models")
    assert "![Grad-CAM](figures/cnn__patient/gradcam.png)" in models
    cnn = section(models, "### baseline CNN (report recipe): `cnn/patient`")
    predictions = read_predictions(root / "runs/cnn/patient/predictions.csv")
    wrong = int(np.sum((predictions["probability"] >= 0.5) != predictions["label"]))
    assert 0 < wrong < 4, "the fixture's CNN makes a few mistakes"
    assert f"Grad-CAM (malignant evidence) of 4 correct and {wrong} wrong test images" in cnn
    with Image.open(out / "figures/cnn__patient/gradcam.png") as panel:
        assert panel.width > 500 and panel.height > 300
    ten = section(models, "### baseline CNN (report recipe, 10% labels): `cnn/patient_10`")
    assert "Grad-CAM skipped:" in ten and "now holds the model of another run" in ten
    gone = section(models, "### resnet50 transfer (report recipe): `transfer/collapsed`")
    assert "Grad-CAM skipped: its model file" in gone and "no longer exists" in gone
    assert "**⚠ Flagged: predicts malignant for every image.**" in gone


def test_model_sections_hold_the_classification_report_and_magnifications(study):
    root, _, text = study
    metrics = metrics_of(root, "cnn/patient")
    predictions = read_predictions(root / "runs/cnn/patient/predictions.csv")
    predicted = (predictions["probability"] >= 0.5).astype(int)
    options = dict(labels=[0, 1], target_names=list(CLASS_NAMES), zero_division=0)
    expected = sk.classification_report(predictions["label"], predicted, **options)
    cnn = section(text, "### baseline CNN (report recipe): `cnn/patient`")
    assert f"```text\n{expected.rstrip()}\n```" in cnn
    rows = {row["magnification"]: row for row in table(cnn, "magnification")}
    assert set(rows) == {"40X", "100X"}
    entry = metrics["per_magnification"]["100"]
    assert rows["100X"]["images"] == str(entry["images"])
    assert rows["100X"]["auc roc"] == f"{entry['auc_roc']:.3f}"
    assert rows["100X"]["patient recognition rate"] == f"{entry['patient_recognition_rate']:.3f}"
    pretraining = section(text, "### SimCLR pretraining: `pretrain`")
    assert "| best validation NT-Xent | 4.2000 |" in pretraining
    assert "| best epoch | 3 |" in pretraining


def test_classification_report_text_is_sklearns_layout():
    rng = np.random.default_rng(0)
    labels, predicted = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    options = dict(labels=[0, 1], target_names=list(CLASS_NAMES), zero_division=0)
    as_dict = json.loads(
        json.dumps(sk.classification_report(labels, predicted, output_dict=True, **options))
    )
    for digits in (2, 4):
        expected = sk.classification_report(labels, predicted, digits=digits, **options)
        assert classification_report_text(as_dict, digits) == expected


def test_cross_validation_mean_sd_pooled_roc_and_paired_test(study):
    root, _, text = study
    comparison = section(text, f"### Cross-validation 1: 3 kfold folds of `{root / 'data/folds'}`")
    rows = {row["model"]: row for row in table(comparison, "model")}
    cnn = [metrics_of(root, f"cv/cnn_{k}") for k in (1, 2, 3)]
    transfer = [metrics_of(root, f"cv/transfer_{k}") for k in (1, 2, 3)]
    mean, sd = statistics.mean_and_sd([m["accuracy"] for m in cnn])
    assert rows["baseline CNN (report recipe)"]["accuracy"] == f"{mean:.3f} ± {sd:.3f}"
    assert rows["baseline CNN (report recipe)"]["folds"] == "1, 2, 3"
    folds = [read_predictions(root / f"runs/cv/cnn_{k}/predictions.csv") for k in (1, 2, 3)]
    pooled = sk.roc_auc_score(
        *(np.concatenate([p[c] for p in folds]) for c in ("label", "probability"))
    )
    assert rows["baseline CNN (report recipe)"]["pooled AUC"] == f"{pooled:.3f}"
    tests = table(comparison, "model A")
    assert len(tests) == 1
    paired = statistics.paired_fold_test(*([m["auc_roc"] for m in x] for x in (cnn, transfer)))
    assert tests[0]["p (paired, folds)"] == p_value(paired["p_value"])
    assert tests[0]["mean AUC difference over folds (A - B)"] == f"{paired['mean_difference']:+.3f}"
    holm = float(tests[0]["p (paired, Holm)"])
    assert holm >= paired["p_value"], "Holm never lowers a p-value"
    verdict = "significant" if holm < 0.05 else "not significant"
    assert tests[0]["verdict"].startswith(f"paired: {verdict} (Holm p")
    assert tests[0]["shown for"] == "vs the best headline model"
    assert "![pooled out-of-fold ROC curves](figures/cv-1/roc_overlay.png)" in comparison


def test_delong_on_a_shared_test_set_and_calibration(study):
    root, _, text = study
    heading = f"### Test set 1: `{root / 'data' / 'patient'}` (60 images, 10 patients)"
    comparison = section(text, heading)
    main = table(comparison, "model A")
    appendix = table(section(text, f"{heading} (appendix)"), "model A")
    assert len(main) + len(appendix) == 21, "7 models on the patient split: every pair is tested"
    assert {r["shown for"] for r in main} == {
        "claim 2 (SimCLR vs random encoder)",
        "claim 3 (label fraction vs all labels)",
        "vs the best headline model",
    }
    pairs = {(r["model A"], r["model B"]): r for r in appendix}
    row = pairs["baseline CNN (report recipe)", "ResNet-18 linear, random encoder (report recipe)"]
    a = read_predictions(root / "runs/cnn/patient/predictions.csv")
    b = read_predictions(root / "runs/linear/random/predictions.csv")
    test = statistics.auc_difference_test(
        a["label"], a["probability"], b["probability"], patients=a["patient"]
    )
    assert test["method"] == "obuchowski" and test["clusters"] == 10
    assert row["AUC test"] == "clustered DeLong (Obuchowski), 10 patients"
    assert row["p (AUC test)"] == p_value(test["p_value"])
    assert row["z"] == f"{test['z']:.2f}"
    # 21 pairs on the test set, 1 pair with two tests on the cross-validation set
    assert "over the report's whole family of 23 tests" in section(text, "## Model comparison")
    calibration = section(section(text, "## Calibration"), heading)
    rows = {row["model"]: row for row in table(calibration, "model")}
    row = rows["baseline CNN (report recipe)"]
    assert row["Brier score"] == f"{statistics.brier_score(a['label'], a['probability']):.3f}"
    ece = statistics.expected_calibration_error(a["label"], a["probability"], 10)
    assert row["ECE (10 bins)"] == f"{ece:.3f}"


def test_the_reports_claims_are_measured(study):
    root, _, text = study
    claims = section(text, "## The report's claims")
    leak = table(section(claims, "### 1. The patient leak"), "model")
    image, patient = metrics_of(root, "cnn/image"), metrics_of(root, "cnn/patient")
    assert leak[0]["image-split run"] == "`cnn/image`"
    assert leak[0]["patient-split run"] == "`cnn/patient`"
    assert leak[0]["accuracy (image split)"] == expected_cell(image, "accuracy")
    assert leak[0]["accuracy inflation"] == f"{image['accuracy'] - patient['accuracy']:+.3f}"
    assert leak[0]["AUC inflation"] == f"{image['auc_roc'] - patient['auc_roc']:+.3f}"
    assert "an AUC test (which needs the same images) does not apply" in claims
    assert leak[0]["balanced accuracy inflation"] == (
        f"{image['balanced_accuracy'] - patient['balanced_accuracy']:+.3f}"
    )
    assert leak[0]["claim"] == "measured"
    linear = table(
        section(claims, "### 2. Linear evaluation: SimCLR encoder vs random encoder"), "test set"
    )
    simclr, random = metrics_of(root, "linear/simclr"), metrics_of(root, "linear/random")
    assert linear[0]["accuracy difference"] == f"{simclr['accuracy'] - random['accuracy']:+.3f}"
    assert linear[0]["AUC difference"] == f"{simclr['auc_roc'] - random['auc_roc']:+.3f}"
    assert linear[0]["AUC test"].startswith("clustered DeLong (Obuchowski), 10 patients: p = ")
    efficiency = section(
        claims, "### 3. Label efficiency: balanced accuracy and AUC with 10%-100% of the labels"
    )
    full, ten = metrics_of(root, "cnn/patient"), metrics_of(root, "cnn/patient_10")
    drops = [(full[m] - ten[m]) * 100 for m in ("balanced_accuracy", "auc_roc", "accuracy")]
    assert min(drops) > 0, "the fixture's CNN loses on every measure with 10% labels"
    assert (
        f"- baseline CNN (report recipe): at 10% labels balanced accuracy drops {drops[0]:.1f} "
        f"points, AUC drops {drops[1]:.1f} points, accuracy drops {drops[2]:.1f} points "
        "(report: ~15 points of accuracy)."
    ) in efficiency
    full, ten = metrics_of(root, "finetune/full"), metrics_of(root, "finetune/ten")
    drop = (full["balanced_accuracy"] - ten["balanced_accuracy"]) * 100
    rows = table(efficiency, "model")
    row = next(r for r in rows if r["label fraction"] == "0.1" and "fine-tuned" in r["model"])
    assert row["balanced accuracy drop from all labels (points)"] == f"{drop:+.1f}"
    assert row["run"] == "finetune/ten"
    assert "Not measured" not in efficiency


def test_claims_without_their_runs_say_which_runs_are_needed(study, tmp_path):
    root, _, _ = study
    out = tmp_path / "one"
    report.build_report([root / "runs" / "cnn" / "patient"], out)
    claims = section((out / "REPORT.md").read_text(), "## The report's claims")
    assert "Needs the same model trained on an image split and on a patient split" in claims
    assert "Needs `train_simclr.py linear --encoder ENCODER.h5`" in claims
    assert "Not measured: needs `train_cnn.py` and `train_simclr.py finetune" in claims
    assert "One model only: nothing to compare." in (out / "REPORT.md").read_text()


def test_same_runs_give_the_same_bytes_whatever_the_arguments(study, tmp_path):
    root, out, text = study
    again = tmp_path / "again"
    # The CNN runs are found twice (under runs/ and runs/cnn/): each is reported once.
    report.build_report([root / "runs" / "cnn", root / "runs"], again)
    assert (again / "REPORT.md").read_text() == text
    assert (again / "results.csv").read_bytes() == (out / "results.csv").read_bytes()
    figures = sorted(p.relative_to(out) for p in (out / "figures").rglob("*.png"))
    assert figures == sorted(p.relative_to(again) for p in (again / "figures").rglob("*.png"))
    for figure in figures:
        assert (again / figure).read_bytes() == (out / figure).read_bytes(), figure
    report.build_report([root / "runs"], again)
    assert (again / "REPORT.md").read_text() == text, "re-running over a report changes nothing"


def test_user_errors_are_one_line(study, tmp_path, capsys):
    root, _, _ = study
    assert cli.run_script(report.main, [str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "does not exist" in error and "\n" not in error
    foreign = tmp_path / "foreign"
    (foreign / "figures").mkdir(parents=True)
    assert cli.run_script(report.main, [str(root / "runs/cnn"), "--out", str(foreign)]) == 2
    assert "figures folder that no report wrote" in capsys.readouterr().err
    assert not (tmp_path / "o").exists(), "a failed report leaves nothing behind"


def test_module_entry_point(tmp_path):
    """`python -m bc_keras.report` runs `main` through `cli.run_script`: one error line."""
    command = [sys.executable, "-m", "bc_keras.report", str(tmp_path), "--out", str(tmp_path / "o")]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: no run folder")


def test_broken_predictions_official_folds_and_relative_paths(tmp_path, monkeypatch):
    """A run with unreadable predictions stays in the table but out of the curves and tests;
    official folds (overlapping test sets) get no pooled DeLong; a relative data path is found
    from the folder holding runs/ and data/ wherever the report runs."""
    names = file_names(BENIGN + MALIGNANT, (1, 2))
    write_split(tmp_path / "data" / "patient", names, {"split": "patient", **SOURCE})
    for k in (1, 2):
        fold = {"index": k, "count": 2, "kind": "official", "fold_file": f"dsfold{k}.txt"}
        settings = {"split": "fold", "fold": fold}
        write_split(tmp_path / "data" / "official" / f"fold_{k}", names, settings)
    runs = tmp_path / "runs"
    for name, quality in (("cnn", 1.0), ("broken", 2.0)):
        config = {"experiment": "cnn", "data": "data/patient"}
        write_run(runs / name, config, names, scores(names, quality, 0))
    (runs / "broken" / "predictions.csv").write_text("filename,label\nx.png,3\n")
    (runs / "cnn" / "training_curves.png").unlink()
    (runs / "cnn" / "roc_curve.png").write_text("not a png")
    for k in (1, 2):
        for experiment, quality in (("cnn", 1.0 + k), ("simclr_linear", 0.5)):
            config = {"experiment": experiment, "data": f"data/official/fold_{k}"}
            write_run(runs / f"{experiment}_{k}", config, names, scores(names, quality, k))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    report.build_report([runs], tmp_path / "out")
    text = (tmp_path / "out" / "REPORT.md").read_text()
    rows = {row["run"]: row for row in table(section(text, "## Results"), "run")}
    assert rows["cnn"]["split"] == "patient" and rows["cnn_2"]["fold"] == "2/2"
    assert rows["broken"]["accuracy"] == expected_cell(metrics_of(tmp_path, "broken"), "accuracy")
    broken = section(text, "### baseline CNN (report recipe) [broken]: `broken`")
    assert "Note: unreadable predictions.csv (no probability column)." in broken
    comparison = section(text, "## Model comparison")
    assert "baseline CNN (report recipe) [broken]: no usable predictions in broken" in comparison
    assert "n/a: not the same test images" in comparison
    cnn_section = section(text, "### baseline CNN (report recipe) [cnn]: `cnn`")
    assert "Figure training_curves.png was missing: redrawn from history.csv." in cnn_section
    assert "Figure roc_curve.png: not a PNG." in cnn_section
    redrawn = tmp_path / "out" / "figures" / "cnn" / "training_curves.png"
    assert redrawn.read_bytes().startswith(PNG_SIGNATURE) and "![ROC curve]" not in cnn_section
    # A CNN vs a random-encoder linear model: no claim's pair, so in the appendix.
    official = section(
        text, "### Cross-validation 1: 2 official folds of `data/official` (appendix)"
    )
    test = table(official, "model A")[0]
    assert test["AUC test"] == "n/a: the official folds' test sets overlap"
    cnn = [metrics_of(tmp_path, f"cnn_{k}")["auc_roc"] for k in (1, 2)]
    linear = [metrics_of(tmp_path, f"simclr_linear_{k}")["auc_roc"] for k in (1, 2)]
    assert test["p (paired, folds)"] == p_value(statistics.paired_fold_test(cnn, linear)["p_value"])
    heading = "### Test set 1: `data/patient` (40 images, 10 patients)"
    calibration = section(section(text, "## Calibration"), heading)
    assert "| baseline CNN (report recipe) [broken] |  | n/a | n/a |" in calibration


def test_copied_runs_folder_keeps_its_grad_cam(study, tmp_path):
    """The model is identified by content (its recorded run folder's name, experiment, recipe
    and threshold), not by path: a copy of the runs folder keeps the panel, and a run whose
    model file holds another run's model still says so."""
    root, _, _ = study
    copy = tmp_path / "elsewhere" / "runs"
    shutil.copytree(root / "runs", copy)
    out = tmp_path / "copy_report"
    report.build_report([copy], out)
    models = section((out / "REPORT.md").read_text(), "## Models")
    cnn = section(models, "### baseline CNN (report recipe): `cnn/patient`")
    assert "![Grad-CAM](figures/cnn__patient/gradcam.png)" in cnn
    assert (out / "figures/cnn__patient/gradcam.png").read_bytes().startswith(PNG_SIGNATURE)
    ten = section(models, "### baseline CNN (report recipe, 10% labels): `cnn/patient_10`")
    assert "now holds the model of another run" in ten


def test_occlusion_and_lime_panels_beside_grad_cam(study, tmp_path):
    """`--explain occlusion lime` (the study's report) draws both beside each model's Grad-CAM,
    on the same images, from the maps bc_keras.evaluation.explain gives; without it, none."""
    from bc_keras.evaluation import explain
    from bc_keras.report.document import EXPLANATIONS

    assert (explain.METHOD_GRADCAM, *EXPLANATIONS) == explain.METHODS  # spelled alike
    root, _, _ = study
    out = tmp_path / "explained"
    assert report.main([str(root / "runs"), "--out", str(out), "--explain", "occlusion",
                        "lime", "--quiet"]) == 0  # fmt: skip
    models = section((out / "REPORT.md").read_text(), "## Models")
    cnn = section(models, "### baseline CNN (report recipe): `cnn/patient`")
    for title, name in (("Grad-CAM", "gradcam"), ("occlusion", "occlusion"), ("LIME", "lime")):
        assert f"![{title}](figures/cnn__patient/{name}.png)" in cnn, title
        with Image.open(out / f"figures/cnn__patient/{name}.png") as panel:
            assert panel.size == Image.open(out / "figures/cnn__patient/gradcam.png").size
    assert "occlusion map (the model's malignant evidence by the drop in probability" in cnn
    plain = tmp_path / "plain"
    report.build_report([root / "runs"], plain)
    assert not (plain / "figures/cnn__patient/lime.png").exists()
    with pytest.raises(SystemExit):
        report.main([str(root / "runs"), "--out", str(plain), "--explain", "shap"])


def test_a_model_of_another_run_with_the_same_folder_name_is_not_taken():
    from bc_keras.report.figures import ownership_problem
    from bc_keras.report.runs import Run

    run = Run("b/patient", Path("/nowhere/b/patient"), {"experiment": "cnn", "model_out": "m.h5"},
              {"accuracy": 0.9, "threshold": 0.4})  # fmt: skip
    mine = {"run_dir": "/old/place/patient", "experiment": "cnn", "recipe": "report",
            "threshold": 0.4}  # fmt: skip
    assert ownership_problem(run, mine) is None
    for other in ({"experiment": "transfer"}, {"recipe": "robust"}, {"threshold": 0.5},
                  {"run_dir": "/old/place/patient_10"}):  # fmt: skip
        assert "now holds the model of another run" in ownership_problem(run, {**mine, **other})
    assert ownership_problem(run, {"experiment": "cnn"}) == "its model file records no run folder"


def test_bad_run_folders_are_left_out_and_counted(tmp_path):
    """Run folders are untrusted: each bad shape is listed with its reason and counted; the
    good run stays in the table."""
    names = file_names(BENIGN + MALIGNANT, (1,))
    write_split(tmp_path / "data" / "patient", names, {"split": "patient", **SOURCE})
    runs = tmp_path / "runs"
    config = {"experiment": "cnn", "data": str(tmp_path / "data" / "patient")}
    good = write_run(runs / "good", config, names, scores(names, 2.0, 0))
    bad = {
        "truncated": (config, json.dumps(good)[:50], "unreadable metrics.json"),
        "list": (config, json.dumps([good]), "unreadable metrics.json (holds a list"),
        "text_metric": (config, json.dumps({**good, "auc_roc": "0.9"}),
                        "malformed metrics.json (auc_roc is '0.9', not a finite number)"),
        "nan": (config, json.dumps({**good, "recall": float("nan")}),
                "malformed metrics.json (recall is nan, not a finite number)"),
        "config_corrupt": ("{not json", json.dumps(good), "unreadable config.json"),
        "config_missing": (None, json.dumps(good), "no config.json"),
    }  # fmt: skip
    for name, (run_config, metrics, _) in bad.items():
        (runs / name).mkdir()
        if run_config is not None:
            text = run_config if isinstance(run_config, str) else json.dumps(run_config)
            (runs / name / "config.json").write_text(text)
        (runs / name / "metrics.json").write_text(metrics)
    report.build_report([runs], tmp_path / "out")
    text = (tmp_path / "out" / "REPORT.md").read_text()
    assert [row["run"] for row in table(section(text, "## Results"), "run")] == ["good"]
    assert "1 classifier(s) and 0 SimCLR pretraining run(s); 6 left out" in text
    left_out = section(text, "## Left out")
    assert "Run folders left out: 6." in left_out
    for name, (_, _, reason) in bad.items():
        assert f"- {name}: {reason}" in left_out, name


def test_unreadable_models_never_stop_the_report(tmp_path, monkeypatch):
    """A garbage .h5, an HDF5 file with corrupt metadata and a model Keras fails to load in
    any way: each run keeps its scores, its Grad-CAM is skipped with the reason and counted,
    and REPORT.md is written."""
    import h5py

    from bc_keras import models
    from bc_keras.models.saving import METADATA_ATTRIBUTE

    names = file_names(BENIGN + MALIGNANT, (1,))
    write_split(tmp_path / "data" / "patient", names, {"split": "patient", **SOURCE})
    runs, model_dir = tmp_path / "runs", tmp_path / "models"
    model_dir.mkdir()
    (model_dir / "garbage.h5").write_bytes(np.random.default_rng(0).bytes(4096))
    with h5py.File(model_dir / "metadata.h5", "w") as file:
        file.attrs[METADATA_ATTRIBUTE] = "{not json"
    metadata = {"kind": "classifier", "image_size": IMAGE_SIZE, "preprocess": "rescale",
                "threshold": 0.5, "experiment": "cnn", "run_dir": str(runs / "keras")}  # fmt: skip
    models.save_model(models.build_baseline_cnn(IMAGE_SIZE, dense_units=4),
                      model_dir / "keras.h5", metadata)  # fmt: skip
    for index, name in enumerate(("garbage", "metadata", "keras")):
        config = {"experiment": "cnn", "data": str(tmp_path / "data" / "patient"),
                  "model_out": str(model_dir / f"{name}.h5")}  # fmt: skip
        write_run(runs / name, config, names, scores(names, 2.0, index))

    def unloadable(path, compile=False):
        raise TypeError("Could not locate function 'evil'")

    monkeypatch.setattr(models, "load_model", unloadable)
    report.build_report([runs], tmp_path / "out")
    text = (tmp_path / "out" / "REPORT.md").read_text()
    assert len(table(section(text, "## Results"), "run")) == 3
    models_text = section(text, "## Models")
    for name in ("garbage", "metadata"):
        part = section(models_text, f"### baseline CNN (report recipe) [{name}]: `{name}`")
        assert "Grad-CAM skipped: its model file cannot be read (" in part, name
    part = section(models_text, "### baseline CNN (report recipe) [keras]: `keras`")
    assert "Grad-CAM skipped: Grad-CAM failed (TypeError: Could not locate function" in part
    left_out = section(text, "## Left out")
    assert "Run folders left out: 0." in left_out and "Grad-CAM panels left out: 3." in left_out
    assert "- `garbage`: its model file cannot be read" in left_out


def test_the_label_fraction_shown_is_the_share_actually_used(tmp_path):
    """label_fraction_used (metrics.json, else config.json) names the model in the table and
    fills results.csv, for the CNN and transfer runs as for SimCLR."""
    names = file_names(BENIGN + MALIGNANT, (1,))
    data = tmp_path / "data" / "patient"
    write_split(data, names, {"split": "patient", **SOURCE})
    runs = tmp_path / "runs"
    cnn = {"experiment": "cnn", "data": str(data), "label_fraction": 0.001}
    metrics = write_run(runs / "cnn", cnn, names, scores(names, 2.0, 0))
    write_json(runs / "cnn" / "metrics.json", {**metrics, "label_fraction_used": 0.125})
    transfer = {"experiment": "transfer", "backbone": "resnet50", "data": str(data),
                "label_fraction": 0.1, "label_fraction_used": 0.5}  # fmt: skip
    write_run(runs / "transfer", transfer, names, scores(names, 2.0, 1))
    report.build_report([runs], tmp_path / "out")
    rows = table(section((tmp_path / "out" / "REPORT.md").read_text(), "## Results"), "run")
    models = {row["run"]: row["model"] for row in rows}
    assert models == {"cnn": "baseline CNN (report recipe, 12.5% labels)",
                      "transfer": "resnet50 transfer (report recipe, 50% labels)"}  # fmt: skip
    with open(tmp_path / "out" / "results.csv", newline="") as file:
        fractions = {row["run"]: float(row["label_fraction"]) for row in csv.DictReader(file)}
    assert fractions == {"cnn": 0.125, "transfer": 0.5}


def test_grad_cam_reads_no_untrusted_value_blindly(tmp_path):
    """A run with no recorded threshold still gets its panel (at 0.5); predictions.csv naming
    images outside the split, a model recording an absurd input size or a model path that is
    a folder skip the panel with the reason; REPORT.md is written either way."""
    from bc_keras import models

    names = file_names(BENIGN + MALIGNANT, (1,))
    data = tmp_path / "data" / "patient"
    write_split(data, names, {"split": "patient", **SOURCE})
    runs, model_dir = tmp_path / "runs", tmp_path / "models"
    (model_dir / "folder.h5").mkdir(parents=True)
    sizes = {"no_threshold": IMAGE_SIZE, "escaping": IMAGE_SIZE, "huge": 10**6, "folder": None}
    for index, (name, size) in enumerate(sizes.items()):
        config = {
            "experiment": "cnn",
            "data": str(data),
            "model_out": str(model_dir / f"{name}.h5"),
        }
        metrics = write_run(runs / name, config, names, scores(names, 2.0, index))
        if size is None:
            continue
        metadata = {"kind": "classifier", "image_size": size, "preprocess": "rescale",
                    "experiment": "cnn", "threshold": 0.5, "run_dir": str(runs / name)}  # fmt: skip
        model = models.build_baseline_cnn(IMAGE_SIZE, dense_units=4)
        models.save_model(model, model_dir / f"{name}.h5", metadata)
    write_json(runs / "no_threshold" / "metrics.json", {**metrics, "threshold": None})
    predictions = runs / "escaping" / "predictions.csv"
    rows = list(csv.reader(predictions.open(newline="")))
    for row in rows[1:]:  # absolute paths to real images, outside the split's test/<class>/
        row[0] = str(data / "test" / CLASS_NAMES[int(row[3])] / row[0])
    with open(predictions, "w", newline="") as file:
        csv.writer(file).writerows(rows)
    report.build_report([runs], tmp_path / "out")
    text = section((tmp_path / "out" / "REPORT.md").read_text(), "## Models")
    # escaping's test file names differ, so it forms its own test set (no [name] suffix)
    headings = {name: re.search(rf"^### .*: `{name}`$", text, re.M).group(0) for name in sizes}
    parts = {name: section(text, heading) for name, heading in headings.items()}
    assert "Threshold n/a" in parts["no_threshold"]
    assert "![Grad-CAM](figures/no_threshold/gradcam.png)" in parts["no_threshold"]
    assert "Grad-CAM skipped: its test images are no longer under" in parts["escaping"]
    assert not (tmp_path / "out" / "figures" / "escaping" / "gradcam.png").exists()
    huge, folder = parts["huge"], parts["folder"]
    assert "Grad-CAM skipped: its model file records image_size 1000000, not a side" in huge
    assert f"Grad-CAM skipped: its model file `{model_dir / 'folder.h5'}` is a folder" in folder


def test_a_recorded_model_hash_decides_which_run_owns_the_model(study, tmp_path):
    """With metrics.json `model_sha256` (recorded as the model is saved) the file's bytes
    decide, whatever its metadata names: cnn/patient_10 recording the hash of models/cnn.h5
    (whose metadata names cnn/patient) gets its panel; cnn/patient recording another hash is
    refused although the metadata names it."""
    from bc_keras.report.figures import file_sha256

    root, _, _ = study
    copy = tmp_path / "moved" / "runs"
    shutil.copytree(root / "runs" / "cnn", copy / "cnn")
    model = root / "models" / "cnn.h5"
    for name, digest in (("patient", "0" * 64), ("patient_10", file_sha256(model))):
        metrics = json.loads((copy / "cnn" / name / "metrics.json").read_text())
        write_json(copy / "cnn" / name / "metrics.json", {**metrics, "model_sha256": digest})
    out = tmp_path / "hash_report"
    report.build_report([copy], out)
    models = section((out / "REPORT.md").read_text(), "## Models")
    cnn = section(models, "### baseline CNN (report recipe): `cnn/patient`")
    assert "now holds the model of another run (its SHA-256 is not the run's)" in cnn
    ten = section(models, "### baseline CNN (report recipe, 10% labels): `cnn/patient_10`")
    assert "![Grad-CAM](figures/cnn__patient_10/gradcam.png)" in ten

"""The report's significance tests: clustered by patient where a patient has several images, one
family Holm-adjusted together, the claims' and best-model pairs in the main text and every other
pair in the appendix."""

from __future__ import annotations

import numpy as np
from helpers import load_script

from bc_keras import report
from bc_keras.evaluation import statistics
from bc_keras.report.runs import read_predictions
from bc_keras.report.tables import p_value

_helpers = load_script("tests/report/test_report")  # the report tests' run-folder writers
BENIGN, MALIGNANT, SOURCE = _helpers.BENIGN, _helpers.MALIGNANT, _helpers.SOURCE
file_names, scores, section, table = (
    _helpers.file_names,
    _helpers.scores,
    _helpers.section,
    _helpers.table,
)
write_run, write_split = _helpers.write_run, _helpers.write_split
CNN = "baseline CNN (report recipe)"
TRANSFER = "resnet50 transfer (report recipe)"


def _patient_scores(names, by_patient, seed):
    """Each image gets its patient's score plus noise far below the gaps between patients."""
    noise = np.random.default_rng(seed).normal(0, 0.002, len(names))
    return np.array([by_patient[name.rsplit("-", 2)[0]] for name in names]) + noise


def test_one_patient_of_many_near_identical_images_is_one_cluster(tmp_path):
    """8 patients, one malignant patient with 40 near-identical images of 54: two models that
    differ only on that patient differ "significantly" when DeLong counts the images as
    independent (p < 0.05), but the report's test, clustered by patient, says not."""
    malignant = MALIGNANT[:4]
    names = file_names(BENIGN + malignant[1:], (1, 2), (40,))
    names += file_names(malignant[:1], range(1, 41), (40,))
    data = tmp_path / "data" / "patient"
    write_split(data, names, {"split": "patient", **SOURCE})
    shared = dict(zip(BENIGN + malignant[1:], (0.2, 0.35, 0.5, 0.6, 0.55, 0.7, 0.9), strict=True))
    runs = tmp_path / "runs"
    # A ranks the many-image patient above every benign patient, B below two of them.
    for name, heavy, extra in (("a", 0.8, {}), ("b", 0.45, {"experiment": "transfer"})):
        config = {"experiment": "cnn", "data": str(data), **extra}
        config |= {"backbone": "resnet50"} if extra else {}
        probabilities = _patient_scores(names, {**shared, malignant[0]: heavy}, len(name))
        write_run(runs / name, config, names, probabilities)
    report.build_report([runs], tmp_path / "out")
    text = (tmp_path / "out" / "REPORT.md").read_text()
    a, b = (read_predictions(runs / name / "predictions.csv") for name in ("a", "b"))
    assert len(set(a["patient"])) == 8 and len(a["label"]) == 54
    images = statistics.delong_test(a["label"], a["probability"], b["probability"])
    assert images["p_value"] < 0.05, "image-level DeLong calls the difference significant"
    clustered = statistics.auc_difference_test(
        a["label"], a["probability"], b["probability"], patients=a["patient"]
    )
    assert clustered["method"] == "obuchowski" and clustered["p_value"] > 0.05
    [row] = table(section(text, "## Model comparison"), "model A")
    assert (row["model A"], row["model B"]) == (CNN, TRANSFER)
    assert row["AUC test"] == "clustered DeLong (Obuchowski), 8 patients"
    assert row["z"] == f"{clustered['z']:.2f}"
    assert row["p (AUC test)"] == p_value(clustered["p_value"]) != p_value(images["p_value"])
    # One test in the family: Holm leaves it as it is.
    assert row["p (AUC test, Holm)"] == row["p (AUC test)"]
    assert row["verdict"] == "AUC: not significant (Holm p ≥ 0.05)"
    assert "clustered by patient (Obuchowski, 1997)" in text
    assert "family of 1 test (" in text and "No other pair" in section(
        text, "## Appendix: all pairwise comparisons"
    )


def _set_section(text, start):
    """The section under the first heading that starts with `start`."""
    heading = next(line for line in text.splitlines() if line.startswith(start))
    return section(text, heading)


def _holm(p_values):
    """Holm's step-down adjustment written out: the k-th smallest times (m - k + 1), made
    non-decreasing in that order, capped at 1."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, (len(p_values) - rank) * p_values[index])
        adjusted[index] = min(running, 1.0)
    return adjusted


def test_holm_over_the_whole_family_and_the_appendix_holds_the_other_pairs(tmp_path):
    """Three models on one test set and two on a second: four AUC tests, one family. The
    Holm-adjusted p-values printed equal a hand computation over all four; the main text holds
    each model vs its set's best (by AUC), the appendix the one other pair."""
    names = file_names(BENIGN + MALIGNANT, (1, 2))
    other = file_names(BENIGN + MALIGNANT, (7,))
    write_split(tmp_path / "data" / "patient", names, {"split": "patient", **SOURCE})
    write_split(tmp_path / "data" / "second", other, {"split": "patient", **SOURCE})
    runs = tmp_path / "runs"
    models = {
        "cnn": ({"experiment": "cnn"}, 0.2, names, "patient"),
        "robust": ({"experiment": "cnn", "recipe": "robust"}, 0.8, names, "patient"),
        "transfer": ({"experiment": "transfer", "backbone": "resnet50"}, 2.0, names, "patient"),
        "second_cnn": ({"experiment": "cnn"}, 0.2, other, "second"),
        "second_transfer": ({"experiment": "transfer", "backbone": "resnet50"}, 1.5, other,
                            "second"),
    }  # fmt: skip
    for seed, (name, (config, quality, images, folder)) in enumerate(models.items()):
        config = {**config, "data": str(tmp_path / "data" / folder)}
        write_run(runs / name, config, images, scores(images, quality, seed))
    report.build_report([runs], tmp_path / "out")
    text = (tmp_path / "out" / "REPORT.md").read_text()
    predictions = {name: read_predictions(runs / name / "predictions.csv") for name in models}
    pairs = [("cnn", "robust"), ("cnn", "transfer"), ("robust", "transfer"),
             ("second_cnn", "second_transfer")]  # fmt: skip
    raw = []
    for a, b in pairs:
        first, second = predictions[a], predictions[b]
        test = statistics.auc_difference_test(
            first["label"], first["probability"], second["probability"], first["patient"]
        )
        assert test["method"] == "obuchowski"
        raw.append(test["p_value"])
    adjusted = _holm(raw)
    assert adjusted == statistics.holm_adjust(raw)
    assert len(set(adjusted)) == 4
    # One pair significant before the adjustment and not after (CNN vs transfer), one after too.
    assert [p < 0.05 <= holm for p, holm in zip(raw, adjusted, strict=True)].count(True) == 1
    assert min(adjusted) < 0.05
    comparison = section(text, "## Model comparison")
    main = table(_set_section(comparison, "### Test set 1: "), "model A")
    appendix = table(section(text, "## Appendix: all pairwise comparisons"), "model A")
    robust = "baseline CNN (robust recipe)"
    assert [(r["model A"], r["model B"]) for r in main] == [(CNN, TRANSFER), (robust, TRANSFER)]
    assert {r["shown for"] for r in main} == {"vs the best headline model"}
    assert [(r["model A"], r["model B"]) for r in appendix] == [(CNN, robust)]
    second = table(_set_section(comparison, "### Test set 2: "), "model A")
    printed = {
        ("cnn", "robust"): appendix[0],
        ("cnn", "transfer"): main[0],
        ("robust", "transfer"): main[1],
        ("second_cnn", "second_transfer"): second[0],
    }
    for pair, p, holm in zip(pairs, raw, adjusted, strict=True):
        row = printed[pair]
        assert row["p (AUC test)"] == p_value(p), pair
        assert row["p (AUC test, Holm)"] == p_value(holm), pair
        verdict = "significant" if holm < 0.05 else "not significant"
        assert row["verdict"].startswith(f"AUC: {verdict} (Holm p"), pair
    assert "over the report's whole family of 4 tests" in comparison

"""What a simulation found, from its saved run folders alone: test AUC per strategy and round
with its patient-bootstrap interval, the paired difference of each uncertainty strategy from
random at equal labels, the one-line verdict, the figure and the markdown table."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from bc_keras.active import STRATEGY_RANDOM, UNCERTAINTY_STRATEGIES
from bc_keras.errors import DataError
from bc_keras.evaluation.metrics import (
    binary_scores,
    bootstrap_by_patient,
    group_index,
    resampled_scores,
)

PREDICTIONS_FILE = "predictions.csv"


def read_test_predictions(run_dir) -> dict:
    """A finished run's predictions.csv: filename, patient, label, probability (arrays)."""
    path = Path(run_dir) / PREDICTIONS_FILE
    try:
        with open(path, newline="") as file:
            rows = list(csv.DictReader(file))
    except OSError:
        raise DataError(f"{path} is missing; the round's run did not finish (run again)") from None
    return {
        "filename": [row["filename"] for row in rows],
        "patient": np.array([row["patient"] for row in rows]),
        "label": np.array([int(row["label"]) for row in rows]),
        "probability": np.array([float(row["probability"]) for row in rows]),
    }


def auc_with_interval(predictions: dict, samples: int = 1000, seed: int = 0) -> dict:
    """Test AUC of one round and its 95% patient-bootstrap interval (None where undefined)."""
    labels, probabilities = predictions["label"], predictions["probability"]
    auc = binary_scores(labels, probabilities)["auc_roc"]
    interval = None
    if samples > 0 and len(set(predictions["patient"].tolist())) > 1:
        interval = bootstrap_by_patient(
            labels, probabilities, predictions["patient"], samples=samples, seed=seed
        ).get("auc_roc")
    return {"auc_roc": auc, "auc_95ci": interval}


def paired_auc_difference(predictions_a: dict, predictions_b: dict, samples: int = 1000,
                          seed: int = 0) -> dict:  # fmt: skip
    """AUC(a) - AUC(b) on the same test images, with the 95% interval of the difference from
    one patient bootstrap shared by both (the same patients drawn for a and b).

    Raises:
        DataError: if the two runs did not score the same test images in the same order.
    """
    if predictions_a["filename"] != predictions_b["filename"]:
        raise DataError(
            "two rounds scored different test images; every round must use the same split"
        )
    labels, patients = predictions_a["label"], predictions_a["patient"]
    a, b = predictions_a["probability"], predictions_b["probability"]
    auc_a, auc_b = binary_scores(labels, a)["auc_roc"], binary_scores(labels, b)["auc_roc"]
    if auc_a is None or auc_b is None:
        return {"difference": None, "difference_95ci": None}
    index, count = group_index(patients, labels)
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, count, (samples, count))
    offsets = (np.arange(samples) * count)[:, None]
    multiplicity = np.bincount((chosen + offsets).ravel(), minlength=samples * count)
    multiplicity = multiplicity.reshape(samples, count).astype(float)
    resampled = [resampled_scores(multiplicity, index, labels, p, 0.5)["auc_roc"] for p in (a, b)]
    differences = resampled[0] - resampled[1]
    differences = differences[~np.isnan(differences)]
    interval = None
    if differences.size:
        interval = [float(np.percentile(differences, 2.5)), float(np.percentile(differences, 97.5))]
    return {"difference": float(auc_a - auc_b), "difference_95ci": interval}


def compare_with_random(curves: dict, predictions: dict, samples: int, seed: int) -> dict:
    """Per uncertainty strategy simulated beside random: the paired AUC difference from random
    at every round after the start (equal labels), and the verdict.

    Args:
        curves: strategy -> list of round records (`labels`, `auc_roc`, ...), round 0 first.
        predictions: (strategy, round) -> test predictions of that round's model.
    """
    if STRATEGY_RANDOM not in curves:
        return {}
    comparisons = {}
    for strategy in (s for s in UNCERTAINTY_STRATEGIES if s in curves):
        rounds = []
        for record in curves[strategy][1:]:
            number = record["round"]
            difference = paired_auc_difference(
                predictions[strategy, number], predictions[STRATEGY_RANDOM, number], samples, seed
            )
            rounds.append({"round": number, "labels": record["labels"], **difference})
        comparisons[strategy] = {"rounds": rounds, "verdict": verdict(strategy, rounds)}
    return comparisons


def verdict(strategy: str, rounds: list[dict]) -> str:
    """One line: whether `strategy` beats random at equal labels. It beats random when, at
    the last round, the 95% paired patient-bootstrap interval of its AUC minus random's lies
    above 0; it loses when the interval lies below 0; otherwise it is not shown to differ."""
    measured = [r for r in rounds if r["difference"] is not None]
    if not measured:
        return f"{strategy} vs random: no AUC to compare (a test split with one class)"
    ahead = sum(r["difference"] > 0 for r in measured)
    last = measured[-1]
    text = (
        f"{strategy} vs random at equal labels: ahead at {ahead} of {len(measured)} rounds "
        f"(mean AUC difference {np.mean([r['difference'] for r in measured]):+.3f}); at "
        f"{last['labels']} labels {last['difference']:+.3f}"
    )
    interval = last["difference_95ci"]
    if interval is None:
        return f"{text} (no interval): not shown to beat random"
    text += f" [95% patient bootstrap {interval[0]:+.3f}, {interval[1]:+.3f}]"
    if interval[0] > 0:
        return f"{text}: beats random"
    if interval[1] < 0:
        return f"{text}: worse than random"
    return f"{text}: not shown to beat random (the interval includes 0)"


def plot_curves(curves: dict, path, title: str) -> Path:
    """Test AUC against the number of training labels, one line per strategy, bars from the
    patient-bootstrap interval's low to its high end (strategies dodged a little apart)."""
    import matplotlib.pyplot as plt

    from bc_keras.evaluation.styles import distinct_styles, outside_legend, styled_plot
    from bc_keras.runs import atomic_path

    figure, axis = plt.subplots(figsize=(8, 4.5))
    counts = sorted({record["labels"] for records in curves.values() for record in records})
    step = (counts[-1] - counts[0]) / max(1, len(counts) - 1) if len(counts) > 1 else 1
    for index, ((strategy, records), style) in enumerate(
        zip(curves.items(), distinct_styles(len(curves)), strict=True)
    ):
        dodge = 0.03 * step * (index - (len(curves) - 1) / 2)
        points = [r for r in records if r["auc_roc"] is not None]
        x = np.array([r["labels"] for r in points], dtype=float) + dodge
        (line,) = styled_plot(axis, style, x, [r["auc_roc"] for r in points], label=strategy)
        bars = [(xi, r["auc_95ci"]) for xi, r in zip(x, points, strict=True) if r["auc_95ci"]]
        if bars:
            axis.vlines([b[0] for b in bars], [b[1][0] for b in bars], [b[1][1] for b in bars],
                        color=line.get_color(), alpha=0.6)  # fmt: skip
    axis.set_xticks(counts)
    axis.set_xlabel("training images labelled")
    axis.set_ylabel("test AUC (95% patient-bootstrap interval)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    outside_legend(axis)
    path = Path(path)
    with atomic_path(path, keep_suffix=True) as temporary:
        figure.tight_layout()
        figure.savefig(temporary, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def markdown(result: dict) -> str:
    """The simulation as markdown: settings, AUC per round and strategy, the verdicts."""
    settings, curves = result["settings"], result["curves"]
    lines = [
        f"# Active learning: {settings['experiment']} on {settings['data']}",
        "",
        f"Start: {settings['start_fraction']:g} of the training labels (whole patients per "
        f"class); {settings['rounds']} rounds of {settings['budget']} images; patient cap "
        f"{result['patient_cap_rule']}.",
        "",
        "| strategy | round | labels | test AUC | 95% patient-bootstrap interval | patients chosen "
        "| most images of one patient |",
        "|---|---|---|---|---|---|---|",
    ]
    for strategy, records in curves.items():
        for r in records:
            auc = "n/a" if r["auc_roc"] is None else f"{r['auc_roc']:.3f}"
            ci = "n/a" if not r["auc_95ci"] else f"{r['auc_95ci'][0]:.3f} - {r['auc_95ci'][1]:.3f}"
            chosen = "start" if r["round"] == 0 else str(r["patients_chosen"])
            most = "" if r["round"] == 0 else str(r["most_images_of_one_patient"])
            lines.append(f"| {strategy} | {r['round']} | {r['labels']} | {auc} | {ci} | {chosen} "
                         f"| {most} |")  # fmt: skip
    lines += ["", *[f"- {c['verdict']}" for c in result["versus_random"].values()]]
    return "\n".join(lines) + "\n"

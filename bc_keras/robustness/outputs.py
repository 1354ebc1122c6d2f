"""The robustness benchmark's folder: robustness.json, robustness.md (a table of each score by
model, corruption and severity) and one figure per corruption (score against severity, one
line per model). TensorFlow-free, so a report can read and redraw it."""

from __future__ import annotations

import json
from pathlib import Path

from bc_keras import runs

RESULT_FILE = "robustness.json"
MARKDOWN_FILE = "robustness.md"
FIGURE_PATTERN = "robustness_{corruption}.png"


def figure_name(corruption: str) -> str:
    """The file name of one corruption's figure."""
    return FIGURE_PATTERN.format(corruption=corruption)


def _cell(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _mean(values) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def score_table(result: dict, score: str) -> list[str]:
    """One score's markdown table: a row per model and corruption, a column per severity, and
    the mean over the corrupted severities."""
    severities = result["severities"]
    header = ["model", "corruption", *(f"{s}" if s else "0 (clean)" for s in severities)]
    corrupted = severities[1:]
    header.append(
        "mean 1-5" if corrupted == [1, 2, 3, 4, 5] else f"mean {', '.join(map(str, corrupted))}"
    )
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for entry in result["models"]:
        for name, rows in entry["results"].items():
            values = [row[score] for row in rows]
            cells = [entry["name"], result["corruptions"][name]["title"], *map(_cell, values),
                     _cell(_mean(values[1:]))]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def parameter_table(result: dict) -> list[str]:
    """What each severity means for each corruption."""
    severities = [s for s in result["severities"] if s]
    lines = ["| corruption | parameter | " + " | ".join(map(str, severities)) + " |",
             "|---|---|" + "---:|" * len(severities)]  # fmt: skip
    for record in result["corruptions"].values():
        values = [str(record["values"][str(s)]) for s in severities]
        lines.append(f"| {record['title']} | {record['parameter']} | " + " | ".join(values) + " |")
    return lines


def robustness_markdown(result: dict) -> str:
    """robustness.md: the setting, each score's table and the severities' parameters."""
    models = result["models"]
    first = models[0]
    patients = "" if first["patients"] is None else f", {first['patients']} patients"
    lines = [
        f"Robustness of {len(models)} model(s) on {result['split']} (test: "
        f"{first['test_images']} images{patients}; seed {result['seed']}). Severity 0 is the "
        "clean test split, scored as the training run's test evaluation (metrics.json); FGSM "
        "and PGD attack each model white-box through its own preprocessing, epsilon in grey "
        "levels of 0-255.",
    ]
    for entry in models:
        check = entry["metrics_json"]
        verdict = {True: "equals", False: "differs from", None: "has no"}[check["matches"]]
        note = "" if check["same_split"] is not False else " (trained on another split)"
        lines.append(f"- {entry['name']}: {entry['path']}; severity 0 {verdict} its run's "
                     f"metrics.json{note}.")  # fmt: skip
    for key, title in result["scores"].items():
        lines += ["", f"### {title[0].upper()}{title[1:]}", "", *score_table(result, key)]
    lines += ["", "### Severities", "", *parameter_table(result)]
    return "\n".join(lines) + "\n"


def plot_corruption(result: dict, corruption: str, path) -> Path:
    """One corruption's figure: a panel per score against severity, a line per model."""
    import matplotlib.pyplot as plt

    from bc_keras.evaluation.styles import distinct_styles, outside_legend, styled_plot

    record = result["corruptions"][corruption]
    scores = result["scores"]
    figure, axes = plt.subplots(1, len(scores), figsize=(4.2 * len(scores) + 2.0, 3.6))
    styles = distinct_styles(len(result["models"]))
    for axis, (key, title) in zip(axes, scores.items(), strict=True):
        for style, entry in zip(styles, result["models"], strict=True):
            rows = entry["results"][corruption]
            points = [(row["severity"], row[key]) for row in rows if row[key] is not None]
            if points:
                x, y = zip(*points, strict=True)
                styled_plot(axis, style, x, y, label=entry["name"])
        axis.set_xticks(result["severities"])
        axis.set_ylim(-0.02, 1.02)
        axis.set_xlabel("severity (0 = clean)")
        axis.set_ylabel(title)
        axis.grid(alpha=0.3)
    outside_legend(axes[-1])
    figure.suptitle(f"{record['title']} ({record['parameter']})")
    path = Path(path)
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def write_outputs(result: dict, folder) -> list[Path]:
    """robustness.json, robustness.md and the figures in `folder`; returns their paths."""
    folder = Path(folder)
    written = [runs.write_json(folder / RESULT_FILE, result)]
    with runs.atomic_write(folder / MARKDOWN_FILE) as file:
        file.write(robustness_markdown(result))
    written.append(folder / MARKDOWN_FILE)
    for name in result["corruptions"]:
        written.append(plot_corruption(result, name, folder / figure_name(name)))
    return written


def read_robustness(folder) -> dict:
    """A benchmark folder's robustness.json."""
    return json.loads((Path(folder) / RESULT_FILE).read_text())

"""The report's "Batch size" claim (issue 21 item 4): the report says self-supervised
pretraining "degrades if batch size or number of negative examples drops"; here it is measured.

Each linear evaluation whose encoder came from a pretraining run of a fixed number of epochs
(no early stopping: patience >= epochs, so every batch size saw every image as often) is a
point: its method and batch size against the linear head's test AUC with the patient-bootstrap
interval. The claim is tested per method between its smallest and largest batch on the same
test images (DeLong, clustered by patient where patients hold several images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bc_keras.evaluation import statistics
from bc_keras.report.encoders import fixed_epochs
from bc_keras.report.runs import KIND_PRETRAIN, Run, locate

LINEAR_EXPERIMENT = "simclr_linear"
DEFAULT_METHOD = "simclr"
FIGURE = "batch_size.png"


def batch_size_points(runs: list[Run]) -> dict[str, list[tuple[int, Run]]]:
    """method -> [(batch size, linear run)] sorted by batch size, for the linear runs whose
    encoder a fixed-epoch pretraining run among `runs` wrote (one run per method and size:
    the first by name)."""
    encoders = {}
    for run in runs:
        if run.kind == KIND_PRETRAIN and fixed_epochs(run.config) and run.config.get("model_out"):
            encoders.setdefault(locate(str(run.config["model_out"]), run.run_dir), run)
    points: dict[str, dict[int, Run]] = {}
    for run in runs:
        encoder = run.config.get("encoder")
        if run.experiment != LINEAR_EXPERIMENT or not encoder or run.predictions is None:
            continue
        pretrain = encoders.get(locate(str(encoder), run.run_dir))
        if pretrain is None or not str(pretrain.config.get("batch_size", "")).isdigit():
            continue
        method = str(pretrain.config.get("method") or DEFAULT_METHOD)
        size = int(pretrain.config["batch_size"])
        points.setdefault(method, {}).setdefault(size, run)
    return {method: sorted(by_size.items()) for method, by_size in sorted(points.items())}


def _auc(run: Run) -> tuple[float | None, list]:
    interval = run.metrics.get("bootstrap_95ci_by_patient", {}).get("auc_roc") or []
    return run.metrics.get("auc_roc"), list(interval)


def claim_test(small: Run, large: Run) -> dict | None:
    """The AUC difference small - large on the same test images, or None when the two runs
    were not tested on the same images."""
    a, b = small.predictions, large.predictions
    if list(a["filename"]) != list(b["filename"]) or not np.array_equal(a["label"], b["label"]):
        return None
    patients = a["patient"] if all(a["patient"]) else None
    return statistics.auc_difference_test(a["label"], a["probability"], b["probability"], patients)


def plot_batch_sizes(points: dict, path) -> Path:
    """Linear AUC against batch size (log 2 axis), a line per method, patient intervals."""
    import matplotlib.pyplot as plt

    from bc_keras.evaluation.styles import distinct_styles

    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for (colour, line, marker), (method, rows) in zip(
        distinct_styles(len(points)), points.items(), strict=True
    ):
        sizes, aucs, errors = [], [], [[], []]
        for size, run in rows:
            auc, interval = _auc(run)
            if auc is None:
                continue
            sizes.append(size)
            aucs.append(auc)
            errors[0].append(auc - interval[0] if interval else 0.0)
            errors[1].append(interval[1] - auc if interval else 0.0)
        axis.errorbar(sizes, aucs, yerr=errors, color=colour, marker=marker, linestyle=line,
                      capsize=3, label=method)  # fmt: skip
    axis.set_xscale("log", base=2)
    axis.set_xlabel("pretraining batch size")
    axis.set_ylabel("linear evaluation test AUC")
    axis.set_ylim(0.0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def batch_size_lines(runs: list[Run], figures) -> list[str]:
    """The "Batch size" claim: the table, the figure and the verdict per method."""
    lines = [
        "### 4. Batch size: does self-supervised pretraining degrade with smaller batches?",
        "",
        'The report: "Performance degrades if batch size or number of negative examples '
        'drops". Each method pretrained for the same epochs at each batch size (no early '
        "stopping, so every image is seen as often), then linear-evaluated on the same test "
        "split; AUC with its 95% patient-bootstrap interval.",
        "",
    ]
    points = batch_size_points(runs)
    if not any(len(rows) > 1 for rows in points.values()):
        return lines + ["Not measured: no method has fixed-epoch pretraining runs at two or "
                        "more batch sizes with a linear evaluation (the study's batch_* steps).",
                        ""]  # fmt: skip
    lines += [
        "| method | batch size | linear AUC | 95% interval | run |",
        "|---|---:|---:|---|---|",
    ]
    for method, rows in points.items():
        for size, run in rows:
            auc, interval = _auc(run)
            shown = "n/a" if auc is None else f"{auc:.3f}"
            ci = f"{interval[0]:.3f} - {interval[1]:.3f}" if len(interval) == 2 else "n/a"
            lines.append(f"| {method} | {size} | {shown} | {ci} | `{run.name}` |")
    link = figures.link(plot_batch_sizes(points, figures.folder("claims") / FIGURE))
    lines += ["", f"![batch size]({link})", ""]
    for method, rows in points.items():
        if len(rows) < 2:
            continue
        (small_size, small), (large_size, large) = rows[0], rows[-1]
        test = claim_test(small, large)
        if test is None or test.get("p_value") is None:
            lines.append(f"- {method}: batch {small_size} and {large_size} were not tested on "
                         "the same images; no paired test.")  # fmt: skip
            continue
        difference, p = test["difference"], test["p_value"]
        holds = difference < 0 and p < 0.05
        verdict = "holds" if holds else "does not hold"
        lines.append(
            f"- {method}: AUC at batch {small_size} minus batch {large_size} = {difference:+.3f} "
            f"(p = {p:.3g}, {test['method']}): the report's claim {verdict} on these data"
            + ("" if holds else " (a drop would need a negative difference with p < 0.05)")
            + "."
        )
    return lines + [""]

"""Figures as PNG files: training curves, confusion matrix, ROC, PR, calibration, label
efficiency, forest plot, samples, t-SNE, view pairs."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from PIL import Image
from sklearn import metrics as sk

from bc_keras.evaluation.styles import (
    PALETTE,
    REFERENCE,
    distinct_styles,
    outside_legend,
    styled_plot,
)
from bc_keras.histology.breakhis import CLASS_NAMES


def _save(figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    # A tight box keeps the legends drawn outside the axes inside the image.
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def plot_history(history: dict, path, title: str = "", phase_key: str = "phase") -> Path:
    """Training/validation accuracy and loss per epoch; a dashed line where a new phase starts.

    Args:
        history: column -> list of per-epoch values (as read from the history CSV). Needs
            `loss` and `val_loss`; plots `accuracy`/`val_accuracy` when present.
    """
    if not history.get("loss"):
        raise ValueError("The history holds no epoch to plot (no 'loss' values).")
    epochs = np.arange(1, len(history["loss"]) + 1)
    panels = [("loss", "Loss")]
    if "accuracy" in history:
        panels.insert(0, ("accuracy", "Accuracy"))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 1.5, 4))
    axes = np.atleast_1d(axes)
    phases = history.get(phase_key)
    styles = distinct_styles(2)
    for axis, (key, label) in zip(axes, panels, strict=True):
        for (colour, linestyle, marker), (column, name) in zip(
            styles, ((key, "training"), (f"val_{key}", "validation")), strict=True
        ):
            if column in history:
                axis.plot(epochs, history[column], color=colour, linestyle=linestyle,
                          marker=marker, markersize=3, label=name)  # fmt: skip
        if phases is not None:
            for index in range(1, len(phases)):
                if phases[index] != phases[index - 1]:
                    axis.axvline(index + 0.5, color="grey", linestyle="--")
                    axis.text(
                        index + 0.6,
                        axis.get_ylim()[1],
                        f" {phase_key} {phases[index]:g}",
                        va="top",
                        fontsize=8,
                    )
        _finish_axis(axis, "epoch", label, f"{title} {label.lower()}".strip(), legend=False)
    # Both panels hold the same two series: one legend, right of the last panel.
    outside_legend(axes[-1])
    return _save(figure, path)


def plot_confusion_matrix(matrix, path, title: str = "Confusion matrix") -> Path:
    """Seaborn heatmap of a 2x2 confusion matrix (rows true, columns predicted)."""
    figure, axis = plt.subplots(figsize=(4.5, 4))
    sns.heatmap(
        np.asarray(matrix),
        annot=True,
        fmt="d",
        cmap="Blues",
        xticklabels=CLASS_NAMES,
        yticklabels=CLASS_NAMES,
        cbar=False,
        ax=axis,
    )
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    return _save(figure, path)


def plot_roc_curve(labels, probabilities, path, title: str = "ROC curve") -> Path:
    """ROC curve with its AUC in the legend."""
    return plot_roc_overlay({"": (labels, probabilities)}, path, title)


def plot_precision_recall_curve(
    labels, probabilities, path, title: str = "Precision-recall curve"
) -> Path:
    """Precision-recall curve with average precision; the dashed line is the malignant share."""
    return plot_precision_recall_overlay({"": (labels, probabilities)}, path, title)


def _finish_axis(axis, xlabel: str, ylabel: str, title: str, legend: bool = True):
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    if legend:
        outside_legend(axis)
    axis.grid(alpha=0.3)


def _label(name: str, score: str) -> str:
    score = score.replace(" ", "\N{NO-BREAK SPACE}")  # a wrapped legend keeps "AUC = 0.9" whole
    return f"{name} ({score})" if name else score


def sample_indices(total: int, count: int = 12, seed: int = 0) -> np.ndarray:
    """The images `plot_sample_predictions` shows: `count` of `total`, drawn from `seed`."""
    return np.random.default_rng(seed).choice(total, size=min(count, total), replace=False)


def plot_sample_predictions(
    paths,
    labels,
    probabilities,
    path,
    *,
    threshold: float = 0.5,
    count: int = 12,
    seed: int = 0,
    read_image=Image.open,
    images=None,
) -> Path:
    """A grid of test images titled with true label, predicted label and probability.

    The pixels come from `images(indices)` when given (uint8 `[k, h, w, 3]` of the images at
    those positions, e.g. decoded from TFRecord shards, whose `paths` name no file), else from
    `read_image(path)`, which opens one as a PIL image.
    """
    chosen = sample_indices(len(paths), count, seed)
    pixels = None if images is None or not len(chosen) else images(chosen)
    columns = 4
    rows = int(np.ceil(len(chosen) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 2.6 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for number, (axis, index) in enumerate(zip(axes.ravel(), chosen, strict=False)):
        if pixels is not None:
            axis.imshow(np.asarray(pixels[number], dtype=np.uint8))
        else:
            with read_image(paths[index]) as image:
                axis.imshow(image.convert("RGB"))
        predicted = int(probabilities[index] >= threshold)
        correct = predicted == int(labels[index])
        axis.set_title(
            f"true {CLASS_NAMES[int(labels[index])]}\npred {CLASS_NAMES[predicted]} (p={probabilities[index]:.2f})",
            fontsize=8,
            color="green" if correct else "red",
        )
    return _save(figure, path)


def plot_tsne(
    embeddings, labels, path, *, seed: int = 0, title: str = "t-SNE of encoder embeddings"
) -> Path:
    """2-D t-SNE of embeddings coloured by class."""
    from sklearn.manifold import TSNE

    embeddings = np.asarray(embeddings, dtype=np.float32)
    perplexity = float(min(30.0, max(2.0, (len(embeddings) - 1) / 3)))
    points = TSNE(
        n_components=2, perplexity=perplexity, random_state=seed, init="pca"
    ).fit_transform(embeddings)
    figure, axis = plt.subplots(figsize=(5, 4.5))
    labels = np.asarray(labels).astype(int)
    for label, name in enumerate(CLASS_NAMES):
        mask = labels == label
        axis.scatter(points[mask, 0], points[mask, 1], s=10, alpha=0.7, label=name)
    axis.set_title(title)
    outside_legend(axis)
    axis.set_xticks([])
    axis.set_yticks([])
    return _save(figure, path)


def plot_augmented_pairs(views_a, views_b, path, title: str = "Augmented pairs") -> Path:
    """Each image's two views side by side (the report shows four images, two views each)."""
    count = len(views_a)
    figure, axes = plt.subplots(count, 2, figsize=(4.4, 2.2 * count), squeeze=False)
    for row in range(count):
        for column, views in enumerate((views_a, views_b)):
            axes[row, column].imshow(np.clip(np.asarray(views[row]), 0.0, 1.0))
            axes[row, column].axis("off")
            axes[row, column].set_title(f"image {row + 1}, view {column + 1}", fontsize=8)
    figure.suptitle(title)
    return _save(figure, path)


def _per_model(mapping, argument: str, entry: str):
    """The items of a non-empty `{model name: entry}` dict, or a ValueError naming it."""
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(
            f"{argument} must map at least one model name to {entry}. "
            f"Received: {argument}={mapping!r}"
        )
    return mapping.items()


def _checked_curves(curves: dict) -> dict:
    """`{model name: (labels, probabilities)}` as arrays, or a ValueError naming the problem."""
    checked = {}
    for name, pair in _per_model(curves, "curves", "(labels, probabilities)"):
        if len(pair) != 2:
            raise ValueError(
                f"Each model needs a (labels, probabilities) pair. Received: {name!r}: {pair!r}"
            )
        labels, probabilities = np.asarray(pair[0]).astype(int), np.asarray(pair[1], dtype=float)
        if labels.ndim != 1 or labels.shape != probabilities.shape or len(labels) == 0:
            raise ValueError(
                f"Model {name!r} needs as many labels as probabilities, at least one. "
                f"Received: labels.shape={labels.shape!r}, "
                f"probabilities.shape={probabilities.shape!r}"
            )
        checked[name] = (labels, probabilities)
    return checked


# A curve kind: (x, y) points of the curve, and its summary score's name and function.
ROC = (lambda y, p: sk.roc_curve(y, p)[:2], "AUC", sk.roc_auc_score)
PRECISION_RECALL = (
    lambda y, p: sk.precision_recall_curve(y, p)[1::-1],
    "AP",
    sk.average_precision_score,
)


def _overlay(curves: dict, what: str, kind):
    """A figure with one `what` curve per model (both classes needed), the score in the
    legend; returns it with the checked curves."""
    curves = _checked_curves(curves)
    points, score_name, score = kind
    for name, (labels, _) in curves.items():
        if len(np.unique(labels)) < 2:
            raise ValueError(
                f"A {what} needs benign and malignant images. Received: model {name!r} with "
                f"labels of the single class {CLASS_NAMES[int(labels[0])]!r}"
            )
    styles = distinct_styles(len(curves))
    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    for (name, (labels, probabilities)), style in zip(curves.items(), styles, strict=True):
        value = score(labels, probabilities)
        label = _label(name, f"{score_name} = {value:.3f}")
        styled_plot(axis, style, *points(labels, probabilities), label=label, markevery=0.1)
    return figure, axis, curves


def plot_reliability_diagram(
    curves: dict, path, title: str = "Reliability diagram", bins: int = 10
) -> Path:
    """Observed malignant share against mean predicted probability per equal-width bin, one
    line per model, the diagonal as perfect calibration and each model's ECE in the legend.

    Args:
        curves: model name -> (labels, probabilities of malignant).
        bins: the number of equal-width probability bins.
    """
    from bc_keras.evaluation.statistics import expected_calibration_error, reliability_curve

    curves = _checked_curves(curves)
    styles = distinct_styles(len(curves))
    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    axis.plot([0, 1], [0, 1], **REFERENCE, label="perfectly calibrated")
    for (name, (labels, probabilities)), style in zip(curves.items(), styles, strict=True):
        curve = reliability_curve(labels, probabilities, bins)
        error = expected_calibration_error(labels, probabilities, bins)
        label = _label(name, f"ECE = {error:.3f}")
        styled_plot(axis, style, curve["mean_predicted"], curve["fraction_positive"], label=label)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    _finish_axis(axis, "mean predicted probability of malignant", "fraction malignant", title)
    return _save(figure, path)


def plot_roc_overlay(curves: dict, path, title: str = "ROC curves") -> Path:
    """One ROC curve per model, meant for models scored on the same test images; AUCs in the
    legend.

    Args:
        curves: model name -> (labels, probabilities of malignant).
    """
    figure, axis, curves = _overlay(curves, "ROC curve", ROC)
    axis.plot([0, 1], [0, 1], **REFERENCE, label="chance")
    _finish_axis(axis, "false positive rate", "true positive rate (recall)", title)
    return _save(figure, path)


def plot_precision_recall_overlay(
    curves: dict, path, title: str = "Precision-recall curves"
) -> Path:
    """One precision-recall curve per model, meant for models scored on the same test images;
    average precision in the legend and the malignant share as the dashed chance line.

    Args:
        curves: model name -> (labels, probabilities of malignant).
    """
    figure, axis, curves = _overlay(curves, "precision-recall curve", PRECISION_RECALL)
    shares = sorted({float(np.mean(labels)) for labels, _ in curves.values()})
    for index, share in enumerate(shares):
        axis.axhline(share, **REFERENCE, label="chance (malignant share)" if not index else None)
    axis.set_ylim(0, 1.02)
    _finish_axis(axis, "recall", "precision", title)
    return _save(figure, path)


def plot_metric_vs_fraction(
    results: dict, path, metric_name: str, title: str = "Label efficiency"
) -> Path:
    """A metric against the fraction of training labels, one line per model with its
    confidence interval as error bars (the label-efficiency figure).

    Args:
        results: model name -> list of (label fraction in (0, 1], value, low, high); low and
            high may be None where a point has no interval.
        metric_name: the y-axis label, e.g. "balanced accuracy".
    """
    series = {}
    for name, points in _per_model(results, "results", "a list of points"):
        if not points or any(len(point) != 4 for point in points):
            raise ValueError(
                f"Each model needs (fraction, value, low, high) points. Received: {name!r}: "
                f"{points!r}"
            )
        points = sorted(points, key=lambda point: point[0])
        if any(not 0 < point[0] <= 1 for point in points):
            raise ValueError(f"Label fractions must lie in (0, 1]. Received: {name!r}: {points!r}")
        series[name] = points
    fractions = sorted({float(point[0]) for points in series.values() for point in points})
    styles = distinct_styles(len(series))
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for index, ((name, points), style) in enumerate(zip(series.items(), styles, strict=True)):
        # A small horizontal shift per model keeps the intervals at one fraction apart.
        dodge = 10 ** (0.012 * (index - (len(series) - 1) / 2))
        x = np.array([point[0] for point in points], dtype=float) * dodge
        y = np.array([point[1] for point in points], dtype=float)
        (line,) = styled_plot(axis, style, x, y, label=name)
        with_interval = [point for point in points if None not in (point[2], point[3])]
        if with_interval:
            # Bars from low to high rather than errorbar's +/- offsets: a percentile bootstrap
            # interval need not contain its point estimate.
            x_interval, _, low, high = np.array(with_interval, dtype=float).T
            x_interval = x_interval * dodge
            axis.vlines(x_interval, low, high, color=line.get_color(), alpha=0.7)
            axis.scatter(
                np.concatenate([x_interval, x_interval]),
                np.concatenate([low, high]),
                marker="_",
                s=60,
                color=line.get_color(),
            )
    # Fractions such as 0.1, 0.25, 0.5, 1.0 are evenly spread on a log axis.
    axis.set_xscale("log")
    axis.set_xticks(fractions)
    axis.set_xticklabels([f"{fraction:g}" for fraction in fractions])
    axis.minorticks_off()
    _finish_axis(axis, "fraction of training labels", metric_name, title)
    return _save(figure, path)


FOREST_WRAP = 45  # characters per model label line in the forest plot


def _forest_table(rows) -> tuple[list[str], list[str], dict]:
    """The model labels and metric names in order of first appearance, and
    `{(label, metric): (value, low, high)}`; a ValueError names a malformed row."""
    labels, metrics, table = {}, {}, {}
    for row in rows:
        if not isinstance(row, list | tuple) or len(row) != 5:
            raise ValueError(f"Each row needs (label, metric, value, low, high). Received: {row!r}")
        label, metric, *numbers = row
        value, low, high = (None if n is None else float(n) for n in numbers)
        finite = all(n is None or math.isfinite(n) for n in (value, low, high))
        if not finite or (low is None) != (high is None) or (low is not None and low > high):
            raise ValueError(
                "A row needs a finite value (or None) and low <= high (both or neither). "
                f"Received: {row!r}"
            )
        if (label, metric) in table:
            raise ValueError(f"Model {label!r} has two {metric!r} rows. Received: {row!r}")
        labels[label], metrics[metric] = None, None
        table[label, metric] = (value, low, high)
    if not any(value is not None for value, _, _ in table.values()):
        raise ValueError(f"The forest plot needs at least one value. Received: rows={rows!r}")
    return list(labels), list(metrics), table


def plot_forest(rows, path, title: str = "Scores with 95% intervals", reference: float = 0.5):
    """A forest plot: one row per model and one panel per metric (e.g. AUC beside balanced
    accuracy) sharing the model labels; each score is a point, its interval a horizontal bar,
    and a dotted line marks `reference` (0.5: chance for both).

    Args:
        rows: (model label, metric name, value, low, high); low and high None where a score
            has no interval, value None where it is undefined (the model's row stays empty).
    """
    labels, metrics, table = _forest_table(rows)
    wrapped = [textwrap.fill(str(label), FOREST_WRAP, break_on_hyphens=False) for label in labels]
    lines = sum(label.count("\n") + 1 for label in wrapped)
    figure, axes = plt.subplots(
        1, len(metrics), sharey=True, squeeze=False,
        figsize=(3.4 * len(metrics) + 3.0, 0.28 * lines + 0.14 * len(labels) + 1.4),
    )  # fmt: skip
    for axis, metric in zip(axes[0], metrics, strict=True):
        scored = [
            (y, *table[label, metric])
            for y, label in enumerate(labels)
            if table.get((label, metric), (None,))[0] is not None
        ]
        spans = [(y, low, high) for y, _, low, high in scored if low is not None]
        if spans:
            y, low, high = np.array(spans, dtype=float).T
            axis.hlines(y, low, high, color=PALETTE[0], linewidth=2)
        if scored:
            axis.plot([v for _, v, _, _ in scored], [y for y, *_ in scored], linestyle="none",
                      marker="o", color="black", markersize=5)  # fmt: skip
        axis.axvline(reference, **REFERENCE)
        for y in sorted(set(range(len(labels))) - {y for y, *_ in scored}):
            axis.text(reference, y, " n/a", va="center", fontsize=8, color="grey")
        shown = [n for _, *numbers in scored for n in numbers if n is not None] + [reference]
        axis.set_xlim(min(min(shown), 0.45) - 0.03, max(max(shown), 1.0) + 0.03)
        axis.set_xlabel(metric)
        axis.set_title(metric)
        axis.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(range(len(labels)), wrapped, fontsize=8)
    axes[0, 0].set_ylim(len(labels) - 0.5, -0.5)  # the first model on top
    figure.suptitle(textwrap.fill(title, 90, break_on_hyphens=False), fontsize=10)
    return _save(figure, path)

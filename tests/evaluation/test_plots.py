"""The overlay, calibration and label-efficiency figures write valid PNG files."""

from __future__ import annotations

import numpy as np
import pytest

from bc_keras.evaluation import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 1000


@pytest.fixture(scope="module")
def curves():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    return {
        "CNN": (labels, np.clip(labels * 0.2 + rng.uniform(0, 0.8, 60), 0, 1)),
        "SimCLR": (labels, np.clip(labels * 0.5 + rng.uniform(0, 0.5, 60), 0, 1)),
    }


@pytest.mark.parametrize(
    "plot",
    [plots.plot_reliability_diagram, plots.plot_roc_overlay, plots.plot_precision_recall_overlay],
)
def test_overlays_write_png_and_reject_empty_curves(plot, curves, tmp_path):
    path = plot(curves, tmp_path / "figures" / "overlay.png", title="test split")
    assert path == tmp_path / "figures" / "overlay.png"
    _assert_png(path)
    with pytest.raises(ValueError, match="curves=\\{\\}"):
        plot({}, tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_roc_overlay_rejects_a_single_class(tmp_path):
    with pytest.raises(ValueError, match="benign and malignant"):
        plots.plot_roc_overlay({"CNN": ([1, 1, 1], [0.2, 0.6, 0.9])}, tmp_path / "roc.png")


def test_metric_vs_fraction_writes_png_and_rejects_bad_input(tmp_path):
    results = {
        "SimCLR finetune": [
            (0.1, 0.71, 0.62, 0.80),
            (1.0, 0.86, 0.80, 0.91),
            (0.5, 0.83, 0.76, 0.9),
        ],
        # A point without an interval, and an interval that misses its point estimate.
        "CNN": [(0.1, 0.60, None, None), (0.25, 0.66, 0.67, 0.75), (1.0, 0.70, 0.61, 0.78)],
    }
    path = plots.plot_metric_vs_fraction(results, tmp_path / "fractions.png", "balanced accuracy")
    _assert_png(path)
    with pytest.raises(ValueError, match="results=\\{\\}"):
        plots.plot_metric_vs_fraction({}, tmp_path / "empty.png", "accuracy")
    with pytest.raises(ValueError, match="\\(0, 1\\]"):
        plots.plot_metric_vs_fraction({"CNN": [(1.5, 0.7, 0.6, 0.8)]}, tmp_path / "x.png", "AUC")
    with pytest.raises(ValueError, match="fraction, value, low, high"):
        plots.plot_metric_vs_fraction({"CNN": [(0.5, 0.7)]}, tmp_path / "x.png", "AUC")

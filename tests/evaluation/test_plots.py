"""The overlay, calibration, label-efficiency and forest figures write valid PNG files; curve
styles never repeat within a figure and legends sit outside the plot."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from bc_keras.evaluation import plots, styles

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


def test_distinct_styles_never_repeat_and_refuse_more_than_the_limit():
    drawn = plots.distinct_styles(styles.MAX_STYLES)
    assert styles.MAX_STYLES == 40 and len(drawn) == 40
    assert len({(colour, linestyle) for colour, linestyle, _ in drawn}) == 40
    # tab10 first, solid; the eleventh curve takes the first colour again, dashed.
    assert [colour for colour, _, _ in drawn[:10]] == list(styles.PALETTE)
    assert styles.PALETTE[0] == matplotlib.colors.to_hex("tab:blue")
    assert {linestyle for _, linestyle, _ in drawn[:10]} == {"-"}
    assert drawn[10][:2] == (styles.PALETTE[0], "--")
    assert plots.distinct_styles(0) == []
    for count in (41, -1, 2.0):
        with pytest.raises(ValueError, match="at most 40 distinct curves"):
            plots.distinct_styles(count)


def test_twelve_curves_differ_and_the_legend_is_outside(monkeypatch, tmp_path):
    drawn = []
    save = plots._save
    monkeypatch.setattr(
        plots, "_save", lambda figure, path: drawn.append(figure) or save(figure, path)
    )
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 40)
    curves = {f"model {i}": (labels, rng.uniform(0, 1, 40)) for i in range(12)}
    plots.plot_roc_overlay(curves, tmp_path / "roc.png")
    ((figure,),) = [drawn]
    figure.canvas.draw()
    (axis,) = figure.axes
    lines = [line for line in axis.get_lines() if line.get_label().startswith("model")]
    pairs = {(matplotlib.colors.to_hex(line.get_color()), line.get_linestyle()) for line in lines}
    assert len(lines) == len(pairs) == 12
    legend = axis.get_legend().get_window_extent()
    assert legend.x0 > axis.get_window_extent().x1  # right of the plot, not over it
    too_many = {f"model {i}": curves["model 0"] for i in range(41)}
    with pytest.raises(ValueError, match="at most 40"):
        plots.plot_roc_overlay(too_many, tmp_path / "many.png")
    assert not (tmp_path / "many.png").exists()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("CNN", "AUC", 0.8, 0.7)], "label, metric, value, low, high"),
        ([("CNN", "AUC", 0.8, 0.9, 0.7)], "low <= high"),
        ([("CNN", "AUC", 0.8, 0.7, None)], "both or neither"),
        ([("CNN", "AUC", float("nan"), None, None)], "finite"),
        ([("CNN", "AUC", 0.8, None, None), ("CNN", "AUC", 0.7, None, None)], "two 'AUC' rows"),
        ([("CNN", "AUC", None, None, None)], "at least one value"),
        ([], "at least one value"),
    ],
)
def test_forest_plot_refuses_malformed_rows(rows, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        plots.plot_forest(rows, tmp_path / "forest.png")
    assert not (tmp_path / "forest.png").exists()


def test_forest_plot_writes_png_with_a_row_per_model(tmp_path):
    rows = [
        ("a model with a rather long name that has to wrap (report recipe)", "AUC", 0.9, 0.8, 0.95),
        ("a model with a rather long name that has to wrap (report recipe)", "balanced accuracy",
         0.8, None, None),
        ("CNN", "AUC", 0.6, 0.4, 0.7),
    ]  # fmt: skip
    path = plots.plot_forest(rows, tmp_path / "forest.png", "test")
    _assert_png(path)

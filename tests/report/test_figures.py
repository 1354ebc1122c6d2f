"""The report's figures are readable: overlays split into panels of at most six curves
(headline models first, each kind of variant apart), no legend over any plot area, no two curves
of an axes alike, and a forest plot whose points and bars are the models' metrics.json values."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.collections import LineCollection
from sklearn import metrics as sk

from bc_keras.evaluation import plots, statistics
from bc_keras.evaluation.styles import PALETTE
from bc_keras.report import figures as report_figures
from bc_keras.report.figures import Figures
from bc_keras.report.runs import ModelKey, Run
from bc_keras.report.sets import EvaluationSet, Model

REFERENCE_LABELS = {"chance", "perfectly calibrated", "chance (malignant share)"}
# 13 models of one test set: 8 headline models, 3 label-fraction variants, 2 image-split twins.
HEADLINE = [
    ModelKey("cnn"),
    ModelKey("cnn", recipe="robust"),
    ModelKey("transfer", backbone="resnet50"),
    ModelKey("transfer", backbone="efficientnetb0"),
    ModelKey("transfer", backbone="resnet50", weights="random init"),
    ModelKey("simclr_linear", encoder="SimCLR encoder"),
    ModelKey("simclr_linear", encoder="random encoder"),
    ModelKey("simclr_finetune", encoder="SimCLR encoder"),
]
FRACTIONS = [ModelKey("simclr_finetune", encoder="SimCLR encoder", label_fraction=f)
             for f in (0.5, 0.25, 0.1)]  # fmt: skip
IMAGE_SPLIT = [ModelKey("cnn"), ModelKey("simclr_finetune", encoder="SimCLR encoder")]


def _run(name, metrics=None, split="patient", fold=None, labels=None, probabilities=None):
    prepare = {"split": split} | ({"fold": fold} if fold else {})
    predictions = None
    if labels is not None:
        predictions = {"filename": [f"{i}.png" for i in range(len(labels))],
                       "label": labels, "probability": probabilities}  # fmt: skip
    return Run(name, Path("/runs") / name, {}, {"accuracy": 0.5, **(metrics or {})}, prepare,
               predictions)  # fmt: skip


def _model(key, label, run, cross_validation=False):
    pooled = None
    if run.predictions is not None:
        pooled = {"label": run.predictions["label"], "probability": run.predictions["probability"]}
    return Model(key, label, [run], pooled=pooled, cross_validation=cross_validation)


@pytest.fixture
def thirteen():
    """A test set of 13 models scored on the same 60 images, each a little better than the
    last; an image-split twin's label says so (as sets._labelled would)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    models = []
    keys = [(key, "patient") for key in HEADLINE + FRACTIONS] + [(k, "image") for k in IMAGE_SPLIT]
    for index, (key, split) in enumerate(keys):
        probabilities = np.clip(labels * 0.05 * index + rng.uniform(0, 0.7, 60), 0, 1)
        label = key.name() + (" on the image split" if split == "image" else "")
        run = _run(f"run{index}", split=split, labels=labels, probabilities=probabilities)
        models.append(_model(key, label, run))
    return EvaluationSet("Test set 1: `data/patient` (60 images)", "test-1", models)


@pytest.fixture
def drawn(monkeypatch):
    """Every figure plots saves, as `(file name, figure)`, recorded after it is laid out."""
    recorded = []
    save = plots._save

    def recording(figure, path):
        result = save(figure, path)
        recorded.append((Path(path).name, figure))
        return result

    monkeypatch.setattr(plots, "_save", recording)
    return recorded


def _legend_text(legend) -> list[str]:
    """The legend's labels, unwrapped."""
    return [t.get_text().replace("\n", " ").replace("\N{NO-BREAK SPACE}", " ")
            for t in legend.get_texts()]  # fmt: skip


def _curves(axes) -> list:
    """The axes' lines that are curves (not the chance or calibration reference)."""
    return [line for line in axes.get_lines()
            if not line.get_label().startswith("_") and line.get_label() not in REFERENCE_LABELS]  # fmt: skip


def assert_readable(figure):
    """No legend over any axes' plot area; no colour + line style twice in one axes."""
    figure.canvas.draw()
    legends = [axes.get_legend() for axes in figure.axes if axes.get_legend()] + figure.legends
    for legend in legends:
        box = legend.get_window_extent()
        for axes in figure.axes:
            assert not box.overlaps(axes.get_window_extent()), legend
    for axes in figure.axes:
        styles = [(matplotlib.colors.to_hex(line.get_color()), line.get_linestyle())
                  for line in axes.get_lines() if not line.get_label().startswith("_")]  # fmt: skip
        assert len(styles) == len(set(styles)), styles


def test_thirteen_models_are_split_into_panels_by_kind(thirteen, drawn, tmp_path):
    figures = Figures(tmp_path)
    links, notes = report_figures.overlays(figures, thirteen)
    assert notes == []
    panels = report_figures.panel_groups(thirteen.models)
    models = thirteen.models
    # Even chunks of at most six: 8 headline models as 4 + 4, then the variants' own panels.
    assert [(name, [m.label for m in group]) for name, group in panels] == [
        ("", [m.label for m in models[:4]]),
        ("2", [m.label for m in models[4:8]]),
        ("label_fractions", [m.label for m in models[8:11]]),
        ("image_split", [m.label for m in models[11:]]),
    ]
    assert [caption for caption, _ in links] == [
        "ROC curves (1 of 2)", "precision-recall curves (1 of 2)",
        "ROC curves (2 of 2)", "precision-recall curves (2 of 2)",
        "ROC curves: label-fraction variants", "precision-recall curves: label-fraction variants",
        "ROC curves: image-split models (patients leak)",
        "precision-recall curves: image-split models (patients leak)",
    ]  # fmt: skip
    names = ["", "_2", "_label_fractions", "_image_split"]
    assert [link for _, link in links] == [
        f"figures/test-1/{stem}{name}.png"
        for name in names
        for stem in ("roc_overlay", "precision_recall_overlay")
    ]
    assert all((tmp_path / link).read_bytes()[:4] == b"\x89PNG" for _, link in links)
    assert [name for name, _ in drawn] == [Path(link).name for _, link in links]
    for (file, figure), (_, group) in zip(drawn[::2], panels, strict=True):
        (axes,) = figure.axes
        assert len(_curves(axes)) == len(group) <= report_figures.MAX_CURVES_PER_PANEL
        expected = [
            f"{m.label} (AUC = {sk.roc_auc_score(m.pooled['label'], m.pooled['probability']):.3f})"
            for m in group
        ]
        assert _legend_text(axes.get_legend()) == [*expected, "chance"], file
    for _, figure in drawn:
        assert_readable(figure)


def test_a_set_of_two_keeps_its_one_figure_and_caption(thirteen, tmp_path):
    two = EvaluationSet("Cross-validation 1", "cv-1", thirteen.models[:2], fold_count=3)
    links, _ = report_figures.overlays(Figures(tmp_path), two)
    assert links == [
        ("pooled out-of-fold ROC curves", "figures/cv-1/roc_overlay.png"),
        ("pooled out-of-fold precision-recall curves", "figures/cv-1/precision_recall_overlay.png"),
    ]


def test_reliability_panels(thirteen, drawn, tmp_path):
    # A model of one class is drawn in the reliability diagram (not in ROC/PR); one without
    # predictions in neither.
    one_class = _run("one", labels=np.ones(5, int), probabilities=np.full(5, 0.8))
    thirteen.models[0] = _model(HEADLINE[0], "one class", one_class)
    thirteen.models[1] = _model(HEADLINE[1], "no predictions", _run("none"))
    figures = Figures(tmp_path)
    links = report_figures.reliability_panels(figures, thirteen)
    assert links == [f"figures/test-1/reliability_diagram{name}.png"
                     for name in ("", "_2", "_label_fractions", "_image_split")]  # fmt: skip
    assert report_figures.reliability(figures, thirteen) == links[0]
    (axes,) = drawn[0][1].axes
    # Headline models without the one lacking predictions: 7, split 4 + 3.
    shown = thirteen.models[:1] + thirteen.models[2:5]
    expected = [
        f"{m.label} (ECE = "
        f"{statistics.expected_calibration_error(m.pooled['label'], m.pooled['probability'], 10):.3f})"
        for m in shown
    ]
    assert _legend_text(axes.get_legend()) == ["perfectly calibrated", *expected]
    assert len(_curves(drawn[1][1].axes[0])) == 3
    for _, figure in drawn:
        assert_readable(figure)
    empty = EvaluationSet("Test set 2", "test-2", [thirteen.models[1]])
    assert report_figures.reliability_panels(figures, empty) == []
    assert report_figures.reliability(figures, empty) is None


def test_label_efficiency_and_history_are_readable(thirteen, drawn, tmp_path):
    series = {
        f"model {i} with a long name (report recipe)": [
            (0.1, 0.6 + i / 50, 0.5, 0.7), (0.5, 0.7, None, None), (1.0, 0.8, 0.75, 0.9)
        ]
        for i in range(6)
    }  # fmt: skip
    link = report_figures.label_efficiency(Figures(tmp_path), thirteen, series, "auc_roc")
    assert link == "figures/test-1/label_efficiency_auc_roc.png"
    history = {"loss": [0.9, 0.7, 0.6], "val_loss": [1.0, 0.8, 0.75], "accuracy": [0.5, 0.6, 0.7],
               "val_accuracy": [0.5, 0.55, 0.6], "phase": [1, 1, 2]}  # fmt: skip
    plots.plot_history(history, tmp_path / "history.png", title="cnn/patient")
    (_, efficiency), (_, curves) = drawn
    assert len(_curves(efficiency.axes[0])) == 6
    assert_readable(efficiency)
    # One legend for both panels of the training curves, right of the last one.
    assert [axes.get_legend() is not None for axes in curves.axes] == [False, True]
    assert _legend_text(curves.axes[1].get_legend()) == ["training", "validation"]
    for axes, key in zip(curves.axes, ("accuracy", "loss"), strict=True):
        lines = _curves(axes)
        assert [list(line.get_ydata()) for line in lines] == [history[key], history[f"val_{key}"]]
    assert_readable(curves)


def _scored(name, auc, balanced, intervals=None, fold=None):
    metrics = {"auc_roc": auc, "balanced_accuracy": balanced}
    if intervals:
        metrics["bootstrap_95ci_by_patient"] = intervals
    return _run(name, metrics, fold=fold)


def _points(axes) -> dict:
    """`{row position: value}` of the forest panel's points, and `{row: (low, high)}` bars."""
    (line,) = [line for line in axes.get_lines() if line.get_marker() == "o"]
    points = dict(zip(line.get_ydata(), line.get_xdata(), strict=True))
    bars = {}
    for collection in axes.collections:
        if isinstance(collection, LineCollection):
            for (low, y), (high, _) in collection.get_segments():
                bars[y] = (low, high)
    return points, bars


def assert_bars(bars: dict, expected: dict):
    assert sorted(bars) == sorted(expected)
    for row, (low, high) in expected.items():
        np.testing.assert_allclose(bars[row], (low, high))


def test_forest_plot_has_one_row_per_model_with_its_values(drawn, tmp_path):
    cnn = _scored("cnn", 0.91, 0.83, {"auc_roc": [0.85, 0.95], "balanced_accuracy": [0.76, 0.9]})
    # No balanced accuracy, and an AUC interval that misses its point (a percentile bootstrap).
    linear = _scored("linear", 0.62, None, {"auc_roc": [0.64, 0.8]})
    test = EvaluationSet("Test set 1: `data/patient` (60 images)", "test-1", [
        Model(ModelKey("cnn"), "baseline CNN (report recipe)", [cnn]),
        Model(ModelKey("simclr_linear"), "ResNet-18 linear, SimCLR encoder (report recipe)",
              [linear]),
    ])  # fmt: skip
    aucs, balanced = [0.8, 0.86, 0.77], [0.7, 0.74, 0.69]
    folds = [_scored(f"cv{k}", aucs[k - 1], balanced[k - 1],
                     fold={"index": k, "count": 3, "kind": "kfold"}) for k in (1, 2, 3)]  # fmt: skip
    cv = EvaluationSet("Cross-validation 1: 3 kfold folds of `data/folds`", "cv-1",
                       [Model(ModelKey("cnn"), "baseline CNN (report recipe)", folds,
                              cross_validation=True)], fold_count=3, fold_kind="kfold")  # fmt: skip
    link = report_figures.forest(Figures(tmp_path), [test, cv])
    assert link == "figures/forest.png" and (tmp_path / link).read_bytes()[:4] == b"\x89PNG"
    ((name, figure),) = drawn
    assert name == "forest.png"
    assert_readable(figure)
    auc_axes, balanced_axes = figure.axes
    assert (auc_axes.get_title(), balanced_axes.get_title()) == ("AUC", "balanced accuracy")
    labels = [t.get_text().replace("\n", " ") for t in auc_axes.get_yticklabels()]
    assert labels == [
        "Test set 1: baseline CNN (report recipe)",
        "Test set 1: ResNet-18 linear, SimCLR encoder (report recipe)",
        "Cross-validation 1: baseline CNN (report recipe)",
    ]
    assert balanced_axes.get_shared_y_axes().joined(auc_axes, balanced_axes)
    # Cross-validation: the mean over folds, its bar mean -/+ the sample sd (ddof 1).
    cv_auc, cv_balanced = (np.mean(v) for v in (aucs, balanced))
    sd_auc, sd_balanced = (np.std(v, ddof=1) for v in (aucs, balanced))
    points, bars = _points(auc_axes)
    assert points == pytest.approx({0: 0.91, 1: 0.62, 2: cv_auc})
    assert_bars(bars, {0: (0.85, 0.95), 1: (0.64, 0.8), 2: (cv_auc - sd_auc, cv_auc + sd_auc)})
    points, bars = _points(balanced_axes)
    assert points == pytest.approx({0: 0.83, 2: cv_balanced})
    assert_bars(bars, {0: (0.76, 0.9), 2: (cv_balanced - sd_balanced, cv_balanced + sd_balanced)})
    # The model without a balanced accuracy keeps its row, marked n/a at the reference line.
    assert [(t.get_text(), t.get_position()) for t in balanced_axes.texts] == [(" n/a", (0.5, 1))]
    for axes in figure.axes:
        (reference,) = [line for line in axes.get_lines() if line.get_linestyle() == ":"]
        assert list(reference.get_xdata()) == [0.5, 0.5]


def test_forest_of_one_set_has_plain_labels_and_none_without_values(drawn, tmp_path):
    model = Model(ModelKey("cnn"), "baseline CNN (report recipe)", [_scored("a", 0.7, 0.6)])
    figures = Figures(tmp_path)
    assert report_figures.forest(figures, [EvaluationSet("Test set 1: x", "t", [model])])
    labels = [t.get_text() for t in drawn[0][1].axes[0].get_yticklabels()]
    assert labels == ["baseline CNN (report recipe)"]
    (tmp_path / "figures/forest.png").unlink()
    empty = Model(ModelKey("cnn"), "baseline CNN (report recipe)", [_scored("b", None, None)])
    assert report_figures.forest(figures, [EvaluationSet("Test set 1: x", "t", [empty])]) is None
    assert report_figures.forest(figures, []) is None
    assert not (tmp_path / "figures/forest.png").exists()


def test_panel_colours_come_from_the_palette(thirteen, drawn, tmp_path):
    report_figures.overlays(Figures(tmp_path), thirteen)
    for _, figure in drawn:
        colours = [matplotlib.colors.to_hex(line.get_color()) for line in _curves(figure.axes[0])]
        assert colours == list(PALETTE[: len(colours)])


def test_cross_fitted_models_and_single_folds_have_panels_of_their_own():
    fold = {"index": 1, "count": 1, "kind": "kfold"}
    models = [
        _model(ModelKey("cnn", cross_fit=5, cross_fit_final="ensemble"), "cross-fit", _run("a")),
        _model(ModelKey("cnn"), "one fold", _run("b", fold=fold)),
        _model(ModelKey("cnn"), "headline", _run("c")),
        _model(ModelKey("cnn", label_fraction=0.1), "ten percent", _run("d", split="image")),
    ]
    assert [(name, [m.label for m in group]) for name, group in
            report_figures.panel_groups(models)] == [
        ("", ["headline"]), ("label_fractions", ["ten percent"]),
        ("cross_fitted", ["cross-fit"]), ("single_folds", ["one fold"]),
    ]  # fmt: skip
    # In a cross-validation set each model is pooled over folds: a headline model.
    models[1].cross_validation = True
    assert report_figures.panel_groups(models[1:3])[0] == ("", models[1:3])
    assert report_figures.panel_groups([]) == []

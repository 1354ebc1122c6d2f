"""REPORT.md's layout: the forest plot right after the results table when the figures draw one,
and a report without it when they do not."""

from __future__ import annotations

from helpers import load_script

from bc_keras import report
from bc_keras.report import figures as figures_module

_helpers = load_script("tests/report/test_report")  # the report tests' run-folder writers


def _runs(tmp_path):
    names = _helpers.file_names(_helpers.BENIGN + _helpers.MALIGNANT, (1,))
    data = tmp_path / "data" / "patient"
    _helpers.write_split(data, names, {"split": "patient", **_helpers.SOURCE})
    runs = tmp_path / "runs"
    for seed, experiment in enumerate(("cnn", "transfer")):
        config = {"experiment": experiment, "data": str(data), "backbone": "resnet50"}
        _helpers.write_run(runs / experiment, config, names, _helpers.scores(names, 1.0, seed))
    return runs


def test_the_forest_plot_follows_the_results_table(tmp_path, monkeypatch):
    runs = _runs(tmp_path)
    calls = []

    def forest(figures, sets):
        calls.append([model.label for each in sets for model in each.models])
        return "figures/forest.png"

    monkeypatch.setattr(figures_module, "forest", forest, raising=False)
    report.build_report([runs], tmp_path / "with")
    results = _helpers.section((tmp_path / "with" / "REPORT.md").read_text(), "## Results")
    table_end = results.index("\n\n", results.index("| run |"))
    assert results[table_end:].startswith("\n\n![forest plot](figures/forest.png)\n\n")
    assert calls == [["baseline CNN (report recipe)", "resnet50 transfer (report recipe)"]]
    # Without a forest function (or with one drawing nothing) the report has no such link.
    for replacement in (None, lambda figures, sets: None):
        if replacement is None:
            monkeypatch.delattr(figures_module, "forest", raising=False)
        else:
            monkeypatch.setattr(figures_module, "forest", replacement, raising=False)
        out = tmp_path / f"without_{replacement is None}"
        report.build_report([runs], out)
        assert "forest plot" not in (out / "REPORT.md").read_text()

"""The report's analysis sections read the study's result files: Active learning (a
simulation's figure copied, its rounds tabled, its verdicts) and Deployment's refusals."""

from __future__ import annotations

import json

from bc_keras.report.analyses import active_lines, deployment_lines
from bc_keras.report.figures import PNG_SIGNATURE, Figures


def _record(round_, labels, auc, low, high):
    return {"round": round_, "labels": labels, "auc_roc": auc, "auc_95ci": [low, high]}


def test_the_active_learning_section_shows_each_simulation(tmp_path):
    folder = tmp_path / "runs" / "active" / "cnn"
    folder.mkdir(parents=True)
    result = {
        "settings": {"experiment": "cnn", "data": "d"},
        "curves": {
            "entropy": [_record(0, 10, 0.6, 0.5, 0.7), _record(1, 14, 0.71, 0.6, 0.8)],
            "random": [_record(0, 10, 0.6, 0.5, 0.7), _record(1, 14, None, None, None)],
        },
        "verdicts": ["entropy does not beat random at 14 labels: +0.02 [-0.05, +0.09]"],
    }
    (folder / "active.json").write_text(json.dumps(result))
    (folder / "active_auc.png").write_bytes(PNG_SIGNATURE + b"rest")
    (tmp_path / "runs" / "active" / "broken").mkdir()
    (tmp_path / "runs" / "active" / "broken" / "active.json").write_text("{not json")
    out = tmp_path / "report"
    lines = active_lines([tmp_path / "runs"], Figures(out))
    text = "\n".join(lines)
    assert lines[0] == "## Active learning" and "### cnn (cnn)" in lines
    assert "| entropy | 14 | 0.710 | 0.600 - 0.800 |" in lines
    assert "| random | 14 | n/a | n/a |" in lines
    assert "- entropy does not beat random at 14 labels: +0.02 [-0.05, +0.09]" in lines
    (link,) = [line for line in lines if line.startswith("![active learning](")]
    copied = out / link.removeprefix("![active learning](").removesuffix(")")
    assert copied.read_bytes() == PNG_SIGNATURE + b"rest"
    assert text.count("### ") == 1  # the unreadable file is not a section


def test_no_result_files_say_so(tmp_path):
    (tmp_path / "runs").mkdir()
    assert "No active-learning simulation found" in active_lines([tmp_path / "runs"],
                                                                 Figures(tmp_path))[-2]  # fmt: skip
    (tmp_path / "runs" / "x").mkdir()
    (tmp_path / "runs" / "x" / "check.json").write_text("[broken")
    lines = deployment_lines([tmp_path / "runs"])
    assert any("No export check found" in line for line in lines)

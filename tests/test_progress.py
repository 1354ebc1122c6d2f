"""One progress helper: count, share, rate and time left; a line per 10% off a terminal;
nothing with --quiet; and predict.py shows it over 2,000 images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bc_keras import console, models


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _progress(total, lines, **options):
    progress = console.Progress("done", total, lines.append, tty=False, **options)
    progress._clock = clock = Clock()
    progress.started = 0.0
    return progress, clock


def test_a_line_every_ten_percent_with_rate_and_time_left(monkeypatch):
    monkeypatch.setattr(console, "QUIET", False)
    lines = []
    progress, clock = _progress(200, lines)
    for done in range(1, 201):
        clock.now = done / 4.0  # 4 images a second
        progress.update(done)
    assert len(lines) == 10
    assert lines[0] == "done 20/200 images (10%), 4.0 images/s, about 0m45s left"
    assert lines[-1] == "done 200/200 images (100%), 4.0 images/s, 0m50s"


def test_an_unknown_total_counts_every_n_and_quiet_prints_nothing(monkeypatch):
    monkeypatch.setattr(console, "QUIET", False)
    lines = []
    progress, clock = _progress(None, lines, every=3)
    for done in range(1, 8):
        clock.now = float(done)
        progress.update(done)
    assert lines == ["done 3 images, 1.0 images/s", "done 6 images, 1.0 images/s"]
    console.set_quiet(True)
    try:
        quiet, _ = _progress(10, lines := [])
        for done in range(1, 11):
            quiet.update(done)
        assert lines == []
    finally:
        console.set_quiet(False)


@pytest.mark.slow
def test_predict_over_2000_images_shows_its_progress(tmp_path, capsys):
    from bc_keras.commands import predict

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2000):
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"image_{index:04d}.png")
    model = tmp_path / "cnn.h5"
    models.save_model(models.build_baseline_cnn(8, 4, 0.5, 0.99), model,
                      {"kind": "classifier", "image_size": 8, "threshold": 0.5})  # fmt: skip
    out = tmp_path / "predictions.csv"
    assert predict.main([str(model), str(folder), "--out", str(out), "--batch-size", "256"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("predicted ")]
    assert len(lines) >= 5 and lines[-1].startswith("predicted 2000/2000 images (100%), ")
    assert " images/s" in lines[0] and "left" in lines[0]
    assert predict.main([str(model), str(folder), "--out", str(out), "--quiet"]) == 0
    assert "predicted 2000/2000" not in capsys.readouterr().out
    console.set_quiet(False)

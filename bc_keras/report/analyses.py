"""The report's sections on analyses of trained models, read from the result files those
analyses leave under the report's RUNS_DIRs (the study writes them in runs/<kind>/<name>/):
Deployment (the export checks: size, latency and accuracy of each model and each export).
TensorFlow-free, like the rest of the report."""

from __future__ import annotations

import json
from pathlib import Path

from bc_keras.export.markdown import CHECK_JSON, check_markdown


def _result_files(roots, name: str) -> list[Path]:
    """Every file called `name` under `roots`, each once, in path order."""
    found = {path.resolve(): path for root in roots for path in Path(root).rglob(name)}
    return [found[key] for key in sorted(found)]


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def deployment_lines(roots) -> list[str]:
    """The Deployment section: one table per checked model (its exports' file size, CPU
    latency and test scores against the Keras float32 model, with paired patient-bootstrap
    intervals of each difference)."""
    lines = [
        "## Deployment",
        "",
        "Each checked model exported to .keras, SavedModel and LiteRT (float32, float16 and "
        "int8, full-integer, calibrated on training images), every export a self-contained "
        "graph from uint8 images to the probability, scored on the test split against the "
        "Keras float32 model (`python -m bc_keras.export MODEL --format all --check SPLIT`).",
        "",
    ]
    checks = [(path, _read(path)) for path in _result_files(roots, CHECK_JSON)]
    unreadable = [path for path, result in checks if result is None]
    checks = [(path, result) for path, result in checks if result is not None]
    if not checks:
        return lines + [
            "No export check found under the run folders (the study's deployment analysis "
            "writes them in runs/deployment/; or run the command above with --out inside a "
            "RUNS_DIR).",
            "",
        ]
    for _, result in checks:
        lines += [f"### {Path(result['model']).stem}", "", check_markdown(result), ""]
    lines += [f"- unreadable, left out: {path}" for path in unreadable]
    return lines + ([""] if unreadable else [])


def analysis_lines(roots) -> list[str]:
    """Every analysis section, in report order."""
    return deployment_lines(roots)

"""The report's sections on analyses of trained models, read from the result files those
analyses leave under the report's RUNS_DIRs (the study writes them in runs/<kind>/<name>/):
Deployment (the export checks: size, latency and accuracy of each model and each export),
Robustness (scores under graded corruptions and attacks) and Active learning (the simulations'
AUC against labels per strategy). TensorFlow-free, like the
rest of the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bc_keras.export.markdown import CHECK_JSON, check_markdown
from bc_keras.robustness import outputs as robustness_outputs


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


# The active-learning simulation's files (bc_keras.active.simulate's names).
ACTIVE_RESULT, ACTIVE_FIGURE = "active.json", "active_auc.png"


def active_lines(roots, figures) -> list[str]:
    """The Active learning section: per simulation, its figure (test AUC against labels with
    patient-bootstrap intervals, one line per strategy), the table of rounds and the verdict
    of each uncertainty strategy against random."""
    lines = [
        "## Active learning",
        "",
        "Annotation replayed on the training split (`python -m bc_keras.active simulate`): "
        "from whole patients holding a fraction of the labels, each round a strategy picks "
        "the images to label (patient-aware: no patient fills a round) and the model is "
        "retrained; a strategy beats random only if the paired patient-bootstrap interval of "
        "its test AUC minus random's at the last round lies above 0.",
        "",
    ]
    found = [(path, _read(path)) for path in _result_files(roots, ACTIVE_RESULT)]
    found = [(path, result) for path, result in found if result and "curves" in result]
    if not found:
        return lines + ["No active-learning simulation found under the run folders.", ""]
    for path, result in found:
        settings = result["settings"]
        lines += [f"### {settings['experiment']} ({path.parent.name})", ""]
        figure = path.parent / ACTIVE_FIGURE
        if figure.is_file():
            target = figures.folder(f"active_{path.parent.name}") / ACTIVE_FIGURE
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(figure, target)
            lines += [f"![active learning]({figures.link(target)})", ""]
        lines += ["| strategy | labels | test AUC | 95% interval |", "|---|---:|---:|---|"]
        for strategy, records in result["curves"].items():
            for record in records:
                auc = record.get("auc_roc")
                interval = record.get("auc_95ci") or []
                interval = [] if None in interval else interval
                lines.append(
                    f"| {strategy} | {record['labels']} | "
                    f"{'n/a' if auc is None else f'{auc:.3f}'} | "
                    + (f"{interval[0]:.3f} - {interval[1]:.3f}" if interval else "n/a")
                    + " |"
                )
        lines += ["", *[f"- {verdict}" for verdict in result.get("verdicts", [])], ""]
    return lines


def robustness_lines(roots, figures) -> list[str]:
    """The Robustness section: per benchmark, the AUC and balanced accuracy of each model
    under each corruption by severity, and one figure per corruption (every score against
    severity, a line per model)."""
    lines = [
        "## Robustness",
        "",
        "How each model fails (`python -m bc_keras.robustness`): the test split under graded "
        "corruptions (noise, blur, JPEG, brightness, contrast, H&E stain shift, occlusion) and "
        "white-box attacks (FGSM, PGD), each at growing severity; severity 0 is the clean test "
        "split, equal to the runs' metrics.json.",
        "",
    ]
    found = [(path, _read(path)) for path in _result_files(roots, robustness_outputs.RESULT_FILE)]
    found = [(path, result) for path, result in found if result and "models" in result]
    if not found:
        return lines + ["No robustness benchmark found under the run folders.", ""]
    for path, result in found:
        lines += [f"### {path.parent.name}: {len(result['models'])} model(s)", ""]
        for key in ("auc_roc", "balanced_accuracy"):
            title = result["scores"].get(key, key)
            lines += [f"{title[0].upper()}{title[1:]}:", "",
                      *robustness_outputs.score_table(result, key), ""]  # fmt: skip
        for corruption, record in result["corruptions"].items():
            figure = path.parent / robustness_outputs.figure_name(corruption)
            if figure.is_file():
                target = figures.folder(f"robustness_{path.parent.name}") / figure.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(figure, target)
                lines += [f"![{record['title']}]({figures.link(target)})", ""]
    return lines


def analysis_lines(roots, figures) -> list[str]:
    """Every analysis section, in report order (figures copied through `figures`)."""
    return deployment_lines(roots) + robustness_lines(roots, figures) + active_lines(roots, figures)

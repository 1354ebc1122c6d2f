"""The comparison table of saved runs: `python -m bc_keras.compare RUNS_DIR [--out PREFIX]`."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from bc_keras.errors import DataError, UserError, one_line
from bc_keras.evaluation.metrics import VIEW_COMPARE, metrics_in
from bc_keras.experiments import EXPERIMENTS
from bc_keras.report.runs import ENCODER_RANDOM, KIND_CLASSIFIER, Run, find_runs

METRIC_COLUMNS = tuple(metric.key for metric in metrics_in(VIEW_COMPARE))
COLUMNS = (
    "run",
    "model",
    "recipe",
    "split_data",
    "label_fraction",
    *METRIC_COLUMNS,
    "test_images",
    "flags",
)
# Experiment name -> its short label (the experiments registry; transfer is named per backbone).
DISPLAY = {e.name: e.label for e in EXPERIMENTS.values() if "{" not in e.label}


def model_name(run: Run) -> str:
    """A short description of the model a run trained, with the share of labels it used."""
    experiment = run.experiment
    fraction = run.label_fraction
    labels = f"{fraction * 100:g}% labels" if fraction < 1 else ""
    if experiment == "transfer":
        name = f"transfer {run.config.get('backbone') or '?'}"
    elif experiment.startswith("simclr_"):
        pretrained = "random init" if run.encoder == ENCODER_RANDOM else "SimCLR"
        details = ", ".join(filter(None, (pretrained, labels, _cross_fit_text(run))))
        return f"{DISPLAY.get(experiment, experiment)} ({details})"
    else:
        name = DISPLAY.get(experiment, experiment)
    details = ", ".join(filter(None, (labels, _cross_fit_text(run))))
    return f"{name} ({details})" if details else name


def _cross_fit_text(run: Run) -> str:
    """E.g. "cross-fit 5 ensemble" for a run trained with --cross-fit 5, else ""."""
    folds = run.config.get("cross_fit") or 0
    if not isinstance(folds, int) or folds < 2:
        return ""
    return f"cross-fit {folds} {run.config.get('cross_fit_final') or 'ensemble'}"


def collect_runs(root) -> tuple[list[dict], list[str]]:
    """One row per finished classifier run under `root`, and a note for every run folder left
    out. Run folders are untrusted: one whose config.json or metrics.json is unreadable, not
    an object, or holds a score that is not a finite number is left out with the reason (the
    same rules as the study report, `bc_keras.report.runs.read_run`).

    Raises:
        DataError: if `root` is not a folder.
    """
    runs, left_out = find_runs([root])
    rows = [
        {
            "run": run.name,
            "model": model_name(run),
            "recipe": run.recipe,
            "split_data": run.data,
            "label_fraction": run.label_fraction,
            **{key: run.metrics.get(key) for key in METRIC_COLUMNS},
            "test_images": run.count.get("images"),
            "flags": "; ".join(run.metrics.get("flags") or []),
        }
        for run in runs
        if run.kind == KIND_CLASSIFIER  # SimCLR pretraining reports a contrastive loss
    ]
    return rows, left_out


def markdown_table(rows) -> str:
    """The rows as a markdown table, metrics to three decimals; a flagged run is marked."""

    def cell(value):
        if value is None:
            return ""
        return f"{value:.3f}" if isinstance(value, float) else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = {c: cell(row[c]) for c in COLUMNS}
        if row["flags"]:
            cells["flags"] = f"**{row['flags']}**"
        lines.append("| " + " | ".join(cells[c] for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bc_keras.compare",
        description="Regenerate the comparison table of all finished runs from their run "
        "folders alone (config.json + metrics.json), as markdown and CSV.",
    )
    parser.add_argument(
        "runs_dir", nargs="?", default="runs", help="folder searched recursively (default: runs)"
    )
    parser.add_argument(
        "--out", default=None, help="write PREFIX.md and PREFIX.csv (default: RUNS_DIR/comparison)"
    )
    args = parser.parse_args(argv)
    try:
        return _compare(Path(args.runs_dir), args.out)
    except UserError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2


def _compare(root: Path, out) -> int:
    if not root.is_dir():
        raise DataError(
            f"{root} does not exist; pass the folder your training runs were written to"
        )
    rows, left_out = collect_runs(root)
    for note in left_out:
        print(f"left out {note}", file=sys.stderr)
    if not rows:
        raise DataError(f"no finished run (metrics.json) under {root}; train a model first")
    prefix = Path(out) if out else root / "comparison"
    table = markdown_table(rows)
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
        prefix.with_suffix(".md").write_text(table + "\n")
        with open(prefix.with_suffix(".csv"), "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    except OSError as error:
        raise DataError(
            f"cannot write {prefix}.md/.csv ({error.strerror}); choose --out"
        ) from error
    print(table)
    print(
        f"\n{len(rows)} classifier run(s); {len(left_out)} run folder(s) left out. Wrote "
        f"{prefix.with_suffix('.md')} and {prefix.with_suffix('.csv')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

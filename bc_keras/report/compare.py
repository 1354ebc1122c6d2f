"""The comparison table of saved runs: `python -m bc_keras.compare RUNS_DIR [--out PREFIX]`."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from bc_keras.errors import DataError, UserError, one_line
from bc_keras.runs import CONFIG_FILE, METRICS_FILE

METRIC_COLUMNS = (
    "accuracy",
    "balanced_accuracy",
    "specificity",
    "precision",
    "recall",
    "f1",
    "auc_roc",
    "patient_recognition_rate",
)
COLUMNS = ("run", "model", "recipe", "split_data", *METRIC_COLUMNS, "test_images", "flags")
DISPLAY = {
    "cnn": "baseline CNN",
    "simclr_finetune": "finetune ResNet-18",
    "simclr_linear": "linear ResNet-18",
}


def model_name(config: dict) -> str:
    """A short description of the model a run trained, from its config.json."""
    experiment = config.get("experiment", "")
    if experiment == "transfer":
        return f"transfer {config.get('backbone', '?')}"
    if experiment.startswith("simclr_"):
        encoder = config.get("encoder")
        pretrained = "random init" if encoder in (None, "none") else "SimCLR"
        fraction = config.get("label_fraction")
        suffix = f", {fraction:.0%} labels" if fraction and fraction < 1 else ""
        return f"{DISPLAY.get(experiment, experiment)} ({pretrained}{suffix})"
    return DISPLAY.get(experiment, experiment or "unknown")


def collect_runs(root) -> tuple[list[dict], list[str]]:
    """One row per finished classifier run under `root` (a folder with a readable
    metrics.json of classifier metrics), and a note for every run folder left out."""
    root = Path(root)
    rows, left_out = [], []
    for config_path in sorted(root.rglob(CONFIG_FILE)):
        run_dir = config_path.parent
        name = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
        metrics_path = run_dir / METRICS_FILE
        if not metrics_path.is_file():
            left_out.append(f"{name}: unfinished (no {METRICS_FILE})")
            continue
        try:
            metrics = json.loads(metrics_path.read_text())
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as error:
            left_out.append(f"{name}: unreadable ({one_line(error)[:80]})")
            continue
        if "accuracy" not in metrics:
            continue  # SimCLR pretraining reports a contrastive loss, not a classifier
        rows.append(
            {
                "run": name,
                "model": model_name(config),
                "recipe": config.get("recipe", "report"),
                "split_data": config.get("data", ""),
                **{key: metrics.get(key) for key in METRIC_COLUMNS},
                "test_images": metrics.get("counts", {}).get("images"),
                "flags": "; ".join(metrics.get("flags", [])),
            }
        )
    return rows, left_out


def markdown_table(rows) -> str:
    """The rows as a markdown table, metrics to three decimals; a flagged run is marked."""

    def cell(value):
        return f"{value:.3f}" if isinstance(value, float) else ("" if value is None else str(value))

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
        f"\n{len(rows)} run(s); {len(left_out)} left out. Wrote {prefix.with_suffix('.md')} and "
        f"{prefix.with_suffix('.csv')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

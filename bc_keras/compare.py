"""The comparison table of saved runs: `python -m bc_keras.compare RUNS_DIR [--out PREFIX]`."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from bc_keras.runs import CONFIG_FILE, METRICS_FILE

COLUMNS = (
    "run",
    "model",
    "split_data",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "auc_roc",
    "patient_recognition_rate",
    "test_images",
)


def _model_name(run_dir: Path, config: dict) -> str:
    if config.get("backbone"):
        return f"transfer {config['backbone']}"
    if config.get("mode"):
        encoder = config.get("encoder")
        pretrained = "random init" if encoder in (None, "none") else "SimCLR"
        fraction = config.get("label_fraction")
        suffix = f", {fraction:.0%} labels" if fraction and fraction < 1 else ""
        return f"{config['mode']} ResNet-18 ({pretrained}{suffix})"
    return "baseline CNN" if "dense_units" in config else run_dir.parent.name


def collect_runs(root) -> list[dict]:
    """One row per finished run (a folder with metrics.json holding classifier metrics) under `root`."""
    rows = []
    for metrics_path in sorted(Path(root).rglob(METRICS_FILE)):
        run_dir = metrics_path.parent
        metrics = json.loads(metrics_path.read_text())
        if "accuracy" not in metrics:
            continue  # e.g. SimCLR pretraining runs report a contrastive loss, not a classifier
        config_path = run_dir / CONFIG_FILE
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        rows.append(
            {
                "run": str(run_dir.relative_to(root)) if run_dir != Path(root) else run_dir.name,
                "model": _model_name(run_dir, config),
                "split_data": config.get("data", ""),
                **{
                    key: metrics.get(key)
                    for key in (
                        "accuracy",
                        "precision",
                        "recall",
                        "f1",
                        "auc_roc",
                        "patient_recognition_rate",
                    )
                },
                "test_images": metrics.get("counts", {}).get("images"),
            }
        )
    return rows


def markdown_table(rows) -> str:
    """The rows as a markdown table, metrics to three decimals."""

    def cell(value):
        return f"{value:.3f}" if isinstance(value, float) else ("" if value is None else str(value))

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bc_keras.compare",
        description="Regenerate the comparison table of all finished runs from their run folders alone "
        "(config.json + metrics.json), as markdown and CSV.",
    )
    parser.add_argument(
        "runs_dir",
        nargs="?",
        default="runs",
        help="folder searched recursively for runs (default: runs)",
    )
    parser.add_argument(
        "--out", default=None, help="write PREFIX.md and PREFIX.csv (default: RUNS_DIR/comparison)"
    )
    args = parser.parse_args(argv)
    root = Path(args.runs_dir)
    if not root.is_dir():
        print(
            f"error: {root} does not exist; pass the folder your training runs were written to.",
            file=sys.stderr,
        )
        return 2
    rows = collect_runs(root)
    if not rows:
        print(
            f"error: no finished run (metrics.json) under {root}; train a model first.",
            file=sys.stderr,
        )
        return 2
    prefix = Path(args.out) if args.out else root / "comparison"
    table = markdown_table(rows)
    prefix.with_suffix(".md").write_text(table + "\n")
    with open(prefix.with_suffix(".csv"), "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(table)
    print(f"\nwrote {prefix.with_suffix('.md')} and {prefix.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

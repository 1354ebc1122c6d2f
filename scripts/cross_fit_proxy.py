"""The evidence behind the robust recipe's --cross-fit default (issue 18, item 9).

On the `overlap` synthetic proxy with a small validation split (about 8 patients), trains the
CNN and MobileNet 0.25 over several seeds as a single split, cross-fitted with the ensemble,
and cross-fitted with the refit, and writes the test balanced accuracy, AUC and the spread of
the chosen threshold across seeds as JSON and a markdown table.

The refit reuses the ensemble run's finished members (they are the same K models: the refit
only adds one model trained on the whole pool), so each seed trains 1 + K + 1 models.

    .venv/bin/python scripts/cross_fit_proxy.py --out /tmp/proxy --models cnn --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("single", "ensemble", "refit")
MODELS = {
    "cnn": ["train_cnn.py", "--image-size", "48", "--epochs", "20", "--bn-momentum", "0.9"],
    "mobilenet": [
        "train_transfer.py", "--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "64",
        "--phase1-epochs", "8", "--phase2-epochs", "5",
    ],
}  # fmt: skip
WEIGHTS = ROOT.parent / "shared" / "breakhis" / "weights" / "mobilenet_2_5_224_tf_no_top.h5"


def _run(command: list[str], log: Path) -> None:
    with open(log, "a") as file:
        subprocess.run([sys.executable, *command], cwd=ROOT, check=True, stdout=file,
                       stderr=subprocess.STDOUT)  # fmt: skip


def prepare(out: Path) -> Path:
    """The overlap proxy of the README, split with about 8 validation patients."""
    split = out / "split"
    if (split / "split.csv").is_file():
        return split
    tree = out / "tree"
    _run(["data_tools/make_synthetic_breakhis.py", "--out", str(tree), "--difficulty", "overlap",
          "--patients-per-subtype", "12", "--images-per-patient", "4", "--size", "175", "115",
          "--seed", "11"], out / "prepare.log")  # fmt: skip
    _run(["data_tools/prepare_breakhis.py", str(tree), "--out", str(split), "--split", "patient",
          "--ratios", "0.77", "0.08", "0.15", "--seed", "42"], out / "prepare.log")  # fmt: skip
    return split


def _refit_from(ensemble: Path, refit: Path) -> None:
    """A refit run folder holding the ensemble run's finished members, ready for --resume."""
    if refit.exists():
        return
    refit.mkdir(parents=True)
    shutil.copytree(ensemble / "members", refit / "members", symlinks=True)
    (refit / "backup").mkdir()
    (refit / "backup" / "cross_fit.json").write_text(json.dumps({"k": 5}))
    config = json.loads((ensemble / "config.json").read_text())
    config.update(cross_fit_final="refit", run_dir=str(refit))
    # A setting added to bc_keras after the ensemble run started takes the robust value.
    config.setdefault("tensorboard", True)
    (refit / "config.json").write_text(json.dumps(config, indent=2))


def train(split: Path, out: Path, model: str, seed: int, variant: str, folds: int) -> dict:
    run = out / "runs" / f"{model}_seed{seed}_{variant}"
    metrics = run / "metrics.json"
    if not metrics.is_file():
        command = [*MODELS[model], "--data", str(split), "--recipe", "robust", "--seed", str(seed),
                   "--run-dir", str(run), "--model-out", str(out / "models" / f"{run.name}.h5")]  # fmt: skip
        if model == "mobilenet":
            command += ["--weights", str(WEIGHTS)]
        if variant != "single":
            command += ["--cross-fit", str(folds), "--cross-fit-final", variant]
        if variant == "refit":
            _refit_from(out / "runs" / f"{model}_seed{seed}_ensemble", run)
            command.append("--resume")
        elif run.exists():
            command.append("--resume")  # interrupted before: go on where it stopped
        started = time.time()
        _run(command, out / "train.log")
        print(f"{run.name}: {time.time() - started:.0f} s", flush=True)
    values = json.loads(metrics.read_text())
    return {
        "balanced_accuracy": values["balanced_accuracy"],
        "auc_roc": values["auc_roc"],
        "threshold": values["threshold"],
        "patient_balanced_accuracy": values.get("patient_level", {}).get("balanced_accuracy"),
    }


def _mean_sd(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def table(results: dict) -> str:
    lines = [
        "| model | decision | balanced accuracy | AUC | patient-level balanced accuracy | "
        "threshold (sd over seeds) |",
        "|---|---|---|---|---|---|",
    ]
    for model, variants in results.items():
        for variant, runs in variants.items():
            if not runs:
                continue
            column = {key: [r[key] for r in runs] for key in runs[0]}
            thresholds = np.asarray(column["threshold"])
            spread = f"{thresholds.mean():.3f} ({thresholds.std(ddof=1):.3f})" if len(runs) > 1 else ""
            lines.append(
                f"| {model} | {variant} | {_mean_sd(column['balanced_accuracy'])} | "
                f"{_mean_sd(column['auc_roc'])} | {_mean_sd(column['patient_balanced_accuracy'])} "
                f"| {spread} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    split = prepare(args.out)
    results = {model: {variant: [] for variant in VARIANTS} for model in args.models}
    for model in args.models:
        for seed in args.seeds:
            for variant in VARIANTS:
                results[model][variant].append(
                    train(split, args.out, model, seed, variant, args.folds)
                )
                (args.out / "results.json").write_text(json.dumps(results, indent=2))
    markdown = table(results)
    (args.out / "results.md").write_text(markdown + "\n")
    print(markdown)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The evidence on the training-data techniques (issue 22, item 3): MixUp, CutMix, RandAugment
and label smoothing, each added alone to the robust recipe.

On the `overlap` synthetic proxy (the split of `cross_fit_proxy.py`), trains the CNN and
MobileNet 0.25 over several seeds with the robust recipe as it is and with one technique on,
and writes the test balanced accuracy and AUC (mean ± sd over seeds) and, per technique, at how
many seeds it beat the plain recipe, as JSON and a markdown table.

    .venv/bin/python scripts/techniques_ablation.py --out /tmp/ablation --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_fit_proxy import MODELS, WEIGHTS, _mean_sd, _run, prepare  # noqa: E402

# Each technique at the value its paper calls usual (and the flag's help suggests).
VARIANTS = {
    "robust": [],
    "mixup 0.2": ["--mixup", "0.2"],
    "cutmix 1.0": ["--cutmix", "1.0"],
    "randaugment 2 5": ["--randaugment", "2", "5"],
    "label smoothing 0.1": ["--label-smoothing", "0.1"],
}


def train(split: Path, out: Path, model: str, seed: int, variant: str) -> dict:
    name = f"{model}_seed{seed}_{variant.replace(' ', '_').replace('.', '')}"
    run = out / "runs" / name
    metrics = run / "metrics.json"
    if not metrics.is_file():
        command = [*MODELS[model], "--data", str(split), "--recipe", "robust", "--seed", str(seed),
                   "--run-dir", str(run), "--model-out", str(out / "models" / f"{name}.h5"),
                   *VARIANTS[variant]]  # fmt: skip
        if model == "mobilenet":
            command += ["--weights", str(WEIGHTS)]
        if run.exists():
            command.append("--resume")  # interrupted before: go on where it stopped
        started = time.time()
        _run(command, out / "train.log")
        print(f"{name}: {time.time() - started:.0f} s", flush=True)
    values = json.loads(metrics.read_text())
    return {"balanced_accuracy": values["balanced_accuracy"], "auc_roc": values["auc_roc"]}


def table(results: dict) -> str:
    lines = [
        "| model | variant | balanced accuracy | AUC | seeds above robust (bal. acc. / AUC) |",
        "|---|---|---|---|---|",
    ]
    for model, variants in results.items():
        plain = variants["robust"]
        for variant, runs in variants.items():
            if not runs:
                continue
            balanced = [r["balanced_accuracy"] for r in runs]
            auc = [r["auc_roc"] for r in runs]
            wins = ""
            if variant != "robust":
                seeds = list(zip(runs, plain, strict=False))
                above = [sum(r[key] > p[key] for r, p in seeds)
                         for key in ("balanced_accuracy", "auc_roc")]  # fmt: skip
                wins = f"{above[0]} / {above[1]} of {len(seeds)}"
            lines.append(
                f"| {model} | {variant} | {_mean_sd(balanced)} | {_mean_sd(auc)} | {wins} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    split = prepare(args.out)
    variants = ["robust", *(v for v in args.variants if v != "robust")]
    results = {model: {variant: [] for variant in variants} for model in args.models}
    for model in args.models:
        for seed in args.seeds:
            for variant in variants:
                results[model][variant].append(train(split, args.out, model, seed, variant))
                (args.out / "results.json").write_text(json.dumps(results, indent=2))
    markdown = table(results)
    (args.out / "results.md").write_text(markdown + "\n")
    print(markdown)
    print(json.dumps({m: {v: np.round([list(r.values()) for r in runs], 4).tolist()
                          for v, runs in vs.items()} for m, vs in results.items()}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

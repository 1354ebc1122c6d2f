"""The evidence on self-supervision (issue 21): BYOL's and SimCLR's linear evaluation against a
random encoder's, and the report's small-batch claim, on the `overlap` synthetic proxy.

Over several seeds, pretrains each method from random weights at each batch size for the same
epochs without early stopping (every image seen as often), linear-evaluates each encoder and a
random one, and writes the test AUC and balanced accuracy (mean ± sd over seeds) as JSON and a
markdown table.

    .venv/bin/python scripts/ssl_batch_proxy.py --out /tmp/ssl --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_fit_proxy import _mean_sd, _run, prepare  # noqa: E402

METHODS = ("simclr", "byol")
COMMON = ["--image-size", "32", "--recipe", "robust"]


def _metrics(run: Path) -> dict:
    values = json.loads((run / "metrics.json").read_text())
    return {"balanced_accuracy": values["balanced_accuracy"], "auc_roc": values["auc_roc"]}


def _train(command: list[str], run: Path, out: Path) -> None:
    if (run / "metrics.json").is_file():
        return
    if run.exists():
        command = [*command, "--resume"]
    started = time.time()
    _run(command, out / "train.log")
    print(f"{run.name}: {time.time() - started:.0f} s", flush=True)


def linear(split: Path, out: Path, seed: int, encoder: str, name: str, epochs: int) -> dict:
    run = out / "runs" / name
    _train(["train_simclr.py", "linear", "--data", str(split), "--encoder", encoder,
            "--seed", str(seed), "--epochs", str(epochs), "--batch-size", "32", *COMMON,
            "--run-dir", str(run), "--model-out", str(out / "models" / f"{name}.h5")], run, out)  # fmt: skip
    return _metrics(run)


def pretrain(split: Path, out: Path, seed: int, method: str, size: int, epochs: int) -> str:
    name = f"{method}_{size}_seed{seed}"
    run, encoder = out / "runs" / f"{name}_pretrain", out / "models" / f"{name}_encoder.h5"
    if not encoder.is_file() or not (run / "metrics.json").is_file():
        _train(["train_simclr.py", "pretrain", "--data", str(split), "--method", method,
                "--batch-size", str(size), "--epochs", str(epochs), "--patience", str(epochs),
                "--encoder-init", "random", "--image-size", "32", "--seed", str(seed),
                "--run-dir", str(run), "--model-out", str(encoder)], run, out)  # fmt: skip
    return str(encoder)


def table(results: dict) -> str:
    lines = ["| encoder | pretraining batch | linear AUC | linear balanced accuracy |",
             "|---|---:|---|---|"]  # fmt: skip
    for (encoder, size), runs in results.items():
        auc = [r["auc_roc"] for r in runs]
        balanced = [r["balanced_accuracy"] for r in runs]
        lines.append(f"| {encoder} | {size or ''} | {_mean_sd(auc)} | {_mean_sd(balanced)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 32, 96])
    parser.add_argument("--epochs", type=int, default=10, help="pretraining epochs")
    parser.add_argument("--linear-epochs", type=int, default=20)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    split = prepare(args.out)
    results: dict = {("random", 0): []}
    for seed in args.seeds:
        results[("random", 0)].append(
            linear(split, args.out, seed, "none", f"random_seed{seed}_linear", args.linear_epochs)
        )
        for method in METHODS:
            for size in args.batch_sizes:
                encoder = pretrain(split, args.out, seed, method, size, args.epochs)
                name = f"{method}_{size}_seed{seed}_linear"
                results.setdefault((method, size), []).append(
                    linear(split, args.out, seed, encoder, name, args.linear_epochs)
                )
                shown = {f"{m} {s}": r for (m, s), r in results.items()}
                (args.out / "results.json").write_text(json.dumps(shown, indent=2))
    markdown = table(results)
    (args.out / "results.md").write_text(markdown + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

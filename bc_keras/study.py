"""The study: `python -m bc_keras.study DATA [--profile quick|full] [--out study]` prepares the
splits, runs every experiment of the report (and its claims), then regenerates the report.

Idempotent and resumable: a finished run is skipped, an interrupted one resumed, so running
the same command again after a crash or Ctrl-C goes on where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bc_keras import cli
from bc_keras import config as configs
from bc_keras.errors import ConfigError, UserError, one_line
from bc_keras.prepare import SETTINGS_NAME, prepare_folds, prepare_split

PROFILE_QUICK, PROFILE_FULL = PROFILES = ("quick", "full")
BACKBONES = configs.BACKBONES
LABEL_FRACTIONS = (0.1, 0.25, 0.5)
# Per profile: flags of every classifier, the two-phase and SimCLR settings, and the folds.
SETTINGS = {
    PROFILE_QUICK: {
        "classifier": ["--image-size", "48", "--batch-size", "16", "--epochs", "12"],
        "transfer": ["--phase1-epochs", "6", "--phase2-epochs", "4"],
        "mobilenet_alpha": "0.25",
        "pretrain": ["--image-size", "48", "--batch-size", "32", "--epochs", "12"],
        "finetune": ["--freeze-epochs", "2"],
        "folds": 2,
    },
    PROFILE_FULL: {
        "classifier": [],
        "transfer": [],
        "mobilenet_alpha": "1.0",
        "pretrain": [],
        "finetune": ["--freeze-epochs", "5"],
        "folds": 5,
    },
}


@dataclass
class Step:
    """One training run of the study: its name (and run folder), config and what it needs."""

    name: str
    config_class: type
    argv: list[str]
    needs: list[Path] = field(default_factory=list)
    skip: str = ""


def _config(step: Step, out: Path, resume: bool):
    parser = cli.build_parser(step.config_class, "")
    argv = [*step.argv, "--run-dir", str(out / "runs" / step.name)]
    return cli.config_from_args(
        step.config_class, parser.parse_args(argv + (["--resume"] * resume))
    )


def _weights_available(backbone: str, alpha: float, weights: dict) -> str:
    """'' when the backbone's ImageNet weights can be had offline, else why not."""
    if backbone in weights:
        return "" if Path(weights[backbone]).is_file() else f"{weights[backbone]} does not exist"
    from bc_keras.models import transfer

    expected = transfer.imagenet_weights_file(backbone, 224, alpha)
    cached = transfer.keras_models_dir() / expected.file_name
    if cached.is_file():
        return ""
    return (
        f"its ImageNet weights are not available offline (put {expected.file_name} in "
        f"{cached.parent}, or pass --weights {backbone}=PATH)"
    )


def plan(out: Path, profile: str, weights: dict, seed: int) -> list[Step]:
    """Every run of the study, in an order where each run's inputs come before it."""
    settings = SETTINGS[profile]
    data = {name: str(out / "data" / name) for name in ("patient", "image")}
    models_dir = out / "models"
    base = ["--seed", str(seed)]
    classifier = base + settings["classifier"]
    steps: list[Step] = []

    def model_out(name):
        return ["--model-out", str(models_dir / f"{name}.h5")]

    for recipe in configs.RECIPES:
        name = f"cnn_{recipe}"
        argv = ["--data", data["patient"], "--recipe", recipe, *classifier, *model_out(name)]
        steps.append(Step(name, configs.CNNConfig, argv))
    steps.append(
        Step("cnn_report_image_split", configs.CNNConfig,
             ["--data", data["image"], *classifier, *model_out("cnn_report_image_split")])
    )  # fmt: skip
    for backbone in BACKBONES:
        transfer = [*classifier, "--backbone", backbone, *settings["transfer"]]
        alpha = float(settings["mobilenet_alpha"]) if backbone == "mobilenet" else 1.0
        if alpha != 1.0:
            transfer += ["--alpha", settings["mobilenet_alpha"]]
        if backbone in weights:
            transfer += ["--weights", str(weights[backbone])]
        reason = _weights_available(backbone, alpha, weights)
        for recipe, split in (("report", "patient"), ("robust", "patient"), ("report", "image")):
            name = f"transfer_{backbone}_{recipe}" + ("_image_split" if split == "image" else "")
            argv = ["--data", data[split], "--recipe", recipe, *transfer, *model_out(name)]
            steps.append(Step(name, configs.TransferConfig, argv, skip=reason))
    encoder = models_dir / "simclr_encoder.h5"
    pretrain = ["--data", data["patient"], *base, *settings["pretrain"]]
    steps.append(Step("simclr_pretrain", configs.PretrainConfig,
                      [*pretrain, "--model-out", str(encoder)]))  # fmt: skip
    simclr = ["--data", data["patient"], *classifier]
    for fraction in (1.0, *LABEL_FRACTIONS):
        suffix = "" if fraction == 1.0 else f"_{int(fraction * 100)}pct"
        argv = [*simclr, "--encoder", str(encoder), "--label-fraction", str(fraction)]
        steps.append(Step(f"simclr_finetune{suffix}", configs.FinetuneConfig,
                          [*argv, *settings["finetune"], *model_out(f"simclr_finetune{suffix}")],
                          needs=[encoder]))  # fmt: skip
        if fraction != 1.0:
            cnn_argv = ["--data", data["patient"], *classifier, "--label-fraction", str(fraction)]
            steps.append(Step(f"cnn_report{suffix}", configs.CNNConfig,
                              [*cnn_argv, *model_out(f"cnn_report{suffix}")]))  # fmt: skip
    steps.append(Step("simclr_linear", configs.LinearConfig,
                      [*simclr, "--encoder", str(encoder), *model_out("simclr_linear")],
                      needs=[encoder]))  # fmt: skip
    steps.append(Step("simclr_linear_random_encoder", configs.LinearConfig,
                      [*simclr, "--encoder", "none", *model_out("simclr_linear_random")]))  # fmt: skip
    for fold in range(1, settings["folds"] + 1):
        for recipe in configs.RECIPES:
            name = f"cnn_{recipe}_fold{fold}"
            argv = ["--data", str(out / "data" / "folds" / f"fold_{fold}"), "--recipe", recipe]
            steps.append(Step(name, configs.CNNConfig, [*argv, *classifier, *model_out(name)]))
    return steps


def prepare_data(source, out: Path, profile: str, seed: int, log) -> None:
    """The patient split, the report's image split (for the leak) and the folds, once."""
    data = out / "data"
    for split in ("patient", "image"):
        if not (data / split / SETTINGS_NAME).is_file():
            log(f"preparing the {split} split ...")
            prepare_split(source, data / split, split=split, seed=seed, overwrite=True)
    if not (data / "folds" / SETTINGS_NAME).is_file():
        log(f"preparing {SETTINGS[profile]['folds']} patient-grouped folds ...")
        prepare_folds(source, data / "folds", folds=SETTINGS[profile]["folds"], seed=seed,
                      overwrite=True)  # fmt: skip


def _state(out: Path, step: Step) -> str:
    from bc_keras import runs

    folder = out / "runs" / step.name
    if (folder / runs.METRICS_FILE).is_file():
        return "finished"
    return "interrupted" if runs.has_backup(folder) else "new"


def run_step(step: Step, out: Path, log_file: Path) -> str:
    """Runs (or resumes) one step in this process, its output in `log_file`; returns how it
    ended. A user error (e.g. a missing input) fails the step only."""
    import keras

    from bc_keras import experiments

    resume = _state(out, step) == "interrupted"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as handle, contextlib.redirect_stdout(handle):
        with contextlib.redirect_stderr(handle):
            try:
                experiments.run(_config(step, out, resume))
            except UserError as error:
                print(f"error: {one_line(error)}")
                return f"failed: {one_line(error)}"
            finally:
                keras.backend.clear_session()
    return "resumed and finished" if resume else "finished"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def run_study(source, out, profile: str = PROFILE_QUICK, weights=None, seed: int = 42, log=print):
    """Prepares the data, runs every step not yet finished, then writes out/report. Returns
    the list of (step, outcome) for steps that did not finish."""
    from bc_keras.report import build_report

    out = Path(out)
    started = time.time()
    prepare_data(source, out, profile, seed, log)
    steps = plan(out, profile, weights or {}, seed)
    durations, problems = [], []
    for number, step in enumerate(steps, start=1):
        prefix = f"[{number}/{len(steps)}] {step.name}"
        state = _state(out, step)
        if step.skip:
            log(f"{prefix}: skipped: {step.skip}")
            continue
        if state == "finished":
            log(f"{prefix}: already finished")
            continue
        missing = [str(path) for path in step.needs if not path.is_file()]
        if missing:
            problems.append((step.name, f"needs {', '.join(missing)}"))
            log(f"{prefix}: cannot run: needs {', '.join(missing)} (an earlier step failed)")
            continue
        log(f"{prefix}: {'resuming' if state == 'interrupted' else 'running'} ...")
        begun = time.time()
        outcome = run_step(step, out, out / "logs" / f"{step.name}.log")
        durations.append(time.time() - begun)
        remaining = sum(1 for s in steps[number:] if not s.skip and _state(out, s) != "finished")
        eta = _duration(remaining * sum(durations) / len(durations))
        log(f"{prefix}: {outcome} in {_duration(durations[-1])} "
            f"(elapsed {_duration(time.time() - started)}, about {eta} left)")  # fmt: skip
        if not outcome.endswith("finished"):
            problems.append((step.name, outcome))
    report = build_report([out / "runs"], out / "report")
    log(f"report: {report} (elapsed {_duration(time.time() - started)})")
    return problems


def _weights_argument(text: str) -> tuple[str, str]:
    backbone, _, path = text.partition("=")
    if backbone not in BACKBONES or not path:
        raise argparse.ArgumentTypeError(
            f"expected BACKBONE=PATH with BACKBONE one of {', '.join(BACKBONES)}, got {text}"
        )
    if not Path(path).is_file():
        # Refused now: a typo would otherwise cost the backbone's runs of a long study.
        raise argparse.ArgumentTypeError(f"{path} (weights for {backbone}) does not exist")
    return backbone, path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bc_keras.study",
        description=__doc__,
        formatter_class=cli.HelpFormatter,
    )
    parser.add_argument("data", metavar="DATA", help="BreaKHis_v1.tar.gz or its extracted folder")
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default=PROFILE_QUICK,
        help="quick: 48 px, a few epochs, 2 folds, for a CPU; full: the report's settings and 5 "
        "folds, for a GPU (default: quick)",
    )
    parser.add_argument("--out", default="study", help="study folder (default: study)")
    parser.add_argument(
        "--weights",
        action="append",
        type=_weights_argument,
        default=[],
        metavar="BACKBONE=PATH",
        help="a local no-top ImageNet weights file for a transfer backbone (repeatable); without "
        "it a backbone runs only if Keras' cache holds its weights",
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="seed of splits and runs (default: 42)"
    )
    args = parser.parse_args(argv)
    if not Path(args.data).exists():
        raise ConfigError(f"DATA {args.data} does not exist; pass BreaKHis_v1.tar.gz or its folder")
    problems = run_study(args.data, args.out, args.profile, dict(args.weights), args.seed)
    for name, outcome in problems:
        print(
            f"warning: {name}: {outcome} (see {Path(args.out) / 'logs' / name}.log)",
            file=sys.stderr,
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(cli.run_script(main, interrupted="interrupted: run the same command again to resume"))

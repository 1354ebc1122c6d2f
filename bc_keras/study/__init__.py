"""The study: `python -m bc_keras.study DATA [--profile quick|full] [--out study]` prepares the
splits, runs every experiment of the report (and its claims), the analyses of the trained
models (`bc_keras.study.analyses`: deployment, ...), then regenerates the report.

Idempotent and resumable: a finished run is skipped, an interrupted one resumed, so running
the same command again after a crash or Ctrl-C goes on where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bc_keras import cli
from bc_keras import config as configs
from bc_keras.backbones import get_backbone
from bc_keras.config.options import MODEL_RESNET18
from bc_keras.config.values import ENCODER_INIT_IMAGENET, ENCODER_INIT_RANDOM
from bc_keras.errors import ConfigError, UserError, one_line
from bc_keras.prepare import SETTINGS_NAME, prepare_folds, prepare_split
from bc_keras.study import selfsupervised
from bc_keras.study.analyses import Analysis, plan_analyses

PROFILE_QUICK, PROFILE_FULL = PROFILES = ("quick", "full")
INTERRUPTED = "interrupted: run the same command again to resume"
BACKBONES = configs.BACKBONES
# The report's three backbones run in both profiles; the light ones (issue 20) in the full one.
LIGHT_BACKBONES = tuple(name for name in BACKBONES if get_backbone(name).light)
REPORT_BACKBONES = tuple(name for name in BACKBONES if name not in LIGHT_BACKBONES)
# The distilled CNN's teacher (full profile): the robust transfer of the report's backbone
# (ResNet50: "transferring knowledge from a large ResNet50 to a smaller CNN").
TEACHER_BACKBONE = selfsupervised.HYBRID_BACKBONE
LABEL_FRACTIONS = (0.1, 0.25, 0.5)
# Per profile: config values of every classifier, the two-phase and SimCLR settings, the
# backbones' width, and the folds; the full profile keeps the report's values.
SETTINGS = {
    PROFILE_QUICK: {
        "classifier": dict(image_size=48, batch_size=16, epochs=12),
        "transfer": dict(phase1_epochs=6, phase2_epochs=4),
        "smallest_alpha": True,
        "pretrain": dict(image_size=48, batch_size=32, epochs=12),
        "finetune": dict(freeze_epochs=2),
        "folds": 2,
        "cross_fit": 2,
        "deployment": False,
        "batch_sizes": (16, 32, 96),
        "ssl_folds": False,
    },
    PROFILE_FULL: {
        "classifier": {},
        "transfer": {},
        "smallest_alpha": False,
        "pretrain": {},
        "finetune": dict(freeze_epochs=5),
        "folds": 5,
        "cross_fit": 5,
        "deployment": True,
        "batch_sizes": (16, 32, 96, 256),
        # SimCLR, BYOL and the hybrid on every fold: claims 5 and 6 tested over folds.
        "ssl_folds": True,
    },
}


@dataclass
class Step:
    """One training run of the study: its name (and run folder), its config (built, and so
    validated, when the plan is made) and what it needs."""

    name: str
    config: configs.RunConfig
    needs: list[Path] = field(default_factory=list)
    skip: str = ""

    @property
    def config_class(self) -> type:
        return type(self.config)


def _config(step: Step, out: Path, resume: bool):
    """The step's config, run in `out/runs/<name>`, resuming or not."""
    return dataclasses.replace(step.config, run_dir=str(out / "runs" / step.name), resume=resume)


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


def _preset_available(weights: dict) -> str:
    """'' when SimCLR can start from the ImageNet ResNet-18 offline (keras-hub installed, and
    its preset in kagglehub's cache or given as --weights resnet18=PATH), else why not."""
    from bc_keras.models import pretrained

    if not pretrained.keras_hub_installed():
        return f"keras-hub, which reads ImageNet's ResNet-18, is missing ({pretrained.HUB_INSTALL})"
    if MODEL_RESNET18 in weights:
        path = Path(weights[MODEL_RESNET18])
        return "" if path.is_dir() else f"{path} (the ResNet-18 preset folder) does not exist"
    if pretrained.cached_imagenet_preset() is not None:
        return ""
    return (
        f"the ImageNet ResNet-18 (keras-hub preset {pretrained.IMAGENET_PRESET}) is not available "
        f"offline (place its folder in {pretrained.imagenet_preset_dir()}, or pass --weights "
        f"{MODEL_RESNET18}=PATH to a local keras-hub preset folder)"
    )


def plan(out: Path, profile: str, weights: dict, seed: int) -> list[Step]:
    """Every run of the study, in an order where each run's inputs come before it. Each config
    is built here, so a setting that does not work stops the study before anything runs."""
    settings = SETTINGS[profile]
    data = {name: str(out / "data" / name) for name in ("patient", "image")}
    models_dir = out / "models"
    classifier = dict(seed=seed, **settings["classifier"])
    steps: list[Step] = []

    def add(name, config_class, needs=(), skip="", **values):
        values.setdefault("model_out", str(models_dir / f"{name}.h5"))
        config = config_class(run_dir=str(out / "runs" / name), **values)
        steps.append(Step(name, config, list(needs), skip))

    cross_fit = dict(cross_fit=settings["cross_fit"])
    robust = dict(recipe=configs.RECIPE_ROBUST)
    for recipe in configs.RECIPES:
        add(f"cnn_{recipe}", configs.CNNConfig, data=data["patient"], recipe=recipe, **classifier)
    # The headline models are also cross-fitted (their decisions made on every labelled
    # patient), and the robust recipe has image-split twins and label fractions of its own, so
    # that the leak and label-efficiency claims are measured with models that decide.
    add("cnn_robust_cross_fit", configs.CNNConfig, data=data["patient"], **robust, **cross_fit,
        **classifier)  # fmt: skip
    for recipe in configs.RECIPES:
        add(f"cnn_{recipe}_image_split", configs.CNNConfig, data=data["image"], recipe=recipe,
            **classifier)  # fmt: skip
    for backbone in REPORT_BACKBONES:
        # Quick: the narrowest width of a backbone with a width multiplier; full: 1.0.
        alpha = get_backbone(backbone).smallest_alpha if settings["smallest_alpha"] else 1.0
        transfer = dict(classifier, backbone=backbone, alpha=alpha, **settings["transfer"])
        if backbone in weights:
            transfer["weights"] = str(weights[backbone])
        reason = _weights_available(backbone, alpha, weights)
        variants = [
            (recipe, split, {}) for split in ("patient", "image") for recipe in configs.RECIPES
        ]
        variants.insert(2, ("robust", "patient", cross_fit))
        for recipe, split, extra in variants:
            name = f"transfer_{backbone}_{recipe}" + ("_image_split" if split == "image" else "")
            name += "_cross_fit" if extra else ""
            add(name, configs.TransferConfig, skip=reason, data=data[split], recipe=recipe,
                **extra, **transfer)  # fmt: skip
    if settings["deployment"]:
        _deployment_steps(add, data, models_dir, classifier, settings, weights)
    encoder = models_dir / "simclr_encoder.h5"
    # From random weights always (the runs below depend on it), from ImageNet when it can be.
    add("simclr_pretrain", configs.PretrainConfig, data=data["patient"], seed=seed,
        encoder_init=ENCODER_INIT_RANDOM, model_out=str(encoder),
        **settings["pretrain"])  # fmt: skip
    simclr = dict(classifier, data=data["patient"])
    for fraction in (1.0, *LABEL_FRACTIONS):
        suffix = "" if fraction == 1.0 else f"_{int(fraction * 100)}pct"
        add(f"simclr_finetune{suffix}", configs.FinetuneConfig, needs=[encoder],
            encoder=str(encoder), label_fraction=fraction, **settings["finetune"], **simclr)  # fmt: skip
        if fraction == 1.0:
            add("simclr_finetune_cross_fit", configs.FinetuneConfig, needs=[encoder],
                encoder=str(encoder), **cross_fit, **settings["finetune"], **simclr)  # fmt: skip
        else:
            for recipe in configs.RECIPES:
                add(f"cnn_{recipe}{suffix}", configs.CNNConfig, data=data["patient"],
                    recipe=recipe, label_fraction=fraction, **classifier)  # fmt: skip
    add("simclr_linear", configs.LinearConfig, needs=[encoder], encoder=str(encoder), **simclr)
    add("simclr_linear_random_encoder", configs.LinearConfig, encoder=configs.ENCODER_NONE,
        model_out=str(models_dir / "simclr_linear_random.h5"), **simclr)  # fmt: skip
    imagenet = models_dir / "simclr_encoder_imagenet.h5"
    start = str(weights.get(MODEL_RESNET18, ENCODER_INIT_IMAGENET))
    reason = _preset_available(weights)
    add("simclr_pretrain_imagenet", configs.PretrainConfig, skip=reason, data=data["patient"],
        seed=seed, encoder_init=start, model_out=str(imagenet), **settings["pretrain"])  # fmt: skip
    add("simclr_finetune_imagenet", configs.FinetuneConfig, needs=[imagenet], skip=reason,
        encoder=str(imagenet), **settings["finetune"], **simclr)  # fmt: skip
    add("simclr_linear_imagenet", configs.LinearConfig, needs=[imagenet], skip=reason,
        encoder=str(imagenet), **simclr)  # fmt: skip
    ssl_steps = selfsupervised.SSLSteps(add, data["patient"], models_dir, settings, seed, simclr)
    ssl_steps.byol(LABEL_FRACTIONS)
    hybrid = selfsupervised.HYBRID_BACKBONE
    hybrid_run = (
        dict(classifier, **settings["transfer"]),
        str(weights.get(hybrid, ENCODER_INIT_IMAGENET)),
        _weights_available(hybrid, 1.0, weights),
    )
    if hybrid in weights:
        hybrid_run[0]["weights"] = str(weights[hybrid])  # the ImageNet twins' start
    ssl_steps.hybrid(*hybrid_run)
    ssl_steps.batch_sizes()
    fold_dirs = [str(out / "data" / "folds" / f"fold_{k}") for k in range(1, settings["folds"] + 1)]
    if settings["ssl_folds"]:
        ssl_steps.folds(fold_dirs, *hybrid_run)
    for fold, fold_dir in enumerate(fold_dirs, start=1):
        for recipe in configs.RECIPES:
            add(f"cnn_{recipe}_fold{fold}", configs.CNNConfig, data=fold_dir, recipe=recipe,
                **classifier)  # fmt: skip
    return steps


def _deployment_steps(add, data, models_dir, classifier, settings, weights) -> None:
    """The full profile's deployment runs (issue 20): each light backbone in both recipes on
    the patient split, and the CNN distilled from the robust ResNet50 transfer (skipped with
    its teacher)."""
    for backbone in LIGHT_BACKBONES:
        alpha = get_backbone(backbone).smallest_alpha if settings["smallest_alpha"] else 1.0
        transfer = dict(classifier, backbone=backbone, alpha=alpha, **settings["transfer"])
        if backbone in weights:
            transfer["weights"] = str(weights[backbone])
        reason = _weights_available(backbone, alpha, weights)
        for recipe in configs.RECIPES:
            add(f"transfer_{backbone}_{recipe}", configs.TransferConfig, skip=reason,
                data=data["patient"], recipe=recipe, **transfer)  # fmt: skip
    teacher = models_dir / f"transfer_{TEACHER_BACKBONE}_{configs.RECIPE_ROBUST}.h5"
    alpha = 1.0
    reason = _weights_available(TEACHER_BACKBONE, alpha, weights)
    add(f"cnn_{configs.RECIPE_ROBUST}_distilled", configs.CNNConfig, needs=[teacher],
        skip=reason and f"its teacher is skipped: {reason}", data=data["patient"],
        recipe=configs.RECIPE_ROBUST, teacher=str(teacher), **classifier)  # fmt: skip


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


def _ready(name, prefix, skip, finished, needs, log, problems) -> bool:
    """Whether a step or analysis is to run now: not when it is skipped or already finished
    (logged), nor when a file it needs is missing (logged and added to `problems`)."""
    if skip:
        log(f"{prefix}: skipped: {skip}")
        return False
    if finished:
        log(f"{prefix}: already finished")
        return False
    missing = [str(path) for path in needs if not path.is_file()]
    if missing:
        problems.append((name, f"needs {', '.join(missing)}"))
        log(f"{prefix}: cannot run: needs {', '.join(missing)} (an earlier step failed)")
        return False
    return True


def run_study(source, out, profile: str = PROFILE_QUICK, weights=None, seed: int = 42, log=print):
    """Prepares the data, runs every step not yet finished, then writes out/report. Returns
    the list of (step, outcome) for steps that did not finish."""
    from bc_keras.report import build_report
    from bc_keras.report.document import EXPLANATIONS

    out = Path(out)
    started = time.time()
    prepare_data(source, out, profile, seed, log)
    steps = plan(out, profile, weights or {}, seed)
    durations, problems = [], []
    for number, step in enumerate(steps, start=1):
        prefix = f"[{number}/{len(steps)}] {step.name}"
        state = _state(out, step)
        if not _ready(step.name, prefix, step.skip, state == "finished", step.needs, log, problems):
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
    problems += _run_analyses(plan_analyses(out, steps, SETTINGS[profile], seed), out, log)
    report = build_report([out / "runs"], out / "report", explain=EXPLANATIONS)
    log(f"report: {report} (elapsed {_duration(time.time() - started)})")
    return problems


def run_analysis(analysis: Analysis, log_file: Path) -> str:
    """Runs one analysis in this process, its output in `log_file`; returns how it ended. A
    user error (e.g. a model an export cannot take) fails the analysis only."""
    import keras

    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as handle, contextlib.redirect_stdout(handle):
        with contextlib.redirect_stderr(handle):
            try:
                analysis.run()
            except UserError as error:
                print(f"error: {one_line(error)}")
                return f"failed: {one_line(error)}"
            finally:
                keras.backend.clear_session()
    return "finished"


def _run_analyses(analyses: list[Analysis], out: Path, log) -> list[tuple[str, str]]:
    """Runs every analysis not finished yet; returns (name, outcome) of those that failed."""
    problems = []
    for number, analysis in enumerate(analyses, start=1):
        prefix = f"[analysis {number}/{len(analyses)}] {analysis.name}"
        ready = _ready(analysis.name, prefix, analysis.skip, analysis.finished, analysis.needs,
                       log, problems)  # fmt: skip
        if not ready:
            continue
        log(f"{prefix}: running ...")
        begun = time.time()
        name = analysis.name.replace("/", "_")
        outcome = run_analysis(analysis, out / "logs" / f"{name}.log")
        log(f"{prefix}: {outcome} in {_duration(time.time() - begun)}")
        if outcome != "finished":
            problems.append((name, outcome))
    return problems


def _weights_argument(text: str) -> tuple[str, str]:
    backbone, _, path = text.partition("=")
    if backbone not in (*BACKBONES, MODEL_RESNET18) or not path:
        raise argparse.ArgumentTypeError(
            f"expected BACKBONE=PATH with BACKBONE one of {', '.join(BACKBONES)} or "
            f"{MODEL_RESNET18}, got {text}"
        )
    if backbone == MODEL_RESNET18:
        from bc_keras.models import pretrained

        try:
            pretrained.check_preset_folder(path)
        except UserError as error:
            raise argparse.ArgumentTypeError(f"{MODEL_RESNET18}={path}: {error}") from None
        return backbone, path
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
        help="a local no-top ImageNet weights file for a transfer backbone, or resnet18=FOLDER "
        "a local keras-hub ResNet-18 preset for SimCLR's ImageNet start (repeatable); without "
        "it a backbone runs only if Keras' cache holds its weights, and the ImageNet SimCLR "
        "runs only if kagglehub's cache holds resnet_18_imagenet",
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

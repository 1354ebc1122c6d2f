"""The study's analyses of trained models, run after its training steps: each reads finished
models and writes its results into out/runs/<kind>/<name>/, where the report finds them.

Resumable like the steps: an analysis whose result file exists is not run again, and each
writes its folder beside the final one and moves it in, so an interrupted analysis leaves no
result that looks complete. The deployment analysis (issue 20) exports a model to every format
and checks each export on the patient split's test images; the active-learning analysis (issue
22) simulates annotation rounds for the CNN and the SimCLR linear head; the robustness
analysis (issue 22) scores the classifiers under graded corruptions and attacks.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bc_keras.backbones import BACKBONES, get_backbone
from bc_keras.export.markdown import CHECK_JSON

DEPLOYMENT_DIR = "deployment"
ACTIVE_DIR = "active"
ROBUSTNESS_DIR = "robustness"
# The quick profile's robustness benchmark: its models and severities (the full one scores
# every classifier of the patient split at all five).
QUICK_ROBUSTNESS = ("cnn_report", "cnn_robust", "transfer_mobilenet_robust", "simclr_finetune",
                    "simclr_linear")  # fmt: skip
QUICK_SEVERITIES = (1, 3, 5)
# The simulations' run folders live outside out/runs (they are ordinary runs, and would
# otherwise fill the report's tables); only their results are copied under out/runs/active/.
ACTIVE_WORK = ("work", "active")
# Per profile: rounds and strategies of the active-learning simulations.
ACTIVE_SETTINGS = {
    False: dict(rounds=2, strategies=["entropy", "random"]),
    True: dict(rounds=4, strategies=["entropy", "margin", "random", "coreset"]),
}
PARTIAL_SUFFIX = ".partial"


@dataclass
class Analysis:
    """One analysis: its name (and folder under out/runs), the files it needs, the file that
    marks it finished, and the function writing its folder (given a scratch folder)."""

    name: str
    needs: list[Path]
    result: Path
    write: Callable[[Path], None]
    skip: str = ""
    folder: Path = field(init=False)

    def __post_init__(self):
        self.folder = self.result.parent

    @property
    def finished(self) -> bool:
        return self.result.is_file()

    def run(self) -> None:
        """Writes the folder into a scratch twin, then moves it in (replacing a stale one)."""
        scratch = self.folder.with_name(self.folder.name + PARTIAL_SUFFIX)
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.write(scratch)
            shutil.rmtree(self.folder, ignore_errors=True)
            scratch.rename(self.folder)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


# The models every profile checks; the full profile adds the distilled CNN and the light
# backbones' robust transfers (the steps it alone has).
DEPLOYED_STEPS = ("cnn_robust", "transfer_mobilenet_robust")


def deployment_models(steps, deployment: bool) -> list:
    """The steps whose models the deployment analysis checks: `DEPLOYED_STEPS`, and with
    `deployment` (the full profile) the distilled CNN and every robust transfer of a light
    backbone."""
    chosen = [step for step in steps if step.name in DEPLOYED_STEPS]
    if deployment:
        chosen += [step for step in steps if step.name == "cnn_robust_distilled"]
        chosen += [step for step in steps if step.name.endswith("_robust")
                   and _is_light(getattr(step.config, "backbone", None))]  # fmt: skip
    return chosen


def _is_light(backbone: str | None) -> bool:
    return backbone in BACKBONES and get_backbone(backbone).light


def deployment_analyses(out: Path, steps, deployment: bool) -> list[Analysis]:
    """One deployment analysis per chosen model (see `deployment_models`), on the patient
    split (int8 calibrated on its training images, checked on its test images)."""
    split = out / "data" / "patient"
    analyses = []
    for step in deployment_models(steps, deployment):
        model = Path(step.config.model_out)
        result = out / "runs" / DEPLOYMENT_DIR / step.name / CHECK_JSON
        skip = f"its model's step is skipped: {step.skip}" if step.skip else ""
        analyses.append(
            Analysis(
                f"{DEPLOYMENT_DIR}/{step.name}",
                [model],
                result,
                _deployment_writer(model, split),
                skip,
            )  # fmt: skip
        )
    return analyses


def _deployment_writer(model: Path, split: Path) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        from bc_keras.export.suite import export_and_check

        export_and_check(model, folder, split, log=print)

    return write


def active_analyses(out: Path, steps, settings: dict, seed: int) -> list[Analysis]:
    """The active-learning simulations (issue 22 item 4) of the CNN and of the SimCLR linear
    head on the patient split, from 10% of its labels (both profiles; the full one runs more
    rounds and all four strategies)."""
    encoder = next((Path(s.config.model_out) for s in steps if s.name == "simclr_pretrain"), None)
    classifier = settings["classifier"]
    common = dict(
        data=str(out / "data" / "patient"), seed=seed, recipe="robust",
        **ACTIVE_SETTINGS[settings["deployment"]],
        **{key: classifier[key] for key in ("epochs", "image_size", "batch_size") if key in classifier},
    )  # fmt: skip
    analyses = []
    for experiment, needs in (("cnn", []), ("linear", [encoder] if encoder else [])):
        if experiment == "linear" and encoder is None:
            continue
        name = f"{ACTIVE_DIR}/{experiment}"
        work = out.joinpath(*ACTIVE_WORK, experiment)
        values = dict(common, experiment=experiment,
                      encoder=str(encoder) if experiment == "linear" else None)  # fmt: skip
        result = out / "runs" / ACTIVE_DIR / experiment / "active.json"
        analyses.append(Analysis(name, needs, result, _active_writer(values, work)))
    return analyses


def _active_writer(values: dict, work: Path) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        from bc_keras.active import simulate

        settings = simulate.SimulationSettings(**values)
        settings.budget = simulate.round_budget(settings.data, settings.rounds, seed=settings.seed)
        simulate.simulate(settings, work, log=print)
        folder.mkdir(parents=True, exist_ok=True)
        for name in (simulate.FIGURE_FILE, simulate.SUMMARY_FILE, simulate.RESULT_FILE):
            shutil.copy2(work / name, folder / name)

    return write


def robustness_models(steps, full: bool) -> list:
    """The steps whose models the robustness benchmark scores: in the full profile every
    classifier trained and tested on the patient split (cross-fitted ensembles aside: their
    members are scored as the single-split runs are), in the quick one `QUICK_ROBUSTNESS`."""
    from bc_keras.config import LinearConfig, PretrainConfig

    chosen = []
    for step in steps:
        config = step.config
        if step.skip or isinstance(config, PretrainConfig) or getattr(config, "cross_fit", 0):
            continue
        if not str(config.data).endswith("patient") or isinstance(config, LinearConfig) and (
                config.encoder == "none"):  # fmt: skip
            continue
        if full or step.name in QUICK_ROBUSTNESS:
            chosen.append(step)
    return chosen


def robustness_analyses(out: Path, steps, settings: dict, seed: int) -> list[Analysis]:
    """One robustness benchmark (issue 22 item 1) of the chosen models on the patient split's
    test images; a model whose step failed is left out (the benchmark says which ran)."""
    full = settings["deployment"]
    models = [Path(step.config.model_out) for step in robustness_models(steps, full)]
    severities = None if full else QUICK_SEVERITIES
    result = out / "runs" / ROBUSTNESS_DIR / "patient" / "robustness.json"
    split = out / "data" / "patient"
    return [Analysis(f"{ROBUSTNESS_DIR}/patient", [], result,
                     _robustness_writer(models, split, severities, seed))]  # fmt: skip


def _robustness_writer(models, split, severities, seed) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        from bc_keras.errors import RunError
        from bc_keras.robustness import run_robustness

        present = [path for path in models if path.is_file()]
        if not present:
            raise RunError("no model to benchmark: every chosen step failed")
        missing = [path.name for path in models if not path.is_file()]
        if missing:
            print(f"left out (their steps failed): {', '.join(missing)}")
        run_robustness(present, split, folder, severities=severities, seed=seed)

    return write


def plan_analyses(out: Path, steps, settings: dict, seed: int = 42) -> list[Analysis]:
    """Every analysis of the study, in the order they run."""
    return [
        *deployment_analyses(out, steps, settings["deployment"]),
        *robustness_analyses(out, steps, settings, seed),
        *active_analyses(out, steps, settings, seed),
    ]

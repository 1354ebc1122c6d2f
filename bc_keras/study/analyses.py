"""The study's analyses of trained models, run after its training steps: each reads finished
models and writes its results into out/runs/<kind>/<name>/, where the report finds them.

Resumable like the steps: an analysis whose result file exists is not run again, and each
writes its folder beside the final one and moves it in, so an interrupted analysis leaves no
result that looks complete. The deployment analysis (issue 20) exports a model to every format
and checks each export on the patient split's test images.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bc_keras.backbones import BACKBONES, get_backbone
from bc_keras.export.markdown import CHECK_JSON

DEPLOYMENT_DIR = "deployment"
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


def plan_analyses(out: Path, steps, settings: dict) -> list[Analysis]:
    """Every analysis of the study, in the order they run."""
    return deployment_analyses(out, steps, settings["deployment"])

"""Run folders as the study report reads them: found once under several folders, each with its
config, scores, predictions, split protocol, fold and model key."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath

import numpy as np

from bc_keras.config import ENCODER_NONE
from bc_keras.errors import DataError, shorten
from bc_keras.evaluation.metrics import FLAG_ALL_PREDICTED_BENIGN, FLAG_ALL_PREDICTED_MALIGNANT
from bc_keras.prepare.manifest import SETTINGS_NAME
from bc_keras.report.encoders import (  # noqa: F401
    START_RANDOM,
    encoder_label,
    from_imagenet,
    link_encoders,
    method_title,
    pretraining_of,
)
from bc_keras.report.paths import locate, resolve_path, same_folder  # noqa: F401
from bc_keras.report.validation import (
    LABEL_FRACTION_USED,
    is_number,
    malformed_config,
    malformed_metrics,
)
from bc_keras.runs import CONFIG_FILE, METRICS_FILE, PREDICTIONS_FILE

# A run flagged so predicts one class for every test image: it can answer no claim.
ONE_CLASS_FLAGS = (FLAG_ALL_PREDICTED_MALIGNANT, FLAG_ALL_PREDICTED_BENIGN)
KIND_CLASSIFIER = "classifier"
KIND_PRETRAIN = "pretrain"
PROTOCOL_UNKNOWN = "unknown"
ENCODER_PRETRAINED = "SimCLR encoder"
# A SimCLR encoder whose pretraining started from the ImageNet ResNet-18 (`--encoder-init
# imagenet`, or PATH: a local copy of that keras-hub preset), not from random weights.
ENCODER_IMAGENET = "SimCLR encoder from ImageNet"
ENCODER_RANDOM = "random encoder"
ENCODER_ORDER = (ENCODER_PRETRAINED, ENCODER_IMAGENET, ENCODER_RANDOM)
# The key of a pretraining run that started from ImageNet ("SimCLR pretraining, from ImageNet").
START_IMAGENET = "from ImageNet"
EXPERIMENTS = ("cnn", "transfer", "simclr_linear", "simclr_finetune", "simclr_pretrain")
_BASE_NAMES = {
    "cnn": "baseline CNN",
    "simclr_linear": "ResNet-18 linear",
    "simclr_finetune": "ResNet-18 fine-tuned",
    "simclr_pretrain": "SimCLR pretraining",
}


@dataclass(frozen=True)
class Fold:
    """A run's place in a cross-validation set: fold `index` (1-based) of `count`."""

    index: int
    count: int
    kind: str


@dataclass(frozen=True, order=True)
class ModelKey:
    """What makes two runs the same model: experiment, backbone (and its start), recipe,
    encoder (SimCLR-pretrained from random weights, SimCLR-pretrained from ImageNet, or random;
    for a pretraining run, its start), the share of training labels and cross-fitting (K
    folds, 0 for a single split, and the final model)."""

    experiment: str
    backbone: str = ""
    weights: str = ""
    recipe: str = "report"
    encoder: str = ""
    label_fraction: float = 1.0
    cross_fit: int = 0
    cross_fit_final: str = ""
    # A self-supervised model's pretraining (`encoders.Pretraining`): "" for SimCLR, the
    # report's, else the method; the batch size of a fixed-epoch pretraining, else 0.
    method: str = ""
    pretrain_batch: int = 0

    def name(self) -> str:
        """E.g. "baseline CNN (report recipe, 10% labels)" or "baseline CNN (robust recipe,
        cross-fit 5 ensemble)"."""
        if self.experiment == "transfer":
            base = f"{self.backbone} transfer"
            base += f" ({self.weights})" if self.weights else ""
        elif self.experiment == "simclr_pretrain":
            base = f"{method_title(self.method)} pretraining"
            base += f" of {self.backbone}" if self.backbone else ""
        else:
            base = _BASE_NAMES.get(self.experiment, self.experiment)
            base = base.replace("ResNet-18", self.backbone) if self.backbone else base
        if self.encoder:
            base += f", {self.encoder}"
        details = [f"{self.recipe} recipe"]
        if self.pretrain_batch:
            details.append(f"pretrained at batch {self.pretrain_batch}")
        if self.label_fraction < 1.0:
            details.append(f"{self.label_fraction * 100:g}% labels")
        if self.cross_fit:
            details.append(f"cross-fit {self.cross_fit} {self.cross_fit_final}".rstrip())
        return f"{base} ({', '.join(details)})"

    def family(self) -> ModelKey:
        """The same model with all the training labels (label-efficiency series)."""
        return replace(self, label_fraction=1.0)

    def order(self) -> tuple:
        """Report order: CNN, transfer, linear, fine-tuned; the SimCLR encoder, then the one
        from ImageNet, then random; a cross-fitted model right after its single-split twin."""
        rank = EXPERIMENTS.index(self.experiment) if self.experiment in EXPERIMENTS else 99
        encoder = ENCODER_ORDER.index(self.encoder) if self.encoder in ENCODER_ORDER else 0
        return (
            rank,
            self.experiment,
            self.backbone,
            self.weights,
            self.recipe,
            encoder,
            self.encoder,
            -self.label_fraction,
            self.cross_fit,
            self.cross_fit_final,
            self.method,
            self.pretrain_batch,
        )


@dataclass
class Run:
    """One finished run folder: its config, metrics.json, the prepare.json of the split it
    used, its test predictions (None when unreadable) and notes on what could not be read."""

    name: str
    run_dir: Path
    config: dict
    metrics: dict
    prepare: dict = field(default_factory=dict)
    predictions: dict | None = None
    notes: list[str] = field(default_factory=list)
    # A SimCLR classifier's: the --encoder-init of the pretraining run that wrote its --encoder
    # (`link_encoders`); "" when no pretraining run found says so.
    encoder_start: str = ""
    # The config.json of that pretraining run (also for a transfer run started from its
    # encoder), or None: what pretrained the encoder (`encoders.pretraining_of`).
    encoder_pretraining: dict | None = None

    @property
    def kind(self) -> str:
        return KIND_CLASSIFIER if "accuracy" in self.metrics else KIND_PRETRAIN

    @property
    def experiment(self) -> str:
        return str(self.config.get("experiment") or "unknown")

    @property
    def recipe(self) -> str:
        return str(self.config.get("recipe") or "report")

    @property
    def label_fraction(self) -> float:
        """The share of training labels the run used: `label_fraction_used` (what it
        actually trained on, metrics.json then config.json), else the requested one."""
        for value in (
            self.metrics.get(LABEL_FRACTION_USED),
            self.config.get(LABEL_FRACTION_USED),
            self.config.get("label_fraction"),
        ):
            if is_number(value) and 0 < value <= 1:
                return float(value)
        return 1.0

    @property
    def encoder(self) -> str:
        """SimCLR classifiers: whether the encoder was pretrained (from random weights or from
        ImageNet, see `encoder_start`) or randomly initialised. Pretraining runs: their start
        (config.json's encoder_init; runs from before it always started from random weights)."""
        if self.experiment == "simclr_pretrain":
            return START_IMAGENET if from_imagenet(self.config.get("encoder_init")) else ""
        if self.experiment not in ("simclr_linear", "simclr_finetune"):
            return ""
        encoder = str(self.config.get("encoder") or ENCODER_NONE)
        if encoder.lower() == ENCODER_NONE:
            return ENCODER_RANDOM
        pretraining = pretraining_of(self.encoder_pretraining)
        return encoder_label(pretraining, from_imagenet(self.encoder_start))

    @property
    def model_key(self) -> ModelKey:
        backbone, weights = "", ""
        own = self.experiment == "simclr_pretrain"
        pretraining = pretraining_of(self.config if own else self.encoder_pretraining)
        if self.experiment == "transfer":
            backbone = str(self.config.get("backbone") or "?")
            start = str(self.config.get("weights") or "imagenet")
            weights = (
                ""
                if start == "imagenet"
                else ("random init" if start.lower() == "none" else "weights file")
            )
            if self.encoder_pretraining is not None:  # a self-supervised encoder's file
                weights = encoder_label(pretraining, from_imagenet(self.encoder_start))
        elif self.experiment.startswith("simclr_") and self.encoder != ENCODER_RANDOM:
            backbone = pretraining.backbone
        else:
            pretraining = pretraining_of(None)
        return ModelKey(
            self.experiment,
            backbone,
            weights,
            self.recipe,
            self.encoder,
            self.label_fraction,
            *self.cross_fitting,
            pretraining.method,
            pretraining.batch_size,
        )

    @property
    def cross_fitting(self) -> tuple[int, str]:
        """`(K, final)` of a cross-fitted run (config.json), `(0, "")` for a single split."""
        folds = self.config.get("cross_fit") or 0
        if not folds:
            return 0, ""
        return folds, str(self.config.get("cross_fit_final") or "")

    @property
    def degenerate(self) -> str | None:
        """The flag saying the run predicts one class for every test image, or None."""
        flags = self.metrics.get("flags") or []
        return next((flag for flag in flags if flag in ONE_CLASS_FLAGS), None)

    @property
    def protocol(self) -> str:
        """The split the run used: "patient", "image", "fold", "kfold" or "unknown"."""
        split = self.prepare.get("split")
        return split if isinstance(split, str) and split else PROTOCOL_UNKNOWN

    @property
    def fold(self) -> Fold | None:
        fold = self.prepare.get("fold")
        if not isinstance(fold, dict):
            return None
        index, count = fold.get("index"), fold.get("count")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (index, count)):
            return None
        if not 1 <= index <= count:
            return None
        return Fold(index, count, str(fold.get("kind") or self.protocol))

    @property
    def data(self) -> str:
        """The prepared split folder as written in config.json."""
        return str(self.config.get("data") or "")

    @property
    def data_dir(self) -> Path | None:
        return locate(self.data, self.run_dir) if self.data else None

    @property
    def count(self) -> dict:
        return self.metrics.get("counts") or {}


def read_json(path: Path) -> dict:
    """A JSON object from `path`; ValueError/OSError naming the problem otherwise."""
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError(f"holds a {type(value).__name__}, not an object")
    return value


def read_predictions(path) -> dict:
    """predictions.csv as arrays (filename, patient, magnification, label, probability).

    The same columns as `bc_keras.evaluation.read_predictions`, read without importing
    TensorFlow, and checked: a malformed row raises ValueError naming it.
    """
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        missing = {"filename", "label", "probability"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"no {', '.join(sorted(missing))} column")
        rows = list(reader)
    labels, probabilities = [], []
    for number, row in enumerate(rows, start=2):
        try:
            label, probability = int(row["label"]), float(row["probability"])
        except (TypeError, ValueError):
            raise ValueError(f"line {number} has no numeric label/probability") from None
        if label not in (0, 1) or not math.isfinite(probability):
            raise ValueError(f"line {number}: label {label}, probability {probability}")
        labels.append(label)
        probabilities.append(probability)
    if not rows:
        raise ValueError("no predictions")
    return {
        "filename": [row["filename"] for row in rows],
        "patient": [row.get("patient") or "" for row in rows],
        "magnification": [row.get("magnification") or "" for row in rows],
        "label": np.array(labels, dtype=int),
        "probability": np.array(probabilities, dtype=float),
    }


def _run_name(run_dir: Path, common: Path) -> str:
    relative = run_dir.relative_to(common) if run_dir != common else PurePath(run_dir.name)
    return relative.as_posix()


def find_runs(roots) -> tuple[list[Run], list[str]]:
    """Every run folder (a folder with config.json) under `roots`, each once; the members of a
    cross-fitted run are parts of it, not runs.

    A run is named by its path relative to the folder all `roots` share, so it keeps its name
    whichever root found it and in whatever order the roots come; a folder found twice (under
    two roots, or through a link) is read once, under the first of its names in sort order.

    Returns:
        `(runs, left_out)`: the finished runs sorted by name, and one "name: reason" line per
        folder left out (unfinished, unreadable or of an unknown kind).

    Raises:
        DataError: if a root is not a folder.
    """
    resolved = []
    for root in roots:
        path = resolve_path(str(root))
        if not path.is_dir():
            raise DataError(
                f"{root} does not exist or is not a folder; pass the folder(s) your training "
                "runs were written to"
            )
        resolved.append(path)
    common = Path(os.path.commonpath([str(root) for root in resolved]))
    found: dict[str, tuple[str, Path]] = {}
    for root in resolved:
        # A folder with metrics.json but no config.json is a run too (one that lost its
        # config): it is listed as left out rather than silently ignored.
        for path in (*root.rglob(CONFIG_FILE), *root.rglob(METRICS_FILE)):
            run_dir = path.parent
            if _is_cross_fit_member(run_dir):
                continue  # a part of its cross-fitted run, which is the model
            name = _run_name(run_dir, common)
            key = os.path.realpath(run_dir)
            found[key] = min(found.get(key, (name, run_dir)), (name, run_dir))
    runs, left_out = [], []
    for name, run_dir in sorted(found.values()):
        run = read_run(run_dir, name)
        if isinstance(run, str):
            left_out.append(f"{name}: {run}")
        else:
            runs.append(run)
    link_encoders(runs)
    return runs, left_out


# A cross-fitted run keeps its K members as sub-runs in <run>/members/fold<k>/.
MEMBERS_DIR = "members"


def _is_cross_fit_member(run_dir: Path) -> bool:
    return run_dir.parent.name == MEMBERS_DIR and (run_dir.parent.parent / CONFIG_FILE).is_file()


def read_run(run_dir: Path, name: str) -> Run | str:
    """A finished run, or the reason it is left out (run folders are untrusted input)."""
    if not (run_dir / CONFIG_FILE).is_file():
        return f"no {CONFIG_FILE} (what the run was is unknown)"
    try:
        config = read_json(run_dir / CONFIG_FILE)
    except (OSError, ValueError) as error:
        return f"unreadable {CONFIG_FILE} ({shorten(error, 100)})"
    problem = malformed_config(config)
    if problem:
        return f"malformed {CONFIG_FILE} ({problem})"
    if not (run_dir / METRICS_FILE).is_file():
        return f"unfinished (no {METRICS_FILE})"
    try:
        metrics = read_json(run_dir / METRICS_FILE)
    except (OSError, ValueError) as error:
        return f"unreadable {METRICS_FILE} ({shorten(error, 100)})"
    if "accuracy" not in metrics and "best_val_loss" not in metrics:
        return f"{METRICS_FILE} holds neither classifier scores nor a pretraining summary"
    problem = malformed_metrics(metrics)
    if problem:
        return f"malformed {METRICS_FILE} ({problem})"
    run = Run(name, run_dir, config, metrics)
    if run.data_dir is not None and (run.data_dir / SETTINGS_NAME).is_file():
        try:
            run.prepare = read_json(run.data_dir / SETTINGS_NAME)
        except (OSError, ValueError) as error:
            run.notes.append(f"unreadable {run.data}/{SETTINGS_NAME} ({shorten(error, 80)})")
    if run.kind == KIND_CLASSIFIER:
        path = run_dir / PREDICTIONS_FILE
        try:
            run.predictions = read_predictions(path)
        except FileNotFoundError:
            run.notes.append(f"no {PREDICTIONS_FILE}")
        except (OSError, ValueError, csv.Error) as error:
            run.notes.append(f"unreadable {PREDICTIONS_FILE} ({shorten(error, 80)})")
        images = run.count.get("images")
        if run.predictions is not None and images not in (None, len(run.predictions["label"])):
            run.notes.append(
                f"{PREDICTIONS_FILE} holds {len(run.predictions['label'])} rows but "
                f"{METRICS_FILE} counts {images} images"
            )
            run.predictions = None
    return run

"""The study report's figures: each run's own figures copied beside REPORT.md, ROC/PR overlays
and reliability diagrams in panels of a few models, label-efficiency curves, the forest plot and
Grad-CAM panels of saved models."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path, PurePath

import numpy as np

from bc_keras.errors import UserError, shorten
from bc_keras.evaluation import plots
from bc_keras.histology.breakhis import CLASS_NAMES
from bc_keras.report.forest import FOREST_TITLE, forest_rows

# Re-exported: how the overlays are split into panels is asked of the figures.
from bc_keras.report.panels import MAX_CURVES_PER_PANEL as MAX_CURVES_PER_PANEL
from bc_keras.report.panels import panel_groups as panel_groups
from bc_keras.report.panels import split_panels
from bc_keras.report.runs import Run, locate, same_folder
from bc_keras.report.sets import EvaluationSet, Model
from bc_keras.runs import HISTORY_FILE, MODEL_HASH_KEY, file_sha256, read_history

FIGURES_DIR = "figures"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRAINING_CURVES = "training_curves.png"
# A run's own figures, in the report's order, with their captions.
CLASSIFIER_FIGURES = (
    (TRAINING_CURVES, "training and validation accuracy and loss (phases marked)"),
    ("precision_recall_curve.png", "precision-recall curve"),
    ("roc_curve.png", "ROC curve"),
    ("confusion_matrix.png", "confusion matrix"),
    ("sample_predictions.png", "sample predictions"),
)
PRETRAIN_FIGURES = (
    (TRAINING_CURVES, "training and validation NT-Xent loss"),
    ("tsne_test_embeddings.png", "t-SNE of the test images' embeddings (clustering)"),
    ("augmented_pairs.png", "augmented pairs"),
)
GRADCAM_PER_KIND = 4
# The largest input side a model file may ask Grad-CAM for: a hostile or corrupt metadata
# value must not make the report decode eight images of a million pixels a side.
MAX_IMAGE_SIZE = 4096
DEFAULT_THRESHOLD = 0.5


# How each model-agnostic explanation finds its evidence, for the captions.
EXPLAINED_HOW = {
    "occlusion": "the drop in probability when a patch is hidden",
    "lime": "a local linear surrogate over superpixels",
}


def is_png(path) -> bool:
    """Whether `path` is a non-empty file starting with the PNG signature."""
    try:
        with open(path, "rb") as file:
            return file.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False


def slug(text: str) -> str:
    """A file-name-safe form of a run name: `cnn/2025-01` -> `cnn__2025-01`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("/", "__")).strip("._") or "run"


class Figures:
    """Writes figures under `<out>/figures/` and hands back their links relative to `out`."""

    def __init__(self, out: Path, explain: tuple[str, ...] = ()):
        self.out = Path(out)
        # The explanations drawn beside each model's Grad-CAM panel (occlusion, LIME).
        self.explain = tuple(explain)
        self.folders: dict[str, str] = {}
        # "run: why" for each model whose Grad-CAM panel was left out (listed in the report).
        self.skipped_gradcam: list[str] = []

    def folder(self, name: str) -> Path:
        """The figure folder of a run or evaluation set (unique even if two slugs collide)."""
        if name not in self.folders:
            base = slug(name)
            candidate, number = base, 2
            while candidate in self.folders.values():
                candidate, number = f"{base}-{number}", number + 1
            self.folders[name] = candidate
        return self.out / FIGURES_DIR / self.folders[name]

    def link(self, path: Path) -> str:
        return Path(path).relative_to(self.out).as_posix()

    def run_figures(self, run: Run, figures) -> tuple[list[tuple[str, str]], list[str]]:
        """Copies a run's figures. Returns `[(caption, link)]` and notes on missing ones; the
        training curves are redrawn from history.csv when their PNG is missing or broken."""
        links, notes = [], []
        for filename, caption in figures:
            source = run.run_dir / filename
            target = self.folder(run.name) / filename
            if is_png(source):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            elif filename == TRAINING_CURVES and (run.run_dir / HISTORY_FILE).is_file():
                try:
                    plots.plot_history(read_history(run.run_dir), target, title=run.name)
                except (OSError, ValueError, KeyError) as error:
                    notes.append(
                        f"{filename}: missing, and {HISTORY_FILE} cannot be drawn "
                        f"({shorten(error, 80)})"
                    )
                    continue
                notes.append(f"{filename} was missing: redrawn from {HISTORY_FILE}")
            else:
                notes.append(f"{filename}: {'not a PNG' if source.exists() else 'missing'}")
                continue
            links.append((caption, self.link(target)))
        return links, notes


FOREST_FIGURE = "forest.png"


def _plotted(each: EvaluationSet, both_classes: bool) -> tuple[list[Model], list[str]]:
    """The set's models with predictions to draw, and notes on those left out."""
    models, notes = [], []
    for model in each.models:
        if model.pooled is None:
            continue  # the model's own notes say why
        if both_classes and len(set(model.pooled["label"].tolist())) < 2:
            notes.append(f"{model.label}: its test images hold one class only")
        else:
            models.append(model)
    return models, notes


def _curves(models: list[Model]) -> dict:
    return {model.label: (model.pooled["label"], model.pooled["probability"]) for model in models}


def overlays(figures: Figures, each: EvaluationSet) -> tuple[list[tuple[str, str]], list[str]]:
    """The ROC and precision-recall curves of the set's models, a figure of each per panel of
    `panel_groups` (roc_overlay.png, roc_overlay_label_fractions.png, ...). Returns
    `[(caption, link)]` and notes on the models left out."""
    models, notes = _plotted(each, both_classes=True)
    folder = figures.folder(each.slug)
    pooled = "pooled out-of-fold " if each.cross_validation else ""
    links = []
    for panel in split_panels(models):
        for stem, what, plot in (
            ("roc_overlay", "ROC curves", plots.plot_roc_overlay),
            ("precision_recall_overlay", "precision-recall curves",
             plots.plot_precision_recall_overlay),
        ):  # fmt: skip
            caption = panel.caption(f"{pooled}{what}")
            path = plot(_curves(panel.models), folder / panel.file(stem), caption)
            links.append((caption, figures.link(path)))
    return links, notes


def reliability_panels(figures: Figures, each: EvaluationSet) -> list[str]:
    """The reliability diagrams of the set's models with predictions, one per panel of
    `panel_groups` (reliability_diagram.png, ...); their links."""
    models, _ = _plotted(each, both_classes=False)
    links = []
    for panel in split_panels(models):
        path = figures.folder(each.slug) / panel.file("reliability_diagram")
        plots.plot_reliability_diagram(
            _curves(panel.models), path, panel.caption("Reliability diagram")
        )
        links.append(figures.link(path))
    return links


def reliability(figures: Figures, each: EvaluationSet) -> str | None:
    """The first of `reliability_panels` (the headline models'), or None without predictions."""
    links = reliability_panels(figures, each)
    return links[0] if links else None


def forest(figures: Figures, sets: list[EvaluationSet]) -> str | None:
    """figures/forest.png: AUC and balanced accuracy of every model of every set with its
    interval (`forest_rows`); its link, or None when no model has a value."""
    rows = forest_rows(sets)
    if not any(value is not None for _, _, value, _, _ in rows):
        return None
    path = plots.plot_forest(rows, figures.out / FIGURES_DIR / FOREST_FIGURE, FOREST_TITLE)
    return figures.link(path)


def label_efficiency(figures: Figures, each: EvaluationSet, series: dict, metric: str) -> str:
    """`series`: model name -> [(fraction, value, low, high)]; returns the figure's link."""
    path = figures.folder(each.slug) / f"label_efficiency_{metric}.png"
    name = metric.replace("_", " ")
    plots.plot_metric_vs_fraction(series, path, name, f"Label efficiency: {name}")
    return figures.link(path)


def _choose(candidates, labels, confidence, filenames, count: int) -> list[int]:
    """Up to `count` of `candidates`, most confident first, alternating benign and malignant."""
    by_class = {
        label: sorted(
            (i for i in candidates if labels[i] == label),
            key=lambda i: (-confidence[i], filenames[i]),
        )
        for label in (0, 1)
    }
    chosen = []
    while len(chosen) < count and any(by_class.values()):
        for label in (0, 1):
            if by_class[label] and len(chosen) < count:
                chosen.append(by_class[label].pop(0))
    return chosen


def gradcam_images(run: Run, per_kind: int = GRADCAM_PER_KIND) -> list[tuple[Path, int, float]]:
    """`(path, label, probability)` of up to `per_kind` correct and `per_kind` wrong test
    images of the run (the most confident of each), found under `<data>/test/<class>/`."""
    predictions = run.predictions
    labels, probabilities = predictions["label"], predictions["probability"]
    threshold = run_threshold(run)
    correct = (probabilities >= threshold).astype(int) == labels
    confidence = np.abs(probabilities - threshold)
    filenames = predictions["filename"]
    chosen = []
    for wanted in (True, False):
        indices = [i for i in range(len(labels)) if correct[i] == wanted]
        chosen += _choose(indices, labels, confidence, filenames, per_kind)
    images = []
    for index in chosen:
        name = PurePath(filenames[index])
        if not name.parts or name.is_absolute() or ".." in name.parts:
            continue  # predictions.csv is untrusted: never read an image outside the split
        path = run.data_dir / "test" / CLASS_NAMES[labels[index]] / name
        if path.is_file():
            images.append((path, int(labels[index]), float(probabilities[index])))
    return images


def run_threshold(run: Run) -> float:
    """The run's decision threshold (metrics.json), 0.5 where it records none."""
    threshold = run.metrics.get("threshold")
    return float(threshold) if threshold is not None else DEFAULT_THRESHOLD


def _metadata_problem(metadata: dict) -> str | None:
    """What in a model file's metadata Grad-CAM cannot use, or None."""
    size = metadata.get("image_size")
    if not (isinstance(size, int) and not isinstance(size, bool) and 0 < size <= MAX_IMAGE_SIZE):
        return f"its model file records image_size {shorten(repr(size), 40)}, not a side in pixels"
    for key in ("preprocess", "interpolation"):
        if key in metadata and not isinstance(metadata[key], str):
            return f"its model file records {key} {shorten(repr(metadata[key]), 40)}, not a text"
    return None


def _same_number(a, b) -> bool:
    return all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b)
    ) and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def ownership_problem(run: Run, metadata: dict) -> str | None:
    """Why the model whose `metadata` this is was not saved by `run`, or None when it was.

    Identified by content, not by path, so that a runs folder moved or copied elsewhere keeps
    its models: the folder the model records (`run_dir`) has the run folder's own name (a
    timestamp unless --run-dir named it), and the model's experiment, recipe and decision
    threshold are the ones the run's config.json and metrics.json record. A model recorded at
    this very folder is the run's own whatever its name.
    """
    owner = metadata.get("run_dir")
    if not isinstance(owner, str) or not owner:
        return "its model file records no run folder"
    if same_folder(locate(owner, run.run_dir), run.run_dir):
        return None
    another = f"`{run.config.get('model_out')}` now holds the model of another run (`{owner}`)"
    if PurePath(owner.replace("\\", "/")).name != run.run_dir.name:
        return another
    recorded = {"experiment": run.config.get("experiment"), "recipe": run.recipe}
    for key, value in recorded.items():
        if key in metadata and metadata[key] != value:
            return another
    threshold = run.metrics.get("threshold")
    if "threshold" in metadata and threshold is not None:
        if not _same_number(metadata["threshold"], threshold):
            return another
    return None


def recorded_hash_problem(run: Run, path: Path) -> str | None:
    """When the run recorded its model's SHA-256 (metrics.json `model_sha256`, written as
    the model is saved), whether the file still is that model: None when it is, the reason
    when it is not; "" when no usable hash is recorded (identify the model by its metadata)."""
    recorded = run.metrics.get(MODEL_HASH_KEY)
    if not (isinstance(recorded, str) and re.fullmatch(r"[0-9a-f]{64}", recorded)):
        return ""
    try:
        actual = file_sha256(path)
    except OSError as error:
        return f"its model file cannot be read ({shorten(error, 120)})"
    if actual != recorded:
        model_out = run.config.get("model_out")
        return f"`{model_out}` now holds the model of another run (its SHA-256 is not the run's)"
    return None


def model_file_problem(run: Run) -> str | None:
    """Why the run's saved model cannot be used for Grad-CAM, or None when it can."""
    model_out = run.config.get("model_out")
    if not model_out:
        return "config.json names no model file"
    path = locate(str(model_out), run.run_dir)
    if path.is_dir():
        return f"its model file `{model_out}` is a folder, not a .h5 file"
    if not path.is_file():
        return f"its model file `{model_out}` no longer exists"
    from bc_keras import models  # imports TensorFlow: only once a model file is there

    try:
        metadata = models.read_metadata(path)
    except (UserError, OSError, ValueError) as error:  # an untrusted file: never a traceback
        return f"its model file cannot be read ({shorten(error, 120)})"
    if not isinstance(metadata, dict):
        return f"its model file's metadata is a {type(metadata).__name__}, not an object"
    if metadata.get("kind") != "classifier":
        return f"`{model_out}` holds a {metadata.get('kind', 'unknown')} model, not a classifier"
    owned = recorded_hash_problem(run, path)
    if owned == "":
        owned = ownership_problem(run, metadata)
    problem = owned or _metadata_problem(metadata)
    if problem:
        return problem
    if run.predictions is None or run.data_dir is None:
        return "no test predictions to choose images from"
    return None


def gradcam_panel(figures: Figures, run: Run) -> tuple[str | None, str]:
    """A Grad-CAM panel of correct and wrong test images of the run's saved model.

    Returns:
        `(link, caption)`, or `(None, why it was skipped)`.
    """
    panels, reason = explanation_panels(figures, run, others=False)
    return panels[0][1:] if panels else (None, reason)


def explanation_panels(
    figures: Figures, run: Run, others: bool = True
) -> tuple[list[tuple[str, str, str]], str]:
    """The Grad-CAM panel of correct and wrong test images of the run's saved model, then
    (`others`) one panel per method of `figures.explain` (occlusion, LIME) on the same images.

    Returns:
        `([(method title, link, caption), ...], "")`, or `([], why they were skipped)`.
    """
    problem = model_file_problem(run)
    if problem:
        return [], problem
    images = gradcam_images(run)
    if not images:
        return [], f"its test images are no longer under `{run.data}/test/`"
    import keras
    import tensorflow as tf

    from bc_keras import data, models
    from bc_keras.data import decode
    from bc_keras.evaluation import explain, gradcam

    others = [m for m in figures.explain if m != explain.METHOD_GRADCAM] if others else []
    methods = (explain.METHOD_GRADCAM, *others)
    try:
        model, metadata = models.load_model(locate(str(run.config["model_out"]), run.run_dir))
        size = int(metadata["image_size"])
        interpolation = metadata.get("interpolation", decode.DEFAULT_INTERPOLATION)
        shown = np.stack(
            [decode.decode_and_resize(str(p), size, interpolation).numpy() for p, _, _ in images]
        )
        inputs = np.asarray(data.apply_preprocess(shown.astype(np.float32), metadata["preprocess"]))
        maps = {method: explain.explain(model, inputs, method, rgb_images=shown.astype(np.uint8))
                for method in methods}  # fmt: skip
    except (UserError, ValueError, KeyError, OSError, tf.errors.OpError) as error:
        return [], f"Grad-CAM failed ({shorten(error, 160)})"
    except Exception as error:
        # The model file is untrusted input and Keras raises many kinds of error on a bad
        # one (TypeError, AttributeError, ...): one bad run never stops the report.
        return [], f"Grad-CAM failed ({type(error).__name__}: {shorten(error, 140)})"
    finally:
        keras.backend.clear_session()
    threshold = run_threshold(run)
    titles = []
    for _, label, probability in images:
        verdict = "correct" if int(probability >= threshold) == label else "WRONG"
        titles.append(f"{verdict}: {CLASS_NAMES[label]}\np(malignant)={probability:.2f}")
    correct = sum(title.startswith("correct") for title in titles)
    chosen = (
        f"of {correct} correct and {len(titles) - correct} wrong test images, the most "
        "confident of each; p is the run's recorded test probability"
    )
    panels = []
    for method in methods:
        title = explain.METHOD_TITLES[method]
        path = figures.folder(run.name) / f"{method}.png"
        gradcam.plot_gradcam_panel(shown, maps[method], titles, path, map_title=title)
        what = f"{title} (malignant evidence)" if method == explain.METHOD_GRADCAM else (
            f"{title} map (the model's malignant evidence by {EXPLAINED_HOW[method]})")  # fmt: skip
        panels.append((title, figures.link(path), f"{what} {chosen}"))
    return panels, ""

"""Run folders grouped for the study report: models evaluated on the same test images (one test
set) or on the folds of one cross-validation set, with their predictions pooled and aligned."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import PurePath

import numpy as np

from bc_keras.prepare.folds import FOLD_KIND_OFFICIAL
from bc_keras.report.runs import KIND_CLASSIFIER, ModelKey, Run


@dataclass
class Model:
    """A model in one evaluation set: a single run, or its runs on the folds of a
    cross-validation set. `pooled` holds its predictions over those runs, sorted by image."""

    key: ModelKey
    label: str
    runs: list[Run]
    pooled: dict | None = None
    notes: list[str] = field(default_factory=list)
    cross_validation: bool = False

    @property
    def degenerate(self) -> str | None:
        """The flag of the first of its runs that predicts one class for every test image."""
        return next((run.degenerate for run in self.runs if run.degenerate), None)

    def fold_values(self, metric: str) -> list[tuple[int, float]]:
        """`(fold index, value)` of each fold run where the metric is defined."""
        return [
            (run.fold.index, float(run.metrics[metric]))
            for run in self.runs
            if run.fold is not None and run.metrics.get(metric) is not None
        ]


@dataclass
class EvaluationSet:
    """Models scored on the same images: one test set, or the pooled out-of-fold predictions
    of one cross-validation set."""

    title: str
    slug: str
    models: list[Model]
    fold_count: int = 0
    fold_kind: str = ""

    @property
    def cross_validation(self) -> bool:
        return self.fold_count > 0


def _pool(model: Model, overlapping: bool) -> None:
    """Sets `model.pooled`: its runs' predictions concatenated and sorted by image key, with
    each image's patient key ("" where predictions.csv names none)."""
    keys, labels, probabilities, patients = [], [], [], []
    for run in model.runs:
        if run.predictions is None:
            continue
        prefix = (run.fold.index,) if overlapping and run.fold else ()
        keys += [
            (*prefix, name, int(label))
            for name, label in zip(
                run.predictions["filename"], run.predictions["label"], strict=True
            )
        ]
        labels.append(run.predictions["label"])
        probabilities.append(run.predictions["probability"])
        # A patient of overlapping folds is one cluster per fold, as its images are keyed.
        fold = f"fold {prefix[0]}: " if prefix else ""
        patients += [
            f"{fold}{patient}" if patient else "" for patient in run.predictions["patient"]
        ]
    missing = [run.name for run in model.runs if run.predictions is None]
    if missing:
        model.notes.append(f"no usable predictions in {', '.join(missing)}")
    if not keys:
        return
    order = sorted(range(len(keys)), key=keys.__getitem__)
    model.pooled = {
        "keys": [keys[i] for i in order],
        "label": np.concatenate(labels)[order],
        "probability": np.concatenate(probabilities)[order],
        "patient": [patients[i] for i in order],
    }


def _test_key(run: Run) -> tuple:
    pairs = zip(run.predictions["filename"], run.predictions["label"].tolist(), strict=True)
    return tuple(sorted(pairs))


def _single_split_sets(runs: list[Run]) -> list[list[Run]]:
    """Runs grouped by identical test images (filename and label), a run without readable
    predictions joining the group of its data folder."""
    by_images: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.predictions is not None:
            by_images.setdefault(_test_key(run), []).append(run)
    groups = list(by_images.values())
    folder_group = {}
    for group in groups:
        for run in group:
            folder_group.setdefault(run.data_dir, group)
    for run in runs:
        if run.predictions is None:
            group = folder_group.get(run.data_dir)
            if group is None:
                group = folder_group[run.data_dir] = []
                groups.append(group)
            group.append(run)
    return groups


def _sort_runs(runs):
    return sorted(runs, key=lambda run: (run.model_key.order(), run.name))


def _labelled(models: list[Model]) -> list[Model]:
    """Gives models sharing a name within a set the run (or repeat) as a suffix."""
    counts = defaultdict(int)
    for model in models:
        counts[model.label] += 1
    for model in models:
        if counts[model.label] > 1:
            model.label = f"{model.label} [{model.runs[0].name}]"
    return models


def evaluation_sets(runs: list[Run]) -> list[EvaluationSet]:
    """The classifier runs grouped into evaluation sets: single test sets first, then the
    cross-validation sets (the folds of one folder with the same fold count and kind)."""
    classifiers = _sort_runs([run for run in runs if run.kind == KIND_CLASSIFIER])
    folds = defaultdict(list)
    single = []
    for run in classifiers:
        fold = run.fold
        if fold is not None and fold.count >= 2 and run.data_dir is not None:
            folds[(str(run.data_dir.parent), fold.count, fold.kind)].append(run)
        else:
            single.append(run)
    sets = []
    # The test set with the most models first (the study's main split), then by run name.
    groups = sorted(_single_split_sets(single), key=lambda g: (-len(g), _sort_runs(g)[0].name))
    for number, group in enumerate(groups, start=1):
        group = _sort_runs(group)
        models = _labelled([Model(run.model_key, run.model_key.name(), [run]) for run in group])
        for model in models:
            _pool(model, overlapping=False)
        folders = sorted({run.data for run in group})
        counts = group[0].count
        size = f"{counts.get('images', '?')} images"
        if counts.get("patients") is not None:
            size += f", {counts['patients']} patients"
        title = f"Test set {number}: {', '.join(f'`{f}`' for f in folders)} ({size})"
        sets.append(EvaluationSet(title, f"test-{number}", models))
    for number, ((_, count, kind), group) in enumerate(sorted(folds.items()), start=1):
        sets.append(_cross_validation_set(number, count, kind, group))
    return sets


def _cross_validation_set(number: int, count: int, kind: str, group: list[Run]) -> EvaluationSet:
    by_key = defaultdict(list)
    for run in _sort_runs(group):
        by_key[run.model_key].append(run)
    models = []
    for key in sorted(by_key, key=ModelKey.order):
        # Runs of one model on the same fold are repeats (e.g. other seeds): each repeat is
        # its own cross-validated model, so no fold is counted twice.
        repeats: list[list[Run]] = []
        for run in by_key[key]:
            repeat = next(
                (r for r in repeats if run.fold.index not in {x.fold.index for x in r}), None
            )
            if repeat is None:
                repeats.append(repeat := [])
            repeat.append(run)
        for position, repeat in enumerate(repeats, start=1):
            label = key.name() + (f" [repeat {position}]" if len(repeats) > 1 else "")
            runs = sorted(repeat, key=lambda run: run.fold.index)
            model = Model(key, label, runs, cross_validation=True)
            _pool(model, overlapping=kind == FOLD_KIND_OFFICIAL)
            missing = sorted(set(range(1, count + 1)) - {r.fold.index for r in repeat})
            if missing:
                model.notes.append(f"no run of fold(s) {', '.join(map(str, missing))}")
            models.append(model)
    parent = PurePath(group[0].data).parent.as_posix()
    title = f"Cross-validation {number}: {count} {kind} folds of `{parent}`"
    return EvaluationSet(title, f"cv-{number}", models, fold_count=count, fold_kind=kind)


def shared_patients(model_a: Model, model_b: Model) -> list[str] | None:
    """The patient key of each image both models scored (aligned with `shared_predictions`),
    or None when neither's predictions.csv names patients: an image whose patient neither
    names is its own patient."""
    if shared_predictions(model_a, model_b) is None:
        return None
    pairs = zip(model_a.pooled["patient"], model_b.pooled["patient"], strict=True)
    named = [a or b for a, b in pairs]
    if not any(named):
        return None
    keys = model_a.pooled["keys"]
    return [str(patient) if patient else f"image {keys[i]}" for i, patient in enumerate(named)]


def shared_predictions(model_a: Model, model_b: Model):
    """`(labels, probabilities_a, probabilities_b)` when both models scored the same images
    (same keys), else None."""
    if model_a.pooled is None or model_b.pooled is None:
        return None
    if model_a.pooled["keys"] != model_b.pooled["keys"]:
        return None
    return model_a.pooled["label"], model_a.pooled["probability"], model_b.pooled["probability"]

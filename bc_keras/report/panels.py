"""Which models share an overlay figure: at most a few curves per panel, headline models
first, each kind of variant (label fractions, image split, ...) in panels of its own."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bc_keras.prepare.split import SPLIT_IMAGE
from bc_keras.report.sets import Model

# Curves one overlay panel draws at most: more are split over panels, so each stays readable.
MAX_CURVES_PER_PANEL = 6
# The kinds of variant drawn in panels of their own after the headline models, in panel order:
# (name in file names, caption words, test). A model is of the first kind whose test it passes;
# a headline model passes none. A new kind of variant is one row here.
PANEL_KINDS = (
    ("label_fractions", "label-fraction variants", lambda model: model.key.label_fraction < 1),
    ("image_split", "image-split models (patients leak)",
     lambda model: any(run.protocol == SPLIT_IMAGE for run in model.runs)),
    ("cross_fitted", "cross-fitted models", lambda model: model.key.cross_fit > 0),
    ("single_folds", "single folds",
     lambda model: not model.cross_validation and any(run.fold for run in model.runs)),
)  # fmt: skip


@dataclass
class Panel:
    """One overlay figure's models: panel `number` of `count` of their kind ("" headline)."""

    name: str
    kind: str
    number: int
    count: int
    models: list[Model]

    def caption(self, what: str) -> str:
        """E.g. "ROC curves: label-fraction variants (2 of 3)"."""
        words = dict((kind, words) for kind, words, _ in PANEL_KINDS).get(self.kind)
        caption = f"{what}: {words}" if words else what
        return caption + (f" ({self.number} of {self.count})" if self.count > 1 else "")

    def file(self, stem: str) -> str:
        return f"{stem}_{self.name}.png" if self.name else f"{stem}.png"


def panel_kind(model: Model) -> str:
    """The name of the model's kind in PANEL_KINDS, "" for a headline model."""
    return next((kind for kind, _, test in PANEL_KINDS if test(model)), "")


def split_panels(models: list[Model]) -> list[Panel]:
    """The models in panels of at most MAX_CURVES_PER_PANEL, headline models first, then each
    kind of PANEL_KINDS in panels of its own, in the models' order."""
    groups: dict[str, list[Model]] = {"": [], **{kind: [] for kind, _, _ in PANEL_KINDS}}
    for model in models:
        groups[panel_kind(model)].append(model)
    panels = []
    for kind, members in groups.items():
        count = math.ceil(len(members) / MAX_CURVES_PER_PANEL)
        # Even panels (13 models: 5, 4, 4), not a full panel and a lonely curve.
        sizes = [len(members) // count + (i < len(members) % count) for i in range(count)]
        start = 0
        for number, size in enumerate(sizes, start=1):
            name = "_".join(part for part in (kind, str(number) if number > 1 else "") if part)
            panels.append(Panel(name, kind, number, count, members[start : start + size]))
            start += size
    return panels


def panel_groups(models: list[Model]) -> list[tuple[str, list[Model]]]:
    """The models split into overlay panels of at most MAX_CURVES_PER_PANEL (6): the headline
    models first, then each kind of PANEL_KINDS (label fractions, image split, ...) in panels
    of its own, in the models' order. Returns `(panel name, models)`; the name is "" for the
    first headline panel, else e.g. "2", "label_fractions", "label_fractions_2"."""
    return [(panel.name, panel.models) for panel in split_panels(models)]

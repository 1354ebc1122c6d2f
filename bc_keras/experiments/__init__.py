"""The experiments: one module per experiment (`cnn`, `transfer`, `simclr`) on the shared
classifier skeleton of `common`, and `EXPERIMENTS`, the registry that maps each config class to
its experiment; `run(config)` runs the experiment a config describes.

Importing this package imports no TensorFlow: the registry names each runner by module, and the
module is imported when the experiment runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from bc_keras import config as configs
from bc_keras.backbones import get_backbone
from bc_keras.errors import ConfigError


@dataclass(frozen=True)
class Experiment:
    """One experiment: the `experiment` name config.json records, how figures title it and
    tables name it (`{backbone}` and `{backbone_title}` are filled for transfer), and its
    runner `bc_keras.experiments.<module>.<function>(config)`."""

    name: str
    title: str
    label: str
    module: str
    function: str

    def runner(self):
        return getattr(importlib.import_module(f"bc_keras.experiments.{self.module}"), self.function)

    def _fill(self, text: str, backbone: str | None) -> str:
        if "{" not in text:
            return text
        title = get_backbone(backbone).title if backbone else "?"
        return text.format(backbone=backbone or "?", backbone_title=title)

    def title_for(self, backbone: str | None = None) -> str:
        """The figure title of a run (of `backbone`, for transfer)."""
        return self._fill(self.title, backbone)

    def label_for(self, backbone: str | None = None) -> str:
        """The short model name of a run in the comparison table."""
        return self._fill(self.label, backbone)


# config class: figure title, table label, module, function (the name is the config's).
_RECORDS = {
    configs.CNNConfig: ("Baseline CNN", "baseline CNN", "cnn", "run"),
    configs.TransferConfig: ("Transfer {backbone_title}", "transfer {backbone}", "transfer", "run"),
    configs.PretrainConfig: ("SimCLR pretraining", "SimCLR encoder", "simclr", "pretrain"),
    configs.LinearConfig: (
        "SimCLR linear evaluation", "linear ResNet-18", "simclr", "train_classifier",
    ),
    configs.FinetuneConfig: ("SimCLR fine-tuned", "finetune ResNet-18", "simclr", "train_classifier"),
}  # fmt: skip
EXPERIMENTS: dict[type, Experiment] = {
    config_class: Experiment(config_class.EXPERIMENT, *record)
    for config_class, record in _RECORDS.items()
}


def experiment_of(config) -> Experiment:
    """The registry record of a config object, or of an experiment name (config.json's)."""
    if isinstance(config, str):
        for experiment in EXPERIMENTS.values():
            if experiment.name == config:
                return experiment
        raise ConfigError(f"unknown experiment {config!r}; known: {experiment_names()}")
    if type(config) not in EXPERIMENTS:
        raise ConfigError(
            f"no experiment for {type(config).__name__}; pass one of "
            f"{', '.join(c.__name__ for c in EXPERIMENTS)}"
        )
    return EXPERIMENTS[type(config)]


def experiment_names() -> str:
    return ", ".join(experiment.name for experiment in EXPERIMENTS.values())


def run(config) -> dict:
    """Runs the experiment of `config` (a `bc_keras.config` dataclass); returns its metrics."""
    return experiment_of(config).runner()(config)

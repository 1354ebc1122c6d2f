"""The experiments: one module per experiment (`cnn`, `transfer`, `simclr`) on the shared
classifier skeleton of `common`, and `EXPERIMENTS`, the registry that maps each config class to
its experiment; `run(config)` runs the experiment a config describes.

Importing this package imports no TensorFlow: the registry names each runner by module, and the
module is imported when the experiment runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass
class RunResult:
    """What a run made: its config (resolved), run folder, saved model and metrics (as in
    metrics.json; empty on a worker of a multi-worker run, which writes nothing)."""

    config: object
    run_dir: Path
    model_path: Path
    metrics: dict
    _model: object = field(default=None, repr=False)

    @property
    def model(self):
        """The saved model, loaded on first use: a `Predictor` for a classifier (its
        `keras_model` is the Keras model), the Keras encoder for SimCLR pretraining."""
        if self._model is None:
            from bc_keras import models
            from bc_keras.evaluation.predictor import KIND_CLASSIFIER, Predictor

            model, metadata = models.load_model(self.model_path)
            is_classifier = metadata.get("kind") == KIND_CLASSIFIER
            self._model = Predictor(model, metadata, self.model_path) if is_classifier else model
        return self._model


def run(config) -> RunResult:
    """Runs the experiment of `config` (a `bc_keras.config` dataclass: CNNConfig,
    TransferConfig, PretrainConfig, LinearConfig or FinetuneConfig); returns its `RunResult`.
    Also `bc_keras.train(config)`."""
    metrics = experiment_of(config).runner()(config)
    return RunResult(config, Path(config.run_dir), Path(config.model_out), metrics)

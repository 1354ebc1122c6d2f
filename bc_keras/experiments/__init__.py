"""One module per experiment (`cnn`, `transfer`, `simclr`) on the shared run skeleton of
`common`; `run(config)` runs the experiment a config describes."""

from __future__ import annotations


def run(config) -> dict:
    """Runs the experiment of `config` (a `bc_keras.config` dataclass); returns its metrics."""
    from bc_keras import config as configs

    if isinstance(config, configs.CNNConfig):
        from bc_keras.experiments import cnn

        return cnn.run(config)
    if isinstance(config, configs.TransferConfig):
        from bc_keras.experiments import transfer

        return transfer.run(config)
    from bc_keras.experiments import simclr

    if isinstance(config, configs.PretrainConfig):
        return simclr.pretrain(config)
    if isinstance(config, configs.LinearConfig):
        return simclr.train_classifier(config)
    raise ValueError(f"No experiment for {type(config).__name__}. Received: config={config!r}")

"""Distribution strategies by name, which worker is the chief, and multi-worker `fit`.

Keras 3's `fit` does not run under `MultiWorkerMirroredStrategy` as released
(keras-team/keras#20585): its eager pre-build reduces the first batch across workers, and its
per-step "mean" reduction of scalar metrics asks for axis 0. `fit_scope` works around both,
for multi-worker runs only; single-machine strategies are untouched.
"""

from __future__ import annotations

import contextlib
import json
import os

import tensorflow as tf

from bc_keras.config import STRATEGIES, STRATEGY_DEFAULT, STRATEGY_MIRRORED, STRATEGY_MULTIWORKER
from bc_keras.errors import ConfigError


def get_strategy(name: str = STRATEGY_DEFAULT) -> tf.distribute.Strategy:
    """A `tf.distribute` strategy by name: "default" (one device), "mirrored" (all local
    GPUs) or "multiworker" (MultiWorkerMirroredStrategy over the cluster in $TF_CONFIG). Create
    it before anything else runs on TensorFlow: a multi-worker strategy must come first."""
    if name == STRATEGY_DEFAULT:
        return tf.distribute.get_strategy()
    if name == STRATEGY_MIRRORED:
        return tf.distribute.MirroredStrategy()
    if name == STRATEGY_MULTIWORKER:
        if "TF_CONFIG" not in os.environ:
            raise ConfigError(
                "--strategy multiworker reads the cluster from $TF_CONFIG, which is not set; set "
                'it on every worker, e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                '"task": {"type": "worker", "index": 0}}'
            )
        try:
            json.loads(os.environ["TF_CONFIG"])
        except ValueError as error:
            raise ConfigError(f"$TF_CONFIG is not valid JSON ({error}); fix it") from error
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy must be one of {STRATEGIES}. Received: strategy={name!r}")


def is_multi_worker(strategy) -> bool:
    """Whether `strategy` spans several worker processes."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return bool(resolver is not None and resolver.cluster_spec().as_dict())


def is_chief(strategy) -> bool:
    """Whether this process writes the run folder and the model: always on one machine; in a
    cluster, the "chief" task, or worker 0 when there is no chief."""
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    jobs = resolver.cluster_spec().jobs
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in jobs


def _fix_multi_worker_reduce() -> None:
    """Makes Keras reduce per-replica step outputs (scalar losses and metrics) across workers
    with axis=None instead of axis=0; the single-machine paths are left as they are."""
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer.reduce_per_replica, "bc_keras_multi_worker", False):
        return
    original = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction="auto"):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.bc_keras_multi_worker = True
    trainer.reduce_per_replica = reduce_per_replica


@contextlib.contextmanager
def fit_scope(model, strategy):
    """Where `model.fit` runs. Under a multi-worker strategy, the model's own strategy is
    cleared so Keras takes it from this scope (skipping the broken eager pre-build), and the
    step reduction is fixed; afterwards the model predicts on this worker alone."""
    if not is_multi_worker(strategy):
        yield
        return
    _fix_multi_worker_reduce()
    model._distribute_strategy = None
    with strategy.scope():
        yield

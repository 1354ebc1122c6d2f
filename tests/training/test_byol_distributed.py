"""BYOL under MirroredStrategy over two logical CPUs: the loss, the gradients, the target's EMA
update and the BatchNorm statistics of a global batch are the single-device ones.

As in test_simclr_distributed.py, TensorFlow splits a CPU into logical devices only before it
initialises them, so the cases run in a fresh interpreter (`python <this file> <output.npz>`)
and the tests check what it saved.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# The child process runs this file as a script, with its folder first on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_simclr_distributed import REPLICAS, TOLERANCE, _start_two_replica_strategy  # noqa: E402

TRAINER_SIZE = 16


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, np.ndarray]:
    """Both cases, computed once in one new Python process."""
    output = tmp_path_factory.mktemp("byol_distributed") / "byol.npz"
    root = Path(__file__).resolve().parents[2]
    # A script's sys.path starts with its own folder: the child finds bc_keras through this.
    paths = [str(root), os.environ.get("PYTHONPATH", "")]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    completed = subprocess.run(
        [sys.executable, __file__, str(output)], capture_output=True, text=True, timeout=180,
        cwd=root, env=environment,
    )  # fmt: skip
    if completed.returncode != 0:
        pytest.fail(f"The BYOL cases failed:\n{completed.stderr[-4000:]}")
    with np.load(output) as saved:
        return dict(saved)


def test_replica_shares_add_up_to_the_single_device_loss_and_gradients(results):
    single = float(results["single_loss"])
    assert float(results["replica_losses"].sum()) == pytest.approx(single, abs=1e-5)
    np.testing.assert_allclose(results["reported_losses"], [single] * REPLICAS, **TOLERANCE)
    np.testing.assert_allclose(
        results["replica_weight_gradients"].sum(axis=0), results["single_weight_gradient"],
        **TOLERANCE,
    )  # fmt: skip
    # The mean of each replica's own loss (4 and 2 samples) would not have been the global one.
    assert abs(float(results["local_loss"]) - single) > 0.05


def test_a_mirrored_step_equals_the_single_device_step_target_included(results):
    np.testing.assert_allclose(results["mirrored_loss"], results["single_loss_step"], **TOLERANCE)
    count = int(results["count"])
    for index in range(count):
        np.testing.assert_allclose(
            results[f"mirrored_delta_{index}"], results[f"single_delta_{index}"], **TOLERANCE
        )
    assert max(float(np.abs(results[f"single_delta_{i}"]).max()) for i in range(count)) > 1e-3
    # The EMA moved the target once per variable, as on one device, and counted one step.
    np.testing.assert_allclose(results["mirrored_target"], results["single_target"], **TOLERANCE)
    assert float(np.abs(results["single_target"] - results["initial_target"]).max()) > 1e-4
    assert results["mirrored_ema_step"] == results["single_ema_step"] == 1
    # Synchronized BatchNorm: online and target statistics as on one device.
    np.testing.assert_allclose(results["mirrored_moving"], results["single_moving"], **TOLERANCE)
    # With each replica's own BatchNorm statistics the step would have differed.
    assert abs(float(results["local_batch_norm_loss"]) - float(results["single_loss_step"])) > 1e-3


# The rest runs only in the child process, after TensorFlow has been given two logical CPUs.


def _loss_case(strategy) -> dict[str, np.ndarray]:
    """`cross_replica_byol_loss` of fixed inputs through a shared linear map, the global batch
    of 6 split unevenly (4 + 2)."""
    import tensorflow as tf

    from bc_keras.models.byol import byol_loss, cross_replica_byol_loss

    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(6, 5)).astype(np.float32) for _ in range(4)]
    weight_value = rng.normal(size=(5, 4)).astype(np.float32)

    def loss_of(loss_function, weight, values):
        with tf.GradientTape() as tape:
            outputs = loss_function(*(tf.matmul(x, weight) for x in values))
        return outputs, tape.gradient(outputs[0], weight)

    weight = tf.Variable(weight_value)
    (single_loss,), single_gradient = loss_of(lambda *z: (byol_loss(*z),), weight, inputs)
    with strategy.scope():
        mirrored_weight = tf.Variable(weight_value)
    shares = [
        strategy.experimental_distribute_values_from_function(
            lambda context, x=x: tf.constant(
                x[:4] if context.replica_id_in_sync_group == 0 else x[4:]
            )  # fmt: skip
        )
        for x in inputs
    ]

    @tf.function
    def mirrored(*values):
        return strategy.run(
            lambda *v: loss_of(cross_replica_byol_loss, mirrored_weight, v), args=values
        )

    (replica_losses, losses), gradients = mirrored(*shares)
    local = strategy.experimental_local_results
    projected = [x @ weight_value for x in inputs]
    local_loss = np.mean(
        [float(byol_loss(*(z[rows] for z in projected))) for rows in (slice(0, 4), slice(4, 6))]
    )
    return {
        "single_loss": single_loss.numpy(),
        "single_weight_gradient": single_gradient.numpy(),
        "replica_losses": np.array([v.numpy() for v in local(replica_losses)]),
        "reported_losses": np.array([v.numpy() for v in local(losses)]),
        "replica_weight_gradients": np.stack([v.numpy() for v in local(gradients)]),
        "local_loss": np.array(local_loss),
    }


def _small_encoder(synchronized: bool):
    import keras

    inputs = keras.Input((TRAINER_SIZE, TRAINER_SIZE, 3))
    x = inputs
    for filters, stride in ((8, 1), (16, 2)):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(synchronized=synchronized)(x)
        x = keras.layers.ReLU()(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="small_encoder")


def _trainer_case(strategy) -> dict[str, np.ndarray]:
    """One `fit` step of a BYOL trainer on a global batch of 4 pairs, on one device and on two
    replicas, from the same weights, with SGD at learning rate 1 (the weight change is the
    gradient summed over replicas)."""
    import keras
    import tensorflow as tf

    from bc_keras.models.byol import build_byol_trainer

    def build(synchronized: bool = True):
        keras.utils.set_random_seed(0)
        trainer = build_byol_trainer(_small_encoder(synchronized), total_steps=4, ema_decay=0.5,
                                     hidden_dim=32, output_dim=16,
                                     synchronized_batch_norm=synchronized)  # fmt: skip
        trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
        trainer.optimizer.build(trainer.online_variables())
        return trainer

    rng = np.random.default_rng(1)
    views_1 = rng.random((4, TRAINER_SIZE, TRAINER_SIZE, 3)).astype(np.float32)
    views_2 = np.clip(views_1 + 0.1 * rng.normal(size=views_1.shape), 0, 1).astype(np.float32)
    batch = tf.data.Dataset.from_tensors((views_1, views_2))

    def targets(trainer):
        weights = trainer.target_encoder.trainable_weights + trainer.target_projector.weights
        return np.concatenate([w.numpy().ravel() for w in weights])

    def step(trainer):
        before = [v.numpy() for v in trainer.online_variables()]
        loss = trainer.fit(batch, epochs=1, verbose=0).history["loss"][0]
        deltas = [b - v.numpy() for b, v in zip(before, trainer.online_variables(), strict=True)]
        moving = (
            trainer.encoder.non_trainable_weights + trainer.target_encoder.non_trainable_weights
        )
        moving = np.concatenate([v.numpy().ravel() for v in moving])
        return deltas, loss, targets(trainer), moving, int(trainer.ema_step.numpy())

    single = build()
    initial, initial_target = single.get_weights(), targets(single)
    single_deltas, single_loss, single_target, single_moving, single_step = step(single)
    with strategy.scope():
        mirrored, local_batch_norm = build(), build(synchronized=False)
    mirrored.set_weights(initial)
    local_batch_norm.set_weights(initial)
    mirrored_deltas, mirrored_loss, mirrored_target, mirrored_moving, mirrored_step = step(mirrored)
    results = {
        "count": np.array(len(single_deltas)),
        "single_loss_step": np.array(single_loss),
        "mirrored_loss": np.array(mirrored_loss),
        "initial_target": initial_target,
        "single_target": single_target,
        "mirrored_target": mirrored_target,
        "single_moving": single_moving,
        "mirrored_moving": mirrored_moving,
        "single_ema_step": np.array(single_step),
        "mirrored_ema_step": np.array(mirrored_step),
        "local_batch_norm_loss": np.array(step(local_batch_norm)[1]),
    }
    for index, (expected, actual) in enumerate(zip(single_deltas, mirrored_deltas, strict=True)):
        results[f"single_delta_{index}"] = expected
        results[f"mirrored_delta_{index}"] = actual
    return results


def main(output: str) -> None:
    strategy = _start_two_replica_strategy()
    if strategy.num_replicas_in_sync != REPLICAS:
        raise ValueError(f"Expected {REPLICAS} replicas. Received: {strategy.num_replicas_in_sync}")
    np.savez(output, **_loss_case(strategy), **_trainer_case(strategy))


if __name__ == "__main__":
    main(*sys.argv[1:])

"""SimCLR under MirroredStrategy over two logical CPUs: the loss and gradients of a global batch
are the single-device ones, because every replica's negatives are the whole global batch.

TensorFlow splits a CPU into logical devices only before it initialises its devices, which the
pytest process has long done; so each test runs this file as a script in a fresh interpreter
(`python tests/test_simclr_distributed.py <case> <output.npz>`) and checks what it saved.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPLICAS = 2
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def run_case(case: str, tmp_path: Path) -> dict[str, np.ndarray]:
    """Runs `case` of this file in a new Python process and returns the arrays it saved."""
    output = tmp_path / f"{case}.npz"
    root = Path(__file__).resolve().parents[2]
    # A script's sys.path starts with its own folder: the child finds bc_keras through this.
    paths = [str(root), os.environ.get("PYTHONPATH", "")]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    completed = subprocess.run(
        [sys.executable, __file__, case, str(output)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env=environment,
    )
    if completed.returncode != 0:
        pytest.fail(f"The {case} case failed:\n{completed.stderr[-4000:]}")
    with np.load(output) as saved:
        return dict(saved)


def test_gathered_loss_and_gradients_equal_single_device(tmp_path):
    results = run_case("loss", tmp_path)
    # Each replica's share adds up to the global mean loss, which every replica also reports.
    single_loss = float(results["single_loss"])
    assert float(results["replica_losses"].sum()) == pytest.approx(single_loss, abs=1e-5)
    np.testing.assert_allclose(results["reported_losses"], [single_loss] * REPLICAS, **TOLERANCE)
    np.testing.assert_allclose(
        results["reported_accuracies"], [results["single_accuracy"]] * REPLICAS, **TOLERANCE
    )
    # Summed over replicas, as the optimizer sums them, the weight gradients are the
    # single-device ones; each replica's input gradients are its rows of the single-device ones.
    np.testing.assert_allclose(
        results["replica_weight_gradients"].sum(axis=0),
        results["single_weight_gradient"],
        **TOLERANCE,
    )
    for view in ("a", "b"):
        np.testing.assert_allclose(
            results[f"replica_input_gradients_{view}"],
            results[f"single_input_gradient_{view}"],
            **TOLERANCE,
        )
    # Per-replica NT-Xent, each replica's batch its only negatives, would have differed.
    assert abs(float(results["local_loss"]) - single_loss) > 0.05


def check_trainer_step(results: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(results["mirrored_metrics"], results["single_metrics"], **TOLERANCE)
    # Plain SGD with learning rate 1: each variable moved by minus its (summed) gradient.
    count = int(results["count"])
    single = [results[f"single_gradient_{index}"] for index in range(count)]
    mirrored = [results[f"mirrored_gradient_{index}"] for index in range(count)]
    for expected, actual in zip(single, mirrored, strict=True):
        np.testing.assert_allclose(actual, expected, **TOLERANCE)
    assert max(float(np.abs(gradient).max()) for gradient in single) > 1e-3
    # Synchronized BatchNorm moved its moving statistics as one device does.
    np.testing.assert_allclose(results["mirrored_moving"], results["single_moving"], **TOLERANCE)
    # Per-replica NT-Xent would have reported another loss.
    assert abs(float(results["local_loss"]) - float(results["single_metrics"][0])) > 0.05


def test_trainer_step_with_small_encoder_equals_single_device_step(tmp_path):
    # The compiled step, float32, a two-convolution encoder with synchronized BatchNorm.
    results = run_case("trainer_small", tmp_path)
    check_trainer_step(results)
    # With each replica's own BatchNorm statistics the loss is not the single-device one.
    local_loss = float(results["local_batch_norm_metrics"][0])
    assert abs(local_loss - float(results["single_metrics"][0])) > 1e-3


@pytest.mark.slow
def test_trainer_step_with_resnet18_equals_single_device_step(tmp_path):
    # ResNet-18 at 32 px with synchronized BatchNorm, float64 and eager (see _trainer_case).
    check_trainer_step(run_case("trainer_resnet18", tmp_path))


# The rest runs only in the child process, after TensorFlow has been given two logical CPUs.


def _start_two_replica_strategy():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS
    )
    return tf.distribute.MirroredStrategy([f"/cpu:{index}" for index in range(REPLICAS)])


def _loss_case(strategy) -> dict[str, np.ndarray]:
    """`cross_replica_nt_xent` on fixed inputs through a shared linear projection, the global
    batch of 6 split unevenly (4 + 2) to exercise the replica offsets."""
    import tensorflow as tf

    from bc_keras.models.simclr import contrastive_accuracy, cross_replica_nt_xent, nt_xent_loss

    rng = np.random.default_rng(0)
    inputs_a = rng.normal(size=(6, 5)).astype(np.float32)
    inputs_b = (inputs_a + 0.5 * rng.normal(size=(6, 5))).astype(np.float32)
    weight_value = rng.normal(size=(5, 4)).astype(np.float32)
    split = 4

    def gradients(loss_function, x_a, x_b, weight):
        with tf.GradientTape() as tape:
            tape.watch([x_a, x_b])
            outputs = loss_function(tf.matmul(x_a, weight), tf.matmul(x_b, weight))
        return outputs, tape.gradient(outputs[0], [weight, x_a, x_b])

    weight = tf.Variable(weight_value)
    single_outputs, single_gradients = gradients(
        lambda z_a, z_b: (nt_xent_loss(z_a, z_b, 0.5), contrastive_accuracy(z_a, z_b)),
        tf.constant(inputs_a),
        tf.constant(inputs_b),
        weight,
    )
    with strategy.scope():
        mirrored_weight = tf.Variable(weight_value)

    def replica_share(context, values):
        first = context.replica_id_in_sync_group == 0
        return tf.constant(values[:split] if first else values[split:])

    shares_a = strategy.experimental_distribute_values_from_function(
        lambda context: replica_share(context, inputs_a)
    )
    shares_b = strategy.experimental_distribute_values_from_function(
        lambda context: replica_share(context, inputs_b)
    )

    @tf.function
    def mirrored_step(x_a, x_b):
        def replica_step(x_a, x_b):
            return gradients(
                lambda z_a, z_b: cross_replica_nt_xent(z_a, z_b, 0.5),
                x_a,
                x_b,
                mirrored_weight,
            )

        return strategy.run(replica_step, args=(x_a, x_b))

    (replica_losses, losses, accuracies), replica_gradients = mirrored_step(shares_a, shares_b)
    local = strategy.experimental_local_results
    z_a, z_b = inputs_a @ weight_value, inputs_b @ weight_value
    # What the old per-replica step reported: the mean of each replica's own NT-Xent.
    local_loss = np.mean(
        [float(nt_xent_loss(z_a[rows], z_b[rows], 0.5)) for rows in (slice(0, 4), slice(4, 6))]
    )
    return {
        "single_loss": single_outputs[0].numpy(),
        "single_accuracy": single_outputs[1].numpy(),
        "single_weight_gradient": single_gradients[0].numpy(),
        "single_input_gradient_a": single_gradients[1].numpy(),
        "single_input_gradient_b": single_gradients[2].numpy(),
        "replica_losses": np.array([value.numpy() for value in local(replica_losses)]),
        "reported_losses": np.array([value.numpy() for value in local(losses)]),
        "reported_accuracies": np.array([value.numpy() for value in local(accuracies)]),
        "replica_weight_gradients": np.stack(
            [value.numpy() for value in local(replica_gradients[0])]
        ),
        "replica_input_gradients_a": np.concatenate(
            [value.numpy() for value in local(replica_gradients[1])]
        ),
        "replica_input_gradients_b": np.concatenate(
            [value.numpy() for value in local(replica_gradients[2])]
        ),
        "local_loss": np.array(local_loss),
    }


def _small_encoder(synchronized_batch_norm: bool):
    """Two convolutions with BatchNorm, pooled: 16 px images to 16-d embeddings."""
    import keras

    inputs = keras.Input((16, 16, 3))
    x = inputs
    for filters, stride in ((8, 1), (16, 2)):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(synchronized=synchronized_batch_norm)(x)
        x = keras.layers.ReLU()(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="small_encoder")


def _trainer_case(strategy, encoder_name: str) -> dict[str, np.ndarray]:
    """One `fit` step of a trainer on a global batch of 4 image pairs, on one device and on two
    replicas, from the same weights, with SGD at learning rate 1 so that the weight change is
    the gradient (summed over replicas by the optimizer)."""
    import keras
    import tensorflow as tf

    from bc_keras.models.resnet import build_resnet18
    from bc_keras.models.simclr import SimCLRTrainer, build_projection_head, nt_xent_loss

    resnet = encoder_name == "resnet18"
    image_size = 32 if resnet else 16
    if resnet:
        # In float32 the last stages, which normalise 4 values (1x1 maps, 2 images per
        # replica), lose most digits to E[x^2] - E[x]^2, and rounding alone moves gradients by
        # 1e-4; in float64 replicas and one device agree to 1e-7. Eager, to skip the tracing
        # of ResNet-18; the small-encoder case checks the compiled step.
        keras.config.set_floatx("float64")

    def build_trainer(synchronized_batch_norm: bool = True):
        keras.utils.set_random_seed(0)
        if resnet:
            encoder = build_resnet18(image_size, synchronized_batch_norm=synchronized_batch_norm)
        else:
            encoder = _small_encoder(synchronized_batch_norm)
        head = build_projection_head(int(encoder.output.shape[-1]), 32, 16)
        trainer = SimCLRTrainer(encoder, head, temperature=0.5)
        trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), run_eagerly=resnet)
        return trainer

    rng = np.random.default_rng(1)
    views_a = rng.random((4, image_size, image_size, 3)).astype(keras.config.floatx())
    noise = 0.1 * rng.normal(size=views_a.shape)
    views_b = np.clip(views_a + noise, 0, 1).astype(views_a.dtype)
    batch = tf.data.Dataset.from_tensors((views_a, views_b))

    def step(trainer):
        before = [variable.numpy() for variable in trainer.contrastive_variables()]
        history = trainer.fit(batch, epochs=1, verbose=0).history
        after = [variable.numpy() for variable in trainer.contrastive_variables()]
        moving = [v.numpy().ravel() for v in trainer.encoder.non_trainable_variables]
        metrics = np.array([history["loss"][0], history["contrastive_accuracy"][0]])
        return [b - a for b, a in zip(before, after, strict=True)], np.concatenate(moving), metrics

    single = build_trainer()
    initial = single.get_weights()
    z_a, z_b = (z.numpy() for z in single((views_a, views_b), training=True))
    single.set_weights(initial)
    single_gradients, single_moving, single_metrics = step(single)
    with strategy.scope():
        mirrored = build_trainer()
        local_batch_norm = None if resnet else build_trainer(synchronized_batch_norm=False)
    mirrored.set_weights(initial)
    mirrored_gradients, mirrored_moving, mirrored_metrics = step(mirrored)
    local_loss = np.mean([float(nt_xent_loss(z_a[r], z_b[r])) for r in (slice(0, 2), slice(2, 4))])
    results = {
        "count": np.array(len(single_gradients)),
        "single_metrics": single_metrics,
        "mirrored_metrics": mirrored_metrics,
        "single_moving": single_moving,
        "mirrored_moving": mirrored_moving,
        "local_loss": np.array(local_loss),
    }
    if local_batch_norm is not None:
        local_batch_norm.set_weights(initial)
        results["local_batch_norm_metrics"] = step(local_batch_norm)[2]
    for index, (expected, actual) in enumerate(
        zip(single_gradients, mirrored_gradients, strict=True)
    ):
        results[f"single_gradient_{index}"] = expected
        results[f"mirrored_gradient_{index}"] = actual
    return results


def main(case: str, output: str) -> None:
    cases = {
        "loss": _loss_case,
        "trainer_small": lambda strategy: _trainer_case(strategy, "small"),
        "trainer_resnet18": lambda strategy: _trainer_case(strategy, "resnet18"),
    }
    if case not in cases:
        raise ValueError(f"case must be one of {sorted(cases)}. Received: case={case!r}")
    strategy = _start_two_replica_strategy()
    if strategy.num_replicas_in_sync != REPLICAS:
        raise ValueError(f"Expected {REPLICAS} replicas. Received: {strategy.num_replicas_in_sync}")
    np.savez(output, **cases[case](strategy))


if __name__ == "__main__":
    main(*sys.argv[1:])

"""FGSM and PGD (issue 22 item 1) against a hand computation on a linear model, through each
preprocessing's own input scale, on a saturated model, inside the epsilon ball and
deterministic given the seed."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from bc_keras.models.classifier import OUTPUT_NAME
from bc_keras.robustness import adversarial

SIZE = 8
WEIGHTS = np.array([0.5, -0.3, -0.2])  # read as R, G, B by a rescale model


def linear_model(weights=WEIGHTS, bias: float = 0.1) -> keras.Model:
    """probability = sigmoid(weights . mean input colour + bias)."""
    inputs = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    head = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT_NAME)
    model = keras.Model(inputs, head(pooled))
    head.set_weights([np.asarray(weights, "float32")[:, None], np.array([bias], "float32")])
    return model


@pytest.fixture(scope="module")
def images():
    """Four images away from 0 and 255 (so a step of 8 grey levels is never clipped)."""
    return np.random.default_rng(0).integers(20, 236, (4, SIZE, SIZE, 3)).astype(np.uint8)


LABELS = np.array([0, 1, 1, 0])


def by_hand(images, labels, epsilon, input_weights):
    """sign(d BCE / d pixel) of the linear model: (1 - 2 y) * sign of the weight the pixel's
    channel meets, whatever the positive scale of the preprocessing."""
    direction = (1 - 2 * labels)[:, None, None, None] * np.sign(input_weights)
    return np.clip(images + epsilon * direction, 0, 255).astype(np.float32)


@pytest.mark.parametrize(
    ("preprocess", "input_weights"),
    [("rescale", WEIGHTS), ("vgg16", WEIGHTS[::-1]), ("mobilenet", WEIGHTS)],
)
def test_fgsm_is_the_sign_of_the_loss_gradient_on_the_models_own_scale(images, preprocess,
                                                                       input_weights):  # fmt: skip
    # caffe (vgg16) feeds B, G, R: pixel channel c meets the weight of input channel 2 - c.
    model = linear_model()
    gradient = adversarial.loss_gradient(model, preprocess)
    for epsilon in (0.5, 4.0):
        got = adversarial.fgsm(model, images, LABELS, epsilon, preprocess, batch_size=3,
                               gradient=gradient)  # fmt: skip
        np.testing.assert_array_equal(got, by_hand(images, LABELS, epsilon, input_weights))
    if preprocess == "rescale":  # the attack lowers the probability of the true class
        clean = np.asarray(model(images.astype("float32") / 255)).ravel()
        after = np.asarray(model(got / 255)).ravel()
        assert np.all(np.where(LABELS == 1, after < clean, after > clean))


def test_a_saturated_model_is_still_attacked_through_its_logit(images):
    model = linear_model(bias=60.0)
    assert np.all(np.asarray(model(images.astype("float32") / 255)) == 1.0)
    got = adversarial.fgsm(model, images, LABELS, 2.0, "rescale")
    np.testing.assert_array_equal(got, by_hand(images, LABELS, 2.0, WEIGHTS))
    # Test-time augmentation's 8 views of a colour mean are one view: the same attack.
    np.testing.assert_array_equal(adversarial.fgsm(model, images, LABELS, 2.0, "rescale", tta=True),
                                  got)  # fmt: skip


def test_pgd_stays_in_the_ball_is_seeded_and_reaches_fgsms_corner_on_a_linear_model(images):
    model = linear_model()
    gradient = adversarial.loss_gradient(model, "rescale")
    # Five steps of half epsilon from any start in the ball end at the corner FGSM jumps to.
    np.testing.assert_array_equal(
        adversarial.pgd(model, images, LABELS, 4.0, "rescale", seed=3, gradient=gradient),
        adversarial.fgsm(model, images, LABELS, 4.0, "rescale", gradient=gradient),
    )
    one_step = dict(seed=3, steps=1, step_share=0.25, gradient=gradient)
    first = adversarial.pgd(model, images, LABELS, 4.0, "rescale", **one_step)
    np.testing.assert_array_equal(first, adversarial.pgd(model, images, LABELS, 4.0, "rescale",
                                                         **one_step))  # fmt: skip
    assert not np.array_equal(first, adversarial.pgd(model, images, LABELS, 4.0, "rescale",
                                                     **{**one_step, "seed": 4}))  # fmt: skip
    # Image 2 alone, keyed by its position, is attacked as inside the batch.
    alone = adversarial.pgd(model, images[2:3], LABELS[2:3], 4.0, "rescale", indices=[2],
                            **one_step)  # fmt: skip
    np.testing.assert_array_equal(alone[0], first[2])
    assert np.max(np.abs(first - images)) <= 4.0 + 1e-4 and first.min() >= 0 and first.max() <= 255
    edge = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    attacked = adversarial.pgd(model, edge, LABELS[:1], 8.0, "rescale", gradient=gradient)
    assert attacked.min() >= 0.0 and attacked.max() <= 8.0


def test_epsilon_on_each_input_scale_and_bad_epsilons():
    np.testing.assert_allclose(adversarial.input_epsilon("rescale"), [1 / 255] * 3, rtol=1e-6)
    np.testing.assert_allclose(adversarial.input_epsilon("vgg16"), [1.0] * 3, rtol=1e-6)
    np.testing.assert_allclose(adversarial.input_epsilon("mobilenet"), [2 / 255] * 3, rtol=1e-5)
    with pytest.raises(ValueError, match="non-negative number of grey levels"):
        adversarial.fgsm(linear_model(), np.zeros((1, SIZE, SIZE, 3)), [0], -1.0, "rescale")

"""The scope every model is built and compiled in: a distribution strategy and a precision
policy (the builders keep the sigmoid output in float32)."""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf


@contextlib.contextmanager
def model_scope(strategy: tf.distribute.Strategy | None = None, mixed_precision: bool = False):
    """The one place models are built and compiled: a strategy scope and a precision policy.

    Keras' dtype policy is process-wide, so the previous policy is restored on exit. Builders
    keep the sigmoid output in float32 so that mixed precision never rounds probabilities.
    """
    previous = keras.config.dtype_policy()
    if mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        with (strategy or tf.distribute.get_strategy()).scope():
            yield
    finally:
        keras.config.set_dtype_policy(previous)

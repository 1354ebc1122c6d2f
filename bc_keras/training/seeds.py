"""Seeds: one call seeds Python, NumPy and TensorFlow for a run."""

from __future__ import annotations


def set_seed(seed: int) -> None:
    """Seeds Python, NumPy and TensorFlow (op determinism is left off: it slows GPUs a lot)."""
    import keras

    keras.utils.set_random_seed(seed)

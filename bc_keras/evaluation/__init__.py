"""Evaluation: a classifier evaluated, metrics, statistics, inference, Grad-CAM and plots."""

_SUBMODULES = {"classifier", "gradcam", "inference", "metrics", "plots", "statistics"}


def __getattr__(name: str):
    # Light on import (the metric registry and statistics need no TensorFlow): the classifier
    # evaluation's names (evaluate_classifier, decide_threshold, ...) load on first use.
    if name.startswith("__") or name in _SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from bc_keras.evaluation import classifier

    return getattr(classifier, name)

"""Robustness: how a trained classifier fails. Its AUC, balanced accuracy and patient
recognition rate on a split's test images under graded corruptions (Gaussian noise and blur,
JPEG, brightness, contrast, H&E stain shift, occlusion) and adversarial noise (FGSM, PGD), each
at 5 severities, with the training run's own test evaluation (severity 0 is its metrics.json).

`python -m bc_keras.robustness MODEL.h5 [...] --data SPLIT --out DIR`, or
`run_robustness(models, split, out_dir)` from Python; `corruptions` holds the registry (no
TensorFlow), `adversarial` the attacks, `benchmark` the scoring, `outputs` the JSON, markdown
and figures.

Importing this package imports no TensorFlow; `benchmark` and `adversarial` do.
"""

from bc_keras.robustness.corruptions import (  # noqa: F401
    CORRUPTIONS,
    SEVERITIES,
    check_corruption_names,
    check_severities,
    corrupt,
)


def run_robustness(model_paths, split, out_dir, corruptions=None, severities=None,
                   seed: int = 0, batch_size: int | None = None) -> dict:  # fmt: skip
    """`bc_keras.robustness.benchmark.run_robustness` (imported on first use: it needs
    TensorFlow)."""
    from bc_keras.robustness import benchmark

    return benchmark.run_robustness(model_paths, split, out_dir, corruptions, severities,
                                    seed=seed, batch_size=batch_size)  # fmt: skip

"""The frozen-feature baseline of transfer learning (a linear probe):
`python -m bc_keras.probe --data SPLIT --backbone NAME [--alpha A] --weights FILE`.

A keras.applications backbone with its ImageNet weights, frozen; the global-average-pooled
features of every un-augmented image; a class-balanced logistic regression (scikit-learn's
defaults otherwise) fitted on train + val; the test split scored with the metrics of a
training run. Fine-tuning the same backbone should not lose to it: the yardstick of the robust
recipe is a fine-tuned MobileNet 0.25 with at least the probe's AUC - 0.01 on real BreaKHis.

The command line imports TensorFlow only once its arguments are valid, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from bc_keras import cli, runs
from bc_keras.config import BACKBONES, PREPROCESS_BACKBONE, PREPROCESS_RESCALE
from bc_keras.console import Progress
from bc_keras.errors import ConfigError, DataError
from bc_keras.evaluation.metrics import compute_metrics
from bc_keras.histology.breakhis import describe_files

SUBSETS_FITTED = ("train", "val")
SUBSET_SCORED = "test"
# The regularisation of the logistic regression (scikit-learn's default strength).
PROBE_C = 1.0
PROBE_MAX_ITER = 5000


def pooled_features(backbone, dataset, total: int | None = None) -> tuple:
    """`(features [n, channels], labels [n])` of an unshuffled `(images, labels)` dataset: the
    backbone's last feature map averaged over space, in inference mode (`total` images, for
    the progress line)."""
    import tensorflow as tf

    @tf.function
    def pool(images):
        return tf.reduce_mean(tf.cast(backbone(images, training=False), tf.float32), axis=[1, 2])

    features, labels = [], []
    progress = Progress("features:", total)
    for images, batch_labels in dataset:
        features.append(pool(images).numpy())
        labels.append(np.asarray(batch_labels))
        progress.advance(len(labels[-1]))
    progress.close()
    return np.concatenate(features).astype(np.float64), np.concatenate(labels).astype(int)


def fit_probe(features, labels, seed: int = 0):
    """The class-balanced logistic regression on the features."""
    if len(set(labels.tolist())) < 2:
        raise DataError(
            "train + val hold one class only; a probe needs benign and malignant images"
        )
    classifier = LogisticRegression(
        C=PROBE_C, class_weight="balanced", max_iter=PROBE_MAX_ITER, random_state=seed
    )
    return classifier.fit(features, labels)


def linear_probe(
    split_dir,
    backbone: str,
    *,
    image_size: int = 224,
    weights="imagenet",
    alpha: float = 1.0,
    preprocess: str = PREPROCESS_BACKBONE,
    batch_size: int = 32,
    seed: int = 0,
) -> dict:
    """Fits the probe on train + val of a prepared split and scores its test split.

    Returns:
        The test metrics (`metrics.compute_metrics`, threshold 0.5: the balanced class weights
        already centre it) plus the settings and the image counts.
    """
    from bc_keras.data import build_dataset  # TensorFlow
    from bc_keras.models.transfer import build_backbone

    chosen = backbone if preprocess == PREPROCESS_BACKBONE else PREPROCESS_RESCALE
    # The data first: a folder that is not a prepared split (or a subset without a readable
    # image) is refused before any weights are loaded.
    datasets = {
        subset: build_dataset(
            split_dir,
            subset,
            image_size=image_size,
            batch_size=batch_size,
            preprocess=chosen,
            augment=False,
            shuffle=False,
        )
        for subset in (*SUBSETS_FITTED, SUBSET_SCORED)
    }
    model = build_backbone(backbone, image_size, weights=weights, alpha=alpha)
    model.trainable = False
    data = {}
    for subset, dataset in datasets.items():
        features, labels = pooled_features(model, dataset.data, len(dataset.paths))
        data[subset] = (features, labels, dataset.paths)
    fitted = [data[subset] for subset in SUBSETS_FITTED]
    probe = fit_probe(
        np.concatenate([f for f, _, _ in fitted]), np.concatenate([y for _, y, _ in fitted]), seed
    )
    features, labels, paths = data[SUBSET_SCORED]
    probabilities = probe.predict_proba(features)[:, 1]
    patients, magnifications = describe_files(paths)
    result = compute_metrics(
        labels, probabilities, patients=patients, magnifications=magnifications
    )
    counts = {f"{subset}_images": int(len(data[subset][1])) for subset in data}
    settings = {
        "backbone": backbone,
        "alpha": alpha,
        "image_size": image_size,
        "preprocess": chosen,
        "weights": str(weights),
        "data": str(split_dir),
    }
    return {"experiment": "linear_probe", **settings, **counts, **result}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bc_keras.probe",
        description="The frozen-feature baseline of transfer learning: ImageNet features of a "
        "frozen backbone (global average pooling) and a class-balanced logistic regression "
        "fitted on train + val, scored on test. Fine-tuning should not lose to it.",
    )
    parser.add_argument("--data", required=True, help="a prepared split (prepare_breakhis.py)")
    parser.add_argument("--backbone", required=True, choices=BACKBONES)
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="a local no-top .h5 weights file, or imagenet (the Keras cache; never downloaded "
        "here without network)",
    )
    parser.add_argument("--alpha", type=float, default=1.0, help="MobileNet width (default: 1.0)")
    parser.add_argument("--image-size", type=int, default=224, help="default: 224")
    parser.add_argument(
        "--preprocess",
        choices=(PREPROCESS_BACKBONE, PREPROCESS_RESCALE),
        default=PREPROCESS_BACKBONE,
        help="backbone: the backbone's own input scaling (default); rescale: 1/255",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="default: 32")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument("--out", help="also write the result as JSON to this file")
    cli.add_quiet_flag(parser)
    return parser


def main(argv=None) -> int:
    args = cli.apply_quiet(build_parser().parse_args(argv))
    if args.batch_size < 1:
        raise ConfigError("--batch-size must be positive")
    from bc_keras.models.transfer import MIN_IMAGE_SIZE, check_backbone  # TensorFlow from here on

    if args.image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"--image-size must be at least {MIN_IMAGE_SIZE} for {args.backbone}")
    try:
        check_backbone(args.backbone, args.alpha)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    out = Path(args.out) if args.out else None
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        raise DataError(f"--out {out} must be a file in an existing folder")
    if out is not None and not os.access(out.parent, os.W_OK):
        raise DataError(f"--out {out}: {out.parent} is not writable; choose another --out")
    from bc_keras.training.seeds import set_seed

    set_seed(args.seed)
    result = linear_probe(
        args.data,
        args.backbone,
        image_size=args.image_size,
        weights=args.weights,
        alpha=args.alpha,
        preprocess=args.preprocess,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    print(
        f"linear probe of {args.backbone} on {result['train_images']} + {result['val_images']} "
        f"images, scored on {result['test_images']} test images: AUC {result['auc_roc']:.4f}, "
        f"balanced accuracy {result['balanced_accuracy']:.4f}, accuracy {result['accuracy']:.4f}"
    )
    if out is not None:
        try:
            runs.write_json(out, result)
        except OSError as error:
            raise DataError(
                f"cannot write {out} ({error.strerror}); choose another --out"
            ) from error
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_script(main, interrupted="interrupted: nothing was written"))

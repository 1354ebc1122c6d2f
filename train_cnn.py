"""Baseline CNN of the report (SPEC 4): train, evaluate on the test split, save the .h5."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from bc_keras import cli

EXPERIMENT = "cnn"
MODEL_OUT = "models/cnn_model_breast_cancer.h5"


@dataclass
class CNNConfig:
    data: str
    pipeline: str
    image_size: int
    batch_size: int
    epochs: int
    dense_units: int
    dropout: float
    batch_norm_momentum: float
    learning_rate: float
    patience: int
    reduce_lr_patience: int
    reduce_lr_factor: float
    min_learning_rate: float
    augment: bool
    seed: int
    mixed_precision: bool
    strategy: str
    run_dir: str | None
    model_out: str
    resume: bool
    threshold: float
    tune_threshold: bool


def parse_args(argv=None) -> CNNConfig:
    parser = argparse.ArgumentParser(
        description="Train the report's baseline CNN on a prepared BreaKHis split, evaluate it on "
        "the test split and save it.\n\nDefaults are the report's: 3 x [Conv 3x3 -> BatchNorm -> "
        "ReLU -> MaxPool], Dense 128, Dropout 0.5, Adam 1e-3, batch 32, up to 100 epochs, "
        "EarlyStopping(val_loss, 5), ReduceLROnPlateau(0.5, 3, min 1e-6).",
        formatter_class=cli.HelpFormatter,
    )
    cli.add_common_arguments(parser, model_out=MODEL_OUT)
    model = parser.add_argument_group("model")
    model.add_argument(
        "--dense-units",
        type=cli.positive_int,
        default=128,
        help="units of the hidden Dense layer (the report also says 256)",
    )
    model.add_argument("--dropout", type=float, default=0.5, help="dropout before the output")
    model.add_argument(
        "--bn-momentum",
        type=float,
        default=0.99,
        help="BatchNorm moving-average momentum (Keras' default, as the report); 0.9 suits small "
        "datasets whose epochs have few steps",
    )
    model.add_argument("--lr", type=cli.positive_float, default=1e-3, help="Adam learning rate")
    model.add_argument(
        "--patience", type=cli.positive_int, default=5, help="EarlyStopping patience on val_loss"
    )
    model.add_argument(
        "--reduce-lr-patience", type=cli.positive_int, default=3, help="ReduceLROnPlateau patience"
    )
    model.add_argument(
        "--reduce-lr-factor", type=float, default=0.5, help="ReduceLROnPlateau factor"
    )
    model.add_argument(
        "--min-lr", type=cli.positive_float, default=1e-6, help="ReduceLROnPlateau floor"
    )
    model.add_argument(
        "--no-augment",
        action="store_true",
        help="train without rotation/shift/zoom/flip augmentation",
    )
    args = parser.parse_args(argv)
    return cli.config_from_args(
        CNNConfig,
        args,
        batch_norm_momentum=args.bn_momentum,
        learning_rate=args.lr,
        min_learning_rate=args.min_lr,
        augment=not args.no_augment,
    )


def main(argv=None) -> int:
    config = parse_args(argv)
    from bc_keras import data, models, runs

    run_dir = runs.resolve_run_dir(config.run_dir, EXPERIMENT, config.resume)
    config.run_dir = str(run_dir)
    runs.write_config(run_dir, config)
    cli.set_seed(config.seed)
    options = dict(
        pipeline=config.pipeline,
        image_size=config.image_size,
        batch_size=config.batch_size,
        seed=config.seed,
    )
    train = data.build_dataset(config.data, data.SUBSET_TRAIN, augment=config.augment, **options)
    validation = data.build_dataset(config.data, data.SUBSET_VAL, **options)
    print(
        f"run folder: {run_dir}\ntraining on {len(train.paths)} images, validating on {len(validation.paths)}"
    )

    with models.model_scope(models.get_strategy(config.strategy), config.mixed_precision):
        model = models.build_baseline_cnn(
            config.image_size, config.dense_units, config.dropout, config.batch_norm_momentum
        )
        models.compile_classifier(model, config.learning_rate)
    model.fit(
        train.data,
        validation_data=validation.data,
        epochs=config.epochs,
        steps_per_epoch=train.steps,
        validation_steps=validation.steps,
        callbacks=runs.training_callbacks(
            run_dir,
            patience=config.patience,
            reduce_lr_patience=config.reduce_lr_patience,
            reduce_lr_factor=config.reduce_lr_factor,
            min_learning_rate=config.min_learning_rate,
            resume=config.resume,
        ),
        shuffle=False,  # both pipelines shuffle the training files themselves
        verbose=2,
    )
    runs.finish_backup(run_dir)
    metadata = {
        "kind": "classifier",
        "architecture": "baseline_cnn",
        "image_size": config.image_size,
        "preprocess": data.PREPROCESS_RESCALE,
        "interpolation": data.DEFAULT_INTERPOLATION,
        "threshold": config.threshold,
        "run_dir": str(run_dir),
    }
    model_path = models.save_model(model, config.model_out, metadata)
    runs.plot_run_history(run_dir, title="Baseline CNN")
    test = data.build_dataset(config.data, data.SUBSET_TEST, **options)
    runs.evaluate_classifier(
        model,
        test,
        run_dir,
        threshold=config.threshold,
        validation=validation,
        tune_threshold=config.tune_threshold,
        title="Baseline CNN",
        seed=config.seed,
    )
    print(f"\nmodel: {model_path}\nmetrics, predictions and figures: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_script(main))

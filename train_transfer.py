"""Transfer learning of the report (SPEC 4): an ImageNet backbone, frozen then fine-tuned."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from bc_keras import cli
from bc_keras.transfer import (
    BACKBONES,
    PHASE1_LEARNING_RATE,
    PHASE2_LEARNING_RATE,
    WEIGHTS_IMAGENET,
    WEIGHTS_NONE,
)

MODEL_OUT = "models/transfer_model_<backbone>_breast_cancer.h5"
PREPROCESS_RESCALE = "rescale"
PREPROCESS_BACKBONE = "backbone"
DISPLAY_NAMES = {"resnet50": "ResNet50", "vgg16": "VGG16", "mobilenet": "MobileNet"}
# Inside the run's backup folder: the weights at the end of phase 1, so that an interrupted
# phase 2 resumes without training phase 1 again.
PHASE1_WEIGHTS = "phase1_complete.weights.h5"


@dataclass
class TransferConfig:
    backbone: str
    alpha: float
    weights: str
    preprocess: str
    data: str
    pipeline: str
    image_size: int
    batch_size: int
    phase1_epochs: int
    phase2_epochs: int
    dense_units: int
    phase1_learning_rate: float
    phase2_learning_rate: float
    patience: int
    freeze_batchnorm: bool
    augment: bool
    seed: int
    mixed_precision: bool
    strategy: str
    run_dir: str | None
    model_out: str
    resume: bool
    threshold: float
    tune_threshold: bool


def parse_args(argv=None) -> TransferConfig:
    parser = argparse.ArgumentParser(
        description="Fine-tune a keras.applications backbone on a prepared BreaKHis split, "
        "evaluate it on the test split and save it.\n\nDefaults are the report's: backbone "
        "without top -> GlobalAveragePooling -> Dense 128 ReLU -> Dense 1 sigmoid. Phase 1 "
        "trains the head on the frozen backbone (Adam 1e-3); phase 2 unfreezes the backbone "
        "(Adam 1e-4). Each phase runs up to 100 epochs with EarlyStopping(val_loss, 15, restore "
        "best).\n\nBatchNorm layers of a pretrained backbone stay in inference mode during "
        "fine-tuning (frozen, moving statistics kept), as the Keras transfer-learning guide "
        "advises; with --weights none they train normally, having no statistics to keep.",
        formatter_class=cli.HelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", required=True, choices=BACKBONES, help="the ImageNet backbone")
    model.add_argument(
        "--alpha",
        type=cli.positive_float,
        default=1.0,
        help="MobileNet's width multiplier (0.25, 0.5, 0.75 or 1.0 have ImageNet weights)",
    )
    model.add_argument(
        "--weights",
        default=WEIGHTS_IMAGENET,
        help="'imagenet' (from Keras' cache, ~/.keras/models or $KERAS_HOME/models; downloaded "
        "if online), 'none' (random initialisation), or the PATH of a local no-top .h5",
    )
    model.add_argument(
        "--preprocess",
        choices=(PREPROCESS_RESCALE, PREPROCESS_BACKBONE),
        default=PREPROCESS_RESCALE,
        help="'rescale' is the report's 1/255; 'backbone' is the backbone's own preprocess_input. "
        "Stored in the model so predict.py applies it",
    )
    model.add_argument(
        "--dense-units", type=cli.positive_int, default=128, help="units of the hidden Dense layer"
    )
    cli.add_common_arguments(parser, model_out=MODEL_OUT)
    training = parser.add_argument_group("two-phase training (--epochs caps each phase)")
    training.add_argument(
        "--phase1-epochs",
        type=cli.positive_int,
        default=None,
        help="maximum epochs of phase 1, frozen backbone (default: --epochs)",
    )
    training.add_argument(
        "--phase2-epochs",
        type=cli.positive_int,
        default=None,
        help="maximum epochs of phase 2, fine-tuning (default: --epochs)",
    )
    training.add_argument(
        "--lr1", type=cli.positive_float, default=PHASE1_LEARNING_RATE, help="Adam rate, phase 1"
    )
    training.add_argument(
        "--lr2", type=cli.positive_float, default=PHASE2_LEARNING_RATE, help="Adam rate, phase 2"
    )
    training.add_argument(
        "--patience",
        type=cli.positive_int,
        default=15,
        help="EarlyStopping patience on val_loss, in each phase",
    )
    training.add_argument(
        "--no-augment",
        action="store_true",
        help="train without rotation/shift/zoom/flip augmentation",
    )
    args = parser.parse_args(argv)
    weights = WEIGHTS_NONE if args.weights.lower() == WEIGHTS_NONE else args.weights
    if args.model_out == MODEL_OUT:
        args.model_out = MODEL_OUT.replace("<backbone>", args.backbone)
    return cli.config_from_args(
        TransferConfig,
        args,
        weights=weights,
        preprocess=args.backbone if args.preprocess == PREPROCESS_BACKBONE else PREPROCESS_RESCALE,
        phase1_epochs=args.phase1_epochs or args.epochs,
        phase2_epochs=args.phase2_epochs or args.epochs,
        phase1_learning_rate=args.lr1,
        phase2_learning_rate=args.lr2,
        freeze_batchnorm=weights != WEIGHTS_NONE,
        augment=not args.no_augment,
    )


def main(argv=None) -> int:
    config = parse_args(argv)
    from bc_keras import data, models, runs, transfer

    run_dir = runs.resolve_run_dir(config.run_dir, f"transfer_{config.backbone}", config.resume)
    config.run_dir = str(run_dir)
    runs.write_config(run_dir, config)
    cli.set_seed(config.seed)
    options = dict(
        pipeline=config.pipeline,
        image_size=config.image_size,
        batch_size=config.batch_size,
        preprocess=config.preprocess,
        seed=config.seed,
    )
    train = data.build_dataset(config.data, data.SUBSET_TRAIN, augment=config.augment, **options)
    validation = data.build_dataset(config.data, data.SUBSET_VAL, **options)
    print(
        f"run folder: {run_dir}\ntraining on {len(train.paths)} images, validating on {len(validation.paths)}"
    )

    phase1_weights = run_dir / runs.BACKUP_DIR / PHASE1_WEIGHTS
    phase1_done = config.resume and phase1_weights.is_file()
    strategy = models.get_strategy(config.strategy)
    with models.model_scope(strategy, config.mixed_precision):
        model = transfer.build_transfer_model(
            config.backbone,
            config.image_size,
            # Resuming after phase 1 takes every weight from its checkpoint.
            weights=None if phase1_done else config.weights,
            alpha=config.alpha,
            dense_units=config.dense_units,
        )
    phases = (
        (transfer.PHASE_FROZEN, config.phase1_epochs, config.phase1_learning_rate),
        (transfer.PHASE_FINE_TUNE, config.phase2_epochs, config.phase2_learning_rate),
    )
    for phase, epochs, learning_rate in phases:
        if phase == transfer.PHASE_FROZEN and phase1_done:
            model.load_weights(phase1_weights)
            print("phase 1 already complete: resuming with phase 2")
            continue
        print(f"\nphase {phase}: {'frozen backbone' if phase == 1 else 'fine-tuning'}")
        transfer.start_phase(
            model,
            phase,
            learning_rate,
            freeze_batchnorm=config.freeze_batchnorm,
            strategy=strategy,
            mixed_precision=config.mixed_precision,
        )
        model.fit(
            train.data,
            validation_data=validation.data,
            epochs=epochs,
            steps_per_epoch=train.steps,
            validation_steps=validation.steps,
            callbacks=runs.training_callbacks(
                run_dir,
                patience=config.patience,
                resume=config.resume,
                phase=phase,
                backup_name=f"{runs.BACKUP_DIR}/phase{phase}",
            ),
            shuffle=False,  # both pipelines shuffle the training files themselves
            verbose=2,
        )
        if phase == transfer.PHASE_FROZEN:
            phase1_weights.parent.mkdir(parents=True, exist_ok=True)
            model.save_weights(phase1_weights)
    runs.finish_backup(run_dir)
    name = DISPLAY_NAMES[config.backbone]
    metadata = {
        "kind": "classifier",
        "architecture": f"transfer_{config.backbone}",
        "backbone": config.backbone,
        "alpha": config.alpha,
        "weights": config.weights,
        "image_size": config.image_size,
        "preprocess": config.preprocess,
        "interpolation": data.DEFAULT_INTERPOLATION,
        "threshold": config.threshold,
        "run_dir": str(run_dir),
    }
    model_path = models.save_model(model, config.model_out, metadata)
    runs.plot_run_history(run_dir, title=f"Transfer {name}")
    test = data.build_dataset(config.data, data.SUBSET_TEST, **options)
    runs.evaluate_classifier(
        model,
        test,
        run_dir,
        threshold=config.threshold,
        validation=validation,
        tune_threshold=config.tune_threshold,
        title=f"Transfer {name}",
        seed=config.seed,
    )
    print(f"\nmodel: {model_path}\nmetrics, predictions and figures: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_script(main))

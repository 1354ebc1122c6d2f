"""SimCLR with a ResNet-18 encoder (SPEC 4): contrastive pretraining, fine-tuning and linear
evaluation, each with the run folder, evaluation and saved .h5 of the other experiments."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from bc_keras import cli

EXPERIMENT = "simclr"
MODE_PRETRAIN, MODE_FINETUNE, MODE_LINEAR = "pretrain", "finetune", "linear"
ENCODER_OUT = "models/simclr_resnet18_encoder.h5"
CLASSIFIER_OUT = "models/simclr_resnet18_breast_cancer.h5"
ENCODER_NONE = "none"
KIND_ENCODER = "simclr_encoder"
# Pretraining decodes with bilinear resizing; the classifier is fed the same way.
INTERPOLATION = "bilinear"
INITIAL_VALIDATION_FILE = "initial_validation.json"
LABELLED_FILES = "labelled_train_files.txt"
# Marks a finished frozen phase of `finetune`, so that --resume goes straight to phase 2.
PHASE1_WEIGHTS = "phase1_complete.weights.h5"


@dataclass
class PretrainConfig:
    mode: str
    data: str
    image_size: int
    batch_size: int
    epochs: int
    learning_rate: float
    temperature: float
    projection_hidden_dim: int
    projection_dim: int
    patience: int
    crop_scale_min: float
    jitter_strength: float
    blur_probability: float
    seed: int
    mixed_precision: bool
    strategy: str
    run_dir: str | None
    model_out: str
    resume: bool


@dataclass
class ClassifierConfig:
    mode: str
    data: str
    pipeline: str
    encoder: str
    image_size: int
    batch_size: int
    epochs: int
    freeze_epochs: int
    label_fraction: float
    learning_rate: float
    finetune_learning_rate: float
    patience: int
    augment: bool
    seed: int
    mixed_precision: bool
    strategy: str
    run_dir: str | None
    model_out: str
    resume: bool
    threshold: float
    tune_threshold: bool


def parse_args(argv=None) -> PretrainConfig | ClassifierConfig:
    parser = argparse.ArgumentParser(
        description="SimCLR on a prepared BreaKHis split, in three modes:\n"
        "  pretrain  contrastive pretraining of a ResNet-18 encoder on the train split's images "
        "(labels unused), validation NT-Xent on the val split; saves the encoder\n"
        "  finetune  encoder + Dense(1, sigmoid) trained with BCE (optionally frozen first)\n"
        "  linear    the same with the encoder frozen throughout (linear evaluation)\n"
        "Run `train_simclr.py MODE --help` for each mode's flags.",
        formatter_class=cli.HelpFormatter,
    )
    modes = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
    pretrain = modes.add_parser(
        MODE_PRETRAIN,
        help="contrastive pretraining of the encoder",
        description="SimCLR pretraining (the report's settings): two views per image, ResNet-18 "
        "encoder, projection MLP 512->256->ReLU->128, NT-Xent (temperature 0.5, all 2N-2 "
        "negatives), Adam 1e-3, batch 96, up to 100 epochs, EarlyStopping(val_loss, 15). The "
        "test split is never read except for the t-SNE figure of the finished encoder.",
        formatter_class=cli.HelpFormatter,
    )
    cli.add_common_arguments(
        pretrain, model_out=ENCODER_OUT, batch_size=96, with_pipeline=False, with_evaluation=False
    )
    contrastive = pretrain.add_argument_group("contrastive learning")
    contrastive.add_argument(
        "--lr", type=cli.positive_float, default=1e-3, help="Adam learning rate"
    )
    contrastive.add_argument(
        "--temperature", type=cli.positive_float, default=0.5, help="NT-Xent temperature"
    )
    contrastive.add_argument(
        "--projection-hidden-dim", type=cli.positive_int, default=256, help="projection MLP width"
    )
    contrastive.add_argument(
        "--projection-dim", type=cli.positive_int, default=128, help="projection output size"
    )
    contrastive.add_argument(
        "--patience", type=cli.positive_int, default=15, help="EarlyStopping patience on val_loss"
    )
    contrastive.add_argument(
        "--crop-scale-min",
        type=cli.fraction,
        default=0.2,
        help="smallest random-crop area, as a fraction of the image",
    )
    contrastive.add_argument(
        "--jitter-strength", type=float, default=0.5, help="colour jitter strength s"
    )
    contrastive.add_argument(
        "--blur-probability", type=float, default=0.5, help="probability of a Gaussian blur"
    )

    for mode, help_text in (
        (
            MODE_FINETUNE,
            "fine-tune the encoder with a Dense(1, sigmoid) head (encoder frozen for the first "
            "--freeze-epochs epochs at --lr, then trained at --finetune-lr)",
        ),
        (
            MODE_LINEAR,
            "linear evaluation: train only a Dense(1, sigmoid) head on the frozen encoder",
        ),
    ):
        sub = modes.add_parser(
            mode,
            help=help_text.split(" (")[0],
            description=f"{help_text}. BCE, Adam, EarlyStopping(val_loss, 15, restore best), "
            "evaluation on the test split as for the other experiments.",
            formatter_class=cli.HelpFormatter,
        )
        cli.add_common_arguments(sub, model_out=CLASSIFIER_OUT)
        head = sub.add_argument_group("classifier")
        head.add_argument(
            "--encoder",
            default=ENCODER_OUT,
            help=f"pretrained encoder .h5 from `train_simclr.py pretrain`, or '{ENCODER_NONE}' "
            "for a randomly initialised encoder (the no-pretraining comparison)",
        )
        head.add_argument(
            "--label-fraction",
            type=cli.fraction,
            default=1.0,
            help="train on this share of the training labels, drawn per class and by whole "
            "patients (e.g. 0.1 for the report's 10%% labels)",
        )
        head.add_argument(
            "--lr",
            type=cli.positive_float,
            default=1e-3,
            help="Adam learning rate while the encoder is frozen",
        )
        if mode == MODE_FINETUNE:
            head.add_argument(
                "--freeze-epochs",
                type=int,
                default=0,
                help="epochs with the encoder frozen before it is fine-tuned",
            )
            head.add_argument(
                "--finetune-lr",
                type=cli.positive_float,
                default=1e-4,
                help="Adam learning rate once the encoder trains",
            )
        head.add_argument(
            "--patience",
            type=cli.positive_int,
            default=15,
            help="EarlyStopping patience on val_loss",
        )
        head.add_argument(
            "--no-augment",
            action="store_true",
            help="train without rotation/shift/zoom/flip augmentation",
        )
    args = parser.parse_args(argv)
    if args.mode == MODE_PRETRAIN:
        return cli.config_from_args(
            PretrainConfig,
            args,
            learning_rate=args.lr,
        )
    freeze_epochs = getattr(args, "freeze_epochs", 0)
    if freeze_epochs < 0:
        parser.error(f"--freeze-epochs must be 0 or more, got {freeze_epochs}")
    return cli.config_from_args(
        ClassifierConfig,
        args,
        freeze_epochs=freeze_epochs,
        learning_rate=args.lr,
        finetune_learning_rate=getattr(args, "finetune_lr", args.lr),
        augment=not args.no_augment,
    )


def _verbosity() -> int:
    # A live progress bar on a terminal; one line per epoch in log files.
    return 1 if sys.stdout.isatty() else 2


def pretrain(config: PretrainConfig) -> int:
    from bc_keras import data, models, plots, runs, simclr
    from bc_keras.augment import SimCLRAugmentation
    from bc_keras.resnet import build_resnet18

    run_dir = runs.resolve_run_dir(config.run_dir, f"{EXPERIMENT}_{MODE_PRETRAIN}", config.resume)
    config.run_dir = str(run_dir)
    runs.write_config(run_dir, config)
    cli.set_seed(config.seed)
    augmentation = SimCLRAugmentation(
        crop_scale=(config.crop_scale_min, 1.0),
        jitter_strength=config.jitter_strength,
        blur_probability=config.blur_probability,
    )
    train_files = data.list_split_files(config.data, data.SUBSET_TRAIN)
    validation_files = data.list_split_files(config.data, data.SUBSET_VAL)
    if len(train_files.paths) < config.batch_size:
        raise ValueError(
            f"The train split has {len(train_files.paths)} images, fewer than one batch of "
            f"{config.batch_size}; pass a smaller --batch-size."
        )
    # Every batch keeps the same size (drop_remainder), so the contrastive step compiles once;
    # a small validation split gets one smaller batch instead of none.
    validation_batch = min(config.batch_size, len(validation_files.paths))
    if validation_batch < 2:
        raise ValueError(
            f"The val split has {len(validation_files.paths)} image(s); NT-Xent needs at least 2."
        )
    options = dict(image_size=config.image_size, augmentation=augmentation, seed=config.seed)
    train = data.simclr_dataset_from_files(
        train_files.paths, batch_size=config.batch_size, shuffle=True, **options
    )
    validation = data.simclr_dataset_from_files(
        validation_files.paths, batch_size=validation_batch, shuffle=False, **options
    )
    print(
        f"run folder: {run_dir}\npretraining on {len(train_files.paths)} unlabelled images, "
        f"validating NT-Xent on {len(validation_files.paths)}"
    )
    plots.plot_augmented_pairs(
        *_first_batch(train_files.paths[:4], config.image_size, augmentation, config.seed),
        run_dir / "augmented_pairs.png",
        title="SimCLR augmented pairs",
    )

    with models.model_scope(models.get_strategy(config.strategy), config.mixed_precision):
        encoder = build_resnet18(config.image_size)
        trainer = simclr.build_simclr_trainer(
            encoder,
            learning_rate=config.learning_rate,
            temperature=config.temperature,
            hidden_dim=config.projection_hidden_dim,
            output_dim=config.projection_dim,
        )
    initial_file = run_dir / INITIAL_VALIDATION_FILE
    if not initial_file.exists():
        # The untrained encoder's validation NT-Xent: what pretraining has to improve on.
        initial = trainer.evaluate(validation, verbose=0, return_dict=True)
        runs.write_json(initial_file, initial)
    trainer.fit(
        train,
        validation_data=validation,
        epochs=config.epochs,
        callbacks=runs.training_callbacks(run_dir, patience=config.patience, resume=config.resume),
        shuffle=False,  # the pipeline shuffles the training files itself
        verbose=_verbosity(),
    )
    runs.finish_backup(run_dir)
    metadata = {
        "kind": KIND_ENCODER,
        "architecture": "resnet18",
        "image_size": config.image_size,
        "preprocess": data.PREPROCESS_RESCALE,
        "interpolation": INTERPOLATION,
        "run_dir": str(run_dir),
    }
    encoder_path = models.save_model(trainer.encoder, config.model_out, metadata)
    runs.plot_run_history(run_dir, title="SimCLR pretraining NT-Xent")
    summary = _pretraining_summary(runs.read_history(run_dir), json.loads(initial_file.read_text()))
    runs.write_json(run_dir / runs.METRICS_FILE, summary)
    test = data.build_dataset(
        config.data,
        data.SUBSET_TEST,
        image_size=config.image_size,
        batch_size=config.batch_size,
        interpolation=INTERPOLATION,
    )
    embeddings = trainer.encoder.predict(test.data, verbose=0)
    if len(embeddings) >= 4:
        plots.plot_tsne(
            embeddings,
            test.labels,
            run_dir / "tsne_test_embeddings.png",
            seed=config.seed,
            title="t-SNE of test-set SimCLR embeddings",
        )
    print(
        f"\nvalidation NT-Xent: {summary['initial_val_loss']:.4f} untrained -> "
        f"{summary['best_val_loss']:.4f} (epoch {summary['best_epoch']})"
        f"\nencoder: {encoder_path}\nhistory and figures: {run_dir}"
    )
    return 0


def _first_batch(paths, image_size, augmentation, seed):
    """Two views of each of `paths`, as NumPy arrays, for the augmented-pairs figure."""
    from bc_keras import data

    pairs = data.simclr_dataset_from_files(
        paths,
        image_size=image_size,
        batch_size=len(paths),
        augmentation=augmentation,
        shuffle=False,
        seed=seed,
        cache=False,
    )
    views_a, views_b = next(iter(pairs))
    return views_a.numpy(), views_b.numpy()


def _pretraining_summary(history: dict, initial: dict) -> dict:
    validation = history["val_loss"]
    best = min(range(len(validation)), key=validation.__getitem__)
    return {
        "initial_val_loss": float(initial["loss"]),
        "initial_val_contrastive_accuracy": float(initial["contrastive_accuracy"]),
        "best_val_loss": float(validation[best]),
        "best_epoch": best + 1,
        "best_val_contrastive_accuracy": float(history["val_contrastive_accuracy"][best]),
        "epochs_run": len(validation),
    }


def _load_encoder(config: ClassifierConfig):
    """The pretrained encoder named by --encoder, or a fresh one for --encoder none."""
    from bc_keras import models
    from bc_keras.resnet import build_resnet18

    if config.encoder.lower() == ENCODER_NONE:
        return build_resnet18(config.image_size)
    if not Path(config.encoder).is_file():
        raise models.ModelFileError(
            f"Encoder {config.encoder} does not exist; pretrain one with `train_simclr.py "
            "pretrain --data DIR` (or pass --encoder PATH), or use --encoder none."
        )
    encoder, metadata = models.load_model(config.encoder)
    if metadata.get("kind") != KIND_ENCODER:
        raise models.ModelFileError(
            f"{config.encoder} is a {metadata.get('kind', 'unknown')} model, not a SimCLR "
            "encoder; pass the .h5 saved by `train_simclr.py pretrain`, or --encoder none."
        )
    if int(metadata["image_size"]) != config.image_size:
        raise ValueError(
            f"{config.encoder} was pretrained at {metadata['image_size']} px; pass "
            f"--image-size {metadata['image_size']}."
        )
    return encoder


def _labelled_training_set(config: ClassifierConfig, run_dir: Path):
    """The training dataset, reduced to --label-fraction of the labels when asked."""
    from bc_keras import data, simclr

    options = dict(
        image_size=config.image_size,
        batch_size=config.batch_size,
        augment=config.augment,
        shuffle=True,
        seed=config.seed,
        interpolation=INTERPOLATION,
    )
    if config.label_fraction == 1.0:
        return data.build_dataset(
            config.data, data.SUBSET_TRAIN, pipeline=config.pipeline, **options
        )
    files = data.list_split_files(config.data, data.SUBSET_TRAIN)
    patients = simclr.patients_of_paths(files.paths)
    keep = simclr.label_fraction_indices(
        files.labels, patients, config.label_fraction, seed=config.seed
    )
    paths = [files.paths[i] for i in keep]
    labels = files.labels[keep]
    (run_dir / LABELLED_FILES).write_text("".join(f"{path}\n" for path in paths))
    print(
        f"label fraction {config.label_fraction}: {len(paths)} of {len(files.paths)} training "
        f"images ({'whole patients' if patients else 'single images'}, per class)"
    )
    if config.pipeline == data.PIPELINE_TFDATA:
        dataset = data.tfdata_from_files(paths, labels, **options)
    else:
        dataset = data.generator_from_files(paths, labels, **options)
    steps = -(-len(paths) // config.batch_size)
    return data.ImageDataset(
        dataset, paths, labels, steps, config.pipeline, config.image_size, data.PREPROCESS_RESCALE
    )


def train_classifier(config: ClassifierConfig) -> int:
    from bc_keras import data, models, runs, simclr

    run_dir = runs.resolve_run_dir(config.run_dir, f"{EXPERIMENT}_{config.mode}", config.resume)
    config.run_dir = str(run_dir)
    runs.write_config(run_dir, config)
    cli.set_seed(config.seed)
    train = _labelled_training_set(config, run_dir)
    options = dict(
        pipeline=config.pipeline,
        image_size=config.image_size,
        batch_size=config.batch_size,
        seed=config.seed,
        interpolation=INTERPOLATION,
    )
    validation = data.build_dataset(config.data, data.SUBSET_VAL, **options)
    print(
        f"run folder: {run_dir}\ntraining on {len(train.paths)} images, validating on "
        f"{len(validation.paths)}, encoder: {config.encoder}"
    )
    strategy = models.get_strategy(config.strategy)
    with models.model_scope(strategy, config.mixed_precision):
        model = simclr.build_classifier(_load_encoder(config), config.image_size)

    # linear: one frozen phase. finetune: an optional frozen phase, then the encoder trains.
    phases = []
    if config.mode == MODE_LINEAR:
        phases.append((False, config.learning_rate, config.epochs))
    else:
        if config.freeze_epochs > 0:
            phases.append((False, config.learning_rate, config.freeze_epochs))
        phases.append((True, config.finetune_learning_rate, config.epochs))
    phase1_weights = run_dir / runs.BACKUP_DIR / PHASE1_WEIGHTS
    for number, (encoder_trainable, learning_rate, epochs) in enumerate(phases, start=1):
        two_phases = len(phases) > 1
        if two_phases and number == 1 and config.resume and phase1_weights.exists():
            print("phase 1 (frozen encoder) finished before the interruption; resuming phase 2")
            model.load_weights(phase1_weights)
            continue
        with models.model_scope(strategy, config.mixed_precision):
            simclr.set_encoder_trainable(model, encoder_trainable)
            models.compile_classifier(model, learning_rate)
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
                phase=number if two_phases else None,
                backup_name=f"{runs.BACKUP_DIR}/phase{number}" if two_phases else runs.BACKUP_DIR,
            ),
            shuffle=False,  # the pipelines shuffle the training files themselves
            verbose=_verbosity(),
        )
        if two_phases and number == 1:
            model.save_weights(phase1_weights)
    runs.finish_backup(run_dir)
    title = "SimCLR linear evaluation" if config.mode == MODE_LINEAR else "SimCLR fine-tuned"
    metadata = {
        "kind": "classifier",
        "architecture": "simclr_resnet18",
        "mode": config.mode,
        "encoder": config.encoder,
        "label_fraction": config.label_fraction,
        "image_size": config.image_size,
        "preprocess": data.PREPROCESS_RESCALE,
        "interpolation": INTERPOLATION,
        "threshold": config.threshold,
        "run_dir": str(run_dir),
    }
    model_path = models.save_model(model, config.model_out, metadata)
    runs.plot_run_history(run_dir, title=title)
    test = data.build_dataset(config.data, data.SUBSET_TEST, **options)
    runs.evaluate_classifier(
        model,
        test,
        run_dir,
        threshold=config.threshold,
        validation=validation,
        tune_threshold=config.tune_threshold,
        title=title,
        seed=config.seed,
    )
    print(f"\nmodel: {model_path}\nmetrics, predictions and figures: {run_dir}")
    return 0


def main(argv=None) -> int:
    config = parse_args(argv)
    if isinstance(config, PretrainConfig):
        return pretrain(config)
    return train_classifier(config)


if __name__ == "__main__":
    sys.exit(cli.run_script(main))

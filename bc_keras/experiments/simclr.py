"""SimCLR with a ResNet-18 encoder (SPEC 4): contrastive pretraining, fine-tuning and linear
evaluation, each with the run folder, evaluation and saved .h5 of the other experiments."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bc_keras import data, evaluation, models, runs
from bc_keras.config import (
    ENCODER_NONE,
    PREPROCESS_RESCALE,
    FinetuneConfig,
    LinearConfig,
    PretrainConfig,
)
from bc_keras.config.values import ENCODER_INIT_IMAGENET, ENCODER_INIT_RANDOM
from bc_keras.data.augment import SimCLRAugmentation
from bc_keras.errors import ConfigError, DataError, ModelFileError
from bc_keras.evaluation import plots
from bc_keras.experiments import common
from bc_keras.models import card, pretrained, simclr
from bc_keras.models.resnet import build_resnet18
from bc_keras.training import distribute

KIND_ENCODER = "simclr_encoder"
# Pretraining decodes with bilinear resizing; the classifier is fed the same way.
INTERPOLATION = "bilinear"
INITIAL_VALIDATION_FILE = "initial_validation.json"
PRETRAINED_WEIGHTS = "pretrained.weights.h5"


# Decoded images are cached in memory below this size; larger collections are decoded afresh
# each epoch (a cache of 100,000 images at 224 px would take 15 GB).
MEMORY_CACHE_BYTES = 4 << 30


def pretraining_images(config: PretrainConfig):
    """The unlabelled training images (the split's train images, or --unlabeled sources) and
    the split's validation images, decoded as uint8: `((train, count), (val, count))`."""
    from bc_keras.data import tfrecords

    sources = config.unlabeled or [config.data]
    train, train_count = tfrecords.unlabeled_images(sources, config.image_size)
    validation, validation_count = tfrecords.unlabeled_images(
        [config.data], config.image_size, subsets=(data.SUBSET_VAL,), cache=True
    )
    if train_count * config.image_size**2 * 3 <= MEMORY_CACHE_BYTES:
        train = train.cache()
    if train_count < config.batch_size:
        raise DataError(
            f"pretraining has {train_count} images, fewer than one batch of {config.batch_size}; "
            "pass a smaller --batch-size or more images"
        )
    if validation_count < 2:
        raise DataError(
            f"the val split of {config.data} has {validation_count} image(s); NT-Xent needs at "
            "least 2"
        )
    return (train, train_count), (validation, validation_count)


def pretrain(config: PretrainConfig) -> dict:
    """Contrastive pretraining on unlabelled images (labels unused); validation NT-Xent on the
    val split; saves the encoder. Returns the pretraining summary."""
    augmentation = SimCLRAugmentation(
        crop_scale=(config.crop_scale_min, 1.0),
        jitter_strength=config.jitter_strength,
        blur_probability=config.blur_probability,
    )
    # Read before the run folder exists, so an unavailable preset leaves nothing behind, and
    # outside the strategy's scope: only its weights, as arrays, go into the encoder.
    preset = encoder_start(config)
    with common.start_run(config) as run:
        (train_images, train_count), (validation_images, validation_count) = pretraining_images(
            config
        )
        options = dict(image_size=config.image_size, augmentation=augmentation, seed=config.seed)
        train = data.simclr_views(
            train_images, train_count, batch_size=config.batch_size, shuffle=True, **options
        )
        # Every batch keeps the same size, so the contrastive step compiles once; a small
        # validation split gets one smaller batch instead of none.
        validation = data.simclr_views(
            validation_images,
            validation_count,
            batch_size=min(config.batch_size, validation_count),
            shuffle=False,
            **options,
        )
        print(
            f"pretraining on {train_count} unlabelled images, validating NT-Xent on "
            f"{validation_count}"
        )
        if run.chief:
            pairs = data.simclr_views(
                train_images.take(4), 4, batch_size=4, shuffle=False, **options
            )
            views_a, views_b = next(iter(pairs))
            plots.plot_augmented_pairs(
                views_a.numpy(),
                views_b.numpy(),
                run.run_dir / runs.AUGMENTED_PAIRS_FIGURE,
                title="SimCLR augmented pairs",
            )
        with run.scope():
            encoder = pretrained.build_encoder(
                config.image_size, preset, synchronized_batch_norm=run.replicas() > 1
            )
            trainer = simclr.build_simclr_trainer(
                encoder,
                learning_rate=config.learning_rate,
                temperature=config.temperature,
                hidden_dim=config.projection_hidden_dim,
                output_dim=config.projection_dim,
                jit_compile=config.jit_compile,
            )
        initial_file = run.run_dir / INITIAL_VALIDATION_FILE
        # Every worker takes the same branches (a distributed evaluate or fit needs them all).
        if not (config.resume and initial_file.exists()):
            # The untrained encoder's validation NT-Xent: what pretraining has to improve on.
            with distribute.fit_scope(trainer, run.strategy):
                initial = trainer.evaluate(validation, verbose=0, return_dict=True)
            if run.chief:
                runs.write_json(initial_file, initial)
        trained = run.run_dir / runs.BACKUP_DIR / PRETRAINED_WEIGHTS
        if config.resume and trained.is_file():
            print("pretraining finished before the interruption; going on")
            trainer.load_weights(trained)
        else:
            with distribute.fit_scope(trainer, run.strategy):
                trainer.fit(
                    train,
                    validation_data=validation,
                    epochs=config.epochs,
                    callbacks=run.callbacks(config.learning_rate, collapse_warning=False),
                    shuffle=False,  # the pipeline shuffles the images itself
                    verbose=common.verbosity(),
                )
            if run.chief:
                # Kept until the encoder and summary are written: a crash now resumes here.
                trained.parent.mkdir(parents=True, exist_ok=True)
                trainer.save_weights(trained)
        if not run.chief:
            return {}
        return _finish_pretraining(trainer, config, run, initial_file)


def encoder_start(config: PretrainConfig) -> pretrained.PresetWeights | None:
    """The weights `--encoder-init` starts the encoder from: None for a random start, else
    those of the ImageNet preset or of a local keras-hub preset folder."""
    if config.encoder_init == ENCODER_INIT_RANDOM:
        print("encoder: ResNet-18, random initialisation")
        return None
    preset = pretrained.load_preset_weights(config.encoder_init)
    normalised = " with its input normalisation" if preset.input_scale is not None else ""
    print(f"encoder: ResNet-18 from {preset.source}{normalised}")
    return preset


def _finish_pretraining(trainer, config: PretrainConfig, run, initial_file: Path) -> dict:
    models.check_finite_weights(trainer.encoder)
    metadata = {
        "kind": KIND_ENCODER,
        "architecture": "resnet18",
        "experiment": config.experiment,
        "image_size": config.image_size,
        "preprocess": PREPROCESS_RESCALE,
        "interpolation": INTERPOLATION,
        "encoder_init": config.encoder_init,
        "run_dir": str(run.run_dir),
    }
    evaluation.plot_run_history(run.run_dir, title="SimCLR pretraining NT-Xent")
    summary = pretraining_summary(
        runs.read_history(run.run_dir), json.loads(initial_file.read_text())
    )
    images = {"pretraining images": ", ".join(map(str, config.unlabeled or [config.data]))}
    fields = card.encoder_card(metadata, summary, images)
    fields["model"]["start"] = {
        ENCODER_INIT_RANDOM: "random initialisation",
        ENCODER_INIT_IMAGENET: f"ImageNet (keras-hub preset {pretrained.IMAGENET_PRESET})",
    }.get(config.encoder_init, f"the keras-hub preset folder {config.encoder_init}")
    encoder_path = models.save_model(trainer.encoder, config.model_out, {**metadata, "card": fields})
    card_file = card.write_card(encoder_path, "SimCLR ResNet-18 encoder", fields)
    summary = {**summary, runs.MODEL_HASH_KEY: runs.file_sha256(encoder_path),
               "model_card": str(card_file)}  # fmt: skip
    runs.write_json(run.run_dir / runs.METRICS_FILE, summary)
    _plot_test_embeddings(trainer.encoder, config, run.run_dir)
    runs.finish_backup(run.run_dir)
    print(
        f"\nvalidation NT-Xent: {summary['initial_val_loss']:.4f} untrained -> "
        f"{summary['best_val_loss']:.4f} (epoch {summary['best_epoch']})"
        f"\nencoder: {encoder_path}\nhistory and figures: {run.run_dir}"
    )
    return summary


def _plot_test_embeddings(encoder, config: PretrainConfig, run_dir: Path) -> None:
    test = data.build_dataset(
        config.data,
        data.SUBSET_TEST,
        image_size=config.image_size,
        batch_size=config.batch_size,
        interpolation=INTERPOLATION,
    )
    embeddings = encoder.predict(test.data, verbose=0)
    if len(embeddings) >= 4:
        plots.plot_tsne(
            embeddings,
            test.labels,
            run_dir / runs.TSNE_FIGURE,
            seed=config.seed,
            title="t-SNE of test-set SimCLR embeddings",
        )


def pretraining_summary(history: dict, initial: dict) -> dict:
    """The untrained and best validation NT-Xent (and contrastive accuracy) of a run."""
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


def load_encoder(config: LinearConfig):
    """The pretrained encoder named by --encoder, or a fresh one for --encoder none."""
    if config.encoder.lower() == ENCODER_NONE:
        return build_resnet18(config.image_size)
    if not Path(config.encoder).exists():
        raise ModelFileError(
            f"encoder {config.encoder} does not exist; pretrain one with `train_simclr.py "
            "pretrain --data DIR` (or pass --encoder PATH), or use --encoder none"
        )
    encoder, metadata = models.load_model(config.encoder)
    if metadata.get("kind") != KIND_ENCODER:
        raise ModelFileError(
            f"{config.encoder} is a {metadata.get('kind', 'unknown')} model, not a SimCLR "
            "encoder; pass the .h5 saved by `train_simclr.py pretrain`, or --encoder none"
        )
    if int(metadata["image_size"]) != config.image_size:
        raise ConfigError(
            f"{config.encoder} was pretrained at {metadata['image_size']} px; pass "
            f"--image-size {metadata['image_size']}"
        )
    return encoder


def train_classifier(config: LinearConfig | FinetuneConfig) -> dict:
    """Linear evaluation (encoder frozen throughout) or fine-tuning (an optional frozen phase,
    then the encoder trains), on one validation split or cross-fitted; saves and evaluates
    the classifier."""
    print(f"encoder: {config.encoder}")

    def metadata(sets):
        return {
            "architecture": "simclr_resnet18",
            "mode": config.experiment.removeprefix("simclr_"),
            "encoder": config.encoder,
            "label_fraction": config.label_fraction,
            "labelled_images": int(len(sets.train_files.paths)),
            "labelled_benign_share": float(np.mean(sets.train_files.labels == 0)),
        }

    title = "SimCLR fine-tuned" if isinstance(config, FinetuneConfig) else "SimCLR linear evaluation"
    return common.run_classifier(
        config, PREPROCESS_RESCALE, INTERPOLATION, train_on, metadata, title
    )


def train_on(run, sets, epochs=None):
    """Builds the encoder + head classifier and trains it on `sets` (see
    `common.fit_phases` for `epochs`)."""
    config = run.config
    with run.scope():
        model = simclr.build_classifier(load_encoder(config), config.image_size)

    def prepare(encoder_trainable: bool, learning_rate: float):
        def compile_phase():
            with run.scope():
                simclr.set_encoder_trainable(model, encoder_trainable)
                models.compile_classifier(model, learning_rate, config.jit_compile)

        return compile_phase

    if isinstance(config, FinetuneConfig):
        phases = [
            common.Phase(
                2, config.epochs, config.finetune_learning_rate,
                prepare(True, config.finetune_learning_rate), "encoder fine-tuned",
            )
        ]  # fmt: skip
        if config.freeze_epochs > 0:
            frozen = common.Phase(
                1, config.freeze_epochs, config.learning_rate,
                prepare(False, config.learning_rate), "encoder frozen",
            )  # fmt: skip
            phases.insert(0, frozen)
    else:
        phases = [
            common.Phase(1, config.epochs, config.learning_rate, prepare(False, config.learning_rate))
        ]
    if len(phases) == 1:
        phases[0].number = 1
    return model, common.fit_phases(model, phases, run, sets, epochs=epochs)

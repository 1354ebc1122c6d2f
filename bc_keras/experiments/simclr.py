"""Self-supervised pretraining (SPEC 4) of the report's ResNet-18 or any registry backbone with
SimCLR or BYOL (`bc_keras.models.ssl`), and the classifiers on the encoder: fine-tuning and
linear evaluation, each with the run folder, evaluation and saved .h5 of the other experiments."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from bc_keras import data, evaluation, models, runs, training
from bc_keras.config import (
    ENCODER_NONE,
    MODEL_RESNET18,
    PREPROCESS_RESCALE,
    FinetuneConfig,
    LinearConfig,
    PretrainConfig,
)
from bc_keras.config.values import ENCODER_INIT_RANDOM
from bc_keras.data.augment import SimCLRAugmentation, simclr_pair
from bc_keras.data.pipeline import preprocess_function, shuffled
from bc_keras.errors import ConfigError, DataError, ModelFileError
from bc_keras.evaluation import plots
from bc_keras.experiments import common
from bc_keras.models import card, pretrained, simclr, ssl
from bc_keras.models.resnet import build_resnet18
from bc_keras.training import distribute

KIND_ENCODER = ssl.KIND_SIMCLR_RESNET18
# Pretraining decodes with bilinear resizing; the classifier is fed the same way.
INTERPOLATION = "bilinear"
INITIAL_VALIDATION_FILE = "initial_validation.json"
PRETRAINED_WEIGHTS = "pretrained.weights.h5"
# The validation views are drawn once from this offset of the seed, the same every epoch.
VALIDATION_SEED_OFFSET = 7919
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
            f"the val split of {config.data} has {validation_count} image(s); the validation "
            "loss needs at least 2 (NT-Xent's negatives, BYOL's BatchNorm)"
        )
    return (train, train_count), (validation, validation_count)


def two_view_batches(images, count: int, config: PretrainConfig, preprocess: str, *,
                     batch_size: int, train: bool, start_epoch: int = 0):  # fmt: skip
    """Batches of `(views_1, views_2)`, two augmented views of each uint8 image, preprocessed
    for the encoder; every batch full, so that the step compiles once.

    Training views (`train`) are an endless stream from `start_epoch` (for `fit` with
    `steps_per_epoch`) whose epoch e is shuffled and augmented from (seed, e, image) alone, so
    a run resumed at epoch e sees exactly the views an uninterrupted one would. Validation
    views are drawn once, the same at every epoch.
    """
    augmentation = view_augmentation(config)
    function = preprocess_function(preprocess)

    def pairs(index, image, epoch_seed):
        seed = tf.stack([epoch_seed, tf.cast(index, tf.int64)])
        views = simclr_pair(image, seed, config.image_size, augmentation)
        return views if function is None else tuple(function(view * 255.0) for view in views)

    def one_epoch(epoch):
        epoch_seed = tf.cast(config.seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)
        ordered = shuffled(images, count, epoch_seed) if train else images
        views = ordered.enumerate().map(
            lambda index, image: pairs(index, image, epoch_seed),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return views.batch(batch_size, drop_remainder=True)

    if not train:
        return one_epoch(VALIDATION_SEED_OFFSET).prefetch(tf.data.AUTOTUNE)
    epochs = tf.data.Dataset.range(start_epoch, start_epoch + data.pipeline.ENDLESS)
    return epochs.flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)


def view_augmentation(config: PretrainConfig) -> SimCLRAugmentation:
    """The two-view augmentation of every method (SimCLR's: crop, flip, jitter, blur)."""
    return SimCLRAugmentation(
        crop_scale=(config.crop_scale_min, 1.0),
        jitter_strength=config.jitter_strength,
        blur_probability=config.blur_probability,
    )


def streamed_views(images, count: int, config: PretrainConfig, preprocess: str, **options):
    """SimCLR's views as they have always been drawn (`data.simclr_views`, seeded once per
    run), preprocessed for a registry encoder; views in [0, 1] for ResNet-18."""
    augmentation = view_augmentation(config)
    views = data.simclr_views(images, count, image_size=config.image_size,
                              augmentation=augmentation, seed=config.seed, **options)  # fmt: skip
    function = preprocess_function(preprocess)
    if function is None:
        return views
    return views.map(lambda a, b: (function(a * 255.0), function(b * 255.0)))


def pretraining_data(config: PretrainConfig, method, preprocess: str, start_epoch: int):
    """`(train, validation, steps)`: the method's training and validation views, and the
    training steps of an epoch (None: the stream's own epochs)."""
    (train_images, train_count), (validation_images, validation_count) = pretraining_images(config)
    # A small validation split gets one smaller batch instead of none.
    validation_batch = min(config.batch_size, validation_count)
    options = dict(config=config, preprocess=preprocess)
    if method.indexed_views:
        train = two_view_batches(train_images, train_count, batch_size=config.batch_size,
                                 train=True, start_epoch=start_epoch, **options)  # fmt: skip
        validation = two_view_batches(validation_images, validation_count, train=False,
                                      batch_size=validation_batch, **options)  # fmt: skip
        steps = train_count // config.batch_size
    else:
        train = streamed_views(train_images, train_count, batch_size=config.batch_size,
                               shuffle=True, **options)  # fmt: skip
        validation = streamed_views(validation_images, validation_count, shuffle=False,
                                    batch_size=validation_batch, **options)  # fmt: skip
        steps = None
    print(
        f"{method.title} pretraining on {train_count} unlabelled images, validating the "
        f"{method.loss_title} on {validation_count}"
    )
    return train, validation, steps, train_images


def pretrain(config: PretrainConfig) -> dict:
    """Self-supervised pretraining on unlabelled images (labels unused) with the config's
    method and encoder; the validation loss on the val split; saves the encoder. Returns the
    pretraining summary."""
    method = ssl.get_method(config.method)
    # Read before the run folder exists, so an unavailable start leaves nothing behind, and
    # outside the strategy's scope: only its weights, as arrays, go into the encoder.
    start = encoder_start(config)
    preprocess = ssl.encoder_preprocess(config.encoder_backbone)
    with common.start_run(config) as run:
        backup = run.run_dir / runs.BACKUP_DIR
        start_epoch = training.resumed_epoch(backup) if config.resume else 0
        train, validation, steps, train_images = pretraining_data(
            config, method, preprocess, start_epoch
        )
        if run.chief:
            pairs = streamed_views(train_images.take(4), 4, config, PREPROCESS_RESCALE,
                                   batch_size=4, shuffle=False)  # fmt: skip
            views_a, views_b = next(iter(pairs))
            plots.plot_augmented_pairs(
                views_a.numpy(),
                views_b.numpy(),
                run.run_dir / runs.AUGMENTED_PAIRS_FIGURE,
                title=f"{method.title} augmented pairs",
            )
        with run.scope():
            encoder = ssl.build_encoder(
                config.encoder_backbone, config.image_size, config.alpha, start, run.replicas() > 1
            )
            settings = ssl.TrainerSettings(
                learning_rate=config.learning_rate,
                hidden_dim=config.projection_hidden_dim,
                output_dim=config.projection_dim,
                temperature=config.temperature,
                ema_decay=config.ema_decay,
                total_steps=config.epochs * (steps or 1),
                synchronized_batch_norm=run.replicas() > 1,
                jit_compile=config.jit_compile,
            )
            trainer = method.build_trainer(encoder, settings)
        initial_file = run.run_dir / INITIAL_VALIDATION_FILE
        # Every worker takes the same branches (a distributed evaluate or fit needs them all).
        if not (config.resume and initial_file.exists()):
            # The untrained encoder's validation loss: what pretraining has to improve on.
            with distribute.fit_scope(trainer, run.strategy):
                initial = trainer.evaluate(validation, verbose=0, return_dict=True)
            if run.chief:
                runs.write_json(initial_file, initial)
        trained = backup / PRETRAINED_WEIGHTS
        if config.resume and trained.is_file():
            print("pretraining finished before the interruption; going on")
            trainer.load_weights(trained)
        else:
            # Indexed views come as one endless stream: `steps` batches make an epoch, and an
            # interrupted run that had stopped early trains no further epoch.
            stopped = steps is not None and config.resume and training.stopped_early(backup)
            run.training_started = True
            with distribute.fit_scope(trainer, run.strategy):
                trainer.fit(
                    train,
                    validation_data=validation,
                    epochs=start_epoch if stopped else config.epochs,
                    steps_per_epoch=steps,
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
        return _finish_pretraining(trainer, config, run, initial_file, method, preprocess)


def encoder_start(config: PretrainConfig):
    """The weights `--encoder-init` starts the encoder from: None for a random start; for
    ResNet-18 those of the ImageNet preset or of a local keras-hub preset folder
    (`pretrained.PresetWeights`); for a registry backbone the arrays of Keras' no-top ImageNet
    file or of a local no-top .h5 (`ssl.backbone_start`)."""
    title = ssl.encoder_title(config.encoder_backbone, config.alpha)
    if config.encoder_init == ENCODER_INIT_RANDOM:
        print(f"encoder: {title}, random initialisation")
        return None
    if config.encoder_backbone == MODEL_RESNET18:
        preset = pretrained.load_preset_weights(config.encoder_init)
        normalised = " with its input normalisation" if preset.input_scale is not None else ""
        print(f"encoder: ResNet-18 from {preset.source}{normalised}")
        return preset
    weights = ssl.backbone_start(
        config.encoder_backbone, config.image_size, config.alpha, config.encoder_init
    )
    source = ssl.start_title(config.encoder_backbone, config.encoder_init)
    print(f"encoder: {title} from {source}, fed with its own preprocessing")
    return weights


def encoder_metadata(config: PretrainConfig, preprocess: str, run_dir: Path) -> dict:
    """The .h5 metadata of a pretrained encoder (`ssl.encoder_identity`, then how it was fed
    and trained)."""
    return {
        **ssl.encoder_identity(config.encoder_backbone, config.alpha, config.method),
        "experiment": config.experiment,
        "image_size": config.image_size,
        "preprocess": preprocess,
        "interpolation": INTERPOLATION,
        "encoder_init": config.encoder_init,
        "run_dir": str(run_dir),
    }


def _finish_pretraining(trainer, config, run, initial_file: Path, method, preprocess) -> dict:
    encoder = trainer.encoder
    models.check_finite_weights(encoder)
    if config.encoder_backbone != MODEL_RESNET18:
        # Saved as `build_backbone` builds it (the contract), whatever the strategy was.
        ssl.set_synchronized_batch_norm(encoder, False)
    metadata = encoder_metadata(config, preprocess, run.run_dir)
    evaluation.plot_run_history(
        run.run_dir, title=f"{method.title} pretraining {method.loss_title}"
    )
    summary = pretraining_summary(
        runs.read_history(run.run_dir), json.loads(initial_file.read_text()), method.metrics
    )
    summary = {"method": config.method, **summary}
    images = ", ".join(map(str, config.unlabeled or [config.data]))
    fields = ssl.encoder_card(metadata, summary, {"pretraining images": images})
    encoder_path = models.save_model(encoder, config.model_out, {**metadata, "card": fields})
    title = f"{method.title} {ssl.encoder_title(config.encoder_backbone, config.alpha)} encoder"
    card_file = card.write_card(encoder_path, title, fields)
    summary = {**summary, runs.MODEL_HASH_KEY: runs.file_sha256(encoder_path),
               "model_card": str(card_file)}  # fmt: skip
    runs.write_json(run.run_dir / runs.METRICS_FILE, summary)
    _plot_test_embeddings(encoder, config, run.run_dir, preprocess, method.title)
    runs.finish_backup(run.run_dir)
    print(
        f"\nvalidation {method.loss_title}: {summary['initial_val_loss']:.4f} untrained -> "
        f"{summary['best_val_loss']:.4f} (epoch {summary['best_epoch']})"
        f"\nencoder: {encoder_path}\nhistory and figures: {run.run_dir}"
    )
    return summary


def _plot_test_embeddings(encoder, config: PretrainConfig, run_dir: Path, preprocess: str,
                          title: str) -> None:  # fmt: skip
    test = data.build_dataset(
        config.data,
        data.SUBSET_TEST,
        image_size=config.image_size,
        batch_size=config.batch_size,
        preprocess=preprocess,
        interpolation=INTERPOLATION,
    )
    embeddings = encoder.predict(test.data, verbose=0)
    if len(embeddings) >= 4:
        plots.plot_tsne(
            embeddings,
            test.labels,
            run_dir / runs.TSNE_FIGURE,
            seed=config.seed,
            title=f"t-SNE of test-set {title} embeddings",
        )


def pretraining_summary(history: dict, initial: dict, metrics=("contrastive_accuracy",)) -> dict:
    """The untrained and best validation loss (and the method's `metrics`) of a run."""
    validation = history["val_loss"]
    best = min(range(len(validation)), key=validation.__getitem__)
    summary = {
        "initial_val_loss": float(initial["loss"]),
        "best_val_loss": float(validation[best]),
        "best_epoch": best + 1,
        "epochs_run": len(validation),
    }
    for metric in metrics:
        summary[f"initial_val_{metric}"] = float(initial[metric])
        summary[f"best_val_{metric}"] = float(history[f"val_{metric}"][best])
    return summary


def read_encoder_metadata(config: LinearConfig) -> dict | None:
    """The metadata of the encoder named by --encoder (None for --encoder none), checked to be
    a self-supervised encoder of this image size before anything is loaded.

    Raises:
        ModelFileError: the file is missing, carries code, is not a bc_keras model, is
            another kind of model, or names a method or architecture this version lacks.
        ConfigError: the encoder was pretrained at another image size.
    """
    if config.encoder.lower() == ENCODER_NONE:
        return None
    if not Path(config.encoder).exists():
        raise ModelFileError(
            f"encoder {config.encoder} does not exist; pretrain one with `train_simclr.py "
            "pretrain --data DIR` (or pass --encoder PATH), or use --encoder none"
        )
    metadata = models.read_metadata(config.encoder)
    # Code in the file is refused first, whatever its metadata claims it is.
    models.check_model_file(config.encoder)
    if metadata.get("kind") not in ssl.ENCODER_KINDS:
        raise ModelFileError(
            f"{config.encoder} is a {metadata.get('kind', 'unknown')} model, not a "
            "self-supervised encoder; pass the .h5 saved by `train_simclr.py pretrain`, or "
            "--encoder none"
        )
    if int(metadata["image_size"]) != config.image_size:
        raise ConfigError(
            f"{config.encoder} was pretrained at {metadata['image_size']} px; pass "
            f"--image-size {metadata['image_size']}"
        )
    ssl.check_encoder_file(config.encoder, metadata)
    return metadata


def load_encoder(config: LinearConfig):
    """The pretrained encoder named by --encoder (any method, ResNet-18 or a registry
    backbone), or a fresh ResNet-18 for --encoder none."""
    if read_encoder_metadata(config) is None:
        return build_resnet18(config.image_size)
    encoder, _ = models.load_model(config.encoder)
    return encoder


def train_classifier(config: LinearConfig | FinetuneConfig) -> dict:
    """Linear evaluation (encoder frozen throughout) or fine-tuning (an optional frozen phase,
    then the encoder trains), on one validation split or cross-fitted; saves and evaluates
    the classifier. The images are fed as the encoder's views were (its preprocessing)."""
    encoder = read_encoder_metadata(config)
    method, architecture = ssl.describe_encoder(encoder)
    preprocess = (
        PREPROCESS_RESCALE if encoder is None else encoder.get("preprocess", PREPROCESS_RESCALE)
    )
    interpolation = (
        INTERPOLATION if encoder is None else encoder.get("interpolation", INTERPOLATION)
    )
    print(f"encoder: {config.encoder}" + ("" if encoder is None else f" ({method} {architecture})"))

    def metadata(sets):
        return {
            "architecture": f"{method}_{architecture}",
            "mode": config.experiment.removeprefix("simclr_"),
            "encoder": config.encoder,
            "encoder_method": None if encoder is None else method,
            "encoder_architecture": architecture,
            "label_fraction": config.label_fraction,
            "labelled_images": int(len(sets.train_files.paths)),
            "labelled_benign_share": float(np.mean(sets.train_files.labels == 0)),
        }

    name = ssl.get_method(method).title if encoder is not None else "SimCLR"
    title = (
        f"{name} fine-tuned" if isinstance(config, FinetuneConfig) else f"{name} linear evaluation"
    )
    return common.run_classifier(config, preprocess, interpolation, train_on, metadata, title)


def train_on(run, sets, epochs=None):
    """Builds the encoder + head classifier and trains it on `sets` (see
    `common.fit_phases` for `epochs`)."""
    config = run.config
    method, architecture = ssl.describe_encoder(read_encoder_metadata(config))
    with run.scope():
        model = simclr.build_classifier(
            load_encoder(config), config.image_size, name=ssl.classifier_name(method, architecture)
        )

    def prepare(encoder_trainable: bool, learning_rate: float):
        def compile_phase():
            with run.scope():
                simclr.set_encoder_trainable(model, encoder_trainable)
                models.compile_classifier(
                    model, learning_rate, config.jit_compile, label_smoothing=config.label_smoothing
                )

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
            common.Phase(
                1, config.epochs, config.learning_rate, prepare(False, config.learning_rate)
            )
        ]
    if len(phases) == 1:
        phases[0].number = 1
    return model, common.fit_phases(model, phases, run, sets, epochs=epochs)

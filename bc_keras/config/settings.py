"""Run configurations: one dataclass per experiment, each field declared once with its flag,
and the two recipes filled in on construction (see `bc_keras.config.options`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from bc_keras import backbones
from bc_keras.config.options import (
    BACKBONES,
    CLASS_WEIGHTS,
    CROSS_FIT_ENSEMBLE,
    CROSS_FIT_FINALS,
    GROUP_DATA,
    GROUP_EVALUATION,
    GROUP_MODEL,
    GROUP_OUTPUTS,
    GROUP_ROBUST,
    MONITORS,
    PIPELINE_TFDATA,
    PIPELINES,
    PREPROCESS_BACKBONE,
    PREPROCESS_RESCALE,
    RECIPE_REPORT,
    RECIPE_VALUES,
    RECIPES,
    STRATEGIES,
    STRATEGY_DEFAULT,
    option,
    recipe_option,
    switch,
)
from bc_keras.config.values import check_values, randaugment_value
from bc_keras.errors import ConfigError


@dataclass(kw_only=True)
class RunConfig:
    """What every experiment has: data, sizes, epochs, seed, devices and outputs."""

    EXPERIMENT: ClassVar[str] = ""
    # The smallest input side the experiment's model accepts (its downsampling).
    MIN_IMAGE_SIZE: ClassVar[int] = 8
    experiment: str = ""
    recipe: str = option(
        RECIPE_REPORT,
        "--recipe",
        "'report' reproduces the report value for value; 'robust' sets the defaults of the "
        "robust-recipe flags below (README: Two recipes)",
        GROUP_ROBUST,
        choices=RECIPES,
    )
    data: str = option(
        dataclasses.MISSING,
        "--data",
        "a prepared split: DIR/{train,val,test}/{benign,malignant} from "
        "data_tools/prepare_breakhis.py",
        GROUP_DATA,
        required=True,
    )
    image_size: int = option(224, "--image-size", "input side in pixels", GROUP_DATA)
    batch_size: int = option(32, "--batch-size", "images per batch", GROUP_DATA)
    epochs: int = option(100, "--epochs", "maximum epochs")
    learning_rate: float = option(1e-3, "--lr", "Adam learning rate")
    patience: int = option(5, "--patience", "EarlyStopping patience (epochs)")
    seed: int = option(42, "--seed", "seeds Python, NumPy, TensorFlow, data order, augmentation")
    mixed_precision: bool = switch(
        "--mixed-precision",
        "mixed_float16 compute (GPUs with tensor cores); the sigmoid output stays float32",
    )
    jit_compile: bool = switch("--jit-compile", "compile the training step with XLA")
    tensorboard: bool | None = recipe_option(
        "--tensorboard",
        "write TensorBoard logs (scalars, learning rate, hyper-parameters, phase boundaries) "
        "under the run folder's tensorboard/",
        boolean=True,
    )
    strategy: str = option(
        STRATEGY_DEFAULT,
        "--strategy",
        "tf.distribute strategy: 'mirrored' trains on all local GPUs; 'multiworker' on several "
        "machines described by TF_CONFIG (the chief writes the outputs)",
        choices=STRATEGIES,
    )
    run_dir: str | None = option(
        None,
        "--run-dir",
        "run folder for config, history, metrics, predictions and figures (default: "
        "runs/<experiment>/<timestamp>)",
        GROUP_OUTPUTS,
    )
    model_out: str = option(
        "",
        "--model-out",
        "where the trained model is saved: a .h5 (HDF5, the default) or a .keras (Keras' native "
        "archive); bc_keras' metadata travels inside either",
        GROUP_OUTPUTS,
    )
    resume: bool = switch(
        "--resume",
        "continue an interrupted run from its last completed epoch (the --run-dir, or the newest "
        "interrupted run); refused if a setting that changes the run differs",
        GROUP_OUTPUTS,
    )

    def __post_init__(self):
        self.experiment = self.EXPERIMENT
        if self.image_size < self.MIN_IMAGE_SIZE:
            raise ConfigError(
                f"--image-size {self.image_size} is below the {self.MIN_IMAGE_SIZE} px this "
                f"experiment's model needs (it downsamples {self.MIN_IMAGE_SIZE}x); pass "
                f"--image-size {self.MIN_IMAGE_SIZE} or more"
            )
        # The recipe fills the fields left unset, so a config built in Python is as complete
        # as one built from flags, and its values pass the rules the flags have.
        self.resolve_recipe()
        check_values(self)

    def run_name(self) -> str:
        """The folder name under runs/ for this experiment."""
        return self.experiment

    def resolve_recipe(self) -> None:
        """Fills every field left None with the value of the chosen recipe."""
        if self.recipe not in RECIPES:
            raise ConfigError(
                f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}"
            )
        for name, value in RECIPE_VALUES[self.recipe].items():
            if hasattr(self, name) and getattr(self, name) is None:
                setattr(self, name, value)


@dataclass(kw_only=True)
class ClassifierConfig(RunConfig):
    """A binary classifier trained with BCE: pipelines, augmentation, evaluation, robust parts."""

    pipeline: str = option(
        PIPELINE_TFDATA,
        "--pipeline",
        "'generator' is the report's ImageDataGenerator; 'tfdata' gives the same tensors, faster",
        GROUP_DATA,
        choices=PIPELINES,
    )
    augment: bool = option(
        True,
        "--no-augment",
        "train without rotation/shift/zoom/flip augmentation",
        GROUP_DATA,
        action="store_false",
    )
    label_fraction: float = option(
        1.0,
        "--label-fraction",
        "train on this share of the training labels, drawn per class and by whole patients "
        "(e.g. 0.1 for the report's 10% labels)",
        GROUP_DATA,
    )
    mixup: float = option(
        0.0,
        "--mixup",
        "MixUp (Zhang et al. 2018): blend each training image with another of its batch, "
        "keeping a share drawn from Beta(ALPHA, ALPHA), labels and class weights alike (0.2-0.4 "
        "is usual; 0 = off; tf.data pipeline)",
        GROUP_DATA,
        metavar="ALPHA",
    )
    cutmix: float = option(
        0.0,
        "--cutmix",
        "CutMix (Yun et al. 2019): paste a box of another training image of the batch over "
        "each, its area share 1 - lam with lam ~ Beta(ALPHA, ALPHA), labels mixed by area (1.0 "
        "is usual; with --mixup one of the two per batch; 0 = off; tf.data pipeline)",
        GROUP_DATA,
        metavar="ALPHA",
    )
    randaugment: list[int] | None = option(
        None,
        "--randaugment",
        "RandAugment (Cubuk et al. 2020) for H&E: each training image takes N operations drawn "
        "from rotations, flips, shear, translation, contrast, brightness, sharpness, posterize "
        "and HED stain jitter, at magnitude M in 0..10 (e.g. 2 5; default: off; tf.data "
        "pipeline)",
        GROUP_DATA,
        nargs=2,
        type=int,
        metavar=("N", "M"),
    )
    label_smoothing: float = option(
        0.0,
        "--label-smoothing",
        "train on the targets y (1 - EPS) + EPS / 2, the binary form of label smoothing "
        "(Szegedy et al. 2016); 0 = off",
        metavar="EPS",
    )
    class_weight: str | None = recipe_option(
        "--class-weight",
        "'balanced' weights each class by n / (2 n_class) on the training split",
        choices=CLASS_WEIGHTS,
    )
    monitor: str | None = recipe_option(
        "--monitor",
        "what early stopping and model selection watch on the validation split",
        choices=MONITORS,
    )
    recalibrate_bn: bool | None = recipe_option(
        "--recalibrate-bn",
        "re-estimate the moving statistics of trainable BatchNorm layers on un-augmented "
        "training batches before each validation and before saving",
        boolean=True,
    )
    stain_augment: float | None = recipe_option(
        "--stain-augment",
        "H&E stain augmentation strength sigma (Tellez et al. 2018; 0 = off)",
        metavar="STRENGTH",
    )
    tta: bool | None = recipe_option(
        "--tta", "test-time augmentation: average the 8 flips and 90-degree rotations", boolean=True
    )
    threshold: float | str | None = option(
        None,
        "--threshold",
        "probability at or above which an image is malignant: a number, or 'youden' / "
        "'balanced_accuracy' to choose it on the validation split; stored in the model",
        GROUP_EVALUATION,
    )
    tune_threshold: bool = switch(
        "--tune-threshold",
        "also report metrics at the threshold maximising Youden's J on the validation split",
        GROUP_EVALUATION,
    )
    cross_fit: int | None = recipe_option(
        "--cross-fit",
        "K >= 2: split train + val into K patient-grouped, class-stratified folds, train one "
        "model per fold (each keeping its epoch and phase by its own held-out fold), choose "
        "--threshold on the out-of-fold probabilities of every train + val patient, and keep "
        "--cross-fit-final; 0 = one model chosen on the val split",
        metavar="K",
    )
    cross_fit_final: str = option(
        CROSS_FIT_ENSEMBLE,
        "--cross-fit-final",
        "with --cross-fit: 'ensemble' saves one .h5 averaging the K fold models' probabilities; "
        "'refit' trains one model on all of train + val for the median of the folds' selected "
        "epochs (per phase)",
        GROUP_ROBUST,
        choices=CROSS_FIT_FINALS,
    )

    teacher: str | None = option(
        None,
        "--teacher",
        "knowledge distillation (Hinton et al. 2015): train on the labels mixed with this "
        "classifier .h5's softened probabilities of the same augmented images",
        GROUP_MODEL,
        metavar="MODEL.h5",
    )
    distill_alpha: float = option(
        0.5,
        "--distill-alpha",
        "with --teacher: weight of the label loss; 1 - alpha weighs the teacher's (0..1)",
        GROUP_MODEL,
    )
    distill_temperature: float = option(
        4.0,
        "--distill-temperature",
        "with --teacher: the temperature T both logits are divided by (the soft loss is "
        "scaled by T^2)",
        GROUP_MODEL,
    )

    def __post_init__(self):
        super().__post_init__()
        if self.cross_fit == 1 or self.cross_fit < 0:
            raise ConfigError(
                f"--cross-fit {self.cross_fit} is not a number of folds; pass --cross-fit 2 or "
                "more (5 is usual), or 0 for the single validation split"
            )
        self.check_training_techniques()

    def check_training_techniques(self) -> None:
        """Refuses --randaugment values out of range, the batch techniques with the report's
        generator (which has none of them), and --label-smoothing with --teacher (whose
        distillation loss replaces the smoothed one)."""
        if self.randaugment is not None:
            self.randaugment = randaugment_value(self.randaugment)
        used = [flag for flag, on in (("--mixup", self.mixup), ("--cutmix", self.cutmix),
                                      ("--randaugment", self.randaugment)) if on]  # fmt: skip
        if used and self.pipeline != PIPELINE_TFDATA:
            raise ConfigError(
                f"{' and '.join(used)} need --pipeline tfdata: the report's ImageDataGenerator "
                f"has no batch mixing nor these seeded batch operations; pass --pipeline tfdata "
                f"or drop {used[0]}"
            )
        if self.label_smoothing and self.teacher is not None:
            raise ConfigError(
                "--label-smoothing does not combine with --teacher: the distillation loss "
                "replaces the smoothed cross-entropy (the teacher's soft targets soften the "
                "labels already); drop one of them"
            )


@dataclass(kw_only=True)
class DenseHeadConfig(ClassifierConfig):
    """A classifier whose head has a hidden Dense(ReLU) layer."""

    dense_units: int = option(
        128,
        "--dense-units",
        "hidden Dense units (the report's CNN text also says 256)",
        GROUP_MODEL,
    )


@dataclass(kw_only=True)
class TwoPhaseConfig(ClassifierConfig):
    """A classifier trained in two phases: frozen features at --lr, then all layers."""

    FLAG_ALIASES: ClassVar[dict] = {"finetune_learning_rate": ("--lr2",)}
    finetune_learning_rate: float = option(
        1e-4, "--finetune-lr", "Adam learning rate of phase 2, once the backbone or encoder trains"
    )


@dataclass(kw_only=True)
class CNNConfig(DenseHeadConfig):
    """The report's baseline CNN (SPEC 4)."""

    EXPERIMENT: ClassVar[str] = "cnn"
    model_out: str = "models/cnn_model_breast_cancer.h5"
    dropout: float = option(0.5, "--dropout", "dropout before the output", GROUP_MODEL)
    batch_norm_momentum: float = option(
        0.99,
        "--bn-momentum",
        "BatchNorm moving-average momentum (Keras' default, as the report); 0.9 suits small "
        "datasets whose epochs have few steps",
        GROUP_MODEL,
    )
    reduce_lr_patience: int = option(3, "--reduce-lr-patience", "ReduceLROnPlateau patience")
    reduce_lr_factor: float = option(0.5, "--reduce-lr-factor", "ReduceLROnPlateau factor")
    min_learning_rate: float = option(1e-6, "--min-lr", "ReduceLROnPlateau floor")


@dataclass(kw_only=True)
class TransferConfig(DenseHeadConfig, TwoPhaseConfig):
    """Two-phase transfer learning from a keras.applications backbone (SPEC 4)."""

    EXPERIMENT: ClassVar[str] = "transfer"
    MIN_IMAGE_SIZE: ClassVar[int] = 32
    FLAG_ALIASES: ClassVar[dict] = {
        "learning_rate": ("--lr1",),
        "finetune_learning_rate": ("--lr2",),
    }
    model_out: str = "models/transfer_model_<backbone>_breast_cancer.h5"
    patience: int = 15
    backbone: str = option(
        dataclasses.MISSING,
        "--backbone",
        "the ImageNet backbone",
        GROUP_MODEL,
        required=True,
        choices=BACKBONES,
    )
    alpha: float = option(
        1.0,
        "--alpha",
        "the width multiplier of backbones that have one (ImageNet weights exist for "
        + "; ".join(
            f"{b.name}: {', '.join(str(a) for a, _ in b.alphas)}"
            for b in backbones.BACKBONES.values()
            if b.has_alpha
        )
        + ")",
        GROUP_MODEL,
    )
    weights: str = option(
        "imagenet",
        "--weights",
        "'imagenet' (from Keras' cache, ~/.keras/models or $KERAS_HOME/models; downloaded if "
        "online), 'none' (random initialisation), or the PATH of a local no-top .h5",
        GROUP_MODEL,
    )
    preprocess: str | None = recipe_option(
        "--preprocess",
        "'rescale' is the report's 1/255; 'backbone' is the backbone's own preprocess_input. "
        "Stored in the model so predict.py applies it",
        choices=(PREPROCESS_RESCALE, PREPROCESS_BACKBONE),
    )
    phase1_epochs: int | None = option(
        None, "--phase1-epochs", "maximum epochs of phase 1, frozen backbone (default: --epochs)"
    )
    phase2_epochs: int | None = option(
        None, "--phase2-epochs", "maximum epochs of phase 2, fine-tuning (default: --epochs)"
    )

    def __post_init__(self):
        super().__post_init__()
        self.weights = "none" if self.weights.lower() == "none" else self.weights
        self.model_out = self.model_out.replace("<backbone>", self.backbone)
        self.phase1_epochs = self.phase1_epochs or self.epochs
        self.phase2_epochs = self.phase2_epochs or self.epochs
        backbones.get_backbone(self.backbone).check_alpha(self.alpha)

    def resolve_recipe(self) -> None:
        super().resolve_recipe()
        if self.preprocess == PREPROCESS_BACKBONE:
            self.preprocess = self.backbone

    def run_name(self) -> str:
        return f"transfer_{self.backbone}"

    @property
    def freeze_batchnorm(self) -> bool:
        """Pretrained BatchNorm statistics are kept (inference mode); random ones train."""
        return self.weights.lower() != "none"


def config_values(config) -> dict:
    """A config as plain JSON-ready values (what config.json records)."""
    return dataclasses.asdict(config)

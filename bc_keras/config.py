"""Run configurations: one dataclass per experiment, each field declared once with its flag,
and the two recipes (the report's values, and the robust practice of SPEC section 6).

A field's metadata says how the scripts expose it (`option`): flag name, help, group, type.
Subclasses change a default by redeclaring the field with a new default and no metadata; the
flag and help are inherited (`field_options` walks the class hierarchy).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from bc_keras.errors import ConfigError

RECIPE_REPORT = "report"
RECIPE_ROBUST = "robust"
RECIPES = (RECIPE_REPORT, RECIPE_ROBUST)
PIPELINE_GENERATOR = "generator"
PIPELINE_TFDATA = "tfdata"
PIPELINES = (PIPELINE_GENERATOR, PIPELINE_TFDATA)
STRATEGY_DEFAULT = "default"
STRATEGY_MIRRORED = "mirrored"
STRATEGY_MULTIWORKER = "multiworker"
STRATEGIES = (STRATEGY_DEFAULT, STRATEGY_MIRRORED, STRATEGY_MULTIWORKER)
CLASS_WEIGHT_NONE = "none"
CLASS_WEIGHT_BALANCED = "balanced"
CLASS_WEIGHTS = (CLASS_WEIGHT_NONE, CLASS_WEIGHT_BALANCED)
MONITOR_LOSS = "val_loss"
MONITOR_AUC = "val_auc"
MONITORS = (MONITOR_LOSS, MONITOR_AUC)
THRESHOLD_YOUDEN = "youden"
THRESHOLD_BALANCED_ACCURACY = "balanced_accuracy"
THRESHOLD_METHODS = (THRESHOLD_YOUDEN, THRESHOLD_BALANCED_ACCURACY)
PREPROCESS_RESCALE = "rescale"
PREPROCESS_BACKBONE = "backbone"
ENCODER_NONE = "none"
GROUP_DATA, GROUP_MODEL, GROUP_TRAINING, GROUP_ROBUST = "data", "model", "training", "robust"
GROUP_OUTPUTS, GROUP_EVALUATION = "outputs", "evaluation"

# The value each recipe gives a field left unset on the command line. `report` is the report,
# value for value; `robust` is what the README's "Two recipes" section justifies part by part.
RECIPE_VALUES = {
    RECIPE_REPORT: {
        "class_weight": CLASS_WEIGHT_NONE,
        "monitor": MONITOR_LOSS,
        "recalibrate_bn": False,
        "stain_augment": 0.0,
        "threshold": 0.5,
        "tta": False,
        "preprocess": PREPROCESS_RESCALE,
    },
    RECIPE_ROBUST: {
        "class_weight": CLASS_WEIGHT_BALANCED,
        "monitor": MONITOR_AUC,
        "recalibrate_bn": True,
        "stain_augment": 0.05,
        "threshold": THRESHOLD_YOUDEN,
        "tta": True,
        "preprocess": PREPROCESS_BACKBONE,
    },
}


def option(default=dataclasses.MISSING, *, flag: str, help: str, group: str = GROUP_TRAINING,
           **argparse_options):  # fmt: skip
    """A config field exposed as the command-line `flag` (extra keywords go to argparse)."""
    metadata = {"flag": flag, "help": help, "group": group, **argparse_options}
    return dataclasses.field(default=default, metadata=metadata)


def field_options(config_class, name: str) -> dict:
    """The flag metadata of a field, from the first class in the hierarchy that declares it."""
    for klass in config_class.__mro__:
        fields = getattr(klass, "__dataclass_fields__", {})
        if name in fields and fields[name].metadata:
            return dict(fields[name].metadata)
    return {}


@dataclass(kw_only=True)
class RunConfig:
    """What every experiment has: data, sizes, epochs, seed, devices and outputs."""

    EXPERIMENT: ClassVar[str] = ""
    experiment: str = ""
    recipe: str = option(
        RECIPE_REPORT,
        flag="--recipe",
        choices=RECIPES,
        group=GROUP_ROBUST,
        help="'report' reproduces the report value for value; 'robust' sets the defaults of the "
        "robust-recipe flags below (README: Two recipes)",
    )
    data: str = option(
        flag="--data",
        group=GROUP_DATA,
        required=True,
        help="a prepared split: DIR/{train,val,test}/{benign,malignant} from "
        "data_tools/prepare_breakhis.py",
    )
    image_size: int = option(
        224, flag="--image-size", group=GROUP_DATA, help="input side in pixels"
    )
    batch_size: int = option(32, flag="--batch-size", group=GROUP_DATA, help="images per batch")
    epochs: int = option(100, flag="--epochs", help="maximum epochs")
    learning_rate: float = option(1e-3, flag="--lr", help="Adam learning rate")
    patience: int = option(5, flag="--patience", help="EarlyStopping patience (epochs)")
    seed: int = option(
        42, flag="--seed", help="seeds Python, NumPy, TensorFlow, the data order and augmentation"
    )
    mixed_precision: bool = option(
        False,
        flag="--mixed-precision",
        action="store_true",
        help="mixed_float16 compute (GPUs with tensor cores); the sigmoid output stays float32",
    )
    jit_compile: bool = option(
        False,
        flag="--jit-compile",
        action="store_true",
        help="compile the training step with XLA",
    )
    strategy: str = option(
        STRATEGY_DEFAULT,
        flag="--strategy",
        choices=STRATEGIES,
        help="tf.distribute strategy: 'mirrored' trains on all local GPUs; 'multiworker' on "
        "several machines described by TF_CONFIG (the chief writes the outputs)",
    )
    run_dir: str | None = option(
        None,
        flag="--run-dir",
        group=GROUP_OUTPUTS,
        help="run folder for config, history, metrics, predictions and figures (default: "
        "runs/<experiment>/<timestamp>)",
    )
    model_out: str = option(
        "", flag="--model-out", group=GROUP_OUTPUTS, help="where the trained .h5 model is saved"
    )
    resume: bool = option(
        False,
        flag="--resume",
        group=GROUP_OUTPUTS,
        action="store_true",
        help="continue an interrupted run from its last completed epoch (the --run-dir, or the "
        "newest interrupted run); refused if a setting that changes the run differs",
    )

    def __post_init__(self):
        self.experiment = self.EXPERIMENT

    def run_name(self) -> str:
        """The folder name under runs/ for this experiment."""
        return self.experiment

    def resolve_recipe(self) -> None:
        """Fills every field left None with the value of the chosen recipe."""
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}. Received: recipe={self.recipe!r}")
        for name, value in RECIPE_VALUES[self.recipe].items():
            if hasattr(self, name) and getattr(self, name) is None:
                setattr(self, name, value)


@dataclass(kw_only=True)
class ClassifierConfig(RunConfig):
    """A binary classifier trained with BCE: pipelines, augmentation, evaluation, robust parts."""

    pipeline: str = option(
        PIPELINE_TFDATA,
        flag="--pipeline",
        group=GROUP_DATA,
        choices=PIPELINES,
        help="'generator' is the report's ImageDataGenerator; 'tfdata' gives the same tensors, "
        "faster",
    )
    augment: bool = option(
        True,
        flag="--no-augment",
        action="store_false",
        group=GROUP_DATA,
        help="train without rotation/shift/zoom/flip augmentation",
    )
    class_weight: str | None = option(
        None,
        flag="--class-weight",
        choices=CLASS_WEIGHTS,
        group=GROUP_ROBUST,
        help="'balanced' weights each class by n / (2 n_class) on the training split",
    )
    monitor: str | None = option(
        None,
        flag="--monitor",
        choices=MONITORS,
        group=GROUP_ROBUST,
        help="what early stopping and model selection watch on the validation split",
    )
    recalibrate_bn: bool | None = option(
        None,
        flag="--recalibrate-bn",
        group=GROUP_ROBUST,
        boolean=True,
        help="re-estimate the moving statistics of trainable BatchNorm layers on un-augmented "
        "training batches before each validation and before saving",
    )
    stain_augment: float | None = option(
        None,
        flag="--stain-augment",
        group=GROUP_ROBUST,
        metavar="STRENGTH",
        help="H&E stain augmentation strength sigma (Tellez et al. 2018; 0 = off)",
    )
    tta: bool | None = option(
        None,
        flag="--tta",
        group=GROUP_ROBUST,
        boolean=True,
        help="test-time augmentation: average the 8 flips and 90-degree rotations",
    )
    threshold: float | str | None = option(
        None,
        flag="--threshold",
        group=GROUP_EVALUATION,
        help="probability at or above which an image is malignant: a number, or 'youden' / "
        "'balanced_accuracy' to choose it on the validation split; stored in the model",
    )
    tune_threshold: bool = option(
        False,
        flag="--tune-threshold",
        action="store_true",
        group=GROUP_EVALUATION,
        help="also report metrics at the threshold maximising Youden's J on the validation split",
    )


@dataclass(kw_only=True)
class DenseHeadConfig(ClassifierConfig):
    """A classifier whose head has a hidden Dense(ReLU) layer."""

    dense_units: int = option(
        128,
        flag="--dense-units",
        group=GROUP_MODEL,
        help="units of the hidden Dense layer (the report's CNN text also says 256)",
    )


@dataclass(kw_only=True)
class TwoPhaseConfig(ClassifierConfig):
    """A classifier trained in two phases: frozen features at --lr, then all layers."""

    FLAG_ALIASES: ClassVar[dict] = {"finetune_learning_rate": ("--lr2",)}
    finetune_learning_rate: float = option(
        1e-4,
        flag="--finetune-lr",
        help="Adam learning rate of phase 2, once the backbone or encoder trains",
    )


@dataclass(kw_only=True)
class CNNConfig(DenseHeadConfig):
    """The report's baseline CNN (SPEC 4)."""

    EXPERIMENT: ClassVar[str] = "cnn"
    model_out: str = "models/cnn_model_breast_cancer.h5"
    dropout: float = option(
        0.5, flag="--dropout", group=GROUP_MODEL, help="dropout before the output"
    )
    batch_norm_momentum: float = option(
        0.99,
        flag="--bn-momentum",
        group=GROUP_MODEL,
        help="BatchNorm moving-average momentum (Keras' default, as the report); 0.9 suits small "
        "datasets whose epochs have few steps",
    )
    reduce_lr_patience: int = option(
        3, flag="--reduce-lr-patience", help="ReduceLROnPlateau patience"
    )
    reduce_lr_factor: float = option(
        0.5, flag="--reduce-lr-factor", help="ReduceLROnPlateau factor"
    )
    min_learning_rate: float = option(1e-6, flag="--min-lr", help="ReduceLROnPlateau floor")


@dataclass(kw_only=True)
class TransferConfig(DenseHeadConfig, TwoPhaseConfig):
    """Two-phase transfer learning from a keras.applications backbone (SPEC 4)."""

    EXPERIMENT: ClassVar[str] = "transfer"
    FLAG_ALIASES: ClassVar[dict] = {
        "learning_rate": ("--lr1",),
        "finetune_learning_rate": ("--lr2",),
    }
    model_out: str = "models/transfer_model_<backbone>_breast_cancer.h5"
    patience: int = 15
    backbone: str = option(flag="--backbone", group=GROUP_MODEL, required=True, help="the backbone")
    alpha: float = option(
        1.0,
        flag="--alpha",
        group=GROUP_MODEL,
        help="MobileNet's width multiplier (0.25, 0.5, 0.75 or 1.0 have ImageNet weights)",
    )
    weights: str = option(
        "imagenet",
        flag="--weights",
        group=GROUP_MODEL,
        help="'imagenet' (from Keras' cache, ~/.keras/models or $KERAS_HOME/models; downloaded "
        "if online), 'none' (random initialisation), or the PATH of a local no-top .h5",
    )
    preprocess: str | None = option(
        None,
        flag="--preprocess",
        group=GROUP_MODEL,
        choices=(PREPROCESS_RESCALE, PREPROCESS_BACKBONE),
        help="'rescale' is the report's 1/255; 'backbone' is the backbone's own preprocess_input. "
        "Stored in the model so predict.py applies it",
    )
    phase1_epochs: int | None = option(
        None,
        flag="--phase1-epochs",
        help="maximum epochs of phase 1, frozen backbone (default: --epochs)",
    )
    phase2_epochs: int | None = option(
        None,
        flag="--phase2-epochs",
        help="maximum epochs of phase 2, fine-tuning (default: --epochs)",
    )

    def __post_init__(self):
        super().__post_init__()
        self.weights = "none" if self.weights.lower() == "none" else self.weights
        self.model_out = self.model_out.replace("<backbone>", self.backbone)
        self.phase1_epochs = self.phase1_epochs or self.epochs
        self.phase2_epochs = self.phase2_epochs or self.epochs
        if self.backbone != "mobilenet" and self.alpha != 1.0:
            raise ConfigError(
                f"--alpha (the width multiplier) applies to mobilenet only; drop it for "
                f"{self.backbone}"
            )

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


@dataclass(kw_only=True)
class PretrainConfig(RunConfig):
    """SimCLR contrastive pretraining of the ResNet-18 encoder (SPEC 4)."""

    EXPERIMENT: ClassVar[str] = "simclr_pretrain"
    model_out: str = "models/simclr_resnet18_encoder.h5"
    batch_size: int = 96
    patience: int = 15
    temperature: float = option(0.5, flag="--temperature", help="NT-Xent temperature")
    projection_hidden_dim: int = option(
        256, flag="--projection-hidden-dim", group=GROUP_MODEL, help="projection MLP width"
    )
    projection_dim: int = option(
        128, flag="--projection-dim", group=GROUP_MODEL, help="projection output size"
    )
    crop_scale_min: float = option(
        0.2, flag="--crop-scale-min", help="smallest random-crop area, as a fraction of the image"
    )
    jitter_strength: float = option(0.5, flag="--jitter-strength", help="colour jitter strength s")
    blur_probability: float = option(
        0.5, flag="--blur-probability", help="probability of a Gaussian blur"
    )


@dataclass(kw_only=True)
class LinearConfig(ClassifierConfig):
    """A Dense(1, sigmoid) head on a frozen SimCLR (or random) encoder: linear evaluation."""

    EXPERIMENT: ClassVar[str] = "simclr_linear"
    model_out: str = "models/simclr_resnet18_breast_cancer.h5"
    patience: int = 15
    encoder: str = option(
        "models/simclr_resnet18_encoder.h5",
        flag="--encoder",
        group=GROUP_MODEL,
        help=f"pretrained encoder .h5 from `train_simclr.py pretrain`, or '{ENCODER_NONE}' for "
        "a randomly initialised encoder (the no-pretraining comparison)",
    )
    label_fraction: float = option(
        1.0,
        flag="--label-fraction",
        group=GROUP_DATA,
        help="train on this share of the training labels, drawn per class and by whole patients "
        "(e.g. 0.1 for the report's 10% labels)",
    )


@dataclass(kw_only=True)
class FinetuneConfig(LinearConfig, TwoPhaseConfig):
    """The SimCLR encoder fine-tuned with a Dense(1, sigmoid) head, optionally frozen first."""

    EXPERIMENT: ClassVar[str] = "simclr_finetune"
    freeze_epochs: int = option(
        0, flag="--freeze-epochs", help="epochs with the encoder frozen before it is fine-tuned"
    )


def config_values(config) -> dict:
    """A config as plain JSON-ready values (what config.json records)."""
    return dataclasses.asdict(config)

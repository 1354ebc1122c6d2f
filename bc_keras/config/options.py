"""The vocabulary of the configs: mode constants, flag groups, the two recipes (the report's
values, and the robust practice of SPEC section 6), and the field helpers.

A field's metadata says how the scripts expose it (`option`): flag name, help, group, type.
Subclasses change a default by redeclaring the field with a new default and no metadata; the
flag and help are inherited (`field_options` walks the class hierarchy).
"""

from __future__ import annotations

import dataclasses

from bc_keras import backbones

RECIPES = RECIPE_REPORT, RECIPE_ROBUST = ("report", "robust")
PIPELINES = PIPELINE_GENERATOR, PIPELINE_TFDATA = ("generator", "tfdata")
STRATEGIES = STRATEGY_DEFAULT, STRATEGY_MIRRORED, STRATEGY_MULTIWORKER = (
    "default", "mirrored", "multiworker",
)  # fmt: skip
CLASS_WEIGHTS = CLASS_WEIGHT_NONE, CLASS_WEIGHT_BALANCED = ("none", "balanced")
MONITORS = MONITOR_LOSS, MONITOR_AUC = ("val_loss", "val_auc")
THRESHOLD_METHODS = THRESHOLD_YOUDEN, THRESHOLD_BALANCED_ACCURACY = ("youden", "balanced_accuracy")
PREPROCESS_RESCALE, PREPROCESS_BACKBONE, ENCODER_NONE = "rescale", "backbone", "none"
# What a cross-fitted run keeps (issue 18): the mean of its K fold models, or one model refitted
# on all of train + val for the folds' median epochs.
CROSS_FIT_FINALS = CROSS_FIT_ENSEMBLE, CROSS_FIT_REFIT = ("ensemble", "refit")
# The keras.applications backbones of transfer learning (SPEC 4): the registry's names (a
# live view, so a backbone registered later is a valid choice too).
BACKBONES = backbones.BACKBONES.keys()
MODEL_CNN, MODEL_RESNET18 = "cnn", "resnet18"
# The self-supervised objectives of `train_simclr.py pretrain --method` (issue 21).
SSL_METHODS = SSL_METHOD_SIMCLR, SSL_METHOD_BYOL = ("simclr", "byol")
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
        "cross_fit": 0,
        "tensorboard": False,
        # The report's SimCLR encoder is "a ResNet-18 pretrained on ImageNet".
        "encoder_init": "imagenet",
    },
    RECIPE_ROBUST: {
        "class_weight": CLASS_WEIGHT_BALANCED,
        "monitor": MONITOR_AUC,
        "recalibrate_bn": True,
        "stain_augment": 0.05,
        "threshold": THRESHOLD_YOUDEN,
        "tta": True,
        "preprocess": PREPROCESS_BACKBONE,
        "cross_fit": 0,
        "tensorboard": True,
        # An ImageNet start, as for every transfer backbone: a few thousand patches are little
        # to learn low-level filters from (offline: --encoder-init PATH or random).
        "encoder_init": "imagenet",
    },
}


def option(default, flag: str, help: str, group: str = GROUP_TRAINING, **argparse_options):
    """A config field exposed as the command-line `flag` (extra keywords go to argparse)."""
    metadata = {"flag": flag, "help": help, "group": group, **argparse_options}
    return dataclasses.field(default=default, metadata=metadata)


def switch(flag: str, help: str, group: str = GROUP_TRAINING):
    """A boolean field, False unless its flag is given."""
    return option(False, flag, help, group, action="store_true")


def recipe_option(flag: str, help: str, **argparse_options):
    """A robust-recipe field: left unset (None) on the command line, the recipe fills it."""
    return option(None, flag, help, GROUP_ROBUST, **argparse_options)


def field_options(config_class, name: str) -> dict:
    """The flag metadata of a field, from the first class in the hierarchy that declares it."""
    for klass in config_class.__mro__:
        fields = getattr(klass, "__dataclass_fields__", {})
        if name in fields and fields[name].metadata:
            return dict(fields[name].metadata)
    return {}

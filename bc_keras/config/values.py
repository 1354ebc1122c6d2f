"""The rules a config field's value must follow: argparse types for the flags, and the same
checks for configs built in Python (`check_values`), so that both refuse a bad value with the
same words before any run folder is written."""

from __future__ import annotations

import argparse
import dataclasses

from bc_keras.config.options import BACKBONES, THRESHOLD_METHODS, field_options
from bc_keras.errors import ConfigError

# Where the SimCLR encoder starts (`--encoder-init`): these, or a keras-hub preset folder.
ENCODER_INITS = ENCODER_INIT_RANDOM, ENCODER_INIT_IMAGENET = ("random", "imagenet")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def smoothing_value(text: str) -> float:
    """A label-smoothing epsilon: 0 (off) up to, not including, 1 (every target 0.5)."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


# RandAugment's ranges (bc_keras.data.randaugment, which imports TensorFlow, keeps the same).
RANDAUGMENT_MAX_LAYERS, RANDAUGMENT_MAX_MAGNITUDE = 14, 10


def randaugment_value(values) -> list[int]:
    """`--randaugment N M` as `[N, M]`: N operations per image in 1..14, magnitude M in 0..10.

    Raises:
        ConfigError: naming the flag, the values and the ranges.
    """
    rule = (
        f"N (operations per image) must be in 1..{RANDAUGMENT_MAX_LAYERS} and M (magnitude) "
        f"in 0..{RANDAUGMENT_MAX_MAGNITUDE}; pass e.g. --randaugment 2 5"
    )
    shown = " ".join(map(str, values)) if isinstance(values, list | tuple) else repr(values)
    if not isinstance(values, list | tuple) or len(values) != 2:
        raise ConfigError(f"--randaugment {shown}: two integers N M are needed; {rule}")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ConfigError(f"--randaugment {shown}: N and M are integers; {rule}")
    layers, magnitude = values
    if not (1 <= layers <= RANDAUGMENT_MAX_LAYERS and 0 <= magnitude <= RANDAUGMENT_MAX_MAGNITUDE):
        raise ConfigError(f"--randaugment {shown}: out of range; {rule}")
    return [int(layers), int(magnitude)]


def threshold_value(text: str) -> float | str:
    """A probability in (0, 1), or the name of a method choosing it on validation."""
    name = text.strip().lower().replace("-", "_")
    if name in THRESHOLD_METHODS:
        return name
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(
            f"must be a probability in (0, 1) or one of {', '.join(THRESHOLD_METHODS)}, got {text}"
        )
    return value


def encoder_init_value(text: str) -> str:
    """'random' or 'imagenet' (any case), else the path of a keras-hub preset folder as given
    (checked when it is read, so a config can name a folder of another machine)."""
    name = text.strip()
    if name.lower() in ENCODER_INITS:
        return name.lower()
    if not name:
        raise argparse.ArgumentTypeError(
            f"must be {' or '.join(ENCODER_INITS)} or the PATH of a keras-hub preset folder, "
            f"got {text!r}"
        )
    return name


def file_path_value(text: str) -> str:
    """A file's path as given, not empty (whether the file is usable is checked when read)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must be the PATH of a file, got {text!r}")
    return text


# Argparse types by field name where the annotation alone is not precise enough; configs
# built in Python are checked with the same rules (`check_values`).
FIELD_TYPES = {
    "image_size": positive_int,
    "batch_size": positive_int,
    "epochs": positive_int,
    "patience": positive_int,
    "reduce_lr_patience": positive_int,
    "dense_units": positive_int,
    "projection_hidden_dim": positive_int,
    "projection_dim": positive_int,
    "phase1_epochs": positive_int,
    "phase2_epochs": positive_int,
    "freeze_epochs": non_negative_int,
    "cross_fit": non_negative_int,
    "learning_rate": positive_float,
    "finetune_learning_rate": positive_float,
    "min_learning_rate": positive_float,
    "temperature": positive_float,
    "distill_temperature": positive_float,
    "alpha": positive_float,
    "reduce_lr_factor": fraction,
    "label_fraction": fraction,
    "crop_scale_min": fraction,
    "dropout": unit_interval,
    "distill_alpha": unit_interval,
    "blur_probability": unit_interval,
    "batch_norm_momentum": unit_interval,
    "stain_augment": non_negative_float,
    "mixup": non_negative_float,
    "cutmix": non_negative_float,
    "label_smoothing": smoothing_value,
    "jitter_strength": non_negative_float,
    "threshold": threshold_value,
    "encoder_init": encoder_init_value,
    "teacher": file_path_value,
}
# Rules whose values are text, not numbers.
TEXT_RULES = frozenset({encoder_init_value, file_path_value})


# Fields whose registry refuses an unknown name with its own, fuller message.
REGISTRY_CHECKED = frozenset({"backbone"})


def check_values(config) -> None:
    """Refuses a field value that its flag would refuse (`FIELD_TYPES`, `choices`).

    Raises:
        ConfigError: naming the flag, the value and the rule.
    """
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        options = field_options(type(config), field.name)
        if value is None or not options:
            continue
        flag = options["flag"]
        rule = FIELD_TYPES.get(field.name)
        if rule in TEXT_RULES and not isinstance(value, str):
            raise ConfigError(f"{flag} {value!r} is not text; pass a word or a path")
        if rule is not None and rule not in TEXT_RULES:
            textual = rule is threshold_value and isinstance(value, str)
            if isinstance(value, bool) or not (isinstance(value, int | float) or textual):
                raise ConfigError(f"{flag} {value!r} is not a number; pass a number")
        if rule is not None:
            try:
                rule(str(value))
            except (argparse.ArgumentTypeError, ValueError) as error:
                raise ConfigError(f"{flag} {value!r}: {error}") from None
        choices = None if field.name in REGISTRY_CHECKED else options.get("choices")
        # A transfer run's preprocessing is resolved from 'backbone' to the backbone's name.
        allowed = value in choices if choices is not None else True
        if not allowed and not (field.name == "preprocess" and value in BACKBONES):
            raise ConfigError(
                f"{flag} {value!r} is not one of {', '.join(map(str, choices))}; choose one"
            )

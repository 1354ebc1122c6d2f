"""What the scripts share: flags built from the config dataclasses, quiet start-up, and
`run_script`, which prints user errors as one line and keeps tracebacks for bugs.

Only the scripts call these; the rest of bc_keras takes explicit arguments. Importing this
module does not import TensorFlow, so the data tools stay light.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import warnings

from bc_keras import config as configs
from bc_keras import console
from bc_keras.config.values import (  # noqa: F401  (the scripts' argparse types)
    FIELD_TYPES,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    threshold_value,
    unit_interval,
)
from bc_keras.errors import UserError, one_line

_GROUP_TITLES = {
    configs.GROUP_DATA: "data",
    configs.GROUP_MODEL: "model",
    configs.GROUP_TRAINING: "training",
    configs.GROUP_ROBUST: "recipe (robust-recipe flags default to the --recipe's value)",
    configs.GROUP_OUTPUTS: "outputs",
    configs.GROUP_EVALUATION: "evaluation",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks; defaults are written into each flag's help."""


# Argparse types by field name: the value rules of the config fields, which configs built in
# Python are checked with too (`bc_keras.config.values`).
_TYPES = FIELD_TYPES


def _flag_aliases(config_class) -> dict:
    aliases: dict = {}
    for klass in reversed(config_class.__mro__):
        aliases.update(getattr(klass, "FLAG_ALIASES", {}))
    return aliases


def _default_text(config_class, field, options) -> str:
    if options.get("required"):
        return ""
    if field.default is None and any(field.name in v for v in configs.RECIPE_VALUES.values()):
        values = "; ".join(
            f"{recipe}: {values[field.name]}" for recipe, values in configs.RECIPE_VALUES.items()
        )
        return f" (default: {values})"
    if options.get("action") in ("store_true", "store_false"):
        return ""
    if "(default:" in options.get("help", "") or field.default is None:
        return ""  # the help says what an unset value means
    return f" (default: {field.default})"


def add_config_arguments(parser: argparse.ArgumentParser, config_class) -> None:
    """Adds one flag per field of `config_class` that has flag metadata, grouped as declared."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    aliases = _flag_aliases(config_class)
    for field in dataclasses.fields(config_class):
        options = configs.field_options(config_class, field.name)
        if not options:
            continue
        flag, group = options.pop("flag"), options.pop("group")
        help_text = options["help"] + _default_text(config_class, field, options)
        options.pop("help")
        if group not in groups:
            groups[group] = parser.add_argument_group(_GROUP_TITLES[group])
        arguments = dict(dest=field.name, help=help_text.replace("%", "%%"))
        if options.pop("boolean", False):
            arguments["action"] = argparse.BooleanOptionalAction
        elif "action" not in options and field.name in _TYPES:
            arguments["type"] = _TYPES[field.name]
        elif "action" not in options and field.type in ("int", "float"):
            arguments["type"] = int if field.type == "int" else float
        if not options.get("required"):
            arguments["default"] = field.default
        arguments.update(options)
        groups[group].add_argument(flag, *aliases.get(field.name, ()), **arguments)
    groups[configs.GROUP_OUTPUTS].add_argument(
        REPLAY_FLAG,
        metavar="RUN/config.json",
        help="replay a run: every setting from its config.json, the flags given beside it "
        "overriding (listed); a new run folder and the default --model-out unless given",
    )


# Replaying a run (`--config RUN/config.json`): what is not taken from it.
REPLAY_FLAG = "--config"
NOT_REPLAYED = ("run_dir", "model_out", "resume")


def _replayed(argv) -> str | None:
    """The file `--config` names in `argv`, if any (read before the full parse, so that the
    stored values can become the parser's defaults)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(REPLAY_FLAG, dest="replay")
    known, _ = pre.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    return known.replay


def read_replayed_config(path, config_class) -> dict:
    """The flag values a run's config.json gives `config_class`'s fields (not `NOT_REPLAYED`).

    Raises:
        ConfigError: if the file is missing, not a config.json, or of another experiment.
    """
    import json
    from pathlib import Path

    from bc_keras.errors import ConfigError

    path = Path(path)
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"--config {path} cannot be read as a run's config.json ({one_line(error)}); pass "
            "RUN/config.json of a bc_keras run"
        ) from None
    if not isinstance(stored, dict) or "experiment" not in stored:
        raise ConfigError(f"--config {path} is not a bc_keras run's config.json")
    if stored["experiment"] != config_class.EXPERIMENT:
        raise ConfigError(
            f"--config {path} is a {stored['experiment']} run, not {config_class.EXPERIMENT}; "
            "replay it with that experiment's command"
        )
    return {
        field.name: stored[field.name]
        for field in dataclasses.fields(config_class)
        if field.name in stored and field.name not in NOT_REPLAYED
        and configs.field_options(config_class, field.name)
    }


def replay_defaults(parser: argparse.ArgumentParser, config_class, argv) -> dict:
    """With `--config` in `argv`: its values become `parser`'s defaults (so the flags given
    override them) and no flag stays required. Returns the replayed values ({} without)."""
    path = _replayed(argv)
    if path is None:
        return {}
    values = read_replayed_config(path, config_class)
    for action in parser._actions:
        if action.dest in values:
            action.required = False
    parser.set_defaults(**values)
    return values


def report_replay(config, replayed: dict, path) -> None:
    """Prints what a replay took from the run and which flags overrode it."""
    if not replayed:
        return
    changed = [
        f"{configs.field_options(type(config), name)['flag']} {getattr(config, name)!r} "
        f"(was {value!r})"
        for name, value in replayed.items()
        if getattr(config, name) != value
    ]
    print(f"replaying {path}: {len(replayed)} settings; overridden: {', '.join(changed) or 'none'}")


def build_parser(config_class, description: str, **parser_options) -> argparse.ArgumentParser:
    """A parser whose flags are `config_class`'s fields, with the report's values as defaults."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=HelpFormatter, **parser_options
    )
    add_config_arguments(parser, config_class)
    return parser


def experiment_entry(config_class, description: str):
    """A training script's `parse_args(argv) -> config` and `main(argv) -> 0` for
    `config_class`: flags -> config -> `bc_keras.experiments.run(config)`."""

    def parse_args(argv=None):
        parser = build_parser(config_class, description)
        replayed = replay_defaults(parser, config_class, argv)
        config = config_from_args(config_class, parser.parse_args(argv))
        report_replay(config, replayed, _replayed(argv))
        return config

    def main(argv=None) -> int:
        from bc_keras import experiments

        experiments.run(parse_args(argv))
        return 0

    return parse_args, main


def config_from_args(config_class, args: argparse.Namespace, **values):
    """Builds a config from parsed flags (fields without a flag keep their default, or take
    `values`); the config fills the recipe's values into the fields left unset."""
    fields = {}
    for field in dataclasses.fields(config_class):
        if field.name in values:
            fields[field.name] = values[field.name]
        elif hasattr(args, field.name) and field.init:
            fields[field.name] = getattr(args, field.name)
    return config_class(**fields)


def quiet_start() -> bool:
    """TensorFlow's C++ logs at error level unless the user chose a level, and warnings as
    one line each. Returns whether the start-up noise should also be filtered (see
    `bc_keras.console`), i.e. whether the user left the level unset."""
    user_chose = "TF_CPP_MIN_LOG_LEVEL" in os.environ
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.showwarning = _show_warning
    # Users asked for .h5 files: Keras' advice (an absl log record) to prefer .keras is noise;
    # so are TensorFlow's Python-side retracing hints on a console.
    logging.getLogger("absl").addFilter(_not_hdf5_advice)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return not user_chose


def _not_hdf5_advice(record: logging.LogRecord) -> bool:
    return "as an HDF5 file via `model.save()`" not in record.getMessage()


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {one_line(message)}", file=file or sys.stderr)


def add_overwrite_flag(parser: argparse.ArgumentParser) -> None:
    """--overwrite of the data tools: replaces only a folder a data tool made."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DIR if it is a folder a data tool made (never any other folder)",
    )


NOTHING_WRITTEN = "interrupted: nothing was written (an unfinished output is removed)"
RESUME_HINT = (
    "interrupted: the run folder keeps a backup; run the same command with --resume to continue"
)


def add_quiet_flag(parser: argparse.ArgumentParser) -> None:
    """`--quiet`: no progress lines (`console.Progress`); results and errors still print."""
    parser.add_argument(
        "--quiet", action="store_true", help="no progress output (count, rate, time left)"
    )


def apply_quiet(args: argparse.Namespace) -> argparse.Namespace:
    """Applies a parsed `--quiet` (see `add_quiet_flag`); returns `args`."""
    console.set_quiet(getattr(args, "quiet", False))
    return args


def use_file_backend() -> None:
    """A command writes figures to files: matplotlib's Agg backend (no display needed), unless
    the user chose one (MPLBACKEND). Only commands do this; a notebook importing bc_keras keeps
    its own backend."""
    if "matplotlib" in sys.modules:
        if "MPLBACKEND" not in os.environ:
            sys.modules["matplotlib"].use("Agg")
    else:
        os.environ.setdefault("MPLBACKEND", "Agg")


def run_script(main, argv=None, interrupted: str = RESUME_HINT) -> int:
    """Runs a script's `main`: a `UserError` becomes one `error: ...` line (exit 2), Ctrl-C the
    `interrupted` line (exit 130); any other exception keeps its traceback (a bug)."""
    use_file_backend()
    with console.quiet_stderr(quiet_start()):
        try:
            return main(argv) or 0
        except UserError as error:
            print(f"error: {one_line(error)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"\n{interrupted}", file=sys.stderr)
            return 130

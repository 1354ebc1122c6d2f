"""The installed command, `bc-keras COMMAND ...`: every script and data tool of a clone as a
subcommand (`bc-keras prepare` is `python data_tools/prepare_breakhis.py`, `bc-keras train cnn`
is `python train_cnn.py`), with the same parser, plus the `python -m bc_keras.<x>` commands.

One command with subcommands, as `git` has, rather than one executable per script: a user's
PATH gains one name that cannot collide (not `prepare`, `stats` or `predict`), and one
`bc-keras --help` lists everything the package can do. The code of each script lives in a
module here; the root scripts and `data_tools/*.py` are shims over these modules.

Importing this package (and `bc-keras --help`) never imports TensorFlow: a subcommand's module
is imported only when it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import sys

from bc_keras import cli

PROG = "bc-keras"

SECTION_DATA = "data"
SECTION_TRAINING = "training"
SECTION_RESULTS = "results"


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: its words after `bc-keras`, the module whose `main(argv)` it runs, the
    line `bc-keras --help` gives it, and the line printed when it is interrupted (Ctrl-C)."""

    name: str
    module: str
    summary: str
    section: str
    interrupted: str = cli.NOTHING_WRITTEN


COMMANDS = (
    Command(
        "synthetic",
        "bc_keras.commands.make_synthetic_breakhis",
        "write a synthetic BreaKHis-shaped tree (for the demo and tests, never for results)",
        SECTION_DATA,
    ),
    Command(
        "prepare",
        "bc_keras.commands.prepare_breakhis",
        "index, split and lay out BreaKHis_v1 as train/val/test folders (or K folds)",
        SECTION_DATA,
    ),
    Command(
        "stats",
        "bc_keras.commands.dataset_stats",
        "images per magnification and class of a tree, archive or prepared split",
        SECTION_DATA,
    ),
    Command(
        "audit",
        "bc_keras.commands.audit_split",
        "list patients in more than one split and image files gone (exit 1 if any)",
        SECTION_DATA,
    ),
    Command(
        "normalize",
        "bc_keras.commands.normalize_stains",
        "a stain-normalised copy of a prepared split (Macenko or Reinhard)",
        SECTION_DATA,
    ),
    Command(
        "tfrecords",
        "bc_keras.commands.export_tfrecords",
        "a prepared split as sharded TFRecords (--data of training, --pipeline tfdata)",
        SECTION_DATA,
    ),
    Command(
        "train cnn",
        "bc_keras.commands.train_cnn",
        "train, evaluate and save the report's baseline CNN",
        SECTION_TRAINING,
        cli.RESUME_HINT,
    ),
    Command(
        "train transfer",
        "bc_keras.commands.train_transfer",
        "fine-tune a keras.applications backbone (frozen, then unfrozen)",
        SECTION_TRAINING,
        cli.RESUME_HINT,
    ),
    Command(
        "train simclr",
        "bc_keras.commands.train_simclr",
        "SimCLR with a ResNet-18 encoder: pretrain, finetune or linear",
        SECTION_TRAINING,
        cli.RESUME_HINT,
    ),
    Command(
        "predict",
        "bc_keras.commands.predict",
        "predict benign/malignant for image files with a saved .h5 model (and Grad-CAM)",
        SECTION_RESULTS,
        "interrupted: nothing was written",
    ),
    Command(
        "export",
        "bc_keras.commands.export_model",
        "a classifier as a self-contained .keras, SavedModel or LiteRT (float16, int8) export, "
        "and what each costs (--check)",
        SECTION_RESULTS,
    ),
    # The commands below are `python -m bc_keras.<x>`; their lines on Ctrl-C are theirs.
    Command(
        "compare",
        "bc_keras.report.compare",
        "the comparison table of all finished runs, as markdown and CSV",
        SECTION_RESULTS,
    ),
    Command(
        "report",
        "bc_keras.report.document",
        "REPORT.md, its figures and results.csv regenerated from run folders",
        SECTION_RESULTS,
    ),
    Command(
        "robustness",
        "bc_keras.robustness.__main__",
        "AUC, balanced accuracy and patient rate of classifiers under graded corruptions, "
        "stain shift, occlusion and FGSM/PGD",
        SECTION_RESULTS,
    ),
    Command(
        "active",
        "bc_keras.active.__main__",
        "active learning: the images to annotate next (select), or each strategy against "
        "random in a label-efficiency simulation (simulate)",
        SECTION_RESULTS,
        "interrupted: a selection CSV is written whole or not at all; run the same simulate "
        "command again to resume",
    ),
    Command(
        "study",
        "bc_keras.study",
        "the whole study: splits, every experiment, then the report (resumable)",
        SECTION_RESULTS,
        "interrupted: run the same command again to resume",
    ),
    Command(
        "probe",
        "bc_keras.probe",
        "linear probe: logistic regression on frozen ImageNet features",
        SECTION_RESULTS,
        "interrupted: nothing was written",
    ),
    Command(
        "bench",
        "bc_keras.bench",
        "benchmarks of the input pipelines, training, inference and the SimCLR step",
        SECTION_RESULTS,
        "interrupted: nothing was measured",
    ),
)
BY_NAME = {command.name: command for command in COMMANDS}
# Words that only group subcommands (`train` of `train cnn`).
GROUPS = sorted({c.name.split()[0] for c in COMMANDS if " " in c.name})


@contextlib.contextmanager
def _program_name(prog: str | None):
    """argparse names the program after sys.argv[0]: while a subcommand runs, it is
    `bc-keras train cnn`, so its usage and errors name what the user typed."""
    if prog is None:
        yield
        return
    saved = sys.argv[:1]
    sys.argv[:1] = [prog]
    try:
        yield
    finally:
        sys.argv[:1] = saved


def run_command(name: str, argv=None, prog: str | None = None) -> int:
    """Runs the subcommand `name` (e.g. "train cnn") on `argv` as its script runs it: a user
    error is one `error: ...` line (exit 2), Ctrl-C its interrupted line (exit 130).

    Args:
        name: a key of `BY_NAME`.
        argv: the subcommand's arguments (default: sys.argv[1:]).
        prog: the program name its usage shows (default: from sys.argv[0], as for a script).

    Returns:
        The exit status.
    """
    command = BY_NAME[name]
    module = importlib.import_module(command.module)
    with _program_name(prog):
        return cli.run_script(module.main, argv, interrupted=command.interrupted)


def help_text(group: str | None = None) -> str:
    """`bc-keras --help` (every subcommand, one line each), or `bc-keras train --help`."""
    chosen = [c for c in COMMANDS if group is None or c.name.split()[0] == group]
    width = max(len(c.name) for c in chosen) + 2
    name, what = (f"{PROG} {group}", "MODEL") if group else (PROG, "COMMAND")
    lines = [f"usage: {name} {what} [ARGS ...]", ""]
    if group is None:
        lines.append("Breast-cancer histopathology (BreaKHis), benign vs malignant, with Keras.")
    lines.append(f"`{name} {what} --help` gives the flags of each.")
    for section in (SECTION_DATA, SECTION_TRAINING, SECTION_RESULTS):
        members = [c for c in chosen if c.section == section]
        if members:
            lines += ["", f"{section}:"]
            lines += [f"  {c.name:<{width}}{c.summary}" for c in members]
    return "\n".join(lines)


def _unknown(words: list[str]) -> int:
    """One `error:` line naming what was typed and the commands (of its group) there are."""
    group = words[0] if words and words[0] in GROUPS else None
    known = ", ".join(c.name for c in COMMANDS if group is None or c.name.startswith(group + " "))
    if not words:
        what = "no command given"
    elif group and len(words) == 1:
        what = f"{group!r} needs a model"
    else:
        what = f"unknown command {' '.join(words)!r}"
    print(f"error: {what}; choose one of: {known} (`{PROG} --help` says what each does)",
          file=sys.stderr)  # fmt: skip
    return 2


def main(argv=None) -> int:
    """`bc-keras COMMAND [ARGS ...]` (the console script): runs the subcommand, or prints the
    list of subcommands for `--help`; an unknown or missing subcommand is one `error:` line
    (exit 2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(help_text())
        return 0
    if argv[:1] == ["--version"]:
        from bc_keras import __version__

        print(f"{PROG} {__version__}")
        return 0
    words = 2 if argv[:1] and argv[0] in GROUPS else 1
    if words == 2 and argv[1:2] in (["-h"], ["--help"]):
        print(help_text(argv[0]))
        return 0
    name = " ".join(argv[:words])
    if name not in BY_NAME:
        return _unknown(argv[:words])
    return run_command(name, argv[words:], prog=f"{PROG} {name}")

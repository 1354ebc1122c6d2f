"""A stain-normalised copy of a prepared split: `python data_tools/normalize_stains.py` is `bc-keras
normalize`, whose code is bc_keras.commands.normalize_stains (this script is kept for clones and the
commands written before)."""

from __future__ import annotations

import sys

from bc_keras import commands

# Every public name of the command (main, parse_args, ...), for the code that imports or runs
# this script; a test that monkeypatches one patches bc_keras.commands.normalize_stains.
from bc_keras.commands.normalize_stains import *  # noqa: F403

if __name__ == "__main__":
    sys.exit(commands.run_command("normalize"))

"""Transfer learning of the report (SPEC 4): `python train_transfer.py` is `bc-keras train
transfer`, whose code is bc_keras.commands.train_transfer (this script is kept for clones and the
commands written before)."""

from __future__ import annotations

import sys

from bc_keras import commands

# Every public name of the command (main, parse_args, ...), for the code that imports or runs
# this script; a test that monkeypatches one patches bc_keras.commands.train_transfer.
from bc_keras.commands.train_transfer import *  # noqa: F403

if __name__ == "__main__":
    sys.exit(commands.run_command("train transfer"))

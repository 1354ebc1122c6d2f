"""Predict benign/malignant for images with a saved bc_keras model (.h5): `python predict.py` is
`bc-keras predict`, whose code is bc_keras.commands.predict (this script is kept for clones and the
commands written before)."""

from __future__ import annotations

import sys

from bc_keras import commands

# Every public name of the command (main, parse_args, ...), for the code that imports or runs
# this script; a test that monkeypatches one patches bc_keras.commands.predict.
from bc_keras.commands.predict import *  # noqa: F403

if __name__ == "__main__":
    sys.exit(commands.run_command("predict"))

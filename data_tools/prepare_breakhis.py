"""Prepare BreaKHis_v1 for training: `python data_tools/prepare_breakhis.py` is `bc-keras prepare`,
whose code is bc_keras.commands.prepare_breakhis (this script is kept for clones and the commands
written before)."""

from __future__ import annotations

import sys

from bc_keras import commands

# Every public name of the command (main, parse_args, ...), for the code that imports or runs
# this script; a test that monkeypatches one patches bc_keras.commands.prepare_breakhis.
from bc_keras.commands.prepare_breakhis import *  # noqa: F403

if __name__ == "__main__":
    sys.exit(commands.run_command("prepare"))

"""A synthetic BreaKHis-shaped tree: `python data_tools/make_synthetic_breakhis.py` is `bc-keras
synthetic`, whose code is bc_keras.commands.make_synthetic_breakhis (this script is kept for clones
and the commands written before)."""

from __future__ import annotations

import sys

from bc_keras import commands

# Every public name of the command (main, parse_args, ...), for the code that imports or runs
# this script; a test that monkeypatches one patches bc_keras.commands.make_synthetic_breakhis.
from bc_keras.commands.make_synthetic_breakhis import *  # noqa: F403

if __name__ == "__main__":
    sys.exit(commands.run_command("synthetic"))

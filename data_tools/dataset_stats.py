"""Images per magnification and class: `python data_tools/dataset_stats.py` is `bc-keras stats`,
whose code is bc_keras.commands.dataset_stats (this script is kept for clones and the commands
written before)."""

from __future__ import annotations

import sys

from bc_keras import commands

# Every public name of the command (main, parse_args, ...), for the code that imports or runs
# this script; a test that monkeypatches one patches bc_keras.commands.dataset_stats.
from bc_keras.commands.dataset_stats import *  # noqa: F403

if __name__ == "__main__":
    sys.exit(commands.run_command("stats"))

"""A prepared split as sharded TFRecords: `python data_tools/export_tfrecords.py` is `bc-keras
tfrecords`, whose code is bc_keras.commands.export_tfrecords (this script is kept for clones and the
commands written before)."""

from __future__ import annotations

import sys

from bc_keras import commands

# Every public name of the command (main, parse_args, ...), for the code that imports or runs
# this script; a test that monkeypatches one patches bc_keras.commands.export_tfrecords.
from bc_keras.commands.export_tfrecords import *  # noqa: F403

if __name__ == "__main__":
    sys.exit(commands.run_command("tfrecords"))

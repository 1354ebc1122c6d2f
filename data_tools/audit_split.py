"""Patients in more than one split, image files gone: `python data_tools/audit_split.py` is
`bc-keras audit`, whose code is bc_keras.commands.audit_split (this script is kept for clones and
the commands written before)."""

from __future__ import annotations

import sys

from bc_keras import commands

# Every public name of the command (main, parse_args, ...), for the code that imports or runs
# this script; a test that monkeypatches one patches bc_keras.commands.audit_split.
from bc_keras.commands.audit_split import *  # noqa: F403

if __name__ == "__main__":
    sys.exit(commands.run_command("audit"))

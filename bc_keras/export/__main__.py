"""`python -m bc_keras.export MODEL.h5 --out DIR --format keras|savedmodel|litert|all`."""

import sys

from bc_keras import cli
from bc_keras.commands.export_model import main

# argparse names the program after sys.argv[0] (here .../export/__main__.py): the usage and
# errors say what the user typed instead.
sys.argv[0] = "python -m bc_keras.export"
sys.exit(cli.run_script(main, interrupted=cli.NOTHING_WRITTEN))

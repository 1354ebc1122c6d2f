"""`python -m bc_keras.export MODEL.h5 --out DIR --format keras|savedmodel|litert|all`."""

import sys

from bc_keras import cli
from bc_keras.commands.export_model import main

sys.exit(cli.run_script(main, interrupted=cli.NOTHING_WRITTEN))

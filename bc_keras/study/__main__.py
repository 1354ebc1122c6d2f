"""`python -m bc_keras.study`: the whole study, resumable (see `bc_keras.study`)."""

import sys

from bc_keras import cli
from bc_keras.study import INTERRUPTED, main

sys.exit(cli.run_script(main, interrupted=INTERRUPTED))

"""`python -m bc_keras.report`: REPORT.md, figures and results.csv from run folders."""

import sys

from bc_keras import cli
from bc_keras.report.document import main

sys.exit(cli.run_script(main, interrupted=cli.NOTHING_WRITTEN))

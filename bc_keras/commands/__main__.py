"""`python -m bc_keras.commands COMMAND ...`: the `bc-keras` command without its executable."""

import sys

from bc_keras.commands import main

sys.exit(main())

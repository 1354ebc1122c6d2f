"""`python -m bc_keras.compare RUNS...`: the comparison table (moved to bc_keras.report.compare)."""

import sys

from bc_keras.report.compare import main

if __name__ == "__main__":
    sys.exit(main())

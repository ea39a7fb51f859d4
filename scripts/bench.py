"""``python scripts/bench.py [--rows ...]``: the same as ``rlaccel bench`` (see ``rlaccel.bench``)."""

import sys

from rlaccel.bench import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m rlaccel.bench``: the same as ``rlaccel bench``."""

import sys

from rlaccel.bench import main

sys.exit(main())

"""``python -m rlaccel ...`` is the ``rlaccel`` command."""

import sys

from rlaccel.cli import main

sys.exit(main())

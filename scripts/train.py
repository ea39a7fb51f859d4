#!/usr/bin/env python3
"""``python scripts/train.py ARGS`` is ``rlaccel train ARGS`` (see ``rlaccel train --help``)."""

import sys

from rlaccel.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

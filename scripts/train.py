#!/usr/bin/env python3
"""Train an agent: ``python scripts/train.py --config configs/ppo_cartpole.yaml``.

See ``python scripts/train.py --help`` and the README for the options.
"""

import sys

from rlaccel.cli import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""``python scripts/bench_latency.py [--policy ...]``: the same as ``rlaccel bench latency``
(see ``rlaccel.bench.latency``)."""

import sys

from rlaccel.bench import main

if __name__ == "__main__":
    sys.exit(main(["latency", *sys.argv[1:]]))

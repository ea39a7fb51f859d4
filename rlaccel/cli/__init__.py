"""The ``rlaccel`` command: ``train``, ``sweep``, ``export``, ``eval``, ``bench``.

    rlaccel train --config configs/ppo_cartpole.yaml [--set key=value ...] [--check]
    rlaccel sweep --config F --grid ppo.learning_rate=1e-4,3e-4 [--seeds N]
    rlaccel export --run RUN_DIR [--format rlpolicy|onnx-int8|onnx-fp32]
    rlaccel eval --run RUN_DIR [--episodes 100] [--backend numpy-int8]
    rlaccel bench [--rows ...]

Exit codes, for every subcommand: 0 done; 2 bad input (one line on stderr naming the key or
file, nothing written); 1 the run failed (NaN / Inf, an actor's env raised); 130 / 143 stopped
by SIGINT / SIGTERM after a checkpoint and ``summary.json``.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn, Sequence

from rlaccel import bench as bench_cli  # argument parsing only: no JAX until a row runs
from rlaccel.cli import deploy, sweep, train

EXIT_USAGE = 2
EXIT_FAILED = 1

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "main", "parser"]


class _Parser(argparse.ArgumentParser):
    """argparse's parser, its errors one line as every other bad input's (``error: --seeds:
    ...``; argparse prints its usage first and says ``argument --seeds: ...``): the exit-code
    contract above. Sub-parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message.removeprefix('argument ')}\n")


def parser() -> argparse.ArgumentParser:
    """The ``rlaccel`` argument parser with one sub-parser per subcommand."""
    p = _Parser(prog="rlaccel", description="JAX reinforcement learning with fp32 learners and int8 actors.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    train.add_parser(sub)
    sweep.add_parser(sub)
    deploy.add_export_parser(sub)
    deploy.add_eval_parser(sub)
    bench = sub.add_parser("bench", help="benchmarks against same-run baselines (a developer command, run from a checkout)", description=bench_cli.DESCRIPTION)
    bench_cli.add_arguments(bench)
    bench.set_defaults(func=bench_cli.run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rlaccel`` console script; returns the process exit code (argparse's
    own exits too: 2 for bad arguments, 0 after ``--help``)."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

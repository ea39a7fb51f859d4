"""``rlaccel bench``: PPO and DQN on CartPole-v1 against PureJaxRL and Stable-Baselines3, what
each placement costs, and the deployment latency of exported policies.

    rlaccel bench                                   # every row: prints a table, writes benchmarks/cartpole_cpu.json
    rlaccel bench --rows fused_fp32,fused_int8      # a subset (names: rlaccel.bench.rows.ROWS)
    rlaccel bench --row-timeout 150 --out X.json    # a row killed after 150 s is an error; X.json holds each finished row
    rlaccel bench latency                           # the deployment latency table (also: --latency)
    rlaccel bench pipeline                          # do actor and learner devices overlap? (split placement)
    rlaccel bench int8                              # int8 vs fp32 matmuls: XLA, onnxruntime, OpenVINO
    rlaccel bench zoo                               # RL Zoo blocks at the zoo's budgets vs its benchmark.md (hours)
    rlaccel bench parallel                          # 1 device vs 2 devices vs 2 processes x 1 device
    rlaccel bench qat                               # DQN int8: post-training vs quantisation-aware, 16 seeds
    python -m rlaccel.bench ...                     # the same without the console script

A developer command, run from a checkout installed in editable mode (``make bench`` does it
all): it reads the repository's ``configs/`` and ``benchmarks/baselines/`` and writes
``benchmarks/*.json`` next to them, found from this package's location
(``Path(__file__).resolve().parents[2]``). The baselines need the ``bench`` extra plus gymnax
and flashbax installed with ``--no-deps`` and ``stable-baselines3`` with torch's CPU build.

Every row runs in its own subprocess (``rlaccel.bench.rows``, ``rlaccel.bench.table``), so
peak RSS is per row; speeds are also shown as ratios to the baseline measured in the same run.
The exit code is 1 when any row failed (after the table and the JSON are written), 2 for bad
arguments or a missing checkout.

Modules: ``rows`` (row definitions and their workers), ``table`` (running rows, the table, the
JSON), ``latency`` (``rlaccel bench latency``), ``pipeline`` (``rlaccel bench pipeline``),
``int8`` (``rlaccel bench int8``), ``zoo`` / ``zoo_work`` / ``zoo_report`` (``rlaccel bench zoo``),
``parallel`` (``rlaccel bench parallel``), ``qat`` (``rlaccel bench qat``).
"""

from __future__ import annotations

import argparse
import sys

from rlaccel.bench import int8, latency, parallel, pipeline, qat, returns, table, zoo
from rlaccel.argtypes import positive_int
from rlaccel.bench.rows import ROOT, ROWS

DESCRIPTION = "Benchmarks: PPO and DQN on CartPole-v1 against PureJaxRL and Stable-Baselines3, each placement's cost, deployment latency."

__all__ = ["ROOT", "ROWS", "SUBCOMMANDS", "add_arguments", "main", "run"]

SUBCOMMANDS = {  # name: (module with DESCRIPTION, add_arguments, run; one-line help)
    "latency": (latency, "decision latency of exported policies on every runtime"),
    "returns": (returns, "returns of exported int8 vs fp32 policies on gymnasium's envs"),
    "pipeline": (pipeline, "split placement: acting, learning, in turn and pipelined, per update"),
    "int8": (int8, "int8 vs fp32 matmuls and policies on XLA, onnxruntime and OpenVINO"),
    "zoo": (zoo, "RL Zoo blocks verbatim at the zoo's budgets: deterministic eval vs the zoo's benchmark.md, SB3's wall clock"),
    "parallel": (parallel, "data parallelism: 1 device, 2 devices, 2 processes x 1 device"),
    "qat": (qat, "DQN's int8 actors: post-training quantisation against quantisation-aware training, many seeds"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``rlaccel bench`` (and its ``latency`` subcommand) on ``parser``, e.g. the
    ``bench`` subparser of the ``rlaccel`` command line."""
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of: {', '.join(ROWS)}")
    parser.add_argument("--out", help=f"JSON output path (default {table.DEFAULT_OUT.relative_to(ROOT)})")
    parser.add_argument("--repeat", type=positive_int, default=1, metavar="N", help="run the rows N times, in turn (round robin), and report each row's median run (default 1): this machine's speeds move 10-20 %% from run to run")
    parser.add_argument("--warm-cache", action="store_true", help="warm starts: every row (baselines too) runs once, unmeasured, to fill a fresh compilation cache its measured runs then use (default: cold, no cache)")
    parser.add_argument("--timesteps", type=positive_int, help="env steps per seed of the CartPole rows instead of 500k: a quick check that rows run, not a measurement")
    parser.add_argument("--row-timeout", type=positive_int, metavar="S", help="kill a row's process after S seconds and report it as an error (default: no limit)")
    parser.add_argument("--latency", action="store_true", help="run the deployment latency bench instead, with its defaults (see `latency --help`)")
    sub = parser.add_subparsers(dest="bench_command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (module, help_text) in SUBCOMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=help_text, description=module.DESCRIPTION))

def _latency_defaults() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    latency.add_arguments(p)
    return p.parse_args([])


def run(args: argparse.Namespace) -> int:
    """Run what ``args`` (parsed with :func:`add_arguments`) asks for; the exit code."""
    if not (ROOT / "configs").is_dir() or not (ROOT / "benchmarks" / "baselines").is_dir():
        print(
            f"error: rlaccel bench is a developer command: it needs the repository checkout (configs/, benchmarks/baselines/) at {ROOT}; install the checkout with `pip install -e .` and run it from there",
            file=sys.stderr,
        )
        return table.EXIT_USAGE
    command = getattr(args, "bench_command", None)
    if command is not None:
        return SUBCOMMANDS[command][0].run(args)
    if args.latency:
        return latency.run(_latency_defaults())
    return table.run(args.rows, args.out, getattr(args, "timesteps", None), repeat=getattr(args, "repeat", 1), warm_cache=getattr(args, "warm_cache", False), row_timeout=getattr(args, "row_timeout", None))


def main(argv: list[str] | None = None) -> int:
    """``python -m rlaccel.bench [options]``."""
    parser = argparse.ArgumentParser(prog="rlaccel bench", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))

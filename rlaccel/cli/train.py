"""``rlaccel train --config FILE [--set key.sub=value ...] [--seed N] [--run-dir DIR] [--check]``.

Every input problem is reported as one line on stderr with exit code 2, before anything is
written: the config, the env id, the devices and the run directory are all checked first.
``--check`` stops there and prints the resolved config (exit 0). Other exit codes: 0 done;
1 the run failed (NaN / Inf, ``rlaccel.guards``; an actor's env raised); 130 / 143 stopped by
SIGINT / SIGTERM after a checkpoint and ``summary.json``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from rlaccel import api
from rlaccel import config as config_lib

EXIT_USAGE = 2
EXIT_FAILED = 1


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train an agent", description="Train an rlaccel agent.")
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. --set ppo.learning_rate=1e-3 (repeatable)")
    p.add_argument("--seed", type=int, help="PRNG seed (overrides the config's seed)")
    p.add_argument("--run-dir", help="run directory (default runs/<algo>_<env>_s<seed>_<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--check", action="store_true", help="validate everything, print the resolved config, write nothing")
    p.set_defaults(func=run)
    return p


def resolve(args: argparse.Namespace) -> tuple[config_lib.Config, Path, bool]:
    """Config, run directory and resume flag from the arguments.

    Raises:
      ConfigError: anything wrong with them (one line naming the key, file or directory).
    """
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.no_progress:
        overrides.append("logging.progress=false")
    if args.resume:
        run_dir = Path(args.resume)
        api.check_run_dir(run_dir, resume=True, overwrite=args.overwrite)
        config = api.load_config(args.config or run_dir / "config.yaml", overrides)
        api.validate(config)
        return config, run_dir, True
    if not args.config:
        raise config_lib.ConfigError("--config FILE is required (e.g. --config configs/ppo_cartpole.yaml)")
    config = api.load_config(args.config, overrides)
    api.validate(config)
    run_dir = Path(args.run_dir) if args.run_dir else api.default_run_dir(config)
    api.check_run_dir(run_dir, resume=False, overwrite=args.overwrite)
    return config, run_dir, False


def run(args: argparse.Namespace) -> int:
    """``rlaccel train``; returns the exit code."""
    try:
        config, run_dir, resume = resolve(args)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.check:
        print(f"# resolved config: valid; the run would write to {run_dir}" + (" (resumed)" if resume else ""))
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0

    from rlaccel import checkpoint, guards, sources

    try:
        result = api.run_checked(config, run_dir, resume=resume, overwrite=args.overwrite)
    except checkpoint.CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except sources.SourceFault as e:  # an actor's env raised: checkpointed, actors joined
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except guards.NonFiniteError as e:
        latest = checkpoint.latest(run_dir / "checkpoints")
        kept = f"the latest checkpoint is {latest}" if latest else "no checkpoint was written"
        print(f"error: {e}; the run stopped, {kept}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # a second SIGINT / SIGTERM while the first was being handled
        print("error: interrupted twice; stopped without a checkpoint", file=sys.stderr)
        return guards.exit_code(signal.SIGINT)
    summary = result.summary
    verb = "done" if summary["status"] == "completed" else f"stopped ({summary['stopped_by']})"
    print(
        f"{verb}: {summary['env_steps']:,} env steps, final_return {summary['final_return']:.1f}, "
        f"{summary['sps']:,.0f} steps/s (compile {summary['compile_s']:.1f} s) -> {run_dir}"
    )
    return summary["exit_code"]

"""``python scripts/train.py --config FILE [--set key.sub=value ...] [--seed N] [--run-dir DIR]``.

Every input problem is reported as one line on stderr with exit code 2, before anything is
written: the config, the env id and the run directory are all checked first. Other exit
codes: 0 done; 1 the run diverged (NaN / Inf, ``rlaccel.guards``); 130 / 143 stopped by
SIGINT / SIGTERM after a checkpoint and ``summary.json``.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import signal
import sys
from pathlib import Path
from typing import Sequence

from rlaccel import config as config_lib

EXIT_USAGE = 2
EXIT_FAILED = 1  # training diverged (NaN / Inf); a signal exits with 128 + signum (130, 143)


class UsageError(Exception):
    """Bad input from the command line; reported in one line, exit code 2."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train.py", description="Train an rlaccel agent.")
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. --set ppo.learning_rate=1e-3 (repeatable)")
    p.add_argument("--seed", type=int, help="PRNG seed (overrides the config's seed)")
    p.add_argument("--run-dir", help="run directory (default runs/<algo>_<env>_s<seed>_<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p.parse_args(argv)


def resolve(args: argparse.Namespace) -> tuple[config_lib.Config, Path, bool]:
    """Config, run directory and resume flag from the arguments; raises on bad input."""
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.no_progress:
        overrides.append("logging.progress=false")

    if args.resume and args.overwrite:
        raise UsageError(f"--resume {args.resume} and --overwrite contradict each other; pass one")
    if args.resume:
        run_dir = Path(args.resume)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise UsageError(f"--resume {run_dir}: no config.yaml there (not a run directory)")
        from rlaccel import checkpoint

        if checkpoint.latest(run_dir / "checkpoints") is None:
            raise UsageError(f"--resume {run_dir}: no checkpoint in {run_dir / 'checkpoints'}")
        base = config_lib.load_data(args.config) if args.config else config_lib.load_data(saved)
        config = config_lib.build(config_lib.apply_overrides(base, overrides))
        check_env(config)
        return config, run_dir, True

    if not args.config:
        raise UsageError("--config FILE is required (e.g. --config configs/ppo_cartpole.yaml)")
    config = config_lib.load(args.config, overrides)
    check_env(config)
    if args.run_dir:
        run_dir = Path(args.run_dir)
    elif config.logging.run_dir:
        run_dir = Path(config.logging.run_dir)
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{config.algo}_{config.env}_s{config.seed}_{stamp}"
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} exists and is not a directory")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not args.overwrite:
            raise UsageError(f"run directory {run_dir} exists; pass --resume {run_dir} to continue it or --overwrite to replace it")
    return config, run_dir, False


def check_env(config: config_lib.Config) -> None:
    """Env id and devices exist (both raise ConfigError), checked before anything is written."""
    from rlaccel import envs, placement

    try:
        env = envs.make(config.env, **config.env_kwargs)
    except envs.UnknownEnvError as e:
        raise config_lib.ConfigError(f"env: {e}") from None
    if config.algo == "dqn" and not env.is_discrete:
        raise config_lib.ConfigError(f"algo: dqn needs a discrete action space; {config.env} has continuous actions {env.action_space} (use ppo)")
    placement.resolve(config.placement)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(argv)
    try:
        config, run_dir, resume = resolve(args)
    except (UsageError, config_lib.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE

    from rlaccel import checkpoint, driver, guards, host

    if not resume and run_dir.exists() and args.overwrite:
        shutil.rmtree(run_dir)
    try:
        summary = driver.train(config, run_dir, resume=resume)
    except checkpoint.CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except host.ActorFault as e:  # an actor's env raised (rlaccel.host): checkpointed, threads joined
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
    verb = "done" if summary["status"] == "completed" else f"stopped ({summary['stopped_by']})"
    print(
        f"{verb}: {summary['env_steps']:,} env steps, final_return {summary['final_return']:.1f}, "
        f"{summary['sps']:,.0f} steps/s (compile {summary['compile_s']:.1f} s) -> {run_dir}"
    )
    return summary["exit_code"]


if __name__ == "__main__":
    sys.exit(main())

"""``rlaccel train --config FILE [--set key.sub=value ...] [--seed N] [--run-dir DIR] [--check]``,
or ``rlaccel train --zoo ppo.yml --env Pendulum-v1 [...]`` from an RL Zoo hyperparameter file.

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
import traceback
from pathlib import Path
from typing import Any

import yaml

from rlaccel import api
from rlaccel import config as config_lib
from rlaccel import gcpause

EXIT_USAGE = 2
EXIT_FAILED = 1


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train an agent", description="Train an rlaccel agent.")
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--zoo", metavar="FILE", help="an RL Zoo hyperparameter file (hyperparams/ppo.yml, dqn.yml) instead of --config; needs --env")
    p.add_argument("--env", metavar="ID", help="with --zoo: the env whose block to train (e.g. Pendulum-v1, HalfCheetah-v4)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. --set ppo.learning_rate=1e-3 (repeatable)")
    p.add_argument("--seed", type=int, help="PRNG seed (overrides the config's seed)")
    p.add_argument("--run-dir", help="run directory (default runs/<algo>_<env>_s<seed>_<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--check", action="store_true", help="validate everything, print the resolved config, write nothing")
    add_process_arguments(p)
    p.set_defaults(func=run)
    return p


def add_process_arguments(p: argparse.ArgumentParser) -> None:
    """``--coordinator HOST:PORT --num-processes N --process-id I``: one run (or sweep) over
    several processes (``rlaccel.distributed.initialize``; ``rlaccel train`` and ``rlaccel sweep``)."""
    p.add_argument("--coordinator", metavar="HOST:PORT", help="a multi-process run (docs/multi-host.md): process 0's address; with --num-processes and --process-id (none of them under srun / mpirun: detected)")
    p.add_argument("--num-processes", type=int, metavar="N", help="a multi-process run: how many processes")
    p.add_argument("--process-id", type=int, metavar="I", help="a multi-process run: this process, 0 .. N-1 (0 writes the run directory or sweep outputs)")


def resolve(args: argparse.Namespace) -> tuple[config_lib.Config, Path, bool, str | None]:
    """Config, run directory, resume flag and a note to print (how ``--zoo`` mapped the env
    id, or ``None``) from the arguments.

    Raises:
      ConfigError: anything wrong with them (one line naming the key, file or directory).
    """
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.no_progress:
        overrides.append("logging.progress=false")
    zoo_config, note = zoo_data(args) if args.zoo or args.env else (None, None)
    if args.resume:
        run_dir = Path(args.resume)
        api.check_run_dir(run_dir, resume=True, overwrite=args.overwrite)
        config = api.load_config(args.config or run_dir / "config.yaml", overrides)
        api.validate(config)
        return config, run_dir, True, None
    if zoo_config is not None:
        config = api.load_config(zoo_config, overrides)
    elif not args.config:
        raise config_lib.ConfigError("--config FILE is required (e.g. --config configs/ppo_cartpole.yaml)")
    else:
        config = api.load_config(args.config, overrides)
    api.validate(config)
    run_dir = Path(args.run_dir) if args.run_dir else api.default_run_dir(config)
    api.check_run_dir(run_dir, resume=False, overwrite=args.overwrite)
    return config, run_dir, False, note


def zoo_data(args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """Config data from ``--zoo FILE --env ID``, and a one-line note if the env id was mapped.

    Raises:
      ConfigError: with --config or --resume, without --env, or a bad zoo file or env id.
    """
    from rlaccel import zoo

    if not args.zoo:
        raise config_lib.ConfigError("--env ID goes with --zoo FILE (to change a config's env: --set env=ID)")
    if args.config or args.resume:
        raise config_lib.ConfigError("--zoo FILE starts a new run from a zoo block; it does not go with --config or --resume")
    if not args.env:
        raise config_lib.ConfigError(f"--zoo {args.zoo}: needs --env ID, the block to train (e.g. --env Pendulum-v1)")
    algo = next((o.split("=", 1)[1].strip() for o in args.overrides if o.split("=", 1)[0].strip() == "algo"), None)
    return zoo.block_from_file(config_lib.load_data(args.zoo), Path(args.zoo).name, args.env, algo)


@gcpause.held()  # start-up without the cyclic collector (rlaccel.gcpause)
def run(args: argparse.Namespace) -> int:
    """``rlaccel train``; returns the exit code."""
    multi = False
    try:
        if not args.check:  # several processes (rlaccel.distributed): join before JAX starts
            from rlaccel import distributed

            multi = distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        config, run_dir, resume, note = resolve(args)
        if multi and not (args.run_dir or args.resume or config.logging.run_dir):
            raise config_lib.ConfigError("--run-dir DIR: a multi-process run needs a directory every process names (the default has a timestamp)")
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        if multi:
            distributed.agree(False)
        return EXIT_USAGE
    if multi and not distributed.agree(True):
        print("error: another process of the run refused it (see its error)", file=sys.stderr)
        return EXIT_USAGE
    if note:
        print(f"# {note}")
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
        if multi and isinstance(e, distributed.ProcessLost):
            distributed.abandon(EXIT_FAILED)  # jax.distributed's shutdown would wait for the dead process
        return EXIT_FAILED
    except guards.NonFiniteError as e:
        latest = checkpoint.latest(run_dir / "checkpoints")
        kept = f"the latest checkpoint is {latest}" if latest else "no checkpoint was written"
        print(f"error: {e}; the run stopped, {kept}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # a second SIGINT / SIGTERM while the first was being handled
        print("error: interrupted twice; stopped without a checkpoint", file=sys.stderr)
        return guards.exit_code(signal.SIGINT)
    except Exception as e:
        if multi and distributed.is_lost_peer(e):  # a collective that broke outside a chunk (a save)
            distributed.exit_lost(distributed.lost(e), run_dir / "checkpoints")
        if multi:  # the others would wait for it in their next collective: exit as a dead process does
            traceback.print_exc()
            distributed.abandon(EXIT_FAILED)
        raise
    summary = result.summary
    verb = "done" if summary["status"] == "completed" else f"stopped ({summary['stopped_by']})"
    print(
        f"{verb}: {summary['env_steps']:,} env steps, final_return {summary['final_return']:.1f}, "
        f"{summary['sps']:,.0f} steps/s (compile {summary['compile_s']:.1f} s) -> {run_dir}"
    )
    return summary["exit_code"]

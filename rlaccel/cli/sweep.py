"""``rlaccel sweep``: hyperparameter sweeps and search.

Grid (every setting x every seed; settings that differ only in shape-free hyperparameters
train together in one compiled program, vmapped, sharded over the devices: on a CPU, one device
per core the members can use, unless ``XLA_FLAGS`` sets a count; ``--devices N`` takes fewer)::

    rlaccel sweep --config configs/ppo_cartpole.yaml --seeds 8 \\
        --grid ppo.learning_rate=1e-4,3e-4,1e-3 --grid ppo.ent_coef=0,0.01

Search (Optuna TPE + median pruner; several processes or machines can share one study)::

    rlaccel sweep --config configs/ppo_cartpole.yaml --search optuna \\
        --space configs/search_ppo_cartpole.yaml --trials 40 [--storage URL_OR_JOURNAL_FILE]

Several processes or hosts (a grid; members sharded over every process's devices, process 0
writes the outputs; docs/multi-host.md)::

    rlaccel sweep --config C --grid ... --out /shared/sweep --coordinator HOST:PORT --num-processes N --process-id I

Best config of a finished sweep, ready for ``rlaccel train``::

    rlaccel sweep --export-best sweeps/mine [--to best.yaml]

Bad input (config, grid keys or values, search-space file, storage URL, output directory)
stops with one line on stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import datetime
import math
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

from rlaccel import config as config_lib
from rlaccel.argtypes import positive_int
from rlaccel.cli.train import add_process_arguments
from rlaccel.config import ConfigError
from rlaccel.fileio import atomic_write

EXIT_USAGE = 2


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("sweep", help="sweep or search hyperparameters", description="Sweep or search hyperparameters of an rlaccel agent.")
    p.add_argument("--config", help="base YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a base config key (repeatable)")
    p.add_argument("--seeds", type=positive_int, help="seeds per setting / trial, vmapped: config seed, seed+1, ... (default 4 for a grid, 2 for a search)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="a grid axis, e.g. ppo.learning_rate=1e-4,3e-4 (repeatable)")
    p.add_argument("--search", choices=["optuna"], help="search instead of a grid")
    p.add_argument("--space", help="search-space YAML (with --search), e.g. configs/search_ppo_cartpole.yaml")
    p.add_argument("--trials", type=int, help="trials of the study in total, over all workers (with --search)")
    p.add_argument("--storage", help="Optuna storage: sqlite:///f.db, postgresql://..., mysql://... or a journal file (default OUT/optuna.journal)")
    p.add_argument("--study", help="study name (default <algo>_<env>_<space file name>)")
    p.add_argument("--sampler-seed", type=int, help="TPE sampler seed")
    p.add_argument("--out", help="sweep directory (default sweeps/<algo>_<env>_<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing grid sweep directory")
    p.add_argument("--devices", type=int, help="shard members over the first N devices (default: all)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--export-best", metavar="SWEEP_DIR", help="write the best config of a finished sweep and exit")
    p.add_argument("--to", help="with --export-best: output YAML (default SWEEP_DIR/best_config.yaml)")
    add_process_arguments(p)
    p.set_defaults(func=run)
    return p


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def export_best(args: argparse.Namespace) -> int:
    """``--export-best DIR``: the best setting of a grid (``results.json``) or the best trial of a
    search (``trials.json``) as a config YAML."""
    from rlaccel.sweep import report as sweep_report

    src = Path(args.export_best)
    dest = Path(args.to) if args.to else src / "best_config.yaml"
    if not dest.parent.is_dir():
        return _fail(f"--to {dest}: directory {dest.parent} does not exist")
    try:
        if (src / "trials.json").is_file() and not (src / "results.json").is_file():
            import json

            report = json.loads((src / "trials.json").read_text())
            if report.get("best_params") is None:
                return _fail(f"{src / 'trials.json'}: no completed trial")
            data = config_lib.replace(config_lib.build(report["base_config"]), **report["best_params"]).to_dict()
            data.get("logging", {}).pop("run_dir", None)
            import yaml

            atomic_write(dest, f"# best trial {report['best_trial']} of study {report['study']!r}\n" + yaml.safe_dump(data, sort_keys=False))
            print(f"best trial {report['best_trial']} (mean final return {report['best_value']:.1f}) -> {dest}")
            return 0
        results = sweep_report.load_results(src)
        best = sweep_report.write_best_config(dest, results)
    except (ConfigError, KeyError, ValueError) as e:
        return _fail(str(e))
    print(f"best setting {best['setting']} (mean final return {best['final_return_mean']:.1f}) -> {dest}")
    return 0


def run(args: argparse.Namespace) -> int:
    """``rlaccel sweep``; returns the exit code."""
    if args.export_best:
        return export_best(args)

    from rlaccel import api, placement
    from rlaccel.sweep import grid as sweep_grid
    from rlaccel.sweep import search

    # ---- everything is validated before anything is written ----
    multi = False
    try:
        from rlaccel import distributed

        multi = distributed.initialize(args.coordinator, args.num_processes, args.process_id)  # before JAX starts
        if multi:
            if args.search:
                raise ConfigError("--search over several processes: run one worker per process without --coordinator, sharing the study through --storage")
            if args.devices is not None:
                raise ConfigError("--devices: a sweep over several processes shards its members over every process's devices")
            if not args.out:
                raise ConfigError("--out DIR: a sweep over several processes needs a directory every process names (the default has a timestamp)")
        if not args.config:
            raise ConfigError("--config FILE is required (e.g. --config configs/ppo_cartpole.yaml)")
        overrides = list(args.overrides) + (["logging.progress=false"] if args.no_progress else [])
        base = config_lib.load(args.config, overrides)
        seeds = args.seeds if args.seeds is not None else (2 if args.search else 4)
        grid = {} if args.search else sweep_grid.parse_grid(args.grid)
        if not multi:  # the members over every core (a process of several has the devices it was given)
            placement.split_cpu(min(placement.cpu_cores(), seeds * math.prod(len(v) for v in grid.values())))
        api.validate(base)
        if base.env_kind == "gym":
            raise ConfigError(f"env: a sweep trains every member in one compiled program, which needs a JAX env; {base.env} runs on host actors")
        if args.search:
            if args.grid:
                raise ConfigError("--grid and --search are exclusive (a search samples its own settings)")
            if not args.space:
                raise ConfigError("--space FILE is required with --search optuna (see configs/search_ppo_cartpole.yaml)")
            if args.trials is None or args.trials < 1:
                raise ConfigError(f"--trials: a search needs --trials N >= 1, got {args.trials}")
            space = search.load_space(args.space, base)
            if args.storage:
                search.check_storage(args.storage)
        else:
            for flag in ("space", "trials", "storage", "study", "sampler_seed"):
                if getattr(args, flag) is not None:
                    raise ConfigError(f"--{flag.replace('_', '-')} only applies with --search optuna")
            sweep_grid.make_settings(base, grid)  # validates every setting before anything is written
        out = Path(args.out) if args.out else Path("sweeps") / f"{base.algo}_{base.env}_{datetime.datetime.now():%Y%m%d-%H%M%S}"
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out}: exists and is not a directory")
        if not args.search and out.exists() and any(out.iterdir()) and not args.overwrite:
            raise ConfigError(f"--out {out}: exists; pass --overwrite to replace it")
        import jax

        devices = jax.devices()
        if args.devices is not None:
            if not 1 <= args.devices <= len(devices):
                raise ConfigError(f"--devices {args.devices}: JAX sees {len(devices)} device(s) ({', '.join(str(d) for d in devices)})")
            devices = devices[: args.devices]
    except ConfigError as e:
        if multi:
            distributed.agree(False)
        return _fail(str(e))

    if args.search:
        return run_search(args, base, space, seeds, out, devices)
    if out.exists() and args.overwrite and distributed.is_writer():
        shutil.rmtree(out)
    if multi and not distributed.agree(True):  # after the removal: no process writes into it before
        return _fail("another process of the sweep refused it (see its error)")
    from rlaccel.sweep.run import run_grid

    seed_list = [base.seed + i for i in range(seeds)]
    meta = {"config_file": args.config, "overrides": list(args.overrides), "grid": list(args.grid)}
    try:
        report = run_grid(base, grid, seed_list, out, devices=devices, meta=meta)
    except Exception as e:
        if multi:  # the others would wait for it in their next collective: exit as a dead process does
            print(f"error: {e}" if isinstance(e, distributed.ProcessLost) else traceback.format_exc(), file=sys.stderr)
            distributed.abandon(1)
        raise
    if not distributed.is_writer():
        print(f"done: process {distributed.process_index()} of {distributed.process_count()}; process 0 wrote the results to {out}")
        return report["exit_code"]
    if report["exit_code"]:
        print(f"stopped by {report['stopped_by']}; the groups done so far are in {out}", file=sys.stderr)
        return report["exit_code"]
    print_rows(report["results"])
    best = report.get("best")
    print(
        f"done: {len(report['results'])} settings x {seeds} seeds, {report['aggregate_steps_per_s']:,.0f} env steps/s aggregate "
        f"(compile {report['compile_s']:.1f} s) -> {out}"
        + (f"; best {best['setting']}: {best['final_return_mean']:.1f} -> {out / 'best_config.yaml'}" if best else "")
    )
    return 0


def print_rows(rows: list) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for col in ("setting", "mean", "std", "min", "steps/s"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for r in rows:
        table.add_row(r["setting"], f"{r['final_return_mean']:.1f}", f"{r['final_return_std']:.1f}", f"{r['final_return_min']:.1f}", f"{r['steps_per_s']:,.0f}")
    Console(width=max(Console().width, 120)).print(table)


def run_search(args: argparse.Namespace, base: config_lib.Config, space: dict, seeds: int, out: Path, devices: list) -> int:
    """Work on the Optuna study until none of its trials is left waiting."""
    import optuna
    from rich.console import Console

    from rlaccel.sweep import search
    from rlaccel.logging import make_progress

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    console = Console(stderr=True)
    out.mkdir(parents=True, exist_ok=True)
    storage_url = args.storage or str(out / "optuna.journal")
    storage = search.make_storage(storage_url)
    name = args.study or f"{base.algo}_{base.env}_{Path(args.space).stem}"
    num_updates = base.total_timesteps // base.agent.rollout_size
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=num_updates // 4)
    try:
        study = search.open_study(storage, name, args.trials, optuna.samplers.TPESampler(seed=args.sampler_seed), pruner)
    except ConfigError as e:
        return _fail(str(e))
    runner = search.TrialRunner(base, space, [base.seed + i for i in range(seeds)], devices)
    console.print(f"study {name!r} in {storage_url}: {args.trials} trials; vmapped: {', '.join(runner.traced) or 'seeds only'}; {seeds} seeds per trial")
    progress = make_progress(console, enabled=not args.no_progress and base.logging.progress)
    with progress:
        task = progress.add_task("trials (this worker)", total=None, sps="-", ret="-")

        def on_trial(number: int, value: float) -> None:
            progress.update(task, advance=1, ret=f"{value:.1f}")

        ran = search.work(study, storage, runner, out, progress=on_trial)
    meta = {"config_file": args.config, "overrides": list(args.overrides), "space": args.space, "storage": storage_url, "seeds": seeds, "base_config": base.to_dict()}
    report = search.write_outputs(out, study, base, meta)
    best = report.get("best_trial")
    print(
        f"done: this worker ran {ran} trial(s); study {name!r} has {len(report['trials'])}"
        + (f"; best trial {best}: {report['best_value']:.1f} -> {out / 'best_config.yaml'}" if best is not None else "")
    )
    return 0


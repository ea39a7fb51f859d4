"""A whole grid sweep: every setting x seed, group by group through the one training loop.

What ``rlaccel sweep --grid ...`` runs, and what scripts and benchmarks call directly::

    from rlaccel.sweep.run import run_grid
    report = run_grid(config, {"ppo.learning_rate": [1e-4, 3e-4]}, seeds=[0, 1, 2, 3], out_dir="sweeps/lr")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlaccel import gcpause, guards
from rlaccel.config import Config
from rlaccel.sweep.grid import group_settings, make_settings

__all__ = ["run_grid"]


@gcpause.held()  # start-up without the cyclic collector (rlaccel.gcpause)
def run_grid(
    base: Config,
    grid: Mapping[str, Sequence[Any]],
    seeds: Sequence[int],
    out_dir: str | Path | None,
    *,
    devices: Sequence[Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    console: Any = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train every setting of ``grid`` (applied to ``base``) x every seed.

    Settings that differ only in traced hyperparameters train together in one compiled,
    vmapped program (a *group*); each group runs through ``rlaccel.loop.run`` with its own run
    directory ``out_dir/groups/<index>`` (TensorBoard means over members, checkpoints,
    ``summary.json``). SIGINT / SIGTERM stop the group in flight after its chunk (checkpointed)
    and skip the rest.

    Args:
      base: the validated base config.
      grid: dotted key -> values (``rlaccel.sweep.grid.parse_grid``); ``{}`` trains ``base`` only.
      seeds: PRNG seeds of every setting.
      out_dir: where the table, curves, TensorBoard runs and ``best_config.yaml`` go
        (``rlaccel.sweep.report.write_outputs``); ``None`` writes nothing.
      devices: where members run (default: every device of JAX's default backend).
      meta: more keys for ``results.json``.
      console: where notices and progress go.
      progress: show progress bars (``None``: as ``logging.progress`` says).

    Returns:
      The report (``results`` rows, ``aggregate_steps_per_s``, ``compile_s``, ``train_s``,
      ``best``, ...); ``exit_code`` is 130 / 143 when a signal stopped the sweep.

    Raises:
      rlaccel.config.ConfigError: an invalid grid key or value (nothing written).
    """
    from rich.console import Console

    from rlaccel import compile_cache
    from rlaccel.sweep.program import run_group
    from rlaccel.sweep.report import write_outputs

    compile_cache.enable()  # before the groups' first compile
    console = console or Console(stderr=True)
    settings = make_settings(base, grid)
    traced, groups = group_settings(settings)
    seed_list = list(seeds)
    console.print(
        f"sweep: {len(settings)} settings x {len(seed_list)} seeds in {len(groups)} compile(s); "
        f"vmapped: {', '.join(traced) or 'seeds only'}"
    )
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    results = []
    with guards.stop_on_signals() as stop:
        for g, group in enumerate(groups):
            run_dir = out / "groups" / f"{g:02d}" if out is not None else None
            results.append(run_group(group, traced, seed_list, devices=devices, run_dir=run_dir, console=console, progress=progress, stop=stop))
            if stop.requested:
                break
    report: dict[str, Any] = {"exit_code": stop.exit_code, "stopped_by": stop.name or None}
    from rlaccel import distributed

    if out is None or not distributed.is_writer():  # several processes: process 0 writes the outputs
        total_steps = sum(r.env_steps for r in results)
        train_s = sum(r.train_s for r in results)
        return {
            **report,
            "results": results,
            "compile_s": sum(r.compile_s for r in results),
            "train_s": train_s,
            "aggregate_steps_per_s": total_steps / train_s if train_s > 0 else float("nan"),
        }
    return {**report, **write_outputs(out, results, traced, base, {**(meta or {}), "seeds": seed_list})}

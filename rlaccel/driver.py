"""The driver: a thin Python loop around compiled chunks, doing all the I/O.

Between chunks (never inside the compiled program) it logs metrics, moves the progress bar
and writes checkpoints; at the end it writes ``summary.json``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml
from rich.console import Console

from rlaccel import agents, checkpoint, envs, guards
from rlaccel import placement as placement_lib
from rlaccel.config import Config
from rlaccel.logging import MetricLogger, make_progress, write_json
from rlaccel.runners import episode_means, make_runner

__all__ = ["chunk_length", "train"]


def chunk_length(num_updates: int, target: int) -> int:
    """Updates per compiled chunk: ``target``, or a divisor of ``num_updates`` near it.

    A divisor means every chunk has the same length, so there is one compile, not two.
    """
    if num_updates % target == 0 or target >= num_updates:
        return min(target, num_updates)
    for d in sorted(range(max(1, target // 2), 2 * target + 1), key=lambda d: abs(d - target)):
        if num_updates % d == 0:
            return d
    return target


def train(
    config: Config, run_dir: str | Path, *, resume: bool = False, console: Console | None = None, stop_at: int | None = None
) -> dict[str, Any]:
    """Train as ``config`` says, writing TensorBoard events, checkpoints and ``summary.json``.

    Between chunks the loop checks for SIGINT / SIGTERM (``rlaccel.guards.stop_on_signals``):
    a signal lets the chunk in flight finish, then a checkpoint and ``summary.json`` are
    written and the summary's ``exit_code`` is 130 / 143. Every chunk's guarded metrics
    (``rlaccel.guards.GUARDED_METRICS``: loss, gradient norm, largest parameter) are checked
    for NaN / Inf; on one, the run stops without checkpointing the poisoned state (the last
    good checkpoint stays the latest), writes ``summary.json`` and raises.

    Args:
      config: a validated config.
      run_dir: the run directory; created, with ``config.yaml``, once the state is ready.
      resume: continue from the newest checkpoint in ``run_dir/checkpoints``.
      console: where the progress bar and notices go.
      stop_at: stop (checkpoint, summary) once this many updates are done, as if a signal had
        arrived; the schedules still follow ``config`` (a later ``resume`` continues exactly).

    Returns:
      The summary (also written to ``run_dir/summary.json``); ``status`` is ``"completed"``
      or ``"stopped"`` (``stopped_by``: ``"SIGINT"``, ``"SIGTERM"`` or ``"stop_at"``).

    Raises:
      rlaccel.checkpoint.CheckpointError: ``resume`` without a usable, compatible checkpoint
        (nothing is written then).
      rlaccel.guards.NonFiniteError: a NaN / Inf in a guarded metric; names update and metric.
    """
    with guards.stop_on_signals() as stop:
        if config.env_kind == "gym":  # host actor threads + learner: rlaccel.host
            from rlaccel import host

            return host.train(config, Path(run_dir), resume=resume, console=console, stop_at=stop_at, stop=stop)
        return _train(config, Path(run_dir), resume=resume, console=console or Console(stderr=True), stop_at=stop_at, stop=stop)


def _train(config: Config, run_dir: Path, *, resume: bool, console: Console, stop_at: int | None, stop: guards.StopFlag) -> dict[str, Any]:
    where = placement_lib.resolve(config.placement)
    env = envs.make(config.env, auto_reset=True, **config.env_kwargs)
    spec = agents.make(config, env)
    runner = make_runner(spec.agent, env, spec.num_envs, spec.num_steps, where)
    steps_per_update = spec.steps_per_update
    ckpt_dir = run_dir / "checkpoints"

    state = jax.jit(runner.init)(jax.random.PRNGKey(config.seed))
    if resume:
        state, path = restore_latest(ckpt_dir, state)
    open_run_dir(run_dir, config)  # only now, with the checkpoint accepted
    console.print(f"placement: {where.describe()}")
    if resume:
        console.print(f"resumed from {path} (update {int(state.update)})")
    state = runner.place(state)
    start_update = int(state.update)
    end_update = spec.num_updates if stop_at is None else max(start_update, min(stop_at, spec.num_updates))

    chunk = chunk_length(spec.num_updates, config.logging.log_interval)
    compile_start = time.perf_counter()
    chunk_fns = {chunk: runner.compile(state, chunk)}
    compile_s = time.perf_counter() - compile_start

    # A resumed run hides what an interrupted one logged after its checkpoint (TensorBoard
    # drops events at steps >= purge_step), so curves never show updates that were redone.
    logger = MetricLogger(run_dir, tensorboard=config.logging.tensorboard, purge_step=start_update * steps_per_update + 1 if resume else None)
    logger.log(start_update * steps_per_update, {"time/compile_s": compile_s})
    meta = {"config": config.to_dict(), "steps_per_update": steps_per_update}
    probes: list[dict[str, float]] = []
    last_probe = -math.inf
    last_ckpt = start_update if resume else -1
    train_s = 0.0
    wall_start = time.perf_counter()
    update = start_update
    failure: guards.NonFiniteError | None = None
    progress = make_progress(console, enabled=config.logging.progress)
    with progress:
        task = progress.add_task(
            f"{config.algo} {config.env}", total=spec.num_updates * steps_per_update, completed=update * steps_per_update, sps="-", ret="-"
        )
        while update < end_update and not stop.requested:
            n = min(chunk, end_update - update)
            if n not in chunk_fns:
                extra_start = time.perf_counter()
                chunk_fns[n] = runner.compile(state, n)
                compile_s += time.perf_counter() - extra_start
            start = time.perf_counter()
            state, metrics = chunk_fns[n](state)
            metrics = jax.device_get(metrics)  # blocks: the chunk's time is measured whole
            elapsed = time.perf_counter() - start
            train_s += elapsed
            fps = n * steps_per_update / elapsed
            bad = guards.first_nonfinite(metrics)
            for i in range(n if bad is None else bad[0] + 1):
                row = {k: v[i] for k, v in metrics.items()}
                if i == n - 1:
                    row["time/fps"] = fps
                logger.log((update + i + 1) * steps_per_update, row)
            if bad is not None:
                failure = guards.NonFiniteError(update + bad[0] + 1, bad[1], float(metrics[bad[1]][bad[0]]))
                break
            update += n
            if time.perf_counter() - last_probe >= config.logging.probe_seconds or update >= end_update:
                probes.append(runner.probe(state, elapsed / n))
                logger.log(update * steps_per_update, probes[-1])
                last_probe = time.perf_counter()
            ret = float(metrics["rollout/ep_rew_mean"][-1])
            progress.update(task, completed=update * steps_per_update, sps=f"{fps:,.0f}", ret=f"{ret:.1f}" if math.isfinite(ret) else "-")
            if config.logging.checkpoint_interval and update - max(last_ckpt, start_update) >= config.logging.checkpoint_interval and update < end_update:
                logger.flush()
                checkpoint.save(ckpt_dir, update, state, {**meta, "update": update}, keep=config.logging.keep_checkpoints)
                last_ckpt = update

    logger.flush()
    if failure is None and update > last_ckpt:
        checkpoint.save(ckpt_dir, update, state, {**meta, "update": update}, keep=config.logging.keep_checkpoints)
    if failure is not None:
        status, stopped_by, exit_code = "diverged", None, 1
    elif update < spec.num_updates:
        stopped_by = stop.name or "stop_at"
        status, exit_code = "stopped", stop.exit_code
    else:
        status, stopped_by, exit_code = "completed", None, 0
    latest = checkpoint.latest(ckpt_dir)
    summary = run_summary(
        config, run_dir, state, status=status, stopped_by=stopped_by, exit_code=exit_code, error=str(failure) if failure is not None else None,
        checkpoint_path=latest, updates=(start_update, update), steps_per_update=steps_per_update,
        times={"wall_s": time.perf_counter() - wall_start + compile_s, "compile_s": compile_s, "train_s": train_s},
        placement=where.describe(), probes=probes, extra={"probe_compile_s": runner.pieces_compile_s},
    )  # fmt: skip
    if failure is None:
        logger.hparams(_flat_hparams(config), {"final_return": summary["final_return"], "sps": summary["sps"]})
    logger.close()
    write_json(run_dir / "summary.json", summary)
    if failure is not None:
        raise failure
    if stopped_by is not None:
        console.print(f"stopped by {stopped_by} after update {update}; checkpoint {latest}; continue with --resume {run_dir}")
    return summary


def restore_latest(ckpt_dir: Path, template: Any) -> tuple[Any, Path]:
    """The newest checkpoint in ``ckpt_dir`` restored into ``template``'s structure, and its path.

    Raises:
      rlaccel.checkpoint.CheckpointError: none there, or one that does not fit ``template``;
        a damaged newest one names the previous checkpoint to fall back on.
    """
    path = checkpoint.latest(ckpt_dir)
    if path is None:
        raise checkpoint.CheckpointError(f"{ckpt_dir}: no checkpoint to resume from")
    try:
        state, _ = checkpoint.restore(path, template)
    except checkpoint.DamagedCheckpointError as e:
        older = checkpoint.list_checkpoints(ckpt_dir)[:-1]
        if not older:
            raise
        raise checkpoint.DamagedCheckpointError(f"{e}; move it away to resume from the previous one, {older[-1].name}") from None
    return state, path


def open_run_dir(run_dir: Path, config: Config) -> None:
    """Create the run directory and write ``config.yaml`` atomically (the first write of a run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False).encode())


def run_summary(
    config: Config,
    run_dir: Path,
    state: Any,
    *,
    status: str,
    stopped_by: str | None,
    exit_code: int,
    error: str | None,
    checkpoint_path: Path | None,
    updates: tuple[int, int],
    steps_per_update: int,
    times: dict[str, float],
    placement: str,
    probes: list[dict[str, float]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``summary.json`` holds, for every training loop (fused, split, host actors).

    Args:
      state: the final ``TrainState`` (its last-100 episode means give the final return).
      status: ``completed``, ``stopped``, ``diverged`` or ``failed``.
      updates: ``(first, last)`` update of this invocation (a resumed run starts past 0).
      times: ``wall_s``, ``compile_s`` and ``train_s`` (compile excluded) of this invocation.
      probes: the probe results; each metric is summarised by its median over probes.
      extra: more keys, placed before the probe medians.
    """
    start_update, update = updates
    ep_rew_mean, ep_len_mean = (float(x) for x in jax.device_get(episode_means(state)))
    env_steps = (update - start_update) * steps_per_update
    train_s = times["train_s"]
    keys = dict.fromkeys(k for p in probes for k in p)
    return {
        "status": status,
        "stopped_by": stopped_by,
        "exit_code": exit_code,
        "error": error,
        "checkpoint": str(checkpoint_path) if checkpoint_path is not None else None,
        "env_steps": update * steps_per_update,
        "updates": update,
        **times,
        "sps": env_steps / train_s if train_s > 0 else float("nan"),
        "final_return": ep_rew_mean,
        "final_ep_len": ep_len_mean,
        "episodes": int(state.episodes),
        "placement": placement,
        **(extra or {}),
        **{k: _finite_median([p[k] for p in probes if k in p]) for k in keys},
        "run_dir": str(run_dir),
        "config": config.to_dict(),
    }


def _finite_median(values: list[float]) -> float | None:
    """Median of the finite values; ``None`` (JSON null) when there is none."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else None


def _flat_hparams(config: Config) -> dict[str, Any]:
    out: dict[str, Any] = {"env": config.env, "algo": config.algo, "seed": config.seed}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk(config.algo, config.to_dict()[config.algo])
    return out

"""The one training loop: a thin Python lifecycle around any step source, doing all the I/O.

``run(config, source, run_dir)`` is the same for every execution mode (``rlaccel.sources``:
fused, split, host actor threads; ``rlaccel.sweep``: compiled member groups):

1. a fresh state, or the newest checkpoint restored into it (``resume``);
2. the run directory and ``config.yaml``, only once the state is accepted;
3. the chunk compiled ahead of time (``time/compile_s``; a fresh run's from init's shapes,
   beside 1 and 2: ``source.compile_ahead``);
4. chunks of ``logging.log_interval`` updates; after each: NaN / Inf guard, TensorBoard rows,
   probes every ``logging.probe_seconds``, hooks (evaluation, pruning), progress, checkpoint
   every ``logging.checkpoint_interval`` updates, and the signal flag;
5. a final checkpoint (never of a poisoned state), hyperparameters, ``summary.json``.

Signals (``rlaccel.guards.stop_on_signals``): SIGINT / SIGTERM let the chunk in flight finish,
then the run checkpoints and ends with ``exit_code`` 130 / 143. A NaN / Inf in a guarded metric
ends it with ``status: diverged`` and :class:`rlaccel.guards.NonFiniteError`; a source fault
(an actor's env raised) with ``status: failed`` and the source's
:class:`rlaccel.sources.base.SourceFault`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml
from rich.console import Console

from rlaccel import checkpoint, clock, distributed, evaluate, gcpause, guards, placement
from rlaccel import costs as costs_lib
from rlaccel.fileio import atomic_write, write_json
from rlaccel.logging import MetricLogger, make_progress
from rlaccel.sources.base import SourceFault, StepSource

POINTS_PER_RUN = 1000  # per-update metrics written when logging.log_every is None (TensorBoard keeps 1,000 per tag)

__all__ = ["ChunkEnd", "Hook", "chunk_length", "open_run_dir", "restore_latest", "run"]


@dataclasses.dataclass
class ChunkEnd:
    """What a hook sees after each chunk.

    Attributes:
      update: updates done so far.
      env_steps: env steps done so far (every env of every member).
      state: the state after the chunk (read it; do not keep it past the call, it may be donated).
      metrics: the chunk's host metrics ``{name: [k]}``.
      train_s: training seconds so far (compile excluded).
      stop: set it to a reason (e.g. ``"pruned"``) to end the run after this chunk.
      log: ``log(env_steps, rows)`` writes rows at an earlier step (an evaluation that
        finished in the background logs at the update it evaluated).
    """

    update: int
    env_steps: int
    state: Any
    metrics: Mapping[str, np.ndarray]
    train_s: float
    stop: str | None = None
    log: Callable[[int, Mapping[str, float]], None] = lambda step, rows: None


Hook = Callable[[ChunkEnd], "Mapping[str, float] | None"]
"""Called after every chunk; what it returns is logged at the chunk's last step. The built-in
one, ``rlaccel.evaluate.Evaluator`` (``eval.freq`` > 0), runs first and returns ``eval/*``."""


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


def _update_count(state: Any) -> int:
    """``state.update`` (every member of a sweep, every process, at the same update), read on
    the host from the shards this process holds: ``np.max`` of a ``jax.Array`` compiled a jnp
    reduction (twice, ~0.3 s beside the chunk's compile), and a multi-process array has
    shards this process cannot read."""
    shards = getattr(state.update, "addressable_shards", None)
    return int(max(np.max(np.asarray(shard.data)) for shard in shards)) if shards else int(np.max(state.update))


def run(
    config: Any,
    source: StepSource,
    run_dir: str | Path,
    *,
    resume: bool = False,
    console: Console | None = None,
    stop_at: int | None = None,
    hooks: Sequence[Hook] = (),
    stop: guards.StopFlag | None = None,
    key: Any = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train ``source`` as ``config`` says, writing TensorBoard events, checkpoints and ``summary.json``.

    Args:
      config: a validated ``rlaccel.config.Config`` (its ``logging`` section sets the cadence).
      source: where steps come from (``rlaccel.sources.make``).
      run_dir: the run directory; created, with ``config.yaml``, once the state is ready;
        ``None`` writes nothing (no events, checkpoints or summary: benchmarks, sweep trials).
      resume: continue from the newest checkpoint in ``run_dir/checkpoints``.
      console: where the progress bar and notices go.
      stop_at: stop (checkpoint, summary) once this many updates are done, as if a signal had
        arrived; schedules still follow ``config`` (a later ``resume`` continues exactly).
      hooks: called after every chunk (:data:`Hook`).
      stop: the caller's signal flag; ``None`` installs ``guards.stop_on_signals`` here.
      key: the PRNG key of the fresh state (default ``PRNGKey(config.seed)``).
      progress: show the progress bar (``None``: as ``logging.progress`` says).

    Returns:
      The summary (also in ``run_dir/summary.json``); ``status`` is ``completed``, ``stopped``
      (``stopped_by``: ``SIGINT``, ``SIGTERM``, ``stop_at`` or a hook's reason).

    Raises:
      rlaccel.checkpoint.CheckpointError: ``resume`` without a usable, compatible checkpoint
        (nothing is written then).
      rlaccel.guards.NonFiniteError: a NaN / Inf in a guarded metric (names update and metric).
      rlaccel.sources.base.SourceFault: the source failed (an actor's env raised).
    """
    if stop is None:
        with guards.stop_on_signals() as flag:
            return run(config, source, run_dir, resume=resume, console=console, stop_at=stop_at, hooks=hooks, stop=flag, key=key, progress=progress)
    console = console or Console(stderr=True)
    run_dir = Path(run_dir) if run_dir is not None else None
    ckpt_dir = run_dir / "checkpoints" if run_dir is not None else None
    log = config.logging
    spu = source.steps_per_update

    key = jax.random.PRNGKey(config.seed) if key is None else key
    chunk = chunk_length(source.num_updates, log.log_interval)
    compile_start = time.perf_counter()
    if not resume:  # (a restored state's types are only known once read)
        source.compile_ahead(key, chunk)  # the first chunk compiles from init's shapes while init compiles and runs
    state = source.initial_state(key)
    if resume:
        state, path = restore_latest(ckpt_dir, state)
    start_update = update = _update_count(state)
    evaluator = evaluate.for_run(config, source, run_dir, start_update, resume=resume)  # eval.freq > 0
    hooks = (evaluator, *hooks) if evaluator is not None else hooks
    writer = distributed.is_writer()  # several processes: process 0 writes logs and the summary
    if run_dir is not None and writer:
        open_run_dir(run_dir, config)  # only now, with the checkpoint accepted
    console.print(f"placement: {source.describe()}")
    notice = placement.start(config)  # a line where cpu_threads could not apply
    if notice:
        console.print(f"[yellow]note[/]: {notice}")
    if resume:
        console.print(f"resumed from {path} (update {start_update}){source.resume_note}")
    state = source.place(state)
    end_update = source.num_updates if stop_at is None else max(start_update, min(stop_at, source.num_updates))

    every = log.log_every or -(-source.num_updates // POINTS_PER_RUN)
    source.compile(state, chunk)  # (waits for compile_ahead's)
    compile_s = time.perf_counter() - compile_start
    compiled = {chunk}

    # A resumed run hides what an interrupted one logged after its checkpoint (TensorBoard
    # drops events at steps >= purge_step), so curves never show updates that were redone.
    logger = MetricLogger(run_dir if writer else None, tensorboard=log.tensorboard and run_dir is not None and writer, purge_step=start_update * spu + 1 if resume else None)
    exchange = distributed.ChunkExchange(spu, ckpt_dir)  # several processes: speeds and signals, after every chunk
    costs = _decision_costs(source, state)
    logger.log(start_update * spu, {"time/compile_s": compile_s, **costs})
    meta = {"config": config.to_dict(), "steps_per_update": spu, **source.checkpoint_meta}

    # Asynchronous: a save returns once the state is on the host; orbax commits it while the
    # next chunk runs (the next save, and close() below, wait for it).
    saver = checkpoint.Saver(ckpt_dir, keep=log.keep_checkpoints) if ckpt_dir is not None else None

    def save(u: int) -> None:
        if saver is None:
            return
        logger.flush()
        saver.save(u, state, {**meta, "update": u})

    probes: list[dict[str, float]] = []
    last_probe = -math.inf
    last_ckpt = start_update if resume else -1
    train_s = 0.0
    wall_start = time.perf_counter()
    failure: Exception | None = None
    stopped_by: str | None = None
    bar = make_progress(console, enabled=log.progress if progress is None else progress)
    with bar:
        task = bar.add_task(f"{config.algo} {config.env}", total=source.num_updates * spu, completed=update * spu, sps="-", ret="-")
        source.start(state, stop)
        if evaluator is not None:
            evaluator.start(state)
        try:
            while update < end_update and not exchange.stop_requested(stop):
                n = min(chunk, end_update - update)
                if n not in compiled:
                    extra_start = time.perf_counter()
                    source.compile(state, n)
                    compile_s += time.perf_counter() - extra_start
                    compiled.add(n)
                start = time.perf_counter()
                new_state, metrics = source.run_chunk(state, n)
                gcpause.release()  # the collector held since the entry point: back on, the start-up's objects frozen
                metrics = jax.device_get(metrics)  # blocks: the chunk's time is measured whole
                elapsed = time.perf_counter() - start
                k = len(next(iter(metrics.values()))) if metrics else 0
                bad = guards.first_nonfinite(metrics) if source.guard_nonfinite and k else None
                rows = k if bad is None else bad[0] + 1
                for i in range(rows):
                    if (update + i + 1) % every and i < rows - 1:
                        continue  # written at a stride (DQN: tens of thousands of updates)
                    row = {name: v[i] for name, v in metrics.items()}
                    if i == k - 1:
                        row["time/fps"] = k * spu / elapsed
                    logger.log((update + i + 1) * spu, row)
                state = new_state  # (a donated input is gone; after a NaN this one is never saved)
                if bad is not None:
                    failure = guards.NonFiniteError(update + bad[0] + 1, bad[1], float(metrics[bad[1]][bad[0]]))
                    break
                train_s += elapsed
                update += k
                if source.fault is not None:
                    failure = source.fault
                    break
                if k == 0:
                    continue
                try:
                    logger.log(update * spu, exchange(elapsed, k, stop))
                except distributed.ProcessLost as e:
                    failure = e
                    break
                if log.probe_seconds is not None and (time.perf_counter() - last_probe >= log.probe_seconds or update >= end_update):
                    state, measured = source.probe(state, elapsed / k)
                    probes.append(measured)
                    if costs and "time/actor_sps" in probes[-1]:
                        probes[-1].update(costs_lib.ops_per_s(costs, probes[-1]["time/actor_sps"]))
                    logger.log(update * spu, probes[-1])
                    last_probe = time.perf_counter()
                end = ChunkEnd(update=update, env_steps=update * spu, state=state, metrics=metrics, train_s=train_s, log=logger.log)
                try:
                    for hook in hooks:
                        logger.log(update * spu, hook(end) or {})
                except Exception as e:  # noqa: BLE001 - e.g. the evaluation env raised: stop as a source fault does
                    failure = SourceFault(f"{getattr(hook, 'name', type(hook).__name__)} after update {update}: {type(e).__name__}: {e}")
                    break
                last = np.asarray(metrics.get("rollout/ep_rew_mean", [math.nan])[-1])
                ret = float(np.mean(last[np.isfinite(last)])) if np.isfinite(last).any() else math.nan
                bar.update(task, completed=update * spu, sps=f"{k * spu / elapsed:,.0f}", ret=f"{ret:.1f}" if math.isfinite(ret) else "-")
                if end.stop is not None:
                    stopped_by = end.stop
                    break
                if log.checkpoint_interval and update - max(last_ckpt, start_update) >= log.checkpoint_interval and update < end_update:
                    try:
                        save(update)
                    except Exception as e:  # several processes: a save's collective broke
                        if not distributed.is_lost_peer(e):
                            raise
                        failure = distributed.lost(e, update)
                        break
                    last_ckpt = update
        finally:
            lost = isinstance(failure, distributed.ProcessLost)  # no collective can complete any more
            if lost and not writer:  # it writes nothing, and JAX aborts it once process 0 is gone
                distributed.exit_lost(failure, ckpt_dir)
            for warning in source.close():
                console.print(f"[yellow]warning[/]: {warning}")
            if evaluator is not None:
                evaluator.close()
                if evaluator.error:  # a background evaluation that failed as the loop was ending anyway
                    console.print(f"[yellow]warning[/]: {evaluator.error}")
            if saver is not None and not lost:
                saver.wait()  # a save in flight commits, whatever ends the loop

    if not isinstance(failure, guards.NonFiniteError) and update > last_ckpt and not lost:
        save(update)  # after a fault or a signal too: the learner's last good state
    if saver is not None and not lost:
        saver.close()  # committed: `latest` below is this run's last checkpoint
    latest = checkpoint.latest(ckpt_dir) if ckpt_dir is not None else None
    time_to_result = clock.process_age_s()  # process start -> the trained agent, its checkpoint written
    if isinstance(failure, guards.NonFiniteError):
        status, exit_code = "diverged", 1
    elif failure is not None:
        status, exit_code = "failed", 1
    elif update < source.num_updates:
        stopped_by = stopped_by or stop.name or "stop_at"
        status, exit_code = "stopped", stop.exit_code if stop.requested else 0
    else:
        status, exit_code = "completed", 0
    if status != "stopped":
        stopped_by = None
    summary = {
        "status": status,
        "stopped_by": stopped_by,
        "exit_code": exit_code,
        "error": str(failure) if failure is not None else None,
        "checkpoint": str(latest) if latest is not None else None,
        "env_steps": update * spu,
        "updates": update,
        "wall_s": time.perf_counter() - wall_start + compile_s,
        "compile_s": compile_s,
        "time_to_result_s": time_to_result,
        "train_s": train_s,
        "sps": (update - start_update) * spu / train_s if train_s > 0 else float("nan"),
        **source.final_stats(state),
        **(evaluator.summary() if evaluator is not None else {}),
        "placement": source.describe(),
        **source.summary_extra(),
        **exchange.summary(),
        **costs,
        **_probe_medians(probes),
        "run_dir": str(run_dir) if run_dir is not None else None,
        "config": config.to_dict(),
    }
    if failure is None and isinstance(summary["final_return"], float):
        logger.hparams(_flat_hparams(config), {"final_return": summary["final_return"], "sps": summary["sps"]})
    logger.close()
    if run_dir is not None and writer:
        write_json(run_dir / "summary.json", summary)
    if lost:
        raise type(failure)(f"{failure}; last checkpoint: {latest or 'none written'}") from failure
    if isinstance(failure, SourceFault):
        raise type(failure)(f"{failure}; every actor stopped, checkpoint of the learner's last good state (update {update}): {latest}") from failure
    if failure is not None:
        raise failure
    if stopped_by is not None and run_dir is not None:
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


def open_run_dir(run_dir: Path, config: Any) -> None:
    """Create the run directory and write ``config.yaml`` atomically (the first write of a run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))


def _decision_costs(source: Any, state: Any) -> dict[str, float]:
    """``rlaccel.costs.decision_costs`` of the actors' fp32 policy (shapes only), ``{}`` for a
    policy that is not a flax MLP or a source without one agent (sweeps)."""
    agent = getattr(source, "agent", None)
    try:
        params = jax.eval_shape(lambda a: agent.actor_params(a, "fp32"), state.agent)
        dims = costs_lib.layer_dims(getattr(params, "policy", None))
    except Exception:  # noqa: BLE001 - any agent without an MLP policy simply has no cost row
        return {}
    return costs_lib.decision_costs(dims) if dims else {}


def _probe_medians(probes: list[dict[str, float]]) -> dict[str, float | None]:
    """Each probe metric's median over the probes (finite values; ``None`` when there is none)."""
    out = {}
    for k in dict.fromkeys(k for p in probes for k in p):
        finite = [p[k] for p in probes if k in p and math.isfinite(p[k])]
        out[k] = float(np.median(finite)) if finite else None
    return out


def _flat_hparams(config: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"env": config.env, "algo": config.algo, "seed": config.seed}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk(config.algo, config.to_dict()[config.algo])
    return out

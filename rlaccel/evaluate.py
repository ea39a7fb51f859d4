"""Evaluation between chunks: the int8 actor policy and its fp32 source on separate envs.

What Stable-Baselines3's ``EvalCallback`` and Brax's ``Evaluator`` do, as the loop's built-in
hook (``rlaccel.loop.run`` adds :func:`for_run`'s :class:`Evaluator` when ``eval.freq`` > 0):

* every ``eval.freq`` env steps (all envs together; at the first chunk end at or after each
  multiple) and after the run's last update, ``eval.episodes`` episodes of the actors' policy
  (int8 by default: the one you deploy) and of its fp32 source, from the same starting states;
  greedy actions unless ``eval.deterministic: false``. Normalisation statistics are the ones
  the actors act with at that update, frozen for the evaluation;
* the episodes run in ``rlaccel.eval_episodes``: on JAX envs (``CartPole-v1``, ``brax:<name>``)
  one compiled program, vmapped episodes in a ``lax.while_loop`` up to the env's time limit;
  on ``gym:`` envs the algorithm's numpy actor (the int8 reference host actors act with) on
  gymnasium envs of its own, same id and keyword arguments;
* metrics ``eval/mean_reward``, ``eval/std_reward``, ``eval/mean_ep_length`` (the actors'
  policy), ``eval/mean_reward_fp32``, ``eval/seconds`` (not part of ``time/fps`` or ``sps``);
* with ``eval.stop_at_return``, the run ends after the first evaluation whose
  ``eval/mean_reward`` reaches it (SB3's ``StopTrainingOnRewardThreshold``; the loop's
  ``stopped_by``: ``eval.stop_at_return``), so ``time_to_result_s`` is the time to that agent;
* the best ``eval/mean_reward`` so far keeps a checkpoint in ``<run_dir>/best/`` (through
  ``rlaccel.checkpoint.save``; its header's ``eval`` holds the figures, so the best survives
  ``--resume``);
* ``summary.json``: ``eval_return``, ``eval_return_std``, ``eval_return_fp32``, ``eval_ep_len``
  (the last evaluation), ``eval_best_return``, ``eval_best_env_steps``, ``eval_best_checkpoint``;
* ``<run_dir>/evaluations.npz``, SB3's ``EvalCallback`` log (what the RL Zoo's plot scripts
  read): ``timesteps [n]``, ``results [n, K]`` and ``ep_lengths [n, K]`` of the actors' policy,
  plus ``results_fp32`` and ``ep_lengths_fp32``; rewritten (atomically) after each evaluation,
  a resumed run keeping the evaluations before its checkpoint;
* ``eval.background`` (by default on for gymnasium's MuJoCo envs, off for other ``gym:``
  envs; measured, see ``EvalConfig.background``): the episodes run in a thread beside the
  next chunks, as RLlib's ``evaluation_parallel_to_training``. When an evaluation is due the loop
  copies the state (for ``best/``) and computes the actors' parameters, then goes on training;
  the result is taken at the first chunk end after it is in (or when the next evaluation is
  due, or the run ends) and logged at the step it evaluated. One evaluation is in flight at a
  time. The figures are those of an evaluation in turn (same parameters, same seeds);
  ``eval/seconds`` is then the thread's time, and ``eval_wait_s`` what the loop spent on
  evaluation (parameters, copies, waiting for a result).

Episodes draw their randomness from the run's seed and the update number (never from the
training key), so a resumed run evaluates exactly as an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rlaccel import checkpoint, distributed
from rlaccel.fileio import atomic_write
from rlaccel.agent import Agent
from rlaccel.eval_episodes import Episodes, HostEpisodes, JaxEpisodes

__all__ = ["LOG_FILE", "LOG_KEYS", "Evaluator", "for_run", "summarize"]

LOG_FILE = "evaluations.npz"
LOG_KEYS = ("timesteps", "results", "ep_lengths", "results_fp32", "ep_lengths_fp32")
"""``evaluations.npz``'s arrays: SB3's three (the actors' policy), then the fp32 source's."""


def summarize(results: dict[str, Episodes], acting: str) -> dict[str, float]:
    """TensorBoard rows of one evaluation: the ``acting`` precision's mean / std return (SB3's
    ``np.std``, population) and mean length, and the fp32 policy's mean return."""
    ret = np.asarray(results[acting].returns, np.float64)
    return {
        "eval/mean_reward": float(np.mean(ret)),
        "eval/std_reward": float(np.std(ret)),
        "eval/mean_ep_length": float(np.mean(results[acting].lengths)),
        "eval/mean_reward_fp32": float(np.mean(np.asarray(results["fp32"].returns, np.float64))),
    }


@dataclasses.dataclass
class _Due:
    """An evaluation scheduled after update ``update`` (its result pending in background mode)."""

    update: int
    env_steps: int
    state: Any  # the run's state at that update (a copy in background mode), for ``best/``
    result: Future | None = None  # background: ``(results, seconds)``


class Evaluator:
    """The loop's evaluation hook (``rlaccel.loop.Hook``): see the module docstring.

    Args:
      config: the run's config (its ``eval`` section, seed, env).
      source: the run's step source (``steps_per_update``, ``num_updates``, ``checkpoint_meta``).
      episodes: ``(agent_state, update) -> {precision: Episodes}`` with ``start(agent_state)``
        (compile beside the loop) and a ``program`` (``compile_cache.AheadProgram``: its
        ``compile_s``, and ``blocked_s``, excluded from ``eval/seconds``); in background mode
        also ``params(agent_state)`` and ``play(params, update)``, its two halves.
      acting: the actors' precision (``int8`` or ``fp32``): what ``eval/mean_reward`` reports.
      run_dir: where ``best/`` goes (``None``: nowhere).
      start_update: the update the run starts (or resumes) at.
      resume: read the best evaluation so far from ``run_dir/best``.
      background: play the episodes in a thread beside training (``eval.background``).
    """

    name = "evaluation"  # how a failure of it is named (``loop.run`` stops as on a source fault)

    def __init__(self, config: Any, source: Any, episodes: Any, acting: str, run_dir: Path | None, start_update: int, resume: bool, background: bool = False):
        self.freq = config.eval.freq
        self.num_episodes = config.eval.episodes
        self.stop_at_return = config.eval.stop_at_return
        self.spu = source.steps_per_update
        self.num_updates = source.num_updates
        self.episodes = episodes
        self.acting = acting
        self.best_dir = Path(run_dir) / "best" if run_dir is not None else None
        self.meta = {"config": config.to_dict(), "steps_per_update": self.spu, **source.checkpoint_meta}
        self.last_steps = start_update * self.spu
        self.last: dict[str, float] | None = None
        self.best: dict[str, Any] | None = _read_best(self.best_dir) if resume and self.best_dir is not None else None
        self.seconds = 0.0
        self.wait_s = 0.0
        self.count = 0
        self.error: str | None = None  # a background evaluation that failed after the loop ended
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="rlaccel-eval") if background else None
        self._pending: _Due | None = None
        self._log: Callable[[int, Mapping[str, float]], None] = lambda step, rows: None
        self.log_path = Path(run_dir) / LOG_FILE if run_dir is not None and distributed.is_writer() else None
        self.history: dict[str, list] = _read_history(self.log_path, self.last_steps) if resume and self.log_path is not None else {k: [] for k in LOG_KEYS}

    def start(self, state: Any) -> None:
        """Compile the evaluation in a thread beside the training loop, called once the chunk
        is compiled (two compiles at once only share the cores). The first chunks run beside
        it, and their env steps/s show its share; the run ends sooner: the RL Zoo's Pendulum
        block (int8, evaluating every 25k steps) 8.1-8.2 s against 8.7 s compiling it at the
        first evaluation on the loop's thread."""
        self.episodes.start(state.agent)

    def close(self) -> None:
        """Wait for :meth:`start`'s compile if it is still running, and for an evaluation in
        flight (the loop ended early: a signal, a fault, a stop): its rows are logged, and a
        failure of it is kept in ``summary.json``'s ``eval_error`` rather than raised."""
        self.episodes.program.wait()
        if self._pending is not None:
            update = self._pending.update
            try:
                self._finish(None)
            except Exception as e:  # noqa: BLE001 - the run is ending for another reason already
                self.error = f"evaluation after update {update}: {type(e).__name__}: {e}"
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def due(self, update: int) -> bool:
        """Whether the chunk that ended at ``update`` crossed a multiple of ``freq`` or ended the run."""
        steps = update * self.spu
        return steps // self.freq > self.last_steps // self.freq or update >= self.num_updates

    def __call__(self, end: Any) -> dict[str, float] | None:
        """After the chunk ``end`` (a ``loop.ChunkEnd``): take a background result that is in,
        and evaluate when due; returns the ``eval/*`` rows of an evaluation in turn (a background
        one's are logged through ``end.log`` at the step it evaluated)."""
        self._log = end.log
        due = self.due(end.update)
        if self._pending is not None and (due or self._pending.result.done()):
            self._finish(end)  # a due evaluation waits for the one in flight: one at a time
        if not due or end.stop is not None:
            return None  # (a background result just ended the run: its agent is the result)
        self.last_steps = end.update * self.spu
        if self._pool is None:
            start, blocked_s = time.perf_counter(), self.episodes.program.blocked_s
            results = self.episodes(end.state.agent, end.update)
            seconds = time.perf_counter() - start - (self.episodes.program.blocked_s - blocked_s)  # compiling is not evaluating
            return self._record(_Due(end.update, end.env_steps, end.state), results, seconds, end)
        start = time.perf_counter()
        state = jax.tree.map(lambda x: x.copy() if isinstance(x, (jax.Array, np.ndarray)) else x, end.state) if self.best_dir is not None else None  # the next chunk may donate end.state
        params = self.episodes.params(end.state.agent)
        self._pending = _Due(end.update, end.env_steps, state, self._pool.submit(self._play, params, end.update))
        self.wait_s += time.perf_counter() - start
        if end.update >= self.num_updates:
            self._finish(end)  # the run's last evaluation is its result: wait for it
        return None

    def _play(self, params: Any, update: int) -> tuple[dict[str, Episodes], float]:
        """The episodes of ``params`` (in the evaluation thread), and their seconds."""
        start = time.perf_counter()
        results = self.episodes.play(params, update)
        return results, time.perf_counter() - start

    def _finish(self, end: Any) -> None:
        """Wait for the evaluation in flight and record it, its rows logged at its own step."""
        pending, start, self._pending = self._pending, time.perf_counter(), None  # taken, whatever it raises
        results, seconds = pending.result.result()
        self.wait_s += time.perf_counter() - start
        rows = self._record(pending, results, seconds, end)
        self._log(pending.env_steps, rows)

    def _record(self, at: _Due, results: dict[str, Episodes], seconds: float, end: Any) -> dict[str, float]:
        """Record the evaluation of update ``at.update``: last and best figures, ``best/``, the
        stop at ``eval.stop_at_return`` (``end``'s, when there is a chunk end to stop); its rows."""
        metrics = summarize(results, self.acting)
        self.count, self.seconds = self.count + 1, self.seconds + seconds
        self._write_log(at.env_steps, results)
        self.last = {**metrics, "env_steps": at.env_steps}
        if self.best is None or metrics["eval/mean_reward"] > self.best["mean_reward"]:
            self.best = {
                "mean_reward": metrics["eval/mean_reward"],
                "std_reward": metrics["eval/std_reward"],
                "mean_reward_fp32": metrics["eval/mean_reward_fp32"],
                "env_steps": at.env_steps,
                "checkpoint": None,
            }
            if self.best_dir is not None:
                path = checkpoint.save(self.best_dir, at.update, at.state, {**self.meta, "update": at.update, "eval": self.best}, keep=1)
                self.best["checkpoint"] = str(path)
        if end is not None and self.stop_at_return is not None and metrics["eval/mean_reward"] >= self.stop_at_return:
            end.stop = "eval.stop_at_return"
        if self.count == 1:
            metrics["eval/compile_s"] = self.episodes.program.compile_s
        return {**metrics, "eval/seconds": seconds}

    def _write_log(self, env_steps: int, results: dict[str, Episodes]) -> None:
        """Add an evaluation to ``evaluations.npz`` (SB3's ``EvalCallback`` format) and rewrite it."""
        if self.log_path is None:
            return
        rows = {"timesteps": env_steps, "results": results[self.acting].returns, "ep_lengths": results[self.acting].lengths}
        rows.update(results_fp32=results["fp32"].returns, ep_lengths_fp32=results["fp32"].lengths)
        for key in LOG_KEYS:
            self.history[key].append(rows[key])
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v, np.int64 if k == "timesteps" or k.startswith("ep_lengths") else np.float64) for k, v in self.history.items()})
        atomic_write(self.log_path, buf.getvalue())

    def summary(self) -> dict[str, Any]:
        """``summary.json``'s eval keys (``None`` where no evaluation happened)."""
        last, best = self.last or {}, self.best or {}
        return {
            "eval_return": last.get("eval/mean_reward"),
            "eval_return_std": last.get("eval/std_reward"),
            "eval_return_fp32": last.get("eval/mean_reward_fp32"),
            "eval_ep_len": last.get("eval/mean_ep_length"),
            "eval_env_steps": last.get("env_steps"),
            "eval_best_return": best.get("mean_reward"),
            "eval_best_env_steps": best.get("env_steps"),
            "eval_best_checkpoint": best.get("checkpoint"),
            "eval_policy": self.acting,
            "eval_episodes": self.num_episodes,
            "evaluations": self.count,
            "eval_s": self.seconds,
            "eval_background": self._pool is not None,
            "eval_wait_s": self.wait_s if self._pool is not None else self.seconds,
            "eval_compile_s": self.episodes.program.compile_s,  # in its thread, beside the first chunks
            "eval_compile_wait_s": self.episodes.program.blocked_s,  # the loop waiting for it
            **({"eval_error": self.error} if self.error else {}),
        }


def _read_history(path: Path, upto_steps: int) -> dict[str, list]:
    """The evaluations a resumed run keeps from ``path``: those at or before ``upto_steps``
    (its checkpoint; later ones are redone). Missing or unreadable: none."""
    try:
        with np.load(path) as log:
            keep = np.asarray(log["timesteps"]) <= upto_steps
            return {k: list(np.asarray(log[k])[keep]) for k in LOG_KEYS}
    except (OSError, KeyError, ValueError):
        return {k: [] for k in LOG_KEYS}


def _read_best(best_dir: Path) -> dict[str, Any] | None:
    """The best evaluation recorded in ``best_dir``'s checkpoint header, or ``None``."""
    path = checkpoint.latest(best_dir)
    if path is None:
        return None
    try:
        best = dict(checkpoint.read_meta(path)["eval"])
    except (checkpoint.CheckpointError, KeyError, TypeError):
        return None  # unreadable: the next evaluation writes a new best
    if not math.isfinite(best.get("mean_reward", math.nan)):
        return None
    return {**best, "checkpoint": str(path)}


def for_run(config: Any, source: Any, run_dir: str | Path | None, start_update: int, resume: bool = False) -> Evaluator | None:
    """The evaluation hook for a run, or ``None``: ``eval.freq`` is 0, or the source has no
    single agent (a sweep group's members are vmapped; sweeps do not evaluate).

    Builds the evaluation envs now (before the run writes anything): ``envs.make(config.env)``
    for JAX envs, gymnasium envs for ``gym:`` ones.
    """
    agent = getattr(source, "agent", None)
    if config.eval.freq <= 0 or not isinstance(agent, Agent):
        return None
    acting = config.placement.actor.precision
    precisions = ("int8", "fp32") if acting == "int8" else ("fp32",)
    if config.env_kind == "gym":
        episodes: Any = HostEpisodes(config, agent, precisions)
    else:
        episodes = JaxEpisodes(config, agent, precisions)
    background = config.eval.background if config.eval.background is not None else config.env_kind == "gym" and episodes.mujoco
    return Evaluator(config, source, episodes, acting, Path(run_dir) if run_dir is not None else None, start_update, resume, background)

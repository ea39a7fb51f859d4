"""The step-source interface: where a run's environment steps and updates come from.

``rlaccel.loop.run`` drives any :class:`StepSource` through one lifecycle (run directory,
restore, compile, chunks, logging, probes, hooks, checkpoints, signals, NaN guard,
``summary.json``). A source only knows how to make a state, place it, compile and run a
chunk of updates, and time itself:

* ``rlaccel.sources.fused.FusedSource``: a chunk is one compiled program on one device.
* ``rlaccel.sources.split.SplitSource``: rollouts on the actor device, updates on the learner's (pipelined).
* ``rlaccel.sources.host.HostSource``: gymnasium envs stepped by host actor threads.
* ``rlaccel.sweep.program.SweepSource``: members (settings x seeds) of one compile group, vmapped.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

import numpy as np

__all__ = ["SourceFault", "StepSource", "latency_percentiles"]


class SourceFault(RuntimeError):
    """The source cannot go on (an actor's env raised, an actor is stuck); the message names
    the env and the actor. The loop checkpoints the learner's last good state, writes
    ``summary.json`` with ``status: failed`` and re-raises it (the CLI exits with code 1)."""


class StepSource:
    """Base class of step sources (see the module docstring).

    Attributes:
      steps_per_update: env steps one update consumes (over every env of every member).
      num_updates: updates in the whole run.
      guard_nonfinite: stop the run on a NaN / Inf in ``rlaccel.guards.GUARDED_METRICS``
        (sweeps turn it off: a diverging member is a result, not a fault).
      checkpoint_meta: extra facts for checkpoint headers (e.g. ``{"mode": "host"}``).
      resume_note: appended to the "resumed from" line.
    """

    steps_per_update: int
    num_updates: int
    guard_nonfinite: bool = True
    probes: bool = True
    """Whether the loop will call :meth:`probe` (``logging.probe_seconds`` not null): a source
    that compiles the probe's pieces ahead of time skips them otherwise."""
    checkpoint_meta: Mapping[str, Any] = {}
    resume_note: str = ""

    def describe(self) -> str:
        """One line for the log: where learner and actors run."""
        raise NotImplementedError

    def init(self, key: Any) -> Any:
        """A fresh ``rlaccel.state.TrainState`` from a PRNG key (pure)."""
        raise NotImplementedError

    def initial_state(self, key: Any) -> Any:
        """:meth:`init`, compiled (what the loop calls; also the template a checkpoint restores into)."""
        from rlaccel import compile_cache

        return compile_cache.jit_once(self.init)(key)

    def place(self, state: Any) -> Any:
        """The state moved to the devices it lives on."""
        return state

    def compile_ahead(self, key: Any, num_updates: int) -> None:
        """Start compiling :meth:`compile`'s work from the shapes of ``init(key)`` while the
        loop's :meth:`initial_state` runs; :meth:`compile` then waits for it. A no-op here."""

    def compile(self, state: Any, num_updates: int) -> None:
        """Compile a chunk of ``num_updates`` updates ahead of time (the loop times this)."""

    def start(self, state: Any, stop: threading.Event | Any) -> None:
        """Start whatever runs beside the loop (actor threads), acting with ``state``'s policy.

        ``stop`` has ``.requested`` (``rlaccel.guards.StopFlag``): a source that blocks must
        look at it and return early from :meth:`run_chunk` once it is set.
        """

    def run_chunk(self, state: Any, num_updates: int) -> tuple[Any, dict[str, Any]]:
        """``num_updates`` updates; returns the new state and metrics ``{name: [k]}`` (device or
        host arrays: the loop fetches them, which blocks until the chunk is done).

        ``k`` is ``num_updates``, or fewer when a stop signal or a fault ended the chunk
        early (the state then holds the ``k`` updates done; :attr:`fault` says why).
        """
        raise NotImplementedError

    def probe(self, state: Any, seconds_per_update: float) -> tuple[Any, dict[str, float]]:
        """Speeds and latencies timed between chunks (``time/*``, ``actor/*``, ``quant/*``),
        and the state to go on with: ``state``'s values (a fused source times acting with its
        donating chunk, so the loop must not keep ``state``)."""
        return state, {}

    def close(self) -> list[str]:
        """Stop and join what :meth:`start` started; returns warnings for the console."""
        return []

    @property
    def fault(self) -> SourceFault | None:
        """The fault that ended the last chunk early, if any."""
        return None

    def final_stats(self, state: Any) -> dict[str, Any]:
        """``final_return``, ``final_ep_len`` and ``episodes`` for ``summary.json``."""
        import jax

        from rlaccel.state import episode_means

        host = jax.device_get(state.replace(agent=None, rollout=None))
        ret, length = (float(x) for x in episode_means(host, xp=np))
        return {"final_return": ret, "final_ep_len": length, "episodes": int(state.episodes)}

    def summary_extra(self) -> dict[str, Any]:
        """More keys for ``summary.json`` (e.g. the probes' own compile time)."""
        return {}


def latency_percentiles(seconds: list[float] | np.ndarray, num_envs: int) -> dict[str, float]:
    """Decision-latency metrics (µs) from blocking-call durations of calls serving ``num_envs`` envs."""
    us = np.asarray(seconds) * 1e6
    p50, p95, p99 = np.percentile(us, [50, 95, 99])
    return {
        "actor/decision_latency_us_p50": float(p50),
        "actor/decision_latency_us_p95": float(p95),
        "actor/decision_latency_us_p99": float(p99),
        "actor/decision_latency_us_per_env": float(p50 / num_envs),
    }

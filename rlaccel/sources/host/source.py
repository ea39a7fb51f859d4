"""The host step source: actor threads on the host, the learner on its device.

The execution mode of ``gym:`` envs (gymnasium's MuJoCo robots, a user's own simulator):
Sebulba in DeepMind's Podracer paper (Hessel et al. 2021, https://arxiv.org/abs/2104.06272),
for every registered algorithm.

* ``actors.num_actors`` :class:`~rlaccel.sources.host.actors.ActorThread` s act with the
  algorithm's numpy actor (``rlaccel.registry``; int8 through the bit-exact reference of
  ``rlaccel.reference``) or, with ``actors.policy: jax``, with the agent's compiled ``act`` on
  the actor device.
* The learner (the loop's thread, :meth:`HostSource.run_chunk`) takes one batch per actor,
  concatenates them to ``Transition [T, n_envs]``, and runs one compiled call: the agent's
  ``update`` (PPO computes values there; DQN fills its replay buffer), then the next actor
  parameters (re-quantised, with the int8 threshold tables the numpy reference needs). It
  publishes them under a version number; actors pick them up between batches.
  ``actor/policy_lag`` = learner version minus the batch's behaviour version: PPO's ratio uses
  the behaviour log-probabilities the actors recorded; DQN is off-policy.
* Faults: an env that raises (or no batch for ``actors.timeout_s``) ends the chunk early with
  :attr:`HostSource.fault` set; the loop checkpoints the learner's last good state and raises
  :class:`ActorFault` naming the env and the actor.

Measurements (:meth:`HostSource.probe`, over the interval since the last probe):
``actor/decision_latency_us_p50/_p95/_p99`` of every policy call, ``time/actor_sps`` (the
actors' summed stepping speed), ``time/learner_sps`` (update plus publication, blocking),
``actor/queue_fill`` and ``actor/policy_lag``.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from typing import Any

import jax
import numpy as np
from rich.console import Console

from rlaccel import compile_cache
from rlaccel import agent as agent_lib
from rlaccel import envs, placement, quant, quant_tables, registry
from rlaccel.rollout import EpisodeInfo, Transition, acting_noise
from rlaccel.sources.base import SourceFault, StepSource, latency_percentiles
from rlaccel.sources.host.actors import POLL_S, ActorThread, Batch, JaxActor, ParamBoard, join
from rlaccel.state import TrainState, apply_update, init_state

__all__ = ["ActorFault", "HostSource"]


class ActorFault(SourceFault):
    """An actor thread failed (its env raised, or it is stuck); the message names the env id and the actor."""


class HostSource(StepSource):
    """Actor threads + the learner on its device, for a ``gym:`` env and any registered algorithm.

    Args:
      config: a validated config whose env is ``gym:<id>``.
      where: its resolved ``rlaccel.placement.Placement``.
      console: where notices go.
    """

    checkpoint_meta = {"mode": "host"}
    resume_note = "; the envs start fresh episodes"

    def __init__(self, config: Any, where: Any, console: Console | None = None):
        self.config = config
        self.where = where
        self.console = console or Console(stderr=True)
        self.env = envs.make(config.env)
        self.spec = agent_lib.make(config, self.env)
        self.agent = self.spec.agent
        self.actor_cls = registry.load(registry.get(config.algo).numpy_actor)
        self.num_actors = config.actors.num_actors
        self.envs_per_actor = self.spec.num_envs // self.num_actors
        self.steps_per_update = self.spec.steps_per_update
        self.num_updates = self.spec.num_updates
        self._policy = placement.actor_runtime(config)  # numpy, c or jax
        self._jax_policy = self._policy == "jax"
        self._learn = compile_cache.jit(self.learner_step)
        self._params = compile_cache.jit(self.actor_params)
        self._compiled: Any = None
        self._act = compile_cache.jit(self.agent.act) if self._jax_policy else None
        self._noise = compile_cache.jit(functools.partial(acting_noise, self.agent), static_argnums=(1, 2)) if self._jax_policy else None
        self._threads: list[ActorThread] = []
        self._halt = threading.Event()
        self._faults: list = []
        self._window = _Window()
        self._learner_at = self.spec.learner_sharding or where.learner  # PPO's towers split: both devices

    # -- pure pieces ----------------------------------------------------------------------

    def init(self, key: jax.Array) -> TrainState:
        """Fresh learner state (no envs inside: they live in the actor threads)."""
        key, key_agent = jax.random.split(key)
        return init_state(self.agent.init(key_agent), None, key)

    def actor_params(self, agent_state: Any) -> Any:
        """What the actors get: the agent's actor parameters, with every int8 policy as the
        threshold tables of the numpy reference (``quant_tables.tables``) for numpy actors;
        as they are for JAX actors and the C kernel (``actors.policy: c``)."""
        return quant_tables.for_runtime(self.agent.actor_params(agent_state, self.where.precision), self._policy)

    def learner_step(self, state: TrainState, transitions: Transition, episodes: EpisodeInfo) -> tuple[TrainState, Any, Any]:
        """One update on the actors' batch ``[T, n_envs]`` and the next actor parameters: one
        compiled call, so the learner dispatches and waits once per update."""
        key, key_update = jax.random.split(state.key)
        state, metrics = apply_update(self.agent, state.replace(key=key), transitions, episodes, key_update)
        return state, metrics, self.actor_params(state.agent)

    # -- the StepSource interface -----------------------------------------------------------

    def describe(self) -> str:
        policy = {"numpy": "numpy", "c": "C kernel", "jax": "jax"}[self._policy]
        return (
            f"host actors: {self.num_actors} thread(s) x {self.envs_per_actor} {self.env.gym_id} envs, "
            f"{self.where.precision} {policy} policy; learner {learner_name(self.where.learner, self.spec.learner_sharding)} fp32"
        )

    def place(self, state: TrainState) -> TrainState:
        return jax.device_put(state, self._learner_at)

    def compile(self, state: TrainState, num_updates: int) -> None:
        """The learner step compiled for the learner device (one for every chunk length)."""
        if self._compiled is None:
            transitions, episodes = jax.device_put(self.empty_batch(state), self._learner_at)
            self._compiled = self._learn.lower(state, transitions, episodes).compile()

    def start(self, state: TrainState, stop: Any) -> None:
        self._stop = stop
        self._halt.clear()
        self._faults.clear()
        self._queues = [queue.Queue(maxsize=self.config.actors.queue_size) for _ in range(self.num_actors)]
        self._board = ParamBoard(self.make_actor, self.host_params(self._params(state.agent)), int(state.update))
        self._threads = [
            ActorThread(
                i, self.env, self.envs_per_actor, self.spec.num_steps, self._board, q, self._halt, self._faults, self.config.seed,
                max_lag=self.config.actors.max_policy_lag,
            )
            for i, q in enumerate(self._queues)
        ]
        for t in self._threads:
            t.start()

    def run_chunk(self, state: TrainState, num_updates: int) -> tuple[TrainState, dict[str, np.ndarray]]:
        """Up to ``num_updates`` updates, one per round of batches; fewer on a signal or a fault."""
        rows = []
        for _ in range(num_updates):
            got = self._next_batches()
            if got is None:
                break
            transitions, episodes = jax.device_put(_concat(got), self._learner_at)
            t0 = time.perf_counter()
            state, metrics, params = self._compiled(state, transitions, episodes)
            metrics = jax.device_get(metrics)
            update = int(state.update)
            self._board.publish(self.host_params(params), update)
            self._window.learn_s += time.perf_counter() - t0
            self._window.add(got, update)
            rows.append(metrics)
        return state, {k: np.stack([np.asarray(r[k]) for r in rows]) for k in (rows[0] if rows else {})}

    def probe(self, state: TrainState, seconds_per_update: float) -> tuple[TrainState, dict[str, float]]:
        window, self._window = self._window, _Window()
        return state, window.metrics(self.steps_per_update)

    def close(self) -> list[str]:
        self._halt.set()
        timeout = self.config.actors.timeout_s
        stuck = join(self._threads, timeout)
        self._threads = []
        if stuck:
            return [f"actor thread(s) {stuck} did not stop within {timeout} s (stuck inside the env); abandoned"]
        return []

    @property
    def fault(self) -> ActorFault | None:
        if not self._faults:
            return None
        index, exc, _tb = self._faults[0]
        if index is None:
            return ActorFault(f"{self.config.env}: {exc}")
        return ActorFault(f"actor {index} ({self.config.env}): the env raised {type(exc).__name__}: {exc}")

    # -- helpers --------------------------------------------------------------------------

    def host_params(self, params: Any) -> Any:
        """What the learner publishes: numpy copies for numpy actors (an int8 policy for the C
        kernel as its ``Int8Payload``); JAX actors take the arrays."""
        return params if self._jax_policy else quant.payloads(jax.device_get(params))  # (tables: nothing to pack)

    def make_actor(self, params: Any, version: int) -> Any:
        """An actor object (built on the actor's thread) for published parameters."""
        if self._jax_policy:
            return JaxActor(params, version, self._act, self._noise, self.where.actor)
        return self.actor_cls(params, version, self.config.agent)

    def empty_batch(self, state: TrainState) -> tuple[Transition, EpisodeInfo]:
        """Zeros shaped like a learner batch ``[T, n_envs]`` (for compiling ahead of time);
        the action and extras shapes come from the agent's own ``act``."""
        T, B, env = self.spec.num_steps, self.spec.num_envs, self.env
        params = jax.eval_shape(lambda a: self.agent.actor_params(a, self.where.precision), state.agent)
        obs = jax.ShapeDtypeStruct((B, env.obs_dim), np.float32)
        noise = jax.eval_shape(lambda k: self.agent.noise(k, B), jax.random.PRNGKey(0))
        action, extras = jax.eval_shape(self.agent.act, params, obs, noise)
        z = lambda *s, dtype=np.float32: np.zeros((T, B, *s), dtype)
        like = lambda x: np.zeros((T, *x.shape), x.dtype)
        transitions = Transition(
            obs=z(env.obs_dim), action=like(action), reward=z(), terminated=z(dtype=bool), truncated=z(dtype=bool),
            next_obs=z(env.obs_dim), extras=jax.tree.map(like, extras),
        )  # fmt: skip
        return transitions, EpisodeInfo(done=z(dtype=bool), episode_return=z(), episode_length=z(dtype=np.int32))

    def _next_batches(self) -> list[Batch] | None:
        """The next batch of every actor, in actor order; ``None`` when the run must stop (a
        fault, a signal, or no batch for ``actors.timeout_s``: a stuck env, recorded as a fault)."""
        got = []
        timeout_s = self.config.actors.timeout_s
        for q in self._queues:
            self._window.fill.append(q.qsize() / q.maxsize)
            last = time.perf_counter()
            while True:
                if self._halt.is_set() or self._stop.requested:
                    return None
                try:
                    got.append(q.get(timeout=POLL_S))
                    break
                except queue.Empty:
                    if time.perf_counter() - last > timeout_s:
                        self._faults.append((None, TimeoutError(f"no trajectory batch for {timeout_s} s (actors.timeout_s): an env is stuck"), ""))
                        self._halt.set()
                        return None
        return got


def _concat(batches: list[Batch]) -> tuple[Transition, EpisodeInfo]:
    """One batch per actor, in actor order, along the env axis: ``[T, n_envs, ...]``."""
    cat = lambda *xs: np.concatenate(xs, axis=1)
    return jax.tree.map(cat, *[b.transitions for b in batches]), jax.tree.map(cat, *[b.episodes for b in batches])


class _Window:
    """Host measurements over one probe interval."""

    def __init__(self) -> None:
        self.latency: list[np.ndarray] = []
        self.actor_sps: list[float] = []
        self.lag: list[int] = []
        self.fill: list[float] = []
        self.learn_s = 0.0
        self.updates = 0

    def add(self, got: list[Batch], version: int) -> None:
        self.updates += 1
        for b in got:
            self.latency.append(b.latency_s)
            self.actor_sps.append(b.latency_s.size * b.transitions.reward.shape[1] / b.collect_s)
            self.lag.append(version - 1 - b.version)  # learner version when it consumed the batch

    def metrics(self, steps_per_update: int) -> dict[str, float]:
        """The interval's speeds, decision-latency percentiles (µs), lag and queue fill."""
        out = latency_percentiles(np.concatenate(self.latency), 1) if self.latency else {}
        out.pop("actor/decision_latency_us_per_env", None)  # one call serves b envs, not all
        n_actors = len(self.actor_sps) / max(self.updates, 1)
        out["time/actor_sps"] = float(np.mean(self.actor_sps) * n_actors) if self.actor_sps else float("nan")
        out["time/learner_sps"] = self.updates * steps_per_update / self.learn_s if self.learn_s > 0 else float("nan")
        out["actor/policy_lag"] = float(np.mean(self.lag)) if self.lag else float("nan")
        out["actor/queue_fill"] = float(np.mean(self.fill)) if self.fill else float("nan")
        return out


def learner_name(learner: Any, sharding: Any) -> str:
    """``cpu:0``, or with the towers split ``cpu:0 (policy) + cpu:1 (value)``."""
    if sharding is None:
        return f"{learner.platform}:{learner.id}"
    policy, value = sharding.mesh.devices
    return f"{policy.platform}:{policy.id} (policy) + {value.platform}:{value.id} (value)"

"""Host actor threads: gymnasium envs stepped with the published policy.

Each :class:`ActorThread` steps ``b`` copies of a gymnasium env (``stepping.EnvStepper``) and
acts with the newest policy on the :class:`ParamBoard` (the algorithm's numpy actor, ``rlaccel.registry``; by
default acting with the int8 reference of ``rlaccel.reference``, so a decision needs no device
round trip). Every ``T`` steps it pushes a :class:`Batch` (``Transition [T, b]``, episode
info, per-decision latencies, the parameter version it acted with) into its bounded queue; a
full queue blocks the actor, which bounds the policy lag. Queue operations time out every
``POLL_S`` to look at the stop event, so no thread waits forever.

Nothing here knows the algorithm: the numpy actor draws a batch's noise once
(``noise(rng, T, b)``) and maps observations to ``(action, extras)`` per step
(``act(obs [b, obs_dim], noise[t])``); ``extras`` (PPO's behaviour log-probability, nothing
for DQN) is stacked along time as the learner's ``Transition.extras``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import queue
import threading
import time
import traceback
from typing import Any

import numpy as np

from rlaccel.rollout import EpisodeInfo, Transition
from rlaccel.sources.host.stepping import EnvStepper, Steps, gym_envs

__all__ = ["POLL_S", "ActorThread", "Batch", "JaxActor", "ParamBoard", "join", "to_batch"]

POLL_S = 0.05  # how often blocked queue operations look at the stop event


class ParamBoard:
    """The newest published actor parameters and their version.

    The learner publishes host copies of the parameters (one tuple assignment, so readers
    never see half an update); each actor thread builds its own actor object from them with
    ``make(params, version)`` when the version changes, so building (the int8 lookup tables)
    happens on the actor's thread, not on the learner's critical path.
    """

    def __init__(self, make: Any, params: Any, version: int):
        self.make = make
        self.latest = (params, version)
        self._published = threading.Condition()

    def publish(self, params: Any, version: int) -> None:
        with self._published:
            self.latest = (params, version)
            self._published.notify_all()

    def wait_for(self, version: int, stop: threading.Event) -> bool:
        """Block until the newest version is ``>= version``; ``False`` if ``stop`` is set first."""
        with self._published:
            while self.latest[1] < version:
                if stop.is_set():
                    return False
                self._published.wait(POLL_S)
        return True

    def actor(self, current: Any = None) -> Any:
        """``current`` if it acts with the newest version, else a new actor for the newest one."""
        params, version = self.latest
        if current is not None and current.version == version:
            return current
        return self.make(params, version)


class JaxActor:
    """``actors.policy: jax``: the agent's compiled ``act`` on the actor device.

    Args:
      actor_params: the agent's ``ActorParams`` (on any device; moved to ``device``).
      version: the learner update that produced them.
      act_fn: ``jax.jit(agent.act)``.
      noise_fn: ``rollout.acting_noise`` for the agent, jitted: ``(key, T, b) -> noise [T, ...]``.
      device: the actor device.
    """

    def __init__(self, actor_params: Any, version: int, act_fn: Any, noise_fn: Any, device: Any):
        import jax

        self._jax = jax
        self.version = version
        self.params = jax.device_put(actor_params, device)
        self.act_fn, self.noise_fn, self.device = act_fn, noise_fn, device

    def noise(self, rng: np.random.Generator, num_steps: int, num_envs: int) -> list[Any]:
        """Per-step acting noise for a batch, drawn by the agent's own ``noise`` on the actor device."""
        jax = self._jax
        key = jax.device_put(jax.random.PRNGKey(int(rng.integers(2**31))), self.device)
        stacked = self.noise_fn(key, num_steps, num_envs)
        return [jax.tree.map(lambda x, t=t: x[t], stacked) for t in range(num_steps)]

    def act(self, obs: np.ndarray, noise: Any) -> tuple[np.ndarray, Any]:
        action, extras = self.act_fn(self.params, self._jax.device_put(obs, self.device), noise)
        return np.asarray(action), self._jax.tree.map(np.asarray, extras)


@dataclasses.dataclass
class Batch:
    """What one actor pushes: ``T`` steps of its ``b`` envs."""

    actor: int
    version: int  # parameter version the actor acted with
    transitions: Transition  # numpy [T, b, ...]
    episodes: EpisodeInfo  # numpy [T, b]
    latency_s: np.ndarray  # [T] seconds per policy call
    collect_s: float  # wall time of the whole batch


class ActorThread(threading.Thread):
    """Steps a gymnasium vector env with the published actor; pushes :class:`Batch` es.

    Args:
      index: actor number (names it in messages; seeds its envs and noise).
      env: an ``rlaccel.envs.gym.GymEnv``.
      num_envs, num_steps: ``b`` copies, ``T`` steps per batch.
      board: where the learner publishes actor parameters.
      out: the bounded batch queue.
      stop: set by anyone to stop every thread.
      faults: where a failure is reported (``(index, exception, traceback text)``).
      seed: base seed.
      max_lag: ``actors.max_policy_lag``: batch ``k`` waits for version ``first + k - max_lag``
        (``first`` the version the thread starts with); ``None`` never waits.
    """

    def __init__(
        self, index: int, env: Any, num_envs: int, num_steps: int, board: ParamBoard, out: queue.Queue, stop: threading.Event, faults: list, seed: int,
        max_lag: int | None = None,
    ):  # fmt: skip
        super().__init__(name=f"actor-{index}", daemon=True)
        self.index, self.env, self.num_envs, self.num_steps = index, env, num_envs, num_steps
        self.board, self.out, self.stop, self.faults = board, out, stop, faults
        self.seed = seed + 1000 * index
        self.max_lag = max_lag

    def run(self) -> None:
        stepper = None
        try:
            stepper = EnvStepper(gym_envs(self.env.gym_id, self.env.kwargs, self.num_envs), self.env.action_space, self.env.obs_dim, self.seed)
            self._loop(stepper)
        except BaseException as e:  # noqa: BLE001 - whatever kills an actor must reach the learner
            self.faults.append((self.index, e, traceback.format_exc()))
            self.stop.set()
        finally:
            if stepper is not None:
                with contextlib.suppress(Exception):  # a broken env may fail to close too
                    stepper.close()

    def _loop(self, stepper: EnvStepper) -> None:
        rng = np.random.default_rng(self.seed)
        actor = None
        first = self.board.latest[1]
        for k in itertools.count():
            if self.stop.is_set():
                return
            if self.max_lag is not None and not self.board.wait_for(first + k - self.max_lag, self.stop):
                return
            actor = self.board.actor(actor)
            steps = stepper.collect(actor, rng, self.num_steps, self.stop.is_set)
            if steps is None:
                return
            batch = to_batch(self.index, steps)
            while not self.stop.is_set():
                try:
                    self.out.put(batch, timeout=POLL_S)
                    break
                except queue.Full:
                    continue


def to_batch(index: int, steps: Steps) -> Batch:
    """Actor ``index``'s numpy :class:`~rlaccel.sources.host.stepping.Steps` as a :class:`Batch`."""
    transitions = Transition(
        obs=steps.obs, action=steps.action, reward=steps.reward, terminated=steps.terminated, truncated=steps.truncated,
        next_obs=steps.next_obs, extras=steps.extras,
    )  # fmt: skip
    episodes = EpisodeInfo(done=steps.terminated | steps.truncated, episode_return=steps.episode_return, episode_length=steps.episode_length)
    return Batch(actor=index, version=steps.version, transitions=transitions, episodes=episodes, latency_s=steps.latency_s, collect_s=steps.collect_s)


def join(threads: list[threading.Thread], timeout_s: float) -> list[int]:
    """Join every thread (all within ``timeout_s``); the indices of those still running."""
    deadline = time.perf_counter() + timeout_s
    for t in threads:
        if t.is_alive() or t.ident is not None:
            t.join(max(0.0, deadline - time.perf_counter()))
    return [i for i, t in enumerate(threads) if t.is_alive()]

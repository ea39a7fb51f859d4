"""One actor's env stepping, shared by actor threads and Ray actor processes (no JAX here).

:class:`EnvStepper` owns ``b`` gymnasium envs and their episode counters;
``collect(actor, rng, T)`` steps it ``T`` times with a numpy actor (``noise(rng, T, b)``,
``act(obs [b, obs_dim], noise[t]) -> (action, extras)``) and returns :class:`Steps`, plain
numpy arrays. Actor threads (``actors.py``) wrap them in a ``Batch`` of ``Transition``s; Ray
actor processes (``ray_cluster.py``) send them back as they are, so an actor process imports
numpy, gymnasium and the algorithm's numpy actor, never JAX.

The envs are stepped one after the other and reset in the step that ends an episode, as
gymnasium's ``SyncVectorEnv`` does in its ``SAME_STEP`` mode (same seeds, same casts, the
same numbers), without what it adds per step that the actors never read: every step's
``info`` dict gathered into arrays and masks, the observations concatenated and deep-copied
through the space's ``singledispatch`` helpers. On HalfCheetah-v5 (one env) the actor thread
steps 21-28 % more env steps per second without them on a 2-core EPYC (``docs/benchmarks.md``,
host actors).
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import gymnasium
import numpy as np
from gymnasium import spaces

__all__ = ["EnvStepper", "Steps", "gym_envs", "stack_extras"]


class Steps(NamedTuple):
    """``T`` steps of ``b`` envs (numpy), what one batch of one actor holds."""

    version: int  # parameter version the actor acted with
    obs: np.ndarray  # [T, b, obs_dim] float32
    action: np.ndarray  # [T, b] or [T, b, action_dim]: the sampled action (before clipping)
    reward: np.ndarray  # [T, b] float32
    terminated: np.ndarray  # [T, b] bool
    truncated: np.ndarray  # [T, b] bool
    next_obs: np.ndarray  # [T, b, obs_dim]: the true next observation (final one at an episode end)
    extras: Any  # per-step extras stacked to [T, b] leaves (PPO's log-probability), or ()
    episode_return: np.ndarray  # [T, b] running return, including step t
    episode_length: np.ndarray  # [T, b] int32 running length, including step t
    latency_s: np.ndarray  # [T] seconds per policy call
    collect_s: float  # wall time of the whole batch


def gym_envs(gym_id: str, kwargs: dict[str, Any], num_envs: int) -> list[gymnasium.Env]:
    """``num_envs`` copies of a gymnasium env, what actor threads and Ray actor processes step
    (from a ``GymEnv``'s ``gym_id`` and ``kwargs``; no ``rlaccel.envs`` import, whose JAX envs
    a Ray actor process does not need)."""
    return [gymnasium.make(gym_id, **kwargs) for _ in range(num_envs)]


class EnvStepper:
    """``b`` gymnasium envs stepped batch after batch (episodes carry over between batches).

    Args:
      envs: the ``b`` envs (:func:`gym_envs`); copy ``i`` is first reset with ``seed + i``,
        as ``SyncVectorEnv.reset(seed=seed)`` seeds them.
      action_space: the single env's action space (continuous actions are clipped to it
        before ``env.step``; the sampled action is what the learner sees).
      obs_dim: observation size.
      seed: seeds the first reset.
    """

    def __init__(self, envs: list[Any], action_space: Any, obs_dim: int, seed: int):
        self.envs, self.obs_dim = envs, obs_dim
        self.num_envs = len(envs)
        box = isinstance(action_space, spaces.Box)
        self._bounds = (action_space.low, action_space.high) if box else None
        self.obs = np.empty((self.num_envs, obs_dim), np.float32)
        for i, env in enumerate(envs):
            self.obs[i] = env.reset(seed=seed + i)[0]
        self.ep_ret = np.zeros(self.num_envs, np.float32)
        self.ep_len = np.zeros(self.num_envs, np.int32)

    def collect(self, actor: Any, rng: np.random.Generator, num_steps: int, stopped: Callable[[], bool] = lambda: False) -> Steps | None:
        """``num_steps`` steps acting with ``actor``; ``None`` if ``stopped()`` turns true first."""
        envs, b, T = self.envs, self.num_envs, num_steps
        o = np.empty((T, b, self.obs_dim), np.float32)
        next_o = np.empty((T, b, self.obs_dim), np.float32)
        rew = np.empty((T, b), np.float32)
        term = np.empty((T, b), bool)
        trunc = np.empty((T, b), bool)
        ret = np.empty((T, b), np.float32)
        length = np.empty((T, b), np.int32)
        lat = np.empty(T, np.float64)
        actions, extras = [], []
        noise = actor.noise(rng, T, b)
        obs, bounds = self.obs, self._bounds
        start = time.perf_counter()
        for t in range(T):
            if stopped():
                return None
            o[t] = obs
            t0 = time.perf_counter()
            a, x = actor.act(o[t], noise[t])
            lat[t] = time.perf_counter() - t0
            actions.append(a)
            extras.append(x)
            sent = np.clip(a, *bounds) if bounds else a
            for i, env in enumerate(envs):  # SyncVectorEnv.step in SAME_STEP mode
                next_o[t, i], rew[t, i], term[t, i], trunc[t, i], _ = env.step(sent[i])
                # an episode's last step: next_o keeps its true last observation, obs the next one's first
                obs[i] = env.reset()[0] if term[t, i] or trunc[t, i] else next_o[t, i]
            self.ep_ret += rew[t]
            self.ep_len += 1
            ret[t], length[t] = self.ep_ret, self.ep_len
            done_t = term[t] | trunc[t]
            self.ep_ret[done_t] = 0.0
            self.ep_len[done_t] = 0
        return Steps(
            version=actor.version, obs=o, action=np.stack(actions), reward=rew, terminated=term, truncated=trunc, next_obs=next_o,
            extras=stack_extras(extras), episode_return=ret, episode_length=length, latency_s=lat, collect_s=time.perf_counter() - start,
        )  # fmt: skip

    def close(self) -> None:
        for env in self.envs:
            env.close()


def stack_extras(items: list[Any]) -> Any:
    """Per-step extras (a NamedTuple / tuple of ``[b]`` arrays) stacked to ``[T, b]`` leaves."""
    first = items[0]
    if isinstance(first, tuple) and first:
        stacked = [np.stack(xs) for xs in zip(*items)]
        return type(first)(*stacked) if hasattr(first, "_fields") else tuple(stacked)
    return first  # () or None: nothing recorded

"""One actor's env stepping, shared by actor threads and Ray actor processes (no JAX here).

:class:`EnvStepper` owns a gymnasium vector env of ``b`` copies and its episode counters;
``collect(actor, rng, T)`` steps it ``T`` times with a numpy actor (``noise(rng, T, b)``,
``act(obs [b, obs_dim], noise[t]) -> (action, extras)``) and returns :class:`Steps`, plain
numpy arrays. Actor threads (``actors.py``) wrap them in a ``Batch`` of ``Transition``s; Ray
actor processes (``ray_cluster.py``) send them back as they are, so an actor process imports
numpy, gymnasium and the algorithm's numpy actor, never JAX.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import gymnasium
import numpy as np
from gymnasium import spaces

__all__ = ["EnvStepper", "Steps", "stack_extras", "vector_env"]


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


def vector_env(gym_id: str, kwargs: dict[str, Any], num_envs: int, seed: int) -> gymnasium.vector.VectorEnv:
    """gymnasium's synchronous vector env of ``num_envs`` copies, auto-resetting in the same
    step: what ``rlaccel.envs.gym.GymEnv.make_vector`` makes, without importing ``rlaccel.envs``
    (whose JAX envs a Ray actor process does not need)."""
    venv = gymnasium.make_vec(
        gym_id, num_envs=num_envs, vectorization_mode="sync", vector_kwargs={"autoreset_mode": gymnasium.vector.AutoresetMode.SAME_STEP}, **kwargs
    )
    venv.action_space.seed(seed)
    return venv


class EnvStepper:
    """A vector env stepped batch after batch (episodes carry over between batches).

    Args:
      venv: a ``SAME_STEP``-autoresetting gymnasium vector env of ``num_envs`` copies.
      action_space: the single env's action space (continuous actions are clipped to it
        before ``env.step``; the sampled action is what the learner sees).
      obs_dim: observation size.
      seed: seeds the first reset.
    """

    def __init__(self, venv: Any, action_space: Any, obs_dim: int, seed: int):
        self.venv, self.obs_dim = venv, obs_dim
        self.num_envs = venv.num_envs
        box = isinstance(action_space, spaces.Box)
        self._bounds = (action_space.low, action_space.high) if box else None
        self.obs, _ = venv.reset(seed=seed)
        self.ep_ret = np.zeros(self.num_envs, np.float32)
        self.ep_len = np.zeros(self.num_envs, np.int32)

    def collect(self, actor: Any, rng: np.random.Generator, num_steps: int, stopped: Callable[[], bool] = lambda: False) -> Steps | None:
        """``num_steps`` steps acting with ``actor``; ``None`` if ``stopped()`` turns true first."""
        venv, b, T = self.venv, self.num_envs, num_steps
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
        start = time.perf_counter()
        for t in range(T):
            if stopped():
                return None
            o[t] = self.obs
            t0 = time.perf_counter()
            a, x = actor.act(o[t], noise[t])
            lat[t] = time.perf_counter() - t0
            actions.append(a)
            extras.append(x)
            self.obs, rew[t], term[t], trunc[t], info = venv.step(np.clip(a, *self._bounds) if self._bounds else a)
            next_o[t] = self.obs
            if "final_obs" in info:  # SAME_STEP autoreset: obs is the next episode's first
                for i in np.flatnonzero(info["_final_obs"]):
                    next_o[t, i] = info["final_obs"][i]
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
        self.venv.close()


def stack_extras(items: list[Any]) -> Any:
    """Per-step extras (a NamedTuple / tuple of ``[b]`` arrays) stacked to ``[T, b]`` leaves."""
    first = items[0]
    if isinstance(first, tuple) and first:
        stacked = [np.stack(xs) for xs in zip(*items)]
        return type(first)(*stacked) if hasattr(first, "_fields") else tuple(stacked)
    return first  # () or None: nothing recorded

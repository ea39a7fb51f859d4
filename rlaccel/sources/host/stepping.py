"""One actor's env stepping, shared by actor threads and Ray actor processes (no JAX here).

:class:`EnvStepper` owns ``b`` gymnasium envs and their episode counters;
``collect(actor, rng, T)`` steps it ``T`` times with a numpy actor's batch rollout
(``actor.rollout(rng, T, b)``, else :class:`StepwiseRollout` over its ``noise(rng, T, b)`` and
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

__all__ = ["EnvStepper", "Steps", "StepwiseRollout", "gym_envs", "running_episodes", "stack_extras"]


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
        lat = np.empty(T, np.float64)
        rollout = actor.rollout(rng, T, b) if hasattr(actor, "rollout") else StepwiseRollout(actor, rng, T, b)
        obs, bounds = self.obs, self._bounds
        clock, act = time.perf_counter, rollout.act
        start = clock()
        for t in range(T):
            if stopped():
                return None
            o[t] = obs
            t0 = clock()
            a = act(t, o[t])
            lat[t] = clock() - t0
            if bounds:  # a fresh array each step (an env may keep the one it is given)
                a = np.minimum(np.maximum(a, bounds[0]), bounds[1])  # np.clip's result, without its 3-6 us of dispatch
            for i, env in enumerate(envs):  # SyncVectorEnv.step in SAME_STEP mode
                ob, r, te, tr, _ = env.step(a[i])
                next_o[t, i], rew[t, i], term[t, i], trunc[t, i] = ob, r, te, tr
                # an episode's last step: next_o keeps its true last observation, obs the next one's first
                obs[i] = env.reset()[0] if te or tr else ob
        action, extras = rollout.finish()
        ret, length = running_episodes(rew, term | trunc, self.ep_ret, self.ep_len)
        return Steps(
            version=actor.version, obs=o, action=action, reward=rew, terminated=term, truncated=trunc, next_obs=next_o,
            extras=extras, episode_return=ret, episode_length=length, latency_s=lat, collect_s=clock() - start,
        )  # fmt: skip

    def close(self) -> None:
        for env in self.envs:
            env.close()


class StepwiseRollout:
    """The rollout protocol over a numpy actor's ``noise`` and per-step ``act`` (what an actor
    without a ``rollout`` of its own gets): a batch's noise drawn at once, ``act(t, obs)`` one
    call of ``actor.act(obs, noise[t])``, ``finish()`` the actions and extras stacked along time.

    The protocol :meth:`EnvStepper.collect` drives: ``act(t, obs [b, obs_dim]) -> action [b, ...]``
    for step ``t`` (the sampled action; ``collect`` clips a copy for the envs), then once
    ``finish() -> (actions [T, b, ...], extras with [T, b] leaves)``. An actor's own
    ``rollout(rng, T, b)`` may keep its buffers and compute the extras once for the batch
    (PPO's log-probabilities: ``agents/ppo/actor.py``).
    """

    def __init__(self, actor: Any, rng: np.random.Generator, num_steps: int, num_envs: int):
        self.actor, self.noise = actor, actor.noise(rng, num_steps, num_envs)
        self.actions: list[Any] = []
        self.extras: list[Any] = []

    def act(self, t: int, obs: np.ndarray) -> Any:
        action, extras = self.actor.act(obs, self.noise[t])
        self.actions.append(action)
        self.extras.append(extras)
        return action

    def finish(self) -> tuple[np.ndarray, Any]:
        return np.stack(self.actions), stack_extras(self.extras)


def running_episodes(reward: np.ndarray, done: np.ndarray, ep_ret: np.ndarray, ep_len: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each step's running episode return and length ``[T, b]``, including the step, from a
    batch's ``reward`` and ``done`` ``[T, b]`` and the running figures before it (``ep_ret``
    float32 and ``ep_len`` int32 ``[b]``, updated in place: zero after an episode's end).
    The return is summed in float32 one step after the other (``np.add.accumulate`` over each
    episode's piece), the sums a step-by-step ``ep_ret += reward[t]`` gives."""
    T, b = reward.shape
    ret = np.empty((T, b), np.float32)
    length = np.empty((T, b), np.int32)
    for i in range(b):
        start = 0
        for end in [*np.flatnonzero(done[:, i]).tolist(), T - 1]:
            if end < start:
                continue  # the batch ended with an episode's last step
            piece = np.empty(end - start + 2, np.float32)
            piece[0], piece[1:] = ep_ret[i], reward[start : end + 1, i]
            ret[start : end + 1, i] = np.add.accumulate(piece)[1:]
            length[start : end + 1, i] = ep_len[i] + np.arange(1, end - start + 2, dtype=np.int32)
            ep_ret[i], ep_len[i] = ret[end, i], length[end, i]
            if done[end, i]:
                ep_ret[i], ep_len[i] = 0.0, 0
            start = end + 1
    return ret, length


def stack_extras(items: list[Any]) -> Any:
    """Per-step extras (a NamedTuple / tuple of ``[b]`` arrays) stacked to ``[T, b]`` leaves."""
    first = items[0]
    if isinstance(first, tuple) and first:
        stacked = [np.stack(xs) for xs in zip(*items)]
        return type(first)(*stacked) if hasattr(first, "_fields") else tuple(stacked)
    return first  # () or None: nothing recorded

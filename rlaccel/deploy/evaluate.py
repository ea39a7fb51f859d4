"""Evaluate an exported policy on gymnasium's own environments (no JAX)."""

from __future__ import annotations

from typing import Any

import numpy as np


def gym_id(env_id: str) -> str:
    """The gymnasium id of a policy's env: ``gym:HalfCheetah-v5`` -> ``HalfCheetah-v5``; rlaccel's
    JAX classic-control envs carry gymnasium's own ids."""
    return env_id.split(":", 1)[1] if env_id.startswith("gym:") else env_id


def episode_returns(policy: Any, env_id: str, episodes: int, seed: int = 0, **env_kwargs: Any) -> np.ndarray:
    """Undiscounted returns ``[episodes]`` of ``policy.act`` on ``gymnasium.make(env_id)``.

    Episode ``i`` is reset with seed ``seed + i``, so two policies evaluated with the same
    ``seed`` start from the same states. Observations are passed as float32 (what the policy
    was trained on); continuous actions are already clipped by the policy.
    """
    import gymnasium as gym

    env = gym.make(gym_id(env_id), **env_kwargs)
    policy.check_spaces(env.observation_space, env.action_space)
    returns = np.zeros(episodes)
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            done = False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(policy.act(np.asarray(obs, np.float32)))
                returns[i] += float(reward)
                done = terminated or truncated
    finally:
        env.close()
    return returns

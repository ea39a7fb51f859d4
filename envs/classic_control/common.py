"""What every classic-control env shares: the constructor, time limit and float32 casts (see ``rlaccel.envs.classic_control`` for what the parity with gymnasium means)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ..core import Env

StepOut = tuple[Any, jax.Array, jax.Array, jax.Array, jax.Array, dict[str, jax.Array]]


class _ClassicControl(Env):
    """Shared constructor and time-limit bookkeeping for the envs in this module."""

    default_max_episode_steps: int
    step_uses_key = False  # all classic-control dynamics are deterministic

    def __init__(self, *, dtype: Any = jnp.float32, max_episode_steps: int | None = None):
        """Creates the env.

        Args:
            dtype: Floating dtype of the state sampled by `reset` (float64 needs
                ``jax.enable_x64``).
            max_episode_steps: Overrides gymnasium's registered time limit.
        """
        self.dtype = jnp.dtype(dtype)
        if not jnp.issubdtype(self.dtype, jnp.floating):
            raise ValueError(f"{self.id}: dtype must be floating, got {self.dtype}")
        steps = self.default_max_episode_steps if max_episode_steps is None else max_episode_steps
        if steps < 1:
            raise ValueError(f"{self.id}: max_episode_steps must be >= 1, got {steps}")
        self.max_episode_steps = int(steps)

    def _tick(self, time: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns the incremented step counter and gymnasium's `TimeLimit` truncation."""
        time = time + 1
        return time, time >= self.max_episode_steps


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x, jnp.float32)

"""MountainCar-v0 and MountainCarContinuous-v0 as pure JAX envs (see ``rlaccel.envs.classic_control`` for what the parity with gymnasium means)."""

from __future__ import annotations

from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ..core import PRNGKey
from .common import StepOut, _ClassicControl, _f32


# ----------------------------------------------------------------------------------------
# MountainCar-v0 and MountainCarContinuous-v0
# ----------------------------------------------------------------------------------------


@struct.dataclass
class MountainCarState:
    """Car position and velocity; scalars (``[]``). Shared by both MountainCar envs."""

    position: jax.Array
    velocity: jax.Array
    time: jax.Array  # int32 steps taken in this episode


class _MountainCarBase(_ClassicControl):
    min_position = -1.2
    max_position = 0.6
    max_speed = 0.07

    def __init__(self, *, goal_velocity: float = 0.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.goal_velocity = float(goal_velocity)
        low = np.array([self.min_position, -self.max_speed], dtype=np.float32)
        high = np.array([self.max_position, self.max_speed], dtype=np.float32)
        self.observation_space = gymnasium.spaces.Box(low, high, dtype=np.float32)

    def reset(self, key: PRNGKey) -> tuple[MountainCarState, jax.Array]:
        position = jax.random.uniform(key, (), self.dtype, -0.6, -0.4)
        state = MountainCarState(
            position=position, velocity=jnp.zeros((), self.dtype), time=jnp.int32(0)
        )
        return state, self._obs(state)

    def _obs(self, state: MountainCarState) -> jax.Array:
        return _f32(jnp.stack([state.position, state.velocity]))

    def _move(self, position: jax.Array, velocity: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Clips the updated velocity, integrates position and applies the left wall."""
        velocity = jnp.clip(velocity, -self.max_speed, self.max_speed)
        position = jnp.clip(position + velocity, self.min_position, self.max_position)
        # Inelastic collision with the left wall.
        velocity = jnp.where((position == self.min_position) & (velocity < 0), 0.0, velocity)
        return position, velocity


class MountainCar(_MountainCarBase):
    """MountainCar-v0 (Moore 1990): drive an underpowered car up the right hill.

    Observation ``[position, velocity]``; actions 0, 1, 2 accelerate left, not at all,
    right; reward -1 per step; terminates at ``position >= 0.5``.
    """

    id = "MountainCar-v0"
    default_max_episode_steps = 200

    goal_position = 0.5
    force = 0.001
    gravity = 0.0025

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.action_space = gymnasium.spaces.Discrete(3)

    def step(self, key: PRNGKey, state: MountainCarState, action: jax.Array) -> StepOut:
        del key  # deterministic dynamics
        position, velocity = state.position, state.velocity
        push = (action - 1).astype(position.dtype)
        velocity = velocity + (push * self.force + jnp.cos(3 * position) * (-self.gravity))
        position, velocity = self._move(position, velocity)
        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        time, truncated = self._tick(state.time)
        state = MountainCarState(position=position, velocity=velocity, time=time)
        reward = jnp.full((), -1.0, jnp.float32)
        return state, self._obs(state), reward, terminated, truncated, {}


class MountainCarContinuous(_MountainCarBase):
    """MountainCarContinuous-v0: MountainCar with a continuous force in ``[-1, 1]``.

    Observation ``[position, velocity]``; action float ``[1]``, clipped to ``[-1, 1]``
    for the dynamics; reward ``100 * [goal reached] - 0.1 * action^2``, where, as in
    gymnasium, the penalty uses the *unclipped* action. Terminates at
    ``position >= 0.45``; truncated at 999 steps. gymnasium stores this env's state as
    float32 after every step, so the default float32 env is the closer replica.
    """

    id = "MountainCarContinuous-v0"
    default_max_episode_steps = 999

    min_action = -1.0
    max_action = 1.0
    goal_position = 0.45
    power = 0.0015

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.action_space = gymnasium.spaces.Box(
            low=self.min_action, high=self.max_action, shape=(1,), dtype=np.float32
        )

    def step(self, key: PRNGKey, state: MountainCarState, action: jax.Array) -> StepOut:
        del key  # deterministic dynamics
        position, velocity = state.position, state.velocity
        a = action[0].astype(position.dtype)
        force = jnp.clip(a, self.min_action, self.max_action)
        velocity = velocity + (force * self.power - 0.0025 * jnp.cos(3 * position))
        position, velocity = self._move(position, velocity)
        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        reward = jnp.where(terminated, 100.0, 0.0) - a**2 * 0.1
        time, truncated = self._tick(state.time)
        state = MountainCarState(position=position, velocity=velocity, time=time)
        return state, self._obs(state), _f32(reward), terminated, truncated, {}

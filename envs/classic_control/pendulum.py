"""Pendulum-v1 as a pure JAX env (see ``rlaccel.envs.classic_control`` for what the parity with gymnasium means)."""

from __future__ import annotations

import math
from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ..core import PRNGKey
from .common import StepOut, _ClassicControl, _f32


# ----------------------------------------------------------------------------------------
# Pendulum-v1
# ----------------------------------------------------------------------------------------


@struct.dataclass
class PendulumState:
    """Pendulum angle (rad, not normalised, as in gymnasium) and angular velocity."""

    theta: jax.Array
    theta_dot: jax.Array
    time: jax.Array  # int32 steps taken in this episode


def _angle_normalize(x: jax.Array) -> jax.Array:
    # jnp.mod has numpy's floored semantics (fmod then a sign fix), as gymnasium relies on.
    return jnp.mod(x + math.pi, 2 * math.pi) - math.pi


class Pendulum(_ClassicControl):
    """Pendulum-v1: swing up an inverted pendulum with a torque in ``[-2, 2]``.

    Observation ``[cos theta, sin theta, theta_dot]``; action float ``[1]``, clipped to
    ``[-2, 2]`` inside the env; reward ``-(angle^2 + 0.1 theta_dot^2 + 0.001 u^2)``
    evaluated on the state before the step. Never terminates; truncated at 200 steps.
    """

    id = "Pendulum-v1"
    default_max_episode_steps = 200

    max_speed = 8
    max_torque = 2.0
    dt = 0.05
    m = 1.0
    l = 1.0

    def __init__(self, *, g: float = 10.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.g = float(g)
        high = np.array([1.0, 1.0, self.max_speed], dtype=np.float32)
        self.action_space = gymnasium.spaces.Box(
            low=-self.max_torque, high=self.max_torque, shape=(1,), dtype=np.float32
        )
        self.observation_space = gymnasium.spaces.Box(low=-high, high=high, dtype=np.float32)

    def reset(self, key: PRNGKey) -> tuple[PendulumState, jax.Array]:
        high = jnp.array([math.pi, 1.0], self.dtype)
        s = jax.random.uniform(key, (2,), self.dtype, -high, high)
        state = PendulumState(theta=s[0], theta_dot=s[1], time=jnp.int32(0))
        return state, self._obs(state)

    def _obs(self, state: PendulumState) -> jax.Array:
        th = state.theta
        return _f32(jnp.stack([jnp.cos(th), jnp.sin(th), state.theta_dot]))

    def step(self, key: PRNGKey, state: PendulumState, action: jax.Array) -> StepOut:
        del key  # deterministic dynamics
        th, thdot = state.theta, state.theta_dot
        g, m, l, dt = self.g, self.m, self.l, self.dt
        u = jnp.clip(action[0], -self.max_torque, self.max_torque).astype(th.dtype)
        costs = _angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * (u**2)
        newthdot = thdot + (3 * g / (2 * l) * jnp.sin(th) + 3.0 / (m * l**2) * u) * dt
        newthdot = jnp.clip(newthdot, -self.max_speed, self.max_speed)
        newth = th + newthdot * dt
        time, truncated = self._tick(state.time)
        state = PendulumState(theta=newth, theta_dot=newthdot, time=time)
        terminated = jnp.zeros((), bool)
        return state, self._obs(state), _f32(-costs), terminated, truncated, {}

"""CartPole-v1 as a pure JAX env (see ``rlaccel.envs.classic_control`` for what the parity with gymnasium means)."""

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
# CartPole-v1
# ----------------------------------------------------------------------------------------


@struct.dataclass
class CartPoleState:
    """CartPole physical state; every field is a scalar (``[]``)."""

    x: jax.Array
    x_dot: jax.Array
    theta: jax.Array
    theta_dot: jax.Array
    time: jax.Array  # int32 steps taken in this episode


class CartPole(_ClassicControl):
    """CartPole-v1 (Barto, Sutton & Anderson 1983) with gymnasium's Euler integrator.

    Observation ``[x, x_dot, theta, theta_dot]``; actions 0 (push left) and 1 (push
    right); reward 1 on every step including the terminating one (or gymnasium's
    ``sutton_barto_reward``: 0, and -1 on termination).
    """

    id = "CartPole-v1"
    default_max_episode_steps = 500

    gravity = 9.8
    masscart = 1.0
    masspole = 0.1
    total_mass = masspole + masscart
    length = 0.5  # half the pole's length
    polemass_length = masspole * length
    force_mag = 10.0
    tau = 0.02
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4

    def __init__(self, *, sutton_barto_reward: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.sutton_barto_reward = bool(sutton_barto_reward)
        high = np.array(
            [self.x_threshold * 2, np.inf, self.theta_threshold_radians * 2, np.inf],
            dtype=np.float32,
        )
        self.observation_space = gymnasium.spaces.Box(-high, high, dtype=np.float32)
        self.action_space = gymnasium.spaces.Discrete(2)

    def reset(self, key: PRNGKey) -> tuple[CartPoleState, jax.Array]:
        s = jax.random.uniform(key, (4,), self.dtype, -0.05, 0.05)
        state = CartPoleState(
            x=s[0], x_dot=s[1], theta=s[2], theta_dot=s[3], time=jnp.int32(0)
        )
        return state, _f32(s)

    def step(self, key: PRNGKey, state: CartPoleState, action: jax.Array) -> StepOut:
        del key  # deterministic dynamics
        x, x_dot, theta, theta_dot = state.x, state.x_dot, state.theta, state.theta_dot
        # gymnasium pushes left for any action other than 1.
        force = jnp.where(action == 1, self.force_mag, -self.force_mag).astype(x.dtype)
        costheta = jnp.cos(theta)
        sintheta = jnp.sin(theta)
        # Same expression order as gymnasium, so float64 runs agree to rounding.
        temp = (force + self.polemass_length * jnp.square(theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * jnp.square(costheta) / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc

        terminated = (
            (x < -self.x_threshold)
            | (x > self.x_threshold)
            | (theta < -self.theta_threshold_radians)
            | (theta > self.theta_threshold_radians)
        )
        if self.sutton_barto_reward:
            reward = jnp.where(terminated, -1.0, 0.0)
        else:
            reward = jnp.ones(())
        time, truncated = self._tick(state.time)
        state = CartPoleState(x=x, x_dot=x_dot, theta=theta, theta_dot=theta_dot, time=time)
        obs = _f32(jnp.stack([x, x_dot, theta, theta_dot]))
        return state, obs, _f32(reward), terminated, truncated, {}

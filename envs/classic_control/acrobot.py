"""Acrobot-v1 as a pure JAX env (see ``rlaccel.envs.classic_control`` for what the parity with gymnasium means)."""

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
# Acrobot-v1
# ----------------------------------------------------------------------------------------


@struct.dataclass
class AcrobotState:
    """Acrobot joint angles (rad) and angular velocities (rad/s); scalars (``[]``)."""

    theta1: jax.Array
    theta2: jax.Array
    dtheta1: jax.Array
    dtheta2: jax.Array
    time: jax.Array  # int32 steps taken in this episode


# gymnasium's `wrap` is a pair of while loops that add or subtract 2*pi until the angle is
# in [-pi, pi]. Repeated subtraction rounds differently from `mod`, so to match it we
# unroll a fixed number of conditional passes. A search over the whole reachable state box
# (|dtheta1| <= 4 pi, |dtheta2| <= 9 pi, torque +-1) gives |theta| <= 29.73 after one RK4
# step, i.e. at most 5 wraps (pi + 5 * 2 pi = 34.6).
_WRAP_PASSES = 5


def _wrap_pi(x: jax.Array) -> jax.Array:
    """gymnasium's ``wrap(x, -pi, pi)`` for ``|x| < 11 pi``."""
    for _ in range(_WRAP_PASSES):
        x = jnp.where(x > math.pi, x - 2 * math.pi, jnp.where(x < -math.pi, x + 2 * math.pi, x))
    return x


class Acrobot(_ClassicControl):
    """Acrobot-v1 (Sutton & Barto 1998), gymnasium's "book" dynamics integrated with RK4.

    Observation ``[cos t1, sin t1, cos t2, sin t2, dt1, dt2]``; actions 0, 1, 2 apply
    torque -1, 0, +1 to the second joint; reward -1 per step, 0 on the step that reaches
    the goal height. gymnasium's ``torque_noise_max`` is 0, so the step is deterministic.
    """

    id = "Acrobot-v1"
    default_max_episode_steps = 500

    dt = 0.2
    LINK_LENGTH_1 = 1.0
    LINK_LENGTH_2 = 1.0
    LINK_MASS_1 = 1.0
    LINK_MASS_2 = 1.0
    LINK_COM_POS_1 = 0.5
    LINK_COM_POS_2 = 0.5
    LINK_MOI = 1.0
    MAX_VEL_1 = 4 * math.pi
    MAX_VEL_2 = 9 * math.pi

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        high = np.array([1.0, 1.0, 1.0, 1.0, self.MAX_VEL_1, self.MAX_VEL_2], dtype=np.float32)
        self.observation_space = gymnasium.spaces.Box(low=-high, high=high, dtype=np.float32)
        self.action_space = gymnasium.spaces.Discrete(3)

    def reset(self, key: PRNGKey) -> tuple[AcrobotState, jax.Array]:
        s = jax.random.uniform(key, (4,), self.dtype, -0.1, 0.1)
        state = AcrobotState(
            theta1=s[0], theta2=s[1], dtheta1=s[2], dtheta2=s[3], time=jnp.int32(0)
        )
        return state, self._obs(state)

    def _obs(self, state: AcrobotState) -> jax.Array:
        return _f32(
            jnp.stack(
                [
                    jnp.cos(state.theta1),
                    jnp.sin(state.theta1),
                    jnp.cos(state.theta2),
                    jnp.sin(state.theta2),
                    state.dtheta1,
                    state.dtheta2,
                ]
            )
        )

    def _dsdt(self, s: tuple[jax.Array, ...], a: jax.Array) -> tuple[jax.Array, ...]:
        """Time derivative of ``(theta1, theta2, dtheta1, dtheta2)`` under torque ``a``.

        Written term by term as gymnasium's `AcrobotEnv._dsdt` ("book" branch) so that the
        float64 rounding matches; Acrobot is chaotic enough for reordering to show.
        """
        m1 = self.LINK_MASS_1
        m2 = self.LINK_MASS_2
        l1 = self.LINK_LENGTH_1
        lc1 = self.LINK_COM_POS_1
        lc2 = self.LINK_COM_POS_2
        I1 = self.LINK_MOI
        I2 = self.LINK_MOI
        g = 9.8
        pi = math.pi
        cos, sin = jnp.cos, jnp.sin
        theta1, theta2, dtheta1, dtheta2 = s
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos(theta2)) + I1 + I2
        d2 = m2 * (lc2**2 + l1 * lc2 * cos(theta2)) + I2
        phi2 = m2 * lc2 * g * cos(theta1 + theta2 - pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * dtheta2**2 * sin(theta2)
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin(theta2)
            + (m1 * lc1 + m2 * l1) * g * cos(theta1 - pi / 2)
            + phi2
        )
        ddtheta2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * sin(theta2) - phi2) / (
            m2 * lc2**2 + I2 - d2**2 / d1
        )
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return dtheta1, dtheta2, ddtheta1, ddtheta2

    def step(self, key: PRNGKey, state: AcrobotState, action: jax.Array) -> StepOut:
        del key  # deterministic dynamics (torque_noise_max == 0)
        dtype = state.theta1.dtype
        torque = (action - 1).astype(dtype)  # AVAIL_TORQUE = [-1, 0, +1]
        y0 = (state.theta1, state.theta2, state.dtheta1, state.dtheta2)

        # gymnasium's `rk4` over t = [0, dt]: a single classical RK4 step.
        dt = self.dt
        dt2 = dt / 2.0

        def shifted(h: float, k: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
            return tuple(y + h * ki for y, ki in zip(y0, k))

        k1 = self._dsdt(y0, torque)
        k2 = self._dsdt(shifted(dt2, k1), torque)
        k3 = self._dsdt(shifted(dt2, k2), torque)
        k4 = self._dsdt(shifted(dt, k3), torque)
        theta1, theta2, dtheta1, dtheta2 = (
            y + dt / 6.0 * (a + 2 * b + 2 * c + d)
            for y, a, b, c, d in zip(y0, k1, k2, k3, k4)
        )

        theta1 = _wrap_pi(theta1)
        theta2 = _wrap_pi(theta2)
        dtheta1 = jnp.clip(dtheta1, -self.MAX_VEL_1, self.MAX_VEL_1)
        dtheta2 = jnp.clip(dtheta2, -self.MAX_VEL_2, self.MAX_VEL_2)

        terminated = -jnp.cos(theta1) - jnp.cos(theta2 + theta1) > 1.0
        reward = jnp.where(terminated, 0.0, -1.0)
        time, truncated = self._tick(state.time)
        state = AcrobotState(
            theta1=theta1, theta2=theta2, dtheta1=dtheta1, dtheta2=dtheta2, time=time
        )
        return state, self._obs(state), _f32(reward), terminated, truncated, {}

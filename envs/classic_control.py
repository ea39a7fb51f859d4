"""Gymnasium's classic-control tasks as pure JAX envs.

Each env reproduces gymnasium 1.4's `envs/classic_control` implementation: constants,
dynamics (including the order of floating-point operations, so that float64 runs track
gymnasium's float64 numpy code to the last bit or so; XLA fuses some multiply-adds into
FMAs, so not always bit for bit), observation and action spaces, reward,
termination, reset distribution and the `TimeLimit` that `gymnasium.make` adds. The
parity is enforced by `tests/test_envs.py`, which drives gymnasium's envs side by side.

Dtypes: `reset` samples the state in the env's ``dtype`` (float32 unless asked
otherwise); `step` computes in the dtype of the state it is given, so a float64 state
under ``jax.enable_x64(True)`` runs the dynamics in float64 like gymnasium does.
Observations and rewards are always returned as float32 (the dtype of
``observation_space``), which keeps the output types of a rollout independent of the
physics precision.

Stepping an env after it has reported ``terminated`` is undefined (as in gymnasium); use
`AutoReset` or reset explicitly.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .core import Env, PRNGKey

__all__ = [
    "Acrobot",
    "AcrobotState",
    "CartPole",
    "CartPoleState",
    "MountainCar",
    "MountainCarContinuous",
    "MountainCarState",
    "Pendulum",
    "PendulumState",
]

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

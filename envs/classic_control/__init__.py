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

from .acrobot import Acrobot, AcrobotState, _wrap_pi  # noqa: F401 (tests use the helpers)
from .cartpole import CartPole, CartPoleState
from .mountain_car import MountainCar, MountainCarContinuous, MountainCarState
from .pendulum import Pendulum, PendulumState, _angle_normalize  # noqa: F401

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

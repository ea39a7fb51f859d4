"""JAX-native environments for rlaccel.

Every env is an immutable `Env` object whose methods are pure, unbatched functions of an
explicit state pytree and a PRNG key, so they can be `jax.jit`-ed, `jax.vmap`-ed over
environments and stepped inside `jax.lax.scan`::

    from rlaccel import envs

    env = envs.make("CartPole-v1", auto_reset=True)
    state, obs = env.reset(key_reset)                 # obs: float32 [obs_dim]
    state, obs, reward, terminated, truncated, info = env.step(key_step, state, action)

* ``reward`` is a float32 scalar, ``terminated`` / ``truncated`` are bool scalars, and
  ``truncated`` is gymnasium's `TimeLimit` (the step counter lives in ``state.time``).
* With ``auto_reset=True`` (the `AutoReset` wrapper) a finished episode is replaced by a
  fresh one inside `step`; the last observation of the finished episode is in
  ``info["final_obs"]`` for bootstrapping on truncation.
* ``env.observation_space`` / ``env.action_space`` are the gymnasium spaces of the
  corresponding gymnasium env, and ``env.is_discrete``, ``env.num_actions``,
  ``env.action_dim``, ``env.obs_dim`` summarise them.

Adapters: ``gym:<id>`` is any registered gymnasium env, described by `envs.gym.GymEnv` (not a
JAX env: host actor threads step it, see ``rlaccel.sources.host``); ``brax:<name>`` is a brax env as
a JAX `Env` (`envs.brax.BraxEnv`, options ``backend`` and ``max_episode_steps``).

Registered ids: ``CartPole-v1``, ``Acrobot-v1``, ``Pendulum-v1``, ``MountainCar-v0``,
``MountainCarContinuous-v0``; each matches gymnasium 1.4's dynamics (see
`rlaccel.envs.classic_control`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from .classic_control import (
    Acrobot,
    AcrobotState,
    CartPole,
    CartPoleState,
    MountainCar,
    MountainCarContinuous,
    MountainCarState,
    Pendulum,
    PendulumState,
)
from .core import AutoReset, Env, UnknownEnvError, Wrapper

__all__ = [
    "REGISTRY",
    "Acrobot",
    "AcrobotState",
    "AutoReset",
    "CartPole",
    "CartPoleState",
    "Env",
    "MountainCar",
    "MountainCarContinuous",
    "MountainCarState",
    "Pendulum",
    "PendulumState",
    "UnknownEnvError",
    "Wrapper",
    "make",
    "registered_ids",
]


# id -> constructor taking the env's keyword arguments.
REGISTRY: dict[str, Callable[..., Env]] = {
    cls.id: cls for cls in (CartPole, Acrobot, Pendulum, MountainCar, MountainCarContinuous)
}

# Ids of the form "<backend>:<name>" name adapters around other simulators: "gym:<id>" any
# registered gymnasium env (host-side, `envs.gym.GymEnv`, stepped by `rlaccel.sources.host` actor
# threads), "brax:<name>" a brax env (`envs.brax.BraxEnv`, a JAX `Env`).
_ADAPTER_PREFIXES = ("gym", "brax")


def registered_ids() -> list[str]:
    """Returns the ids accepted by `make`, sorted."""
    return sorted(REGISTRY)


def make(env_id: str, *, auto_reset: bool = False, **kwargs: Any) -> Env:
    """Creates a registered env.

    Args:
        env_id: A registered id, e.g. ``"CartPole-v1"`` (see `registered_ids`).
        auto_reset: Wrap the env in `AutoReset`.
        **kwargs: Passed to the env's constructor: ``dtype``, ``max_episode_steps`` and
            the gymnasium keyword arguments of that env (``sutton_barto_reward`` for
            CartPole, ``g`` for Pendulum, ``goal_velocity`` for the MountainCars).

    Returns:
        The env.

    Raises:
        UnknownEnvError: If ``env_id`` is not registered.
    """
    prefix, sep, name = env_id.partition(":")
    if sep and prefix == "gym":
        from .gym import GymEnv  # host-side: not a JAX env, see `rlaccel.sources.host`

        return GymEnv(name, **kwargs)  # type: ignore[return-value]
    if sep and prefix == "brax":
        from .brax import BraxEnv

        env = BraxEnv(name, **kwargs)
        return AutoReset(env) if auto_reset else env
    if env_id not in REGISTRY:
        known = registered_ids()
        close = difflib.get_close_matches(env_id, known, n=3, cutoff=0.6)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        raise UnknownEnvError(f"unknown env id {env_id!r}{hint} (known: {', '.join(known)})")
    env = REGISTRY[env_id](**kwargs)
    return AutoReset(env) if auto_reset else env

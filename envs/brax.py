"""Brax environments behind the functional ``envs.core.Env`` API (``brax:<name>`` ids).

A brax env is already pure JAX (``reset(rng) -> State``, ``step(State, action) -> State``), so
the adapter only reshapes it: the brax ``State`` becomes the env state, a step counter adds
gymnasium's time limit (``truncated``), and brax's ``done`` is ``terminated``. The fused and
split runners then compile rollouts of it like any JAX-native env::

    env = envs.make("brax:inverted_pendulum", auto_reset=True, backend="spring")
    state, obs = env.reset(key)                        # obs float32 [obs_dim]
    state, obs, reward, terminated, truncated, info = env.step(key, state, action)

Actions are float32 ``[action_size]`` in ``[-1, 1]`` (every brax env's convention).
Backends: ``spring``, ``positional``, ``generalized`` (``mjx`` needs a GPU to be useful).
On a CPU brax is slow (``shared/REFERENCE.md``: 8.8k steps/s for inverted_pendulum at 1024
envs); it is the robotics path for a GPU.

Several processes (``rlaccel.distributed``): MuJoCo's ``mjx.put_model`` / ``make_data``, which
brax calls when it builds a system and inside every physics step, place arrays on
``jax.devices()[0]`` unless told a device: process 0's device, which no other process can read.
Once a brax env is built they default to this process's first device instead
(:func:`use_local_device`; the same device in a single-process run).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import io
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnasium import spaces

from .core import Env, EnvState, Info, PRNGKey, UnknownEnvError

PREFIX = "brax"
BACKENDS = ("spring", "positional", "generalized", "mjx")
EPISODE_LENGTH = 1000  # brax's training default (``episode_length``)
_MJX_PLACERS = ("put_model", "make_data", "put_data")  # mujoco.mjx functions with ``device=None`` -> jax.devices()[0]


_WARP_NOTICE = ("Failed to import warp:", "Failed to import mujoco_warp:")


def _import_quietly(name: str) -> Any:
    """``importlib.import_module(name)`` without MuJoCo MJX's notice about its optional Warp
    backend: importing ``mujoco.mjx`` where NVIDIA's ``warp`` package is missing prints
    "Failed to import warp: ..." and "Failed to import mujoco_warp: ..." to stdout, which read
    like a failure on every brax run (rlaccel does not offer that backend). Any other line
    printed during the import passes through."""
    held = io.StringIO()
    try:
        with contextlib.redirect_stdout(held):
            return importlib.import_module(name)
    finally:
        for line in held.getvalue().splitlines():
            if not line.startswith(_WARP_NOTICE):
                print(line)


def _on_local_device(place: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(place)
    def placed(*args: Any, device: Any = None, impl: Any = None, **kwargs: Any) -> Any:
        if device is None and impl is None:
            device = jax.local_devices()[0]
        return place(*args, device=device, impl=impl, **kwargs)

    placed.rlaccel_local = True
    return placed


def use_local_device() -> None:
    """From now on ``mujoco.mjx.put_model`` / ``make_data`` / ``put_data`` called without a
    device or impl (as brax calls them) place on ``jax.local_devices()[0]`` instead of
    ``jax.devices()[0]``, which is another process's device in a multi-process run (and the
    same device in a single-process one). Brax looks them up on the ``mujoco.mjx`` module at
    each call, so this covers building a system and tracing a step. Idempotent."""
    mjx = _import_quietly("mujoco.mjx")
    for name in _MJX_PLACERS:
        place = getattr(mjx, name)
        if not getattr(place, "rlaccel_local", False):
            setattr(mjx, name, _on_local_device(place))


@struct.dataclass
class BraxState:
    """A brax ``State`` (physics, obs, reward, done, metrics, info) and the step count."""

    brax: Any
    time: jax.Array  # [] int32


class BraxEnv(Env):
    """A brax env as an ``Env``.

    Args:
      name: a brax env name (``brax.envs.get_environment``), e.g. ``"ant"``.
      backend: the physics pipeline.
      max_episode_steps: time limit (``truncated``); brax's own default is 1000.
      **kwargs: passed to the brax env's constructor.
    """

    kind = "brax"
    step_uses_key = False  # brax dynamics are deterministic; only reset draws

    def __init__(self, name: str, backend: str = "spring", max_episode_steps: int = EPISODE_LENGTH, **kwargs: Any):
        brax_envs = _import_quietly("brax.envs")
        if name not in brax_envs._envs:  # brax exposes its registry only as this dict
            known = sorted(brax_envs._envs)
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f"; did you mean: {', '.join(f'{PREFIX}:{c}' for c in close)}?" if close else ""
            raise UnknownEnvError(f"unknown brax env {name!r}{hint} (known: {', '.join(known)})")
        if backend not in BACKENDS:
            raise UnknownEnvError(f"{PREFIX}:{name}: unknown brax backend {backend!r} (known: {', '.join(BACKENDS)})")
        self.name = name
        self.id = f"{PREFIX}:{name}"
        self.backend = backend
        self.max_episode_steps = max_episode_steps
        use_local_device()
        self.brax_env = brax_envs.get_environment(name, backend=backend, **kwargs)
        obs_size, action_size = int(self.brax_env.observation_size), int(self.brax_env.action_size)
        self.observation_space = spaces.Box(-np.inf, np.inf, (obs_size,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (action_size,), np.float32)

    def reset(self, key: PRNGKey) -> tuple[EnvState, jax.Array]:
        state = self.brax_env.reset(key)
        return BraxState(brax=state, time=jnp.zeros((), jnp.int32)), jnp.asarray(state.obs, jnp.float32)

    def step(self, key: PRNGKey, state: EnvState, action: jax.Array) -> tuple[EnvState, jax.Array, jax.Array, jax.Array, jax.Array, Info]:
        del key  # deterministic dynamics
        nxt = self.brax_env.step(state.brax, action)
        time = state.time + 1
        terminated = jnp.asarray(nxt.done) > 0.5
        truncated = time >= self.max_episode_steps
        return BraxState(brax=nxt, time=time), jnp.asarray(nxt.obs, jnp.float32), jnp.asarray(nxt.reward, jnp.float32), terminated, truncated, {}

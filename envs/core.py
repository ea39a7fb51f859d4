"""The functional environment API shared by every JAX-native env in `rlaccel.envs`.

An `Env` is an immutable description of a task (constants, spaces, time limit); all
mutable quantities live in an explicit `state` pytree that is threaded through pure
functions, in the style of gymnax and Brax:

    state, obs = env.reset(key)
    state, obs, reward, terminated, truncated, info = env.step(key, state, action)

Both methods are unbatched (one environment) and free of Python control flow on traced
values, so `jax.jit`, `jax.vmap` (over environments) and `jax.lax.scan` (over time) compose
with them directly. `AutoReset` turns an env into one that never needs an explicit reset,
which is what a `lax.scan` rollout loop wants.
"""

from __future__ import annotations

import abc
from typing import Any

import gymnasium
import jax
import jax.numpy as jnp

# Type aliases for readability only; JAX does not check them.
PRNGKey = jax.Array
EnvState = Any  # a `flax.struct.dataclass` specific to each env
Info = dict[str, jax.Array]


class Env(abc.ABC):
    """A pure, functional environment.

    Subclasses set the class attributes below and implement `reset` and `step`. Both must
    be traceable: no Python branching on array values, static shapes and dtypes.

    Attributes:
        id: Registry id, e.g. ``"CartPole-v1"``.
        kind: Backend of the env; ``"jax"`` for envs implemented here (later ``"gym"`` or
            ``"brax"`` adapters can report otherwise).
        observation_space: `gymnasium.spaces.Box` with dtype float32, shape ``[obs_dim]``.
        action_space: `gymnasium.spaces.Discrete` (actions are int32 scalars) or
            `gymnasium.spaces.Box` (actions are float ``[action_dim]``).
        max_episode_steps: Time limit; `step` reports ``truncated = time >=
            max_episode_steps`` exactly like gymnasium's `TimeLimit` wrapper.
        step_uses_key: False when `step` ignores its key (deterministic dynamics; `reset`
            may still be random). Lets `AutoReset` skip a key split on every step.
    """

    id: str
    kind: str = "jax"
    step_uses_key: bool = True
    observation_space: gymnasium.spaces.Box
    action_space: gymnasium.spaces.Discrete | gymnasium.spaces.Box
    max_episode_steps: int

    @abc.abstractmethod
    def reset(self, key: PRNGKey) -> tuple[EnvState, jax.Array]:
        """Samples an initial state.

        Args:
            key: PRNG key.

        Returns:
            ``(state, obs)`` with ``state.time == 0`` and ``obs`` float32 ``[obs_dim]``.
        """

    @abc.abstractmethod
    def step(
        self, key: PRNGKey, state: EnvState, action: jax.Array
    ) -> tuple[EnvState, jax.Array, jax.Array, jax.Array, jax.Array, Info]:
        """Advances the env by one step.

        Args:
            key: PRNG key (unused by deterministic envs, kept for a uniform signature).
            state: Current state, as returned by `reset` or `step`.
            action: int32 scalar for discrete action spaces, float ``[action_dim]`` for
                continuous ones.

        Returns:
            ``(state, obs, reward, terminated, truncated, info)``: next state, float32
            ``[obs_dim]`` observation, float32 scalar reward, bool scalar flags (both can
            be True at once) and a dict of arrays whose structure does not depend on the
            values (often empty).
        """

    # -- Derived helpers -----------------------------------------------------------------

    @property
    def is_discrete(self) -> bool:
        """True when actions are integers from a `Discrete` space."""
        return isinstance(self.action_space, gymnasium.spaces.Discrete)

    @property
    def obs_dim(self) -> int:
        """Length of the (flat) observation vector."""
        return int(self.observation_space.shape[0])

    @property
    def num_actions(self) -> int:
        """Number of discrete actions; raises `TypeError` for continuous envs."""
        if not self.is_discrete:
            raise TypeError(f"{self.id} has a continuous action space; use action_dim")
        return int(self.action_space.n)

    @property
    def action_dim(self) -> int:
        """Length of the continuous action vector; raises `TypeError` for discrete envs."""
        if self.is_discrete:
            raise TypeError(f"{self.id} has a discrete action space; use num_actions")
        return int(self.action_space.shape[0])

    @property
    def unwrapped(self) -> Env:
        """The innermost env, with all wrappers removed."""
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}<{self.id}>"


class Wrapper(Env):
    """Base class for wrappers: forwards the static description of the wrapped env."""

    def __init__(self, env: Env):
        self.env = env
        self.id = env.id
        self.kind = env.kind
        self.observation_space = env.observation_space
        self.action_space = env.action_space
        self.max_episode_steps = env.max_episode_steps
        self.step_uses_key = env.step_uses_key

    @property
    def unwrapped(self) -> Env:
        return self.env.unwrapped

    def __repr__(self) -> str:
        return f"{type(self).__name__}<{self.env!r}>"


def _select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Leafwise ``where(pred, on_true, on_false)`` over two pytrees of equal structure."""
    return jax.tree.map(lambda t, f: jnp.where(pred, t, f), on_true, on_false)


class AutoReset(Wrapper):
    """Resets the wrapped env inside `step` when an episode ends.

    When the inner step reports ``terminated | truncated``, the returned state and
    observation are those of a fresh `reset`, while reward and flags are the inner step's.
    The true last observation of the finished episode is always returned in
    ``info["final_obs"]`` (present on every step so that shapes are static), so that a
    truncated episode can bootstrap from ``V(final_obs)``.

    The step's key is split between the inner step and the reset (or given whole to the
    reset when the inner env declares ``step_uses_key = False``). A fresh reset is
    computed on every step and selected with `jnp.where`: under `vmap` a `lax.cond` would
    lower to the same select anyway, and this keeps one code path.
    """

    def reset(self, key: PRNGKey) -> tuple[EnvState, jax.Array]:
        return self.env.reset(key)

    def step(
        self, key: PRNGKey, state: EnvState, action: jax.Array
    ) -> tuple[EnvState, jax.Array, jax.Array, jax.Array, jax.Array, Info]:
        if self.env.step_uses_key:
            key_step, key_reset = jax.random.split(key)
        else:
            # The inner step ignores its key, so the reset may have it unshared; this saves
            # a split per step (about 10% of a CartPole step on CPU).
            key_step = key_reset = key
        state_reset, obs_reset = self.env.reset(key_reset)
        return self.step_or_reset(key_step, state, action, state_reset, obs_reset)

    def step_or_reset(
        self,
        key: PRNGKey,
        state: EnvState,
        action: jax.Array,
        state_reset: EnvState,
        obs_reset: jax.Array,
    ) -> tuple[EnvState, jax.Array, jax.Array, jax.Array, jax.Array, Info]:
        """`step`, with the fresh episode given rather than drawn.

        Rollouts draw the reset states of all ``T x B`` steps in one batched op before their
        scan (``rlaccel.rollout``): a PRNG draw inside the scan body costs more than the
        CartPole physics.

        Args:
            key: key for the inner step.
            state, action: as for `step`.
            state_reset, obs_reset: the episode to continue with if this step ends one.
        """
        state_next, obs_next, reward, terminated, truncated, info = self.env.step(key, state, action)
        done = terminated | truncated
        state_out = _select(done, state_reset, state_next)
        obs_out = jnp.where(done, obs_reset, obs_next)
        info = {**info, "final_obs": obs_next}
        return state_out, obs_out, reward, terminated, truncated, info


class UnknownEnvError(ValueError):
    """Raised by `make` for an id that is not registered."""

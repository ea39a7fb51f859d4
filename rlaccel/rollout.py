"""Collecting experience: a ``lax.scan`` of ``agent.act`` + ``env.step``, shared by all agents."""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct
from gymnasium import spaces

Array = jax.Array


@struct.dataclass
class Transition:
    """One step of ``B`` environments; a rollout stacks them to ``[T, B, ...]``.

    ``next_obs`` is the true next observation: the final one where an episode ended (the
    auto-reset env returns the next episode's first observation in ``obs`` of the next row),
    so truncated episodes bootstrap from the right state.
    """

    obs: Array  # [B, obs_dim]
    action: Array  # [B] int32 or [B, A] float32, as sampled (before clipping to bounds)
    reward: Array  # [B]
    terminated: Array  # [B] bool
    truncated: Array  # [B] bool
    next_obs: Array  # [B, obs_dim]
    extras: Any  # ActorExtras, e.g. the behaviour log-prob [B]


@struct.dataclass
class RolloutState:
    """What persists between rollouts: the envs and the running episode statistics."""

    env_state: Any  # env state pytree, leaves [B, ...]
    obs: Array  # [B, obs_dim]
    episode_return: Array  # [B] return of the running episode so far
    episode_length: Array  # [B] int32


@struct.dataclass
class EpisodeInfo:
    """Per-step episode bookkeeping, ``[T, B]`` after a rollout."""

    done: Array  # bool: an episode ended at this step
    episode_return: Array  # return of the episode up to and including this step
    episode_length: Array  # int32


def reset(env: Any, key: Array, num_envs: int) -> RolloutState:
    """Reset ``num_envs`` environments of an auto-reset env."""
    env_state, obs = jax.vmap(env.reset)(jax.random.split(key, num_envs))
    return RolloutState(
        env_state=env_state,
        obs=obs,
        episode_return=jnp.zeros((num_envs,), jnp.float32),
        episode_length=jnp.zeros((num_envs,), jnp.int32),
    )


class StepNoise(NamedTuple):
    """Randomness of one step, drawn for the whole rollout before its scan."""

    act: Any  # the agent's acting noise for this step (``Agent.noise``)
    key_env: Array  # [B, 2] env step keys
    state_reset: Any  # env state pytree [B, ...]: the episode that follows one ending here
    obs_reset: Array  # [B, obs_dim]


def acting_noise(agent: Any, key: Array, num_steps: int, num_envs: int) -> Any:
    """The acting noise of a ``[T, B]`` rollout, leaves ``[T, ...]``: ``agent.rollout_noise``
    when the agent has one (noise shared across steps, e.g. gSDE's exploration matrices), else
    ``agent.noise`` for ``T * B`` actors in one draw, split into ``T`` steps."""
    if getattr(agent, "rollout_noise", None) is not None:
        return agent.rollout_noise(key, num_steps, num_envs)
    return jax.tree.map(lambda x: x.reshape(num_steps, num_envs, *x.shape[1:]), agent.noise(key, num_steps * num_envs))


def draw_noise(env: Any, agent: Any, key: Array, num_steps: int, num_envs: int) -> StepNoise:
    """All randomness of a ``[T, B]`` rollout (acting noise, env keys, reset states), in a few
    large ops: drawing inside the scan body would put a PRNG hash on every step's critical path,
    and every PRNG call site costs compile time (~0.2 s each on XLA's CPU backend), so the
    env and reset keys come from one split. The acting noise is ``agent``'s (:func:`acting_noise`).
    """
    n = num_steps * num_envs
    keys = jax.random.split(key, 2 * n + 1)  # [reset keys (n), env step keys (n), the acting noise's key]
    state_reset, obs_reset = jax.vmap(env.reset)(keys[:n])
    return StepNoise(
        act=acting_noise(agent, keys[-1], num_steps, num_envs),
        key_env=keys[n : 2 * n].reshape(num_steps, num_envs, -1),
        state_reset=jax.tree.map(lambda x: x.reshape(num_steps, num_envs, *x.shape[1:]), state_reset),
        obs_reset=obs_reset.reshape(num_steps, num_envs, -1),
    )


def env_step(
    state: RolloutState,
    noise: StepNoise,
    *,
    env: Any,
    act: Callable[[Any, Array, Any], tuple[Array, Any]],
    actor_params: Any,
) -> tuple[RolloutState, tuple[Transition, EpisodeInfo]]:
    """One actor decision and one step of every env (a ``lax.scan`` body).

    Args:
      state: the envs, ``B`` of them.
      noise: this step's keys and reset states (:func:`draw_noise`).
      env: an auto-reset env (``envs.core.AutoReset``).
      act: the agent's ``act``.
      actor_params: fp32 or int8 actor parameters.
    """
    action, extras = act(actor_params, state.obs, noise.act)
    env_action = action
    if isinstance(env.action_space, spaces.Box):
        env_action = jnp.clip(action, env.action_space.low, env.action_space.high)
    env_state, obs, reward, terminated, truncated, info = jax.vmap(env.step_or_reset)(
        noise.key_env, state.env_state, env_action, noise.state_reset, noise.obs_reset
    )
    done = jnp.logical_or(terminated, truncated)
    episode_return = state.episode_return + reward
    episode_length = state.episode_length + 1
    transition = Transition(
        obs=state.obs,
        action=action,
        reward=reward,
        terminated=terminated,
        truncated=truncated,
        next_obs=info["final_obs"],
        extras=extras,
    )
    episode = EpisodeInfo(done=done, episode_return=episode_return, episode_length=episode_length)
    state = RolloutState(
        env_state=env_state,
        obs=obs,
        episode_return=jnp.where(done, 0.0, episode_return),
        episode_length=jnp.where(done, 0, episode_length),
    )
    return state, (transition, episode)


def collect_rollout(
    state: RolloutState,
    actor_params: Any,
    key: Array,
    *,
    env: Any,
    agent: Any,
    num_steps: int,
    unroll: int = 1,
) -> tuple[RolloutState, Transition, EpisodeInfo]:
    """``num_steps`` steps of every env with fixed actor parameters.

    Args:
      state: the envs.
      actor_params: from ``agent.actor_params``.
      key: randomness of the whole rollout.
      env: an auto-reset env.
      agent: provides ``act`` and ``noise``.
      num_steps: ``T``.
      unroll: ``lax.scan`` unroll factor.

    Returns:
      ``(state, transitions [T, B, ...], episode info [T, B])``.
    """
    noise = draw_noise(env, agent, key, num_steps, state.obs.shape[0])
    body = functools.partial(env_step, env=env, act=agent.act, actor_params=actor_params)
    state, (transitions, episodes) = jax.lax.scan(body, state, noise, unroll=unroll)
    return state, transitions, episodes

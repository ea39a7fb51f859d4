"""What every run carries between updates, whatever its step source: :class:`TrainState`.

It also keeps SB3's episode statistics (mean return and length over the last 100 finished
episodes), recorded once per update from the rollout's :class:`rlaccel.rollout.EpisodeInfo`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from rlaccel import rollout as rollout_lib

Array = jax.Array

EPISODE_WINDOW = 100  # SB3's ep_info_buffer: episode means are over the last 100 episodes


@struct.dataclass
class TrainState:
    """Everything a run carries between updates; checkpointing it makes resume exact."""

    agent: Any  # AgentState (learner device)
    rollout: rollout_lib.RolloutState | None  # envs (actor device); None where envs live outside JAX
    key: Array
    update: Array  # [] int32, updates done (env steps = update * num_envs * num_steps)
    recent_returns: Array  # [EPISODE_WINDOW] returns of the last finished episodes (ring buffer)
    recent_lengths: Array  # [EPISODE_WINDOW]
    episodes: Array  # [] int32, episodes finished so far


def init_state(agent_state: Any, rollout: rollout_lib.RolloutState | None, key: Array) -> TrainState:
    """A fresh :class:`TrainState` (no update done, no episode finished)."""
    return TrainState(
        agent=agent_state,
        rollout=rollout,
        key=key,
        update=jnp.zeros((), jnp.int32),
        recent_returns=jnp.zeros((EPISODE_WINDOW,), jnp.float32),
        recent_lengths=jnp.zeros((EPISODE_WINDOW,), jnp.float32),
        episodes=jnp.zeros((), jnp.int32),
    )


def record_episodes(state: TrainState, episodes: rollout_lib.EpisodeInfo) -> TrainState:
    """Append a rollout's finished episodes to the last-100 ring buffer (once per update)."""
    done = episodes.done.reshape(-1)
    rank = jnp.cumsum(done) - 1  # order of each finished episode within this rollout
    n_done = done.sum()
    keep = done & (rank >= n_done - EPISODE_WINDOW)  # more than a window's worth: newest win
    slot = jnp.where(keep, (state.episodes + rank) % EPISODE_WINDOW, EPISODE_WINDOW)
    returns = state.recent_returns.at[slot].set(episodes.episode_return.reshape(-1), mode="drop")
    lengths = state.recent_lengths.at[slot].set(episodes.episode_length.reshape(-1).astype(jnp.float32), mode="drop")
    return state.replace(recent_returns=returns, recent_lengths=lengths, episodes=state.episodes + n_done.astype(jnp.int32))


def apply_update(agent: Any, state: TrainState, transitions: Any, episodes: rollout_lib.EpisodeInfo, key: Array) -> tuple[TrainState, dict[str, Array]]:
    """The learner's update on a rollout ``[T, B]`` and the episode bookkeeping (every source's learn step).

    Args:
      agent: the algorithm's ``rlaccel.agent.Agent``.
      state: the run's state (its ``rollout`` is not read).
      transitions: ``Transition [T, B]`` as the actors recorded it.
      episodes: ``EpisodeInfo [T, B]``.
      key: the update's PRNG key.

    Returns:
      The new state (``update`` + 1) and the update's metrics, with ``rollout/ep_rew_mean`` and
      ``rollout/ep_len_mean`` (SB3's names) over the last 100 episodes.
    """
    agent_state, metrics = agent.update(state.agent, transitions, key)
    metrics = dict(metrics)
    state = record_episodes(state.replace(agent=agent_state, update=state.update + 1), episodes)
    metrics["rollout/ep_rew_mean"], metrics["rollout/ep_len_mean"] = episode_means(state)
    return state, metrics


def episode_means(state: TrainState, xp: Any = jnp) -> tuple[Array, Array]:
    """Mean return and length over the last (up to) 100 finished episodes; NaN before the first.

    ``xp=numpy`` on a state fetched to the host: the same sums without compiling a program
    (the end of a run, ``StepSource.final_stats``)."""
    n = xp.minimum(state.episodes, EPISODE_WINDOW)
    valid = xp.arange(EPISODE_WINDOW) < n
    denom = xp.where(n > 0, n, xp.nan)
    return xp.sum(xp.where(valid, state.recent_returns, 0.0)) / denom, xp.sum(xp.where(valid, state.recent_lengths, 0.0)) / denom

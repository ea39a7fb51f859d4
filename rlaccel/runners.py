"""Runners: where an agent's pure functions execute.

``FusedRunner`` (JAX env, actor on the learner's device): a whole chunk of updates
(rollout with actor params -> learner update -> new actor params) is one compiled program.
It is pure, so ``jax.vmap`` over seeds works unchanged (``rlaccel.runners.FusedRunner.train``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from rlaccel import rollout as rollout_lib
from rlaccel.agent import Agent, Metrics

Array = jax.Array

EPISODE_WINDOW = 100  # SB3's ep_info_buffer: episode means are over the last 100 episodes


@struct.dataclass
class TrainState:
    """Everything a run carries between updates; checkpointing it makes resume exact."""

    agent: Any  # AgentState
    rollout: rollout_lib.RolloutState
    key: Array
    update: Array  # [] int32, updates done (env steps = update * num_envs * num_steps)
    recent_returns: Array  # [EPISODE_WINDOW] returns of the last finished episodes (ring buffer)
    recent_lengths: Array  # [EPISODE_WINDOW]
    episodes: Array  # [] int32, episodes finished so far


def _record_episodes(state: TrainState, episodes: rollout_lib.EpisodeInfo) -> TrainState:
    """Append this rollout's finished episodes to the last-100 ring buffer (once per update)."""
    done = episodes.done.reshape(-1)
    rank = jnp.cumsum(done) - 1  # order of each finished episode within this rollout
    n_done = done.sum()
    keep = done & (rank >= n_done - EPISODE_WINDOW)  # more than a window's worth: newest win
    slot = jnp.where(keep, (state.episodes + rank) % EPISODE_WINDOW, EPISODE_WINDOW)
    returns = state.recent_returns.at[slot].set(episodes.episode_return.reshape(-1), mode="drop")
    lengths = state.recent_lengths.at[slot].set(episodes.episode_length.reshape(-1).astype(jnp.float32), mode="drop")
    return state.replace(recent_returns=returns, recent_lengths=lengths, episodes=state.episodes + n_done.astype(jnp.int32))


def episode_means(state: TrainState) -> tuple[Array, Array]:
    """Mean return and length over the last (up to) 100 finished episodes; NaN before the first."""
    n = jnp.minimum(state.episodes, EPISODE_WINDOW)
    valid = jnp.arange(EPISODE_WINDOW) < n
    denom = jnp.where(n > 0, n, jnp.nan)
    return jnp.sum(jnp.where(valid, state.recent_returns, 0.0)) / denom, jnp.sum(jnp.where(valid, state.recent_lengths, 0.0)) / denom


class FusedRunner:
    """Actor and learner in one compiled program on one device.

    Args:
      agent: the algorithm's pure functions.
      env: an auto-reset JAX env.
      num_envs: ``B``.
      num_steps: rollout length ``T`` per update.
    """

    def __init__(self, agent: Agent, env: Any, num_envs: int, num_steps: int, unroll: int = 1):
        self.agent = agent
        self.env = env
        self.num_envs = num_envs
        self.num_steps = num_steps
        self.unroll = unroll

    def init(self, key: Array) -> TrainState:
        """Fresh agent and envs from one key."""
        key, key_agent, key_env = jax.random.split(key, 3)
        return TrainState(
            agent=self.agent.init(key_agent),
            rollout=rollout_lib.reset(self.env, key_env, self.num_envs),
            key=key,
            update=jnp.zeros((), jnp.int32),
            recent_returns=jnp.zeros((EPISODE_WINDOW,), jnp.float32),
            recent_lengths=jnp.zeros((EPISODE_WINDOW,), jnp.float32),
            episodes=jnp.zeros((), jnp.int32),
        )

    def update_step(self, state: TrainState, _: Any = None) -> tuple[TrainState, Metrics]:
        """Rollout with the current actor params, then one learner update (a scan body)."""
        key, key_rollout, key_update = jax.random.split(state.key, 3)
        actor_params = self.agent.actor_params(state.agent)
        rollout, transitions, episodes = rollout_lib.collect_rollout(
            state.rollout, actor_params, key_rollout, env=self.env, act=self.agent.act, num_steps=self.num_steps, unroll=self.unroll
        )
        agent_state, metrics = self.agent.update(state.agent, transitions, key_update)
        state = state.replace(
            agent=agent_state,
            rollout=rollout,
            key=key,
            update=state.update + 1,
        )
        state = _record_episodes(state, episodes)
        ep_rew_mean, ep_len_mean = episode_means(state)
        metrics = dict(metrics)
        metrics["rollout/ep_rew_mean"] = ep_rew_mean
        metrics["rollout/ep_len_mean"] = ep_len_mean
        return state, metrics

    def train_chunk(self, state: TrainState, num_updates: int) -> tuple[TrainState, Metrics]:
        """``num_updates`` updates; metrics stacked ``[num_updates]``. Pure: jit/vmap it."""
        return jax.lax.scan(self.update_step, state, None, length=num_updates)

    def train(self, key: Array, num_updates: int) -> tuple[TrainState, Metrics]:
        """A whole run as one pure function (``jax.jit(jax.vmap(...))`` it for many seeds)."""
        return self.train_chunk(self.init(key), num_updates)

    @functools.cached_property
    def jit_train_chunk(self) -> Any:
        """``train_chunk`` compiled once per chunk length; the state buffer is donated."""
        return jax.jit(self.train_chunk, static_argnums=1, donate_argnums=0)

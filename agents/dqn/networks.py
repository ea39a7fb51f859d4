"""DQN's Q-network and epsilon-greedy exploration."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from rlaccel.agents.dqn.config import QNetKwargs

from rlaccel.networks import MLP

Array = jax.Array


def make_q_network(num_actions: int, kwargs: QNetKwargs) -> MLP:
    """``[..., obs_dim] -> [..., num_actions]`` Q-values; a plain Dense stack (int8-quantisable)."""
    return MLP(hidden=tuple(kwargs.net_arch), out_dim=num_actions, activation=kwargs.activation, out_gain=1.0, ortho_init=kwargs.ortho_init, weight_init=kwargs.weight_init)


class ExplorationNoise(NamedTuple):
    """Randomness of one epsilon-greedy step of ``B`` actors."""

    uniform: Array  # [B] in [0, 1): explore where uniform < epsilon
    random_action: Array  # [B] int32 uniform over the actions


def noise(key: Array, num_envs: int, num_actions: int) -> ExplorationNoise:
    """Exploration noise for one step (rollouts draw every step's at once): one uniform draw
    ``[num_envs, 2]``, the second column scaled to a uniformly drawn action (one PRNG call
    site: each costs compile time)."""
    u = jax.random.uniform(key, (num_envs, 2))
    action = jnp.minimum(jnp.floor(u[:, 1] * num_actions).astype(jnp.int32), num_actions - 1)
    return ExplorationNoise(uniform=u[:, 0], random_action=action)


def epsilon_greedy(q_values: Array, epsilon: Array, noise: ExplorationNoise) -> Array:
    """``argmax Q`` with probability ``1 - epsilon``, else the noise's random action; ``[B]`` int32."""
    greedy = jnp.argmax(q_values, axis=-1).astype(jnp.int32)
    return jnp.where(noise.uniform < epsilon, noise.random_action, greedy)

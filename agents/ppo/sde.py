"""Generalised State-Dependent Exploration (gSDE) for PPO's Gaussian policy, in JAX.

Raffin, Kober and Stulp, "Smooth Exploration for Robotic Reinforcement Learning", CoRL 2021
(https://arxiv.org/abs/2005.05719), with Stable-Baselines3's semantics
(``StateDependentNoiseDistribution`` with ``use_expln=False``, ``learn_features=False``,
``squash_output=False``, ``epsilon=1e-6``):

* ``log_std`` is ``[latent_dim, action_dim]`` (``full_std``) or ``[latent_dim, 1]`` (one value per
  latent feature, shared by the actions); ``std = exp(log_std)`` broadcast to
  ``[latent_dim, action_dim]``.
* An exploration matrix ``eps ~ N(0, std**2)`` ``[latent_dim, action_dim]`` per env is drawn at
  the start of every rollout and, when ``sde_sample_freq > 0``, again every
  ``sde_sample_freq`` steps of it (SB3's ``reset_noise(n_envs)``: one matrix per env).
* The action is ``mean + latent @ eps`` where ``latent`` ``[latent_dim]`` is the policy's last
  hidden layer (its features, gradient stopped), so the noise is a deterministic function of
  the state for as long as the matrix is kept: smooth exploration.
* Its distribution given the state is a diagonal Gaussian with variance
  ``latent**2 @ std**2 + epsilon``: that is what the log-probability and the entropy use
  (they do not depend on the matrix that was drawn).
* The deterministic action is the mean.

Here the matrices are acting noise like any other: :func:`rollout_noise` draws a whole
rollout's ``[T, B, latent_dim, action_dim]`` from one key before the rollout's scan (standard
normal; :func:`sample` multiplies by ``std``), so fused, split and vmapped runs are pure
functions of their keys. ``agents/ppo/actor.py`` computes the same in numpy for host actors.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

EPSILON = 1e-6
"""Added to the variance before the square root, as SB3 (``StateDependentNoiseDistribution.epsilon``)."""

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def std_matrix(log_std: Array, action_dim: int) -> Array:
    """``exp(log_std)`` ``[latent_dim, 1 or action_dim]`` broadcast to ``[latent_dim, action_dim]`` (SB3's ``get_std``)."""
    return jnp.broadcast_to(jnp.exp(log_std), (log_std.shape[0], action_dim))


def scale(latent: Array, log_std: Array, action_dim: int) -> Array:
    """Standard deviation of the action ``[B, A]``: ``sqrt(latent**2 @ std**2 + epsilon)``.

    Args:
      latent: ``[B, latent_dim]`` policy features; no gradient flows into them
        (SB3's default ``learn_features=False``).
      log_std: ``[latent_dim, A]`` or ``[latent_dim, 1]``.
      action_dim: ``A``.
    """
    latent = jax.lax.stop_gradient(latent)
    variance = jnp.square(latent) @ jnp.square(std_matrix(log_std, action_dim))
    return jnp.sqrt(variance + EPSILON)


def exploration_noise(latent: Array, log_std: Array, noise: Array) -> Array:
    """``latent @ eps`` per env ``[B, A]``, with ``eps = std * noise`` the env's exploration matrix.

    Args:
      latent: ``[B, latent_dim]``.
      log_std: ``[latent_dim, A or 1]``.
      noise: ``[B, latent_dim, A]`` standard normal (:func:`step_noise`).
    """
    eps = std_matrix(log_std, noise.shape[-1]) * noise
    return jnp.einsum("bh,bha->ba", jax.lax.stop_gradient(latent), eps)


def sample(mean: Array, latent: Array, log_std: Array, noise: Array) -> Array:
    """Actions ``[B, A]``: ``mean + latent @ (std * noise)`` (unclipped, as ``networks.sample``)."""
    return mean + exploration_noise(latent, log_std, noise)


def log_prob(mean: Array, std: Array, action: Array) -> Array:
    """Log-probability ``[B]`` of ``action [B, A]`` under ``N(mean, std**2)`` (``std`` from :func:`scale`), summed over actions."""
    z = (action - mean) / std
    return jnp.sum(-0.5 * jnp.square(z) - jnp.log(std) - _HALF_LOG_2PI, axis=-1)


def entropy(std: Array) -> Array:
    """Entropy ``[B]`` of the diagonal Gaussian with ``std [B, A]``: ``sum(0.5 + 0.5 log(2 pi) + log std)``."""
    return jnp.sum(0.5 + _HALF_LOG_2PI + jnp.log(std), axis=-1)


def step_noise(key: Array, num_envs: int, latent_dim: int, action_dim: int) -> Array:
    """One step's standard normal exploration matrices ``[num_envs, latent_dim, action_dim]``
    (``Agent.noise``: what a single acting call, e.g. a latency probe, takes)."""
    return jax.random.normal(key, (num_envs, latent_dim, action_dim))


def block_index(num_steps: int, sample_freq: int) -> Array:
    """``[T]`` int32: which matrix step ``t`` of a rollout acts with, ``t // sample_freq``
    (``0`` throughout when ``sample_freq <= 0``: one matrix per rollout)."""
    steps = jnp.arange(num_steps, dtype=jnp.int32)
    return steps // sample_freq if sample_freq > 0 else jnp.zeros_like(steps)


def num_blocks(num_steps: int, sample_freq: int) -> int:
    """Matrices drawn per env in a rollout of ``num_steps``: ``ceil(T / sample_freq)``, or 1."""
    return -(-num_steps // sample_freq) if sample_freq > 0 else 1


def rollout_noise(key: Array, num_steps: int, num_envs: int, *, latent_dim: int, action_dim: int, sample_freq: int) -> Array:
    """A rollout's exploration matrices ``[T, B, latent_dim, action_dim]`` (standard normal).

    Step ``t`` acts with matrix ``t // sample_freq`` of its env: fresh at ``t = 0`` and every
    ``sample_freq`` steps after (SB3's ``collect_rollouts``, whose step counter restarts with
    every rollout), or one for the whole rollout when ``sample_freq <= 0``.
    """
    blocks = jax.random.normal(key, (num_blocks(num_steps, sample_freq), num_envs, latent_dim, action_dim))
    return blocks[block_index(num_steps, sample_freq)]

"""Discounted sums over time as parallel scans (shared by GAE, reward scaling, n-step returns)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def linear_recurrence(decay: Array, inputs: Array, reverse: bool = False) -> Array:
    """Solve ``y_t = inputs_t + decay_t * y_{t-1}`` (or ``y_{t+1}`` when ``reverse``) along axis 0.

    The recurrence is linear, so it runs as an ``associative_scan`` (log T depth, a few large
    ops) instead of T sequential tiny ones; ``y`` before the first element is 0.

    Args:
      decay: ``[T, ...]``.
      inputs: ``[T, ...]``.
      reverse: recur from the end (returns-to-go) instead of from the start.

    Returns:
      ``y``, ``[T, ...]``.
    """

    # Elements (a, b) stand for the map y -> b + a * y; ``second`` comes later in the
    # recursion (associative_scan hands them over in recursion order in both directions).
    def compose(first: tuple[Array, Array], second: tuple[Array, Array]) -> tuple[Array, Array]:
        a1, b1 = first
        a2, b2 = second
        return a2 * a1, b2 + a2 * b1

    _, y = jax.lax.associative_scan(compose, (decay, inputs), reverse=reverse, axis=0)
    return y


def discounted_returns(initial: Array, rewards: Array, dones: Array, gamma: float) -> tuple[Array, Array]:
    """Running discounted returns ``R_t = r_t + gamma * R_{t-1}``, restarted after ``done``.

    This is the quantity SB3's ``VecNormalize`` tracks to scale rewards.

    Args:
      initial: ``[B]`` running return carried from the previous rollout (0 after a done).
      rewards: ``[T, B]``.
      dones: ``[T, B]`` bool, episode ended at this step.
      gamma: discount.

    Returns:
      ``(returns [T, B], carry [B])``; ``carry`` is 0 where the last step ended an episode.
    """
    not_done = 1.0 - dones.astype(rewards.dtype)
    decay = gamma * jnp.concatenate([jnp.ones_like(not_done[:1]), not_done[:-1]], axis=0)
    inputs = rewards.at[0].add(gamma * initial)
    returns = linear_recurrence(decay, inputs)
    return returns, returns[-1] * not_done[-1]

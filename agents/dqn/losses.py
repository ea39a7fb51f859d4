"""DQN's pure maths: (double) Q-learning targets and the Huber loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def q_targets(
    reward: Array,
    terminated: Array,
    next_q_online: Array,
    next_q_target: Array,
    gamma: float,
    double_q: bool = True,
) -> Array:
    """One-step Q-learning targets ``[N]``.

    Double DQN (https://arxiv.org/abs/1509.06461): the online network picks the next action,
    the target network values it, which removes the max operator's overestimation. A
    terminated step has no future; a truncated one bootstraps (its ``next_obs`` is the true
    final observation), as in PPO.

    Args:
      reward: ``[N]``.
      terminated: ``[N]`` bool.
      next_q_online: ``Q_online(s')``, ``[N, A]`` (only used when ``double_q``).
      next_q_target: ``Q_target(s')``, ``[N, A]``.
      gamma: discount.
      double_q: double-DQN action selection; ``False`` is the max of the target network.
    """
    if double_q:
        best = jnp.argmax(next_q_online, axis=-1)
        next_value = jnp.take_along_axis(next_q_target, best[:, None], axis=-1)[:, 0]
    else:
        next_value = jnp.max(next_q_target, axis=-1)
    return reward + gamma * (1.0 - terminated.astype(reward.dtype)) * next_value


def huber(x: Array, delta: float = 1.0) -> Array:
    """Elementwise Huber loss (SB3's ``smooth_l1_loss`` with ``beta = delta``)."""
    absx = jnp.abs(x)
    return jnp.where(absx <= delta, 0.5 * jnp.square(x), delta * (absx - 0.5 * delta))


def td_loss(td_error: Array, kind: str) -> Array:
    """Mean loss of TD errors ``[N]``: ``huber`` or ``mse`` (``0.5 * x**2``, Huber's quadratic part).

    With Adam, the choice matters beyond scale: Huber caps the gradient of large errors,
    which are mostly terminal transitions pulling over-estimated values down; on CartPole
    with PureJaxRL's settings (target every 50 updates) that let Q-values diverge here,
    while the squared error converged (``configs/dqn_cartpole.yaml``).
    """
    if kind == "huber":
        return jnp.mean(huber(td_error))
    return jnp.mean(0.5 * jnp.square(td_error))

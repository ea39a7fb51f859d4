"""DQN's pure maths: n-step returns, (double) Q-learning targets and the Huber loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def q_targets(
    reward: Array,
    terminated: Array,
    next_q_online: Array,
    next_q_target: Array,
    gamma: float | Array,
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
      gamma: discount, or ``[N]`` discounts (``gamma ** m`` after an ``m``-step return).
      double_q: double-DQN action selection; ``False`` is the max of the target network.
    """
    if double_q:
        best = jnp.argmax(next_q_online, axis=-1)
        next_value = jnp.take_along_axis(next_q_target, best[:, None], axis=-1)[:, 0]
    else:
        next_value = jnp.max(next_q_target, axis=-1)
    return reward + gamma * (1.0 - terminated.astype(reward.dtype)) * next_value


def n_step_returns(reward: Array, terminated: Array, truncated: Array, gamma: float) -> tuple[Array, Array, Array, Array]:
    """Discounted sums of up to ``n`` rewards that stop at the first episode end.

    For runs of ``n`` consecutive transitions of one environment (``[N, n]``), the return
    ``sum_{k<m} gamma^k r_k`` covers the first ``m`` steps: all ``n``, or up to and including
    the first terminated or truncated step, so a return never crosses into the next episode.
    The target is then ``G + gamma^m * (1 - terminated_{m-1}) * V(next_obs_{m-1})``: a
    termination has no future, a truncation bootstraps from the true final observation.
    ``n = 1`` is the one-step target.

    Args:
      reward, terminated, truncated: ``[N, n]``.
      gamma: discount.

    Returns:
      ``(G [N], discount [N] = gamma ** m, terminated_last [N] bool, last [N] int32 = m - 1)``.
    """
    n = reward.shape[-1]
    done = (terminated | truncated).astype(reward.dtype)
    # alive[:, k] = 1 while no earlier step of the run ended an episode.
    alive = jnp.cumprod(jnp.concatenate([jnp.ones_like(done[:, :1]), 1.0 - done[:, :-1]], axis=-1), axis=-1)
    powers = gamma ** jnp.arange(n, dtype=reward.dtype)
    ret = jnp.sum(alive * powers * reward, axis=-1)
    m = jnp.sum(alive, axis=-1)
    last = m.astype(jnp.int32) - 1
    terminated_last = jnp.take_along_axis(terminated, last[:, None], axis=-1)[:, 0]
    return ret, gamma**m, terminated_last, last


def huber(x: Array, delta: float = 1.0) -> Array:
    """Elementwise Huber loss (SB3's ``smooth_l1_loss`` with ``beta = delta``)."""
    absx = jnp.abs(x)
    return jnp.where(absx <= delta, 0.5 * jnp.square(x), delta * (absx - 0.5 * delta))


def td_loss(td_error: Array, kind: str) -> Array:
    """Mean loss of TD errors ``[N]``: ``huber`` or ``mse``, ``mean(x**2)`` (``F.mse_loss`` of
    CleanRL's DQN, PureJaxRL's ``jnp.mean((q - target) ** 2)``; twice Huber's quadratic part).

    With Adam, the choice matters beyond scale: Huber caps the gradient of large errors,
    which are mostly terminal transitions pulling over-estimated values down; on CartPole
    with PureJaxRL's settings (target every 50 updates) that let Q-values diverge here,
    while the squared error converged (``configs/dqn_cartpole.yaml``).
    """
    if kind == "huber":
        return jnp.mean(huber(td_error))
    return jnp.mean(jnp.square(td_error))

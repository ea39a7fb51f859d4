"""PPO's pure, shape-documented maths: GAE and the clipped surrogate loss."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rlaccel.returns import linear_recurrence

Array = jax.Array


def compute_gae(
    rewards: Array,
    values: Array,
    next_values: Array,
    terminated: Array,
    truncated: Array,
    gamma: float,
    gae_lambda: float,
) -> tuple[Array, Array]:
    """Generalised advantage estimation (Schulman et al. 2015, https://arxiv.org/abs/1506.02438).

    Termination and truncation are kept apart: a terminated step has no future value
    (``next_value`` is ignored); a truncated step bootstraps from the value of its true final
    observation. Either ends the advantage recursion, because the next row of the batch
    belongs to a new episode::

        delta_t = r_t + gamma * (1 - terminated_t) * V(s'_t) - V(s_t)
        A_t     = delta_t + gamma * lambda * (1 - (terminated_t | truncated_t)) * A_{t+1}

    The recursion runs backwards over T (``rlaccel.returns.linear_recurrence``).

    Args:
      rewards: ``[T, B]``.
      values: ``V(s_t)``, ``[T, B]``.
      next_values: ``V(s'_t)`` of the true next observation (the final one where an episode
        ended), ``[T, B]``.
      terminated: ``[T, B]`` bool.
      truncated: ``[T, B]`` bool.
      gamma: discount.
      gae_lambda: GAE lambda.

    Returns:
      ``(advantages, returns)``, each ``[T, B]``; ``returns = advantages + values``.
    """
    not_term = 1.0 - terminated.astype(values.dtype)
    not_done = 1.0 - jnp.logical_or(terminated, truncated).astype(values.dtype)
    deltas = rewards + gamma * not_term * next_values - values
    advantages = linear_recurrence(gamma * gae_lambda * not_done, deltas, reverse=True)
    return advantages, advantages + values


class LossInfo(NamedTuple):
    """Per-minibatch diagnostics (SB3's names in ``train/``)."""

    policy_gradient_loss: Array
    value_loss: Array
    entropy_loss: Array
    approx_kl: Array
    clip_fraction: Array


def ppo_loss(
    new_log_prob: Array,
    behaviour_log_prob: Array,
    entropy: Array,
    new_values: Array,
    old_values: Array,
    advantages: Array,
    returns: Array,
    *,
    clip_range: float,
    clip_range_vf: float | None,
    ent_coef: float,
    vf_coef: float,
    normalize_advantage: bool,
    value_loss_kind: str = "half_mse",
) -> tuple[Array, LossInfo]:
    """Clipped surrogate + value loss - entropy bonus (https://arxiv.org/abs/1707.06347).

    The ratio is taken against ``behaviour_log_prob``, the log-probability recorded by the
    actor that chose the action (int8 or fp32): the samples were drawn from that policy, so
    it is the importance weight's denominator. Recomputing it with the learner's fp32 copy
    would silently treat int8 samples as fp32 ones, biasing the gradient by the quantisation
    error; with the recorded value, quantisation is just a small policy lag that the clip
    already bounds.

    Args:
      new_log_prob, behaviour_log_prob, entropy, new_values, old_values, advantages, returns:
        ``[N]`` each (one minibatch).
      clip_range: ratio clip epsilon.
      clip_range_vf: value clip around ``old_values``; ``None`` for none.
      ent_coef, vf_coef: loss weights.
      normalize_advantage: normalise ``advantages`` over this minibatch.
      value_loss_kind: ``half_mse`` (``0.5 * mean(err**2)``, CleanRL / PureJaxRL) or ``mse``
        (``mean(err**2)``, SB3's ``F.mse_loss``): what ``vf_coef`` weighs.

    Returns:
      ``(total_loss, LossInfo)``.
    """
    if normalize_advantage:  # jnp.std's own arithmetic, with the mean taken once
        centered = advantages - advantages.mean()
        advantages = centered / (jnp.sqrt(jnp.mean(jnp.square(centered))) + 1e-8)
    log_ratio = new_log_prob - behaviour_log_prob
    ratio = jnp.exp(log_ratio)
    surrogate = jnp.minimum(ratio * advantages, jnp.clip(ratio, 1.0 - clip_range, 1.0 + clip_range) * advantages)

    half = 0.5 if value_loss_kind == "half_mse" else 1.0
    if clip_range_vf is None:
        value_err = jnp.square(new_values - returns)
    else:
        clipped = old_values + jnp.clip(new_values - old_values, -clip_range_vf, clip_range_vf)
        value_err = jnp.maximum(jnp.square(new_values - returns), jnp.square(clipped - returns))

    # The five means as one reduction over the minibatch: on a CPU each mean of N > 32 values
    # is two kernels (XLA's tree reduction), whatever it sums.
    per_sample = jnp.stack(
        [
            -surrogate,
            half * value_err,
            -entropy,
            (ratio - 1.0) - log_ratio,  # http://joschu.net/blog/kl-approx.html, as SB3 and CleanRL
            (jnp.abs(ratio - 1.0) > clip_range).astype(jnp.float32),
        ],
        axis=-1,
    )
    info = LossInfo(*jnp.mean(per_sample, axis=0))
    total = info.policy_gradient_loss + vf_coef * info.value_loss + ent_coef * info.entropy_loss
    return total, info

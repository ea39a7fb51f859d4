"""Running observation normalisation, as an Optax-style ``init`` / ``update`` pair.

The statistics are part of the agent state: they are checkpointed with the parameters and
shipped to actors as a :class:`rlaccel.reference.Normalizer` (:func:`normalizer`: mean and
``1 / sqrt(var + eps)`` computed once), which actors apply with :func:`apply`:
``clip((obs - mean) * inv_std, -clip, clip)``, a formula numpy reproduces bit for bit
(``rlaccel.reference``). The learner may normalise its batches with :func:`normalize`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rlaccel.reference import Normalizer

Array = jnp.ndarray


class RunningStats(NamedTuple):
    """Mean and variance of everything seen so far (Chan et al. parallel update)."""

    mean: Array  # [obs_dim]
    var: Array  # [obs_dim]
    count: Array  # [] float32


def init(shape: tuple[int, ...]) -> RunningStats:
    """Identity statistics (mean 0, var 1) with a tiny prior count, as SB3's VecNormalize."""
    return RunningStats(mean=jnp.zeros(shape, jnp.float32), var=jnp.ones(shape, jnp.float32), count=jnp.asarray(1e-4, jnp.float32))


def update(stats: RunningStats, batch: Array) -> RunningStats:
    """Merge a batch ``[..., obs_dim]`` into the statistics."""
    batch = batch.reshape(-1, stats.mean.shape[-1])
    n = jnp.asarray(batch.shape[0], jnp.float32)
    b_mean = batch.mean(axis=0)
    b_var = batch.var(axis=0)
    delta = b_mean - stats.mean
    total = stats.count + n
    mean = stats.mean + delta * n / total
    m2 = stats.var * stats.count + b_var * n + jnp.square(delta) * stats.count * n / total
    return RunningStats(mean=mean, var=m2 / total, count=total)


def normalize(stats: RunningStats, x: Array, clip: float = 10.0, eps: float = 1e-8) -> Array:
    """``clip((x - mean) / sqrt(var + eps), -clip, clip)``, broadcasting over leading axes (the learner's form)."""
    return jnp.clip((x - stats.mean) / jnp.sqrt(stats.var + eps), -clip, clip)


def normalizer(stats: RunningStats, eps: float = 1e-8) -> Normalizer:
    """What actors normalise with: ``mean [obs_dim]`` and ``inv_std = 1 / sqrt(var + eps) [obs_dim]``.

    ``inv_std`` is computed once here (``lax.rsqrt``, which is what XLA makes of ``1 / sqrt``
    anyway, jitted or not) and then only multiplied by, in JAX and in numpy alike.
    """
    return Normalizer(mean=stats.mean, inv_std=jax.lax.rsqrt(stats.var + eps))


def apply(norm: Normalizer | None, x: Array, clip: float) -> Array:
    """``clip((x - mean) * inv_std, -clip, clip)`` for ``x [..., obs_dim]``; identity when ``norm`` is None."""
    if norm is None:
        return x
    return jnp.clip((x - norm.mean) * norm.inv_std, -clip, clip)

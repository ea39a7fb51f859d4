"""Threshold tables for the numpy actors (JAX, jittable): each int8 layer's output stage
(requantise, zero point, clamp, TANH), nondecreasing in each channel's accumulator, as the
smallest accumulator reaching each output level. ``rlaccel.reference.Int8Network`` acts from
them in numpy; ``rlaccel.lookup.thresholds`` is the same search in numpy (Ray actor processes).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rlaccel.quant import QuantParams, _tanh, requantize, tanh_table
from rlaccel.reference import LEVELS, Int8Tables

Array = jax.Array

TABLE_ITERATIONS = 32  # bisection steps: the widest window, 2 R + 2 <= 2**32 candidates, closes in 32


def reach(w_q: Array, b_q: Array) -> Array:
    """``[out]`` int32: a bound on ``|acc|`` per channel, ``255 sum|w| + |b|`` (``x - z`` within +-255)."""
    return 255 * jnp.sum(jnp.abs(w_q.astype(jnp.int32)), axis=0) + jnp.abs(b_q)


def tables(qp: QuantParams) -> Int8Tables:
    """The int8 policy with each layer's output stage as accumulator thresholds (jittable).

    Every layer's ``acc -> int8 output`` (requantise, zero point, clamp, TANH) is nondecreasing
    in each channel's accumulator: ``thresholds[i][j, k]`` is the smallest accumulator ``a`` in
    ``[-R_j, R_j]`` (``R_j`` = :func:`reach`) whose output is ``>= k - 127``, or ``R_j + 1``
    ("never"). As ``rlaccel.lookup.thresholds``: each entry from the float estimate
    ``(y - z) / multiplier``, checked on the integer kernels at four accumulators around it; if
    any entry misses, the open ones are bisected on the integer kernels (``TABLE_ITERATIONS``).

    Returns:
      ``Int8Tables`` with ``thresholds[i]`` int32 ``[out_i, LEVELS]`` for every layer.
    """
    return Int8Tables(model=qp.model, thresholds=tuple(_thresholds(qp, i) for i in range(len(qp.model.w_q))))


def _thresholds(qp: QuantParams, i: int, estimate: bool = True) -> Array:
    m = qp.model
    tanh = qp.activation == "tanh" and i < len(m.w_q) - 1
    target = (jnp.arange(LEVELS, dtype=jnp.int32) - 127)[:, None]  # [255, 1]: levels -127 .. 127
    r = jnp.broadcast_to(reach(m.w_q[i], m.b_q[i]), (LEVELS, m.w_q[i].shape[1]))  # [255, out]

    def out(acc: Array) -> Array:
        y = jnp.clip(requantize(acc, m.mult[i], m.shift[i], qp.profile) + m.out_zero[i], m.act_min[i], m.act_max[i])
        return _tanh(y, m.out_scale[i]) if tanh else y

    def step(_: int, bounds: tuple[Array, Array]) -> tuple[Array, Array]:
        lo, hi = bounds
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without int32 overflow
        above = out(mid) >= target
        return jnp.where((lo < hi) & ~above, mid + 1, lo), jnp.where((lo < hi) & above, mid, hi)

    lo, hi = -r, r + 1
    if estimate:
        row = tanh_table(m.out_scale[i]) if tanh else None
        y_need = jnp.searchsorted(row, target[:, 0], side="left")[:, None] - 128 if tanh else target
        slope = m.mult[i] * 2.0 ** (m.shift[i] - 31.0) if qp.profile == "tflite" else 2.0 ** m.shift[i].astype(jnp.float32)
        e = jnp.clip(jnp.nan_to_num(jnp.ceil((y_need - m.out_zero[i] - 0.5) / slope), posinf=2.0**31, neginf=-(2.0**31)), -r, r + 1)
        e = jnp.where(y_need > m.act_max[i], r + 1, jnp.where(y_need <= m.act_min[i], -r, e.astype(jnp.int32)))  # never / always
        probe = jnp.clip(e + jnp.arange(-2, 2)[:, None, None], -r, r + 1)  # [4, 255, out]: e-2 .. e+1
        above = (out(probe) >= target) | (probe == r + 1)
        found = (probe[0] > -r) & ~above[0] & above[3]  # the first above is e-1, e or e+1
        lo = jnp.where(found, probe[1] + (~above[1]).astype(jnp.int32) + (~above[1] & ~above[2]).astype(jnp.int32), -r)
        hi = jnp.where(found | ((e == -r) & above[2]), lo, r + 1)
    searching = lambda c: (c[0] < TABLE_ITERATIONS) & jnp.any(c[1] < c[2])  # noqa: E731 - no step once all are closed
    _, lo, _ = jax.lax.while_loop(searching, lambda c: (c[0] + 1, *step(c[0], c[1:])), (0, lo, hi))
    return jnp.minimum(lo, r + 1).T


def for_runtime(tree: Any, runtime: str) -> Any:
    """``tree`` as host actors of ``runtime`` (``rlaccel.placement.actor_runtime``) take it from
    the learner's program: tabulated (:func:`with_tables`) for the numpy reference; as it is for
    the C kernel (the host packs each ``QuantParams`` with ``rlaccel.quant.payloads``) and for
    JAX actors (jittable)."""
    return with_tables(tree) if runtime == "numpy" else tree


def with_tables(tree: Any) -> Any:
    """``tree`` (e.g. an agent's ``ActorParams``) with every :class:`QuantParams` replaced by
    its :func:`tables`: what numpy actors act with (jittable)."""
    return jax.tree.map(lambda x: tables(x) if isinstance(x, QuantParams) else x, tree, is_leaf=lambda x: isinstance(x, QuantParams))

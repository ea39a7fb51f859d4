"""Int8 post-training quantisation of an MLP policy: the integer path an NPU executes.

The actors act with an int8 copy of the learner's fp32 policy, re-quantised after every
learner update (ActorQ, Krishnan et al., https://arxiv.org/abs/1910.01055). The arithmetic is
what an NPU's integer pipeline does:

* **Weights**: symmetric, per output channel: ``w_q = round(w / s_w)``, ``s_w = max|w[:, j]| / 127``
  (an all-zero channel gets ``s_w = 1``, so nothing divides by zero).
* **Activations**: int8 with calibrated scales, from what the actors actually saw: the
  running observation normaliser is applied first, then the input is quantised per feature
  with ``s_in[i] = max|x[:, i]| / 127``, a decayed running max over the rollouts. The per-feature input scale
  is folded into the first layer's weights before they are quantised (input-channel
  equalisation, which NPU compilers do for free), so every feature gets the full int8
  range; hidden activations have one scale per tensor (``max|h| / 127``; tanh outputs are
  bounded by 1).
* **Products**: int8 x int8 accumulated in int32 (``lax.dot_general(...,
  preferred_element_type=jnp.int32)``), plus an int32 bias ``round(b / (s_x * s_w))``.
* **Rescaling to float** happens only where an NPU would: before a nonlinearity it cannot
  compute in integers (tanh, elu) and at the output. ReLU stays in integers (requantise
  with the fused multiplier and clip at 0).

Overflow bound: ``|x_q|, |w_q| <= 127`` so one product is at most 16,129 in magnitude and a
dot product over ``K`` inputs at most ``16,129 K``. The bias is clipped to ``|b_q| <= 2**30``,
so the int32 accumulator (max ``2**31 - 1``) cannot overflow while
``16,129 K + 2**30 < 2**31``, i.e. ``K <= 66,572``. ``MAX_FAN_IN`` enforces a margin below that;
config limits hidden widths to 4,096 (tested at the limit in ``tests/test_quant.py``).

The state of the quantiser is Optax-style: ``init`` / ``update`` on an explicit
:class:`Calibration`, and ``quantize`` / ``apply`` as pure functions, so it runs inside
the compiled training loop. ``tables`` turns a :class:`QuantParams` into
:class:`rlaccel.reference.Int8Tables` (integers, scales and activation tables), from which
``rlaccel.reference.Int8Network`` computes ``apply``'s outputs bit for bit in numpy (host
actors, exported policies).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from rlaccel.networks import ACTIVATIONS
from rlaccel.reference import LEVELS, QMAX, Int8Tables, dense_layers

Array = jax.Array

# QMAX, LEVELS, Int8Tables and dense_layers are defined once, in rlaccel.reference (numpy).
__all__ = ["BIAS_LIMIT", "LEVELS", "MAX_FAN_IN", "QMAX", "Calibration", "Int8Tables", "QuantLayer", "QuantParams"]
__all__ += ["apply", "dense_layers", "dequantized_layers", "init", "int8_dense", "quantize", "quantize_input", "quantize_weight"]
__all__ += ["requantize", "tables", "update", "weight_rel_error", "with_tables"]

MAX_FAN_IN = 65_536
BIAS_LIMIT = 2**30
DECAY = 0.99  # per DECAY_SAMPLES observations (a PPO CartPole rollout): ranges forget
DECAY_SAMPLES = 512  # a state-space corner after a few hundred rollouts


class Calibration(NamedTuple):
    """Activation ranges seen by the actors (running max over every rollout so far).

    Attributes:
      input_absmax: ``[in_dim]`` per-feature max |x| of the (normalised) observations.
      hidden_absmax: ``[num_layers - 1]`` per-tensor max |h| of each hidden activation.
      rollouts: ``[]`` int32, rollouts calibrated on; 0 means the ranges are ``init``'s guess.
    """

    input_absmax: Array
    hidden_absmax: Array
    rollouts: Array


@struct.dataclass
class QuantLayer:
    """One int8 dense layer: ``y = (x_q @ w_q + b_q) * out_scale``."""

    w_q: Array  # [in, out] int8
    b_q: Array  # [out] int32
    out_scale: Array  # [out] float32 = s_x * s_w (dequantises the int32 accumulator)


@struct.dataclass
class QuantParams:
    """An int8 policy: input quantisation, layers, and the activation between them."""

    input_mult: Array  # [in_dim] float32: x_q = round(x_norm * input_mult), 1 / s_in per feature
    layers: tuple[QuantLayer, ...]
    act_scales: Array  # [num_layers - 1] per-tensor scales of the hidden activations
    activation: str = struct.field(pytree_node=False, default="tanh")


def init(in_dim: int, num_layers: int, input_absmax: float = 10.0) -> Calibration:
    """Ranges used before any rollout was seen (only the first rollout acts with them)."""
    return Calibration(
        input_absmax=jnp.full((in_dim,), input_absmax, jnp.float32),
        hidden_absmax=jnp.ones((num_layers - 1,), jnp.float32),
        rollouts=jnp.zeros((), jnp.int32),
    )


def _activate(name: str, x: Array) -> Array:
    return ACTIVATIONS[name](x)


def update(calib: Calibration, layers: Sequence[tuple[Array, Array]], x: Array, activation: str) -> Calibration:
    """Calibrate on a batch of actor inputs ``x [N, in_dim]`` (normalised observations).

    Ranges are a decayed running max, ``max(decay * old, this batch's max)`` with
    ``decay = 0.99 ** (N / 512)`` so forgetting goes by observations seen, not by calls (the
    first batch replaces ``init``'s guess). The max of the last rollout alone clips states the
    policy visits rarely (a cart drifting further than it did in the last 512 steps: greedy
    agreement fell to 92 % on a trained CartPole policy); an undecayed max keeps the wide
    ranges of the first random episodes and wastes resolution (98 %); ``decay = 0.99``
    gave >= 99.3 % on every seed tried.
    """
    input_absmax = jnp.max(jnp.abs(x), axis=0)
    hidden = []
    h = x
    for w, b in layers[:-1]:
        h = _activate(activation, h @ w + b)
        hidden.append(jnp.max(jnp.abs(h)))
    hidden_absmax = jnp.stack(hidden)
    decay = DECAY ** (x.shape[0] / DECAY_SAMPLES)
    first = calib.rollouts == 0
    return Calibration(
        input_absmax=jnp.where(first, input_absmax, jnp.maximum(decay * calib.input_absmax, input_absmax)),
        hidden_absmax=jnp.where(first, hidden_absmax, jnp.maximum(decay * calib.hidden_absmax, hidden_absmax)),
        rollouts=calib.rollouts + 1,
    )


def quantize_weight(w: Array) -> tuple[Array, Array]:
    """Per-output-channel symmetric int8: ``w [in, out] -> (w_q int8 [in, out], scale [out])``."""
    absmax = jnp.max(jnp.abs(w), axis=0)
    scale = jnp.where(absmax > 0, absmax / QMAX, 1.0)
    return jnp.clip(jnp.round(w / scale), -QMAX, QMAX).astype(jnp.int8), scale


def _safe_scale(absmax: Array) -> Array:
    return jnp.where(absmax > 0, absmax / QMAX, 1.0)


def quantize(layers: Sequence[tuple[Array, Array]], calib: Calibration, activation: str) -> QuantParams:
    """fp32 layers + calibration -> :class:`QuantParams` (run after every learner update)."""
    if max(w.shape[0] for w, _ in layers) > MAX_FAN_IN:
        raise ValueError(f"int8 layers support fan-in up to {MAX_FAN_IN} (int32 accumulator bound)")
    in_scale = _safe_scale(calib.input_absmax)  # [in_dim]
    act_scales = _safe_scale(calib.hidden_absmax)  # [L-1]
    q_layers = []
    for i, (w, b) in enumerate(layers):
        if i == 0:
            w = w * in_scale[:, None]  # equalisation: x = x_q * s_in  =>  x @ w = x_q @ (s_in * w)
            s_x = jnp.ones((), jnp.float32)
        else:
            s_x = act_scales[i - 1]
        w_q, s_w = quantize_weight(w)
        out_scale = s_x * s_w
        b_q = jnp.clip(jnp.round(b / out_scale), -BIAS_LIMIT, BIAS_LIMIT).astype(jnp.int32)
        q_layers.append(QuantLayer(w_q=w_q, b_q=b_q, out_scale=out_scale.astype(jnp.float32)))
    return QuantParams(input_mult=1.0 / in_scale, layers=tuple(q_layers), act_scales=act_scales, activation=activation)


def quantize_input(x: Array, mult: Array) -> Array:
    """``float [..., in] -> int8``: ``clip(round(x * mult), -127, 127)``."""
    return jnp.clip(jnp.round(x * mult), -QMAX, QMAX).astype(jnp.int8)


def int8_dense(x_q: Array, layer: QuantLayer) -> Array:
    """``int8 [N, in] x int8 [in, out] -> int32 [N, out]``, plus the int32 bias."""
    acc = jax.lax.dot_general(x_q, layer.w_q, (((x_q.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
    return acc + layer.b_q


def apply(qp: QuantParams, x: Array) -> Array:
    """The int8 forward pass: normalised observations ``[..., in]`` -> float head ``[..., out]``."""
    h_q = quantize_input(x, qp.input_mult)
    last = len(qp.layers) - 1
    for i, layer in enumerate(qp.layers):
        acc = int8_dense(h_q, layer)
        if i == last:
            return acc.astype(jnp.float32) * layer.out_scale
        h_q = requantize(acc, layer.out_scale, qp.act_scales[i], qp.activation)
    raise AssertionError("unreachable")


def requantize(acc: Array, out_scale: Array, s_next: Array, activation: str) -> Array:
    """A hidden layer's int32 accumulator ``[..., out]`` -> the next layer's int8 input ``[..., out]``.

    ``out_scale [out]`` dequantises the accumulator, ``s_next []`` is the next activation's
    scale. Elementwise and monotone in ``acc`` per channel, so ``rlaccel.deploy`` tabulates
    it (per-channel thresholds on the accumulator) to reproduce it bit for bit without JAX.
    """
    if activation == "relu":
        # Integer-only requantisation, as an NPU does: fused multiplier, clip at 0.
        return jnp.clip(jnp.round(acc.astype(jnp.float32) * (out_scale / s_next)), 0, QMAX).astype(jnp.int8)
    h = _activate(activation, acc.astype(jnp.float32) * out_scale)
    return quantize_input(h, 1.0 / s_next)


TABLE_ITERATIONS = 32  # bisection steps: the widest window, 2 R + 2 <= 2**32 candidates, closes in 32


def tables(qp: QuantParams) -> Int8Tables:
    """The int8 policy as :class:`rlaccel.reference.Int8Tables`: its integers and scales, plus
    each hidden layer's activation table (jittable; run it where the int8 actors run, since the
    tables reproduce that device's tanh / elu).

    ``thresholds[i][j, k]`` is the smallest accumulator ``a`` in ``[-R_j, R_j + 1]`` (``R_j``
    the largest reachable ``|acc|`` of channel ``j``; above ``R_j`` means "never") whose
    :func:`requantize` is ``>= k - 126``, found by bisection on ``requantize`` itself with the
    scales as runtime values, as in the actors (no constant folding changes the arithmetic).
    All ``254 x out`` searches of a layer step together for :data:`TABLE_ITERATIONS` steps
    and stop together once every one has closed (``lo == hi``), so a converged "never" entry
    may sit at ``R_j + 2``: the numpy reference treats every value above ``R_j`` alike.

    Returns:
      ``Int8Tables`` with ``thresholds[i]`` int32 ``[out_i, 254]``, ``i < L - 1``.
    """
    thresholds = tuple(_thresholds(layer, qp.act_scales[i], qp.activation) for i, layer in enumerate(qp.layers[:-1]))
    return Int8Tables(
        input_mult=qp.input_mult,
        w_q=tuple(layer.w_q for layer in qp.layers),
        b_q=tuple(layer.b_q for layer in qp.layers),
        out_scale=tuple(layer.out_scale for layer in qp.layers),
        act_scales=qp.act_scales,
        thresholds=thresholds,
    )


def _thresholds(layer: QuantLayer, s_next: Array, activation: str) -> Array:
    """One hidden layer's table, ``int32 [out, 254]`` (see :func:`tables`)."""
    # R_j < 2**31 - 1 by quantize's bounds (fan-in <= MAX_FAN_IN, |b_q| <= BIAS_LIMIT), so int32 holds R_j + 2.
    reach = QMAX * jnp.sum(jnp.abs(layer.w_q.astype(jnp.int32)), axis=0) + jnp.abs(layer.b_q)  # [out]
    target = (jnp.arange(LEVELS, dtype=jnp.int32) - (QMAX - 1))[:, None]  # [254, 1]: levels -126 .. 127
    shape = (LEVELS, reach.shape[0])
    lo, hi = jnp.broadcast_to(-reach, shape), jnp.broadcast_to(reach + 1, shape)

    def step(_: int, bounds: tuple[Array, Array]) -> tuple[Array, Array]:
        lo, hi = bounds
        active = jnp.any(lo < hi)  # every search steps until the last one closes
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without int32 overflow
        above = requantize(mid, layer.out_scale, s_next, activation) >= target
        return jnp.where(active & ~above, mid + 1, lo), jnp.where(active & above, mid, hi)

    lo, _ = jax.lax.fori_loop(0, TABLE_ITERATIONS, step, (lo, hi))
    return lo.T


def with_tables(tree: Any) -> Any:
    """``tree`` (e.g. an agent's ``ActorParams``) with every :class:`QuantParams` replaced by
    its :func:`tables`: what numpy actors act with (jittable)."""
    return jax.tree.map(lambda x: tables(x) if isinstance(x, QuantParams) else x, tree, is_leaf=lambda x: isinstance(x, QuantParams))


def dequantized_layers(qp: QuantParams) -> list[tuple[Array, Array]]:
    """The fp32 weights the int8 layers stand for (first layer in equalised input units)."""
    out = []
    for i, layer in enumerate(qp.layers):
        s_x = 1.0 if i == 0 else qp.act_scales[i - 1]
        s_w = layer.out_scale / s_x
        out.append((layer.w_q.astype(jnp.float32) * s_w, layer.b_q.astype(jnp.float32) * layer.out_scale))
    return out


def weight_rel_error(layers: Sequence[tuple[Array, Array]], qp: QuantParams) -> Array:
    """Mean over layers of ``||W_deq - W|| / ||W||`` (first layer compared in equalised units)."""
    in_scale = 1.0 / qp.input_mult
    errors = []
    for i, ((w, _), (w_deq, _)) in enumerate(zip(layers, dequantized_layers(qp))):
        if i == 0:
            w = w * in_scale[:, None]
        errors.append(jnp.linalg.norm(w_deq - w) / jnp.maximum(jnp.linalg.norm(w), 1e-12))
    return jnp.mean(jnp.stack(errors))

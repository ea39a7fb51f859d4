"""Int8 post-training quantisation of an MLP policy, in JAX: the integers an NPU computes.

The actors act with an int8 copy of the learner's fp32 policy, re-quantised after every
learner update (ActorQ, Krishnan et al., https://arxiv.org/abs/1910.01055). The arithmetic is
one of two integer profiles (``placement.actor.int8_profile``), defined once in numpy by
``rlaccel.intmath`` / ``rlaccel.int8model`` (TFLite Micro's reference kernels) and computed
here in JAX, bit for bit: int32 arithmetic (no float64), and small dots as fp32 dots of the
same integers, exact below ``2**24`` (:func:`int8_dot`):

* ``tflite`` (default): per-channel symmetric weights, asymmetric int8 activations,
  fixed-point multiplier and shift; TANH as TFLite Micro's (its table's integers, computed
  as a rounded float tanh: ``_tanh``); ReLU a clamp.
* ``pow2``: per-tensor power-of-two scales, shift-only requantisation (fixed-point NPUs).

Calibration (what the actors saw, decayed running ranges) sets the scales: per-feature input
ranges give the float equalisation ``gain`` and QUANTIZE's scale; ReLU maxima and the head's
range give those layers' output scales; TANH's input scale is the power of two of
``intmath.TANH_IN_SCALES`` that covers the pre-activation range, its output scale the spec's 1/128.

The state of the quantiser is Optax-style: ``init`` / ``update`` on an explicit
:class:`Calibration`, ``quantize`` / ``apply`` as pure functions, so it runs inside the compiled
training loop. ``rlaccel.quant_tables`` adds to the model each layer's requantisation as a
table of accumulator thresholds, from which ``rlaccel.reference.Int8Network`` acts in numpy.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rlaccel import intmath
from rlaccel.int8model import Int8Model, Int8Payload
from rlaccel.quant_scales import asymmetric, multipliers, pow2_up, quantize_multiplier, round_half_away, round_scale, significand
from rlaccel.networks import ACTIVATIONS
from rlaccel.reference import Int8Tables, dense_layers

Array = jax.Array

__all__ = ["BIAS_LIMIT", "MAX_FAN_IN", "PROFILES", "Calibration", "Int8Model", "Int8Tables", "QuantParams", "apply", "dense_layers"]
__all__ += ["features", "init", "input_absmax", "latent_scale", "quantize", "quantize_multiplier", "quantize_weights", "requantize", "tanh_table", "update", "weight_rel_error"]

PROFILES = intmath.PROFILES
MAX_FAN_IN = 32_768  # |acc| <= 255 * 127 * K + 2**30 < 2**31 (int8 inputs minus a zero point: up to 255)
BIAS_LIMIT = 2**30
EXACT_F32_FAN_IN = (2**24 - 1) // (128 * 127)  # 1,032: |partial sums| of int8 x int8 products < 2**24
F32_DOT_MAX_MACS = 2**18  # int8_dot: below this many multiply-adds the exact fp32 dot is the faster here
DECAY = 0.99  # per DECAY_SAMPLES observations (a PPO CartPole rollout): ranges forget
DECAY_SAMPLES = 512  # a state-space corner after a few hundred rollouts
TANH_LUTS = np.asarray(intmath.TANH_TABLES, np.int32)  # [scales, 256]


class Calibration(NamedTuple):
    """Ranges seen by the actors (decayed running min / max over every rollout so far).

    Attributes:
      input_min, input_max: ``[in]`` per feature, of the (normalised) observations.
      hidden_max: ``[L-1]`` per hidden layer, the max of its ReLU output, or for tanh the max
        ``|pre-activation|`` (TANH's input range).
      head_min, head_max: ``[]`` of the fp32 head.
      rollouts: ``[]`` int32, rollouts calibrated on; 0 means the ranges are ``init``'s guess.
    """

    input_min: Array
    input_max: Array
    hidden_max: Array
    head_min: Array
    head_max: Array
    rollouts: Array


@struct.dataclass
class QuantParams:
    """An int8 policy: the integers and scales, and how to run them."""

    model: Int8Model
    activation: str = struct.field(pytree_node=False, default="tanh")
    profile: str = struct.field(pytree_node=False, default="tflite")


def payloads(tree: Any) -> Any:
    """``tree`` (host copies, e.g. ``jax.device_get`` of ``ActorParams``) with every
    :class:`QuantParams` as the ``Int8Payload`` numpy actors build from (no threshold tables)."""
    pack = lambda x: Int8Payload(x.model, x.activation, x.profile) if isinstance(x, QuantParams) else x  # noqa: E731
    return jax.tree.map(pack, tree, is_leaf=lambda x: isinstance(x, QuantParams))


def init(in_dim: int, num_layers: int, input_absmax: float = 10.0) -> Calibration:
    """Ranges used before any rollout was seen (only the first rollout acts with them)."""
    return Calibration(
        input_min=jnp.full((in_dim,), -input_absmax, jnp.float32),
        input_max=jnp.full((in_dim,), input_absmax, jnp.float32),
        hidden_max=jnp.ones((num_layers - 1,), jnp.float32),
        head_min=jnp.full((), -1.0, jnp.float32),
        head_max=jnp.full((), 1.0, jnp.float32),
        rollouts=jnp.zeros((), jnp.int32),
    )


def update(calib: Calibration, layers: Sequence[tuple[Array, Array]], x: Array, activation: str) -> Calibration:
    """Calibrate on a batch of actor inputs ``x [N, in_dim]`` (normalised observations).

    Ranges are a decayed running extreme, ``max(decay * old, this batch's max)`` with
    ``decay = 0.99 ** (N / 512)`` so forgetting goes by observations seen, not by calls (the
    first batch replaces ``init``'s guess). The extreme of the last rollout alone clips states
    the policy visits rarely; an undecayed one keeps the wide ranges of the first random
    episodes and wastes resolution.
    """
    hidden = []
    h = x
    for w, b in layers[:-1]:
        pre = h @ w + b
        h = ACTIVATIONS[activation](pre)
        hidden.append(jnp.max(jnp.abs(pre)) if activation == "tanh" else jnp.max(h))
    w, b = layers[-1]
    out = h @ w + b
    new = Calibration(jnp.min(x, axis=0), jnp.max(x, axis=0), jnp.stack(hidden), jnp.min(out), jnp.max(out), calib.rollouts + 1)
    decay = DECAY ** (x.shape[0] / DECAY_SAMPLES)
    first = calib.rollouts == 0

    def mix(old: Array, cur: Array, lower: bool) -> Array:
        kept = -jnp.maximum(-decay * old, -cur) if lower else jnp.maximum(decay * old, cur)
        return jnp.where(first, cur, kept)

    return Calibration(
        input_min=mix(calib.input_min, new.input_min, True),
        input_max=mix(calib.input_max, new.input_max, False),
        hidden_max=mix(calib.hidden_max, new.hidden_max, False),
        head_min=mix(calib.head_min, new.head_min, True),
        head_max=mix(calib.head_max, new.head_max, False),
        rollouts=new.rollouts,
    )


# --- integer kernels (int32 only) -----------------------------------------------------------


def _high_mul(x: Array, m: Array) -> Array:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul(x, m)`` for ``m`` in ``[0, 2**31)``, without int64.

    ``|x| * m`` is formed from 16-bit limbs in uint32 (partial products below ``2**32``), then
    ``(|x| m + 2**30 - [x < 0]) >> 31`` with the sign restored: C's truncating division of the
    nudged product. ``x = INT32_MIN`` cannot occur (accumulators are bounded far below).
    """
    neg = x < 0
    a = jnp.abs(x).astype(jnp.uint32)
    b = m.astype(jnp.uint32)
    a0, a1, b0, b1 = a & 0xFFFF, a >> 16, b & 0xFFFF, b >> 16
    lo, mid, hi = a0 * b0, a1 * b0 + a0 * b1, a1 * b1
    nudge = jnp.where(neg, jnp.uint32(2**30 - 1), jnp.uint32(2**30))
    lo2 = lo + nudge
    low = lo2 + (mid << 16)
    carry = (lo2 < lo).astype(jnp.uint32) + (low < lo2).astype(jnp.uint32)
    high = hi + (mid >> 16) + carry
    r = ((high << 1) | (low >> 31)).astype(jnp.int32)
    return jnp.where(neg, -r, r)


def _rounding_divide_by_pot(x: Array, e: Array) -> Array:
    """gemmlowp's ``RoundingDivideByPOT`` (``0 <= e <= 30``)."""
    mask = (jnp.left_shift(jnp.int32(1), e)) - 1
    threshold = (mask >> 1) + (x < 0).astype(jnp.int32)
    return (x >> e) + ((x & mask) > threshold).astype(jnp.int32)


def requantize(acc: Array, mult: Array, shift: Array, profile: str) -> Array:
    """int32 accumulators ``[..., out]`` times ``mult * 2**(shift - 31)`` (``tflite``) or ``2**shift`` (``pow2``)."""
    if profile == "tflite":
        left, right = jnp.maximum(shift, 0), jnp.maximum(-shift, 0)
        return _rounding_divide_by_pot(_high_mul(jnp.left_shift(acc, left), mult), right)
    r = jnp.clip(-shift, 1, 31)  # floor((acc + 2**(r-1)) / 2**r) = (acc >> r) + bit r-1 of acc: no int32 overflow
    down = jnp.where(-shift > 31, 0, (acc >> r) + ((acc >> (r - 1)) & 1))
    return jnp.where(shift >= 0, jnp.left_shift(acc, jnp.maximum(shift, 0)), down)


# --- quantise and apply ---------------------------------------------------------------------


def input_absmax(calib: Calibration) -> Array:
    """``[in]``: each input feature's calibrated ``max |u|``; the first layer's weights are
    quantised times it (the input's equalisation ``gain`` is its inverse)."""
    return jnp.maximum(jnp.maximum(-calib.input_min, calib.input_max), 1e-6)


def quantize_weights(w: Array, profile: str) -> tuple[Array, Array]:
    """A kernel ``[in, out]`` -> ``(int8 [in, out], scale [out])``, symmetric: per output channel
    (``tflite``) or one power of two for the tensor (``pow2``)."""
    w_absmax = jnp.max(jnp.abs(w), axis=0)
    if profile == "tflite":
        w_scale = round_scale(jnp.where(w_absmax > 0, w_absmax / 127.0, 1.0))  # an all-zero channel: scale 1
    else:
        top = jnp.max(w_absmax)
        w_scale = jnp.broadcast_to(pow2_up(jnp.where(top > 0, top / 127.0, 1.0)), w_absmax.shape)
    return jnp.clip(jnp.round(w / w_scale), -127, 127).astype(jnp.int8), w_scale


def quantize(layers: Sequence[tuple[Array, Array]], calib: Calibration, activation: str, profile: str = "tflite") -> QuantParams:
    """fp32 layers + calibration -> :class:`QuantParams` (run after every learner update)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown int8 profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if activation not in ("tanh", "relu"):
        raise ValueError(f"int8 actors run tanh or relu hidden layers, not {activation!r}")
    if max(w.shape[0] for w, _ in layers) > MAX_FAN_IN:
        raise ValueError(f"int8 layers support fan-in up to {MAX_FAN_IN} (int32 accumulator bound)")
    absmax = input_absmax(calib)
    gain = (1.0 / absmax).astype(jnp.float32)
    if profile == "tflite":
        in_scale, in_zero = asymmetric(jnp.min(calib.input_min * gain), jnp.max(calib.input_max * gain))
    else:  # |u| <= 1: 1/128 keeps every level but +1.0 itself (127/128)
        in_scale, in_zero = jnp.float32(2.0**-7), jnp.int32(0)
    f: dict[str, list] = {k: [] for k in Int8Model._fields[3:]}
    ratios = []  # each layer's requantisation scale, s_in * w_scale / out_scale, as (num, den)
    s_in, last = in_scale, len(layers) - 1
    for i, (w, b) in enumerate(layers):
        if i == 0:
            w = w * absmax[:, None]  # u = x * gain  =>  x @ w = u @ (w / gain)
        w_q, w_scale = quantize_weights(w, profile)
        b_q = jnp.clip(jnp.round(b / (s_in * w_scale)), -BIAS_LIMIT, BIAS_LIMIT).astype(jnp.int32)
        if i < last and activation == "tanh":  # a power of two in TANH_IN_SCALES covering the range
            s = pow2_up(jnp.maximum(calib.hidden_max[i], 1e-6) / 127.0)
            out_scale = jnp.clip(s, intmath.TANH_IN_SCALES[-1], intmath.TANH_IN_SCALES[0]).astype(jnp.float32)
            out_zero, lo, hi = jnp.int32(0), -128, 127
        elif i < last:  # relu: the FC's clamp at the zero point
            r = jnp.maximum(calib.hidden_max[i], 1e-6)
            if profile == "tflite":
                out_scale, out_zero, lo, hi = round_scale(r / 255.0), jnp.int32(-128), -128, 127
            else:
                out_scale, out_zero, lo, hi = pow2_up(r / 127.0), jnp.int32(0), 0, 127
        elif profile == "tflite":
            (out_scale, out_zero), lo, hi = asymmetric(calib.head_min, calib.head_max), -128, 127
        else:
            out_scale = pow2_up(jnp.maximum(jnp.maximum(-calib.head_min, calib.head_max), 1e-6) / 127.0)
            out_zero, lo, hi = jnp.int32(0), -128, 127
        ratios.append((s_in * w_scale, jnp.broadcast_to(out_scale, w_scale.shape)))
        for k, v in zip(("w_q", "b_q", "w_scale", "out_scale", "out_zero", "act_min", "act_max"), (w_q, b_q, w_scale, out_scale, out_zero, jnp.int32(lo), jnp.int32(hi))):
            f[k].append(v)
        s_in = jnp.float32(intmath.TANH_OUT_SCALE) if activation == "tanh" else out_scale
    f["mult"], f["shift"] = multipliers(ratios, profile)
    model = Int8Model(gain, in_scale.astype(jnp.float32), in_zero, **{k: tuple(v) for k, v in f.items()})
    return QuantParams(model=model, activation=activation, profile=profile)


def quantize_input(u: Array, scale: Array, zero: Array) -> Array:
    """QUANTIZE: float32 ``[..., in]`` -> int8 values as int32, ``clamp(round_half_away(u / s) + z)``."""
    v = u / scale
    v = jnp.where(jnp.isnan(v), -256.0, jnp.clip(v, -256.0, 256.0))  # as intmath.quantize: NaN and far-out values defined
    return jnp.clip(round_half_away(v).astype(jnp.int32) + zero, -128, 127)


def int8_dot(x_q: Array, w: Array) -> Array:
    """``sum_k x[..., k] w[k, :]``: int8 values ``[..., K]`` (int32) times int8 weights ``[K, out]``,
    exactly, as int32 ``[..., out]``.

    Small products (fewer than :data:`F32_DOT_MAX_MACS` multiply-adds, fan-in up to
    :data:`EXACT_F32_FAN_IN`) go through an fp32 dot of the same integers: every partial sum
    is an integer below ``K * 128 * 127 < 2**24``, which float32 holds exactly in any order
    (``Precision.HIGHEST``: no TF32 / bf16 passes on GPU or TPU), so the result is the integer
    one, bit for bit. There XLA's CPU ``int8 x int8 -> int32`` ``dot_general`` (YNNPACK) is
    the slower: one more kernel per layer, which acting-sized batches feel (Sapphire Rapids,
    int8 / fp32 dot time of a 4-w-w-2 tanh head: w = 64, batch 4 1.73, batch 64 0.91; w = 512,
    batch 1 1.18, batch 64 0.36; a 128-step rollout of 4 CartPoles 928 against 741 us).
    """
    dims = (((x_q.ndim - 1,), (0,)), ((), ()))
    macs = int(np.prod(x_q.shape)) * w.shape[1]
    if w.shape[0] <= EXACT_F32_FAN_IN and macs < F32_DOT_MAX_MACS:
        acc = jax.lax.dot_general(x_q.astype(jnp.float32), w.astype(jnp.float32), dims, precision=jax.lax.Precision.HIGHEST)
        return acc.astype(jnp.int32)
    return jax.lax.dot_general(x_q.astype(jnp.int8), w, dims, preferred_element_type=jnp.int32)


def dense(x_q: Array, qp: QuantParams, i: int) -> Array:
    """Layer ``i``'s FULLY_CONNECTED (and TANH): int8 values ``[..., in]`` (int32) -> ``[..., out]`` (int32)."""
    m = qp.model
    z_in = m.in_zero if i == 0 else (jnp.int32(0) if qp.activation == "tanh" else m.out_zero[i - 1])
    w = m.w_q[i]
    bias = m.b_q[i] - z_in * jnp.sum(w.astype(jnp.int32), axis=0)  # sum w (x - z) + b = sum w x + (b - z sum w): one add per step
    acc = int8_dot(x_q, w) + bias
    y = jnp.clip(requantize(acc, m.mult[i], m.shift[i], qp.profile) + m.out_zero[i], m.act_min[i], m.act_max[i])
    if qp.activation == "tanh" and i < len(m.w_q) - 1:
        y = _tanh(y, m.out_scale[i])
    return y


def _tanh(y: Array, in_scale: Array) -> Array:
    """TANH of int8 values ``y`` (int32, in ``[-128, 127]``: ``dense`` clamps them first) at a
    ``TANH_IN_SCALES`` input scale: TFLite's int8 TANH (gemmlowp's fixed point, the tables of
    ``intmath.TANH_TABLES``), computed as ``round(128 tanh(y s))`` clamped to int8.

    The same integers as the table, entry for entry: ``y s`` is exact (``s`` a power of two),
    and of the 768 entries ``128 tanh(y s)`` comes no nearer than 0.0026 to a rounding tie, so
    any float32 ``tanh`` within ``2e-5`` of the true value rounds the same way (XLA's was
    within 3.2e-7 on CPUs and an H200; ``tests/test_quant.py`` compares every entry on the
    running backend). A lookup (gather) kept XLA's CPU from vectorising the layer's fused
    output stage: on an AVX2 EPYC a CartPole update with int8 actors took 3.7-3.9 ms instead
    of 4.0-4.6 (fp32 actors 3.4-3.8).
    """
    v = jnp.tanh(y.astype(jnp.float32) * in_scale) * 128.0
    return jnp.clip(jnp.round(v), -128, 127).astype(jnp.int32)


def tanh_table(in_scale: Array) -> Array:
    """TANH's 256 int8 outputs ``[256]`` (int32) for a ``TANH_IN_SCALES`` input scale (the
    threshold search of ``rlaccel.quant_tables`` starts from it; acting computes ``_tanh``)."""
    row = -significand(in_scale)[1] - 4  # 2**-k has frexp exponent 1 - k; TANH_IN_SCALES[0] = 2**-5
    return jnp.asarray(TANH_LUTS)[row]


def apply(qp: QuantParams, x: Array) -> Array:
    """The int8 forward pass: normalised observations ``[..., in]`` -> dequantised head ``[..., out]``."""
    return features(qp, x)[1]


def latent_scale(qp: QuantParams) -> tuple[Array, Array]:
    """``(scale, zero)`` of the last hidden layer's int8 output: TANH's ``1/128, 0``, or the
    ReLU layer's own output quantisation."""
    m = qp.model
    if qp.activation == "tanh":
        return jnp.float32(intmath.TANH_OUT_SCALE), jnp.int32(0)
    return m.out_scale[-2], m.out_zero[-2]


def features(qp: QuantParams, x: Array) -> tuple[Array, Array]:
    """The int8 forward pass with its latent features: normalised observations ``[..., in]`` ->
    ``(latent [..., h], head [..., out])``, the last hidden layer's int8 output and the head,
    each dequantised in float32 (``(q - zero) * scale``; gSDE's noise reads the latent)."""
    m = qp.model
    y = quantize_input(x * m.gain, m.in_scale, m.in_zero)
    for i in range(len(m.w_q) - 1):
        y = dense(y, qp, i)
    s, z = latent_scale(qp)
    latent = (y - z).astype(jnp.float32) * s
    y = dense(y, qp, len(m.w_q) - 1)
    return latent, m.out_scale[-1] * (y - m.out_zero[-1]).astype(jnp.float32)


def weight_rel_error(layers: Sequence[tuple[Array, Array]], qp: QuantParams) -> Array:
    """Mean over layers of ``||W_deq - W|| / ||W||`` (first layer compared in equalised units)."""
    m = qp.model
    errors = []
    for i, (w, _) in enumerate(layers):
        if i == 0:
            w = w / m.gain[:, None]
        w_deq = m.w_q[i].astype(jnp.float32) * m.w_scale[i]
        errors.append(jnp.linalg.norm(w_deq - w) / jnp.maximum(jnp.linalg.norm(w), 1e-12))
    return jnp.mean(jnp.stack(errors))

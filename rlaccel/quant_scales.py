"""The scales of the int8 model in JAX, on float32 bits and in int32 (``rlaccel.quant`` uses
them): scales rounded to ``intmath.SCALE_BITS`` significant bits or up to a power of two,
TFLite's asymmetric ``(scale, zero point)``, and each layer's requantisation multiplier and
shift (TFLite's ``QuantizeMultiplier`` by an exact int32 long division). Bit for bit what the
numpy specification (``rlaccel.intmath``) computes with ``frexp`` / ``ldexp`` and float64
(``tests/test_quant.py``); on the bits, XLA compiles and runs them with fewer operations.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlaccel import intmath

Array = jax.Array

__all__ = ["asymmetric", "multipliers", "pow2_up", "quantize_multiplier", "round_half_away", "round_scale", "significand"]


_DROPPED = (1 << (24 - intmath.SCALE_BITS)) - 1  # float32 mantissa bits below SCALE_BITS significant ones
_EXPONENT, _ONE_ULP_OF_EXPONENT, _MANTISSA = 0x7F800000, 0x00800000, 0x007FFFFF


def round_scale(s: Array) -> Array:
    """``intmath.round_scale``: up to ``SCALE_BITS`` significant bits, rounded up (positive
    normal float32), on the bits: the dropped mantissa bits carried up and cleared (a carry
    out of the mantissa is the next power of two, as ``ldexp(ceil(m * 2**B) / 2**B, e)``).
    ``frexp`` / ``ldexp`` took ~35 us per 256-wide scale vector on XLA's CPU backend."""
    bits = jax.lax.bitcast_convert_type(s.astype(jnp.float32), jnp.int32)
    return jax.lax.bitcast_convert_type((bits + _DROPPED) & ~_DROPPED, jnp.float32)


def pow2_up(s: Array) -> Array:
    """The smallest power of two ``>= s`` (positive normal float32), on the bits."""
    bits = jax.lax.bitcast_convert_type(s.astype(jnp.float32), jnp.int32)
    exponent = bits & _EXPONENT
    return jax.lax.bitcast_convert_type(jnp.where(bits & _MANTISSA == 0, exponent, exponent + _ONE_ULP_OF_EXPONENT), jnp.float32)


def round_half_away(x: Array) -> Array:
    """``std::round`` on float32 (``jnp.round`` rounds halves to even)."""
    t = jnp.trunc(x)
    return t + jnp.sign(x) * (jnp.abs(x - t) >= 0.5)


def asymmetric(lo: Array, hi: Array, levels: int = 255) -> tuple[Array, Array]:
    """TFLite's asymmetric int8 ``(scale, zero point)`` covering ``[min(lo, 0), max(hi, 0)]``."""
    lo, hi = jnp.minimum(lo, 0.0), jnp.maximum(hi, 0.0)
    scale = round_scale(jnp.maximum((hi - lo) / levels, 1e-8))
    zero = jnp.clip(round_half_away(-128.0 - lo / scale), -128, 127).astype(jnp.int32)
    return scale, zero


def significand(x: Array) -> tuple[Array, Array]:
    """``frexp`` of positive normal float32 ``x`` on its bits: ``(m * 2**24, e)`` as int32,
    ``x = m * 2**e``, ``m`` in ``[0.5, 1)`` (fewer operations than ``jnp.frexp``'s)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return (bits & _MANTISSA) | _ONE_ULP_OF_EXPONENT, ((bits >> 23) & 0xFF) - 126


def quantize_multiplier(num: Array, den: Array) -> tuple[Array, Array]:
    """TFLite's ``QuantizeMultiplier(num / den)`` in int32 arithmetic: ``(M [..], shift [..])``.

    TFLite computes ``double(num) / double(den)``, takes ``frexp`` and rounds the mantissa to 31
    bits, half away from zero. With ``num`` = a product of two ``SCALE_BITS``-bit scales (exact
    in float32) and ``den`` a ``SCALE_BITS``-bit scale, that is the correctly rounded quotient
    of two integers below ``2**25``, which a 32-step long division gives exactly (the float64
    quotient's own rounding cannot reach a rounding boundary: it errs by ``2**-22`` units,
    boundaries are ``>= 2**-14`` away unless hit exactly).
    """
    a, en = significand(num)
    b, ed = significand(jnp.broadcast_to(den, num.shape))
    ge = a >= b
    d = jnp.where(ge, 2 * b, b)  # a / d in [0.5, 1)
    shift = en - ed + ge.astype(jnp.int32)

    def step(_: Array, carry: tuple[Array, Array]) -> tuple[Array, Array]:
        rem, q = carry
        rem = rem * 2
        bit = rem >= d
        return jnp.where(bit, rem - d, rem), q * 2 + bit.astype(jnp.int32)

    # q = floor(a * 2**31 / d) in [2**30, 2**31). A rolled loop: unrolled, its 31 steps were
    # ~375 more operations for XLA to compile (~0.25 s in a PPO CartPole int8 chunk) to save
    # ~6 us per quantisation.
    rem, q = jax.lax.fori_loop(0, 31, step, (a, jnp.zeros_like(a)))
    up = (rem * 2 >= d).astype(jnp.int32)  # the next bit: round half up (away from zero)
    top = (q == 2**31 - 1) & (up == 1)
    m, shift = jnp.where(top, 2**30, q + up), jnp.where(top, shift + 1, shift)
    tiny = shift < -31  # TFLite flushes multipliers below 2**-32 to (0, 0)
    return jnp.where(tiny, 0, m), jnp.where(tiny, 0, shift)


def multipliers(ratios: Sequence[tuple[Array, Array]], profile: str) -> tuple[list[Array], list[Array]]:
    """Every layer's requantisation ``(mult, shift)`` ``[out]`` from its ``(num, den)`` ``[out]``:
    ``quantize_multiplier`` (``tflite``) or the power of two's exponent (``pow2``), over all
    layers' channels at once (one long division instead of one per layer: unrolled, that was
    ~845 operations fewer in a PPO CartPole int8 chunk, compiled ~0.2 s sooner)."""
    num = jnp.concatenate([n for n, _ in ratios])
    den = jnp.concatenate([d for _, d in ratios])
    if profile == "tflite":
        mult, shift = quantize_multiplier(num, den)
    else:  # every scale a power of two: the ratio's exponent
        mult, shift = jnp.zeros(num.shape, jnp.int32), significand(num / den)[1] - 1
    splits = np.cumsum([n.shape[0] for n, _ in ratios])[:-1]
    return jnp.split(mult, splits), jnp.split(shift, splits)

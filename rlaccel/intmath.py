"""TFLite Micro's integer arithmetic in numpy: the one definition every int8 path follows.

numpy only. Each function is a line-for-line port of the kernel it names (TensorFlow Lite's
``kernels/internal/common.h``, ``quantization_util.cc``, ``reference/integer_ops/*.h`` and
gemmlowp's ``fixedpoint/fixedpoint.h``, the code TFLite Micro's reference kernels run),
vectorised over int64 arrays that hold int32 values. ``rlaccel.quant`` computes the same
integers in JAX (int32 only), ``rlaccel.reference`` builds the fast numpy actors on them, and the
TFLite / C / ONNX exports describe them; ``tests/test_int8_profiles.py`` checks them against TFLite
Micro's own interpreter.

Profiles (``placement.actor.int8_profile``):

* ``tflite``: TFLite's int8 scheme. Per-output-channel symmetric int8 weights, int32 bias at
  ``s_in * s_w``, asymmetric int8 activations, requantisation by an int32 fixed-point
  multiplier and shift (:func:`multiply_by_quantized_multiplier`, double rounding as TFLite Micro
  builds by default), TANH int8 -> int8 at the spec's fixed output scale 1/128 (gemmlowp's
  fixed-point tanh, tabulated: 256 inputs per input scale, :data:`TANH_TABLES`), ReLU as a clamp.
* ``pow2``: per-tensor symmetric power-of-two scales, requantisation by a rounding shift only
  (:func:`shift_round`), the constraint of fixed-point NPUs such as Vitis AI's DPU.

Every scale is rounded up to :data:`SCALE_BITS` significant bits (``round_scale``): then
``s_in * s_w`` is exact in float32 and the multiplier TFLite derives in float64 from the
float32 scales of a ``.tflite`` file is the one ``rlaccel.quant`` derives with int32 long
division (no float64 on accelerators).
"""

from __future__ import annotations

import numpy as np

__all__ = ["INT8_MAX", "INT8_MIN", "PROFILES", "SCALE_BITS", "TANH_IN_SCALES", "TANH_OUT_SCALE", "TANH_TABLES"]
__all__ += ["multiply_by_quantized_multiplier", "quantize", "quantize_multiplier", "round_half_away", "round_scale"]
__all__ += ["rounding_divide_by_pot", "saturating_rounding_doubling_high_mul", "shift_round", "tanh_index", "tanh_table"]

PROFILES = ("tflite", "pow2")
INT8_MIN, INT8_MAX = -128, 127
SCALE_BITS = 12  # significant bits of every scale (module docstring)
TANH_IN_SCALES = (2.0**-5, 2.0**-6, 2.0**-7)
"""TANH's input scales (the FC's output before it), chosen per layer by calibration: 2**-5 (+-4,
tanh's whole int8 range: tanh(3.9) * 128 > 127.5), 2**-6 or 2**-7 (+-1). Not finer: below the
output's 1/128 an input level moves the output by half a level, and gemmlowp's tanh rounds
``tanh(2**-8) * 128 = 0.4999975`` up where every float tanh rounds it down, so QDQ runtimes
(onnxruntime, OpenVINO) disagreed with TFLite on 10 % of a trained policy's hidden units."""
TANH_OUT_SCALE = 2.0**-7  # the TFLite spec's fixed output scale for int8 TANH (zero point 0)

_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1


def _wrap32(x: np.ndarray) -> np.ndarray:
    """int64 holding any integer -> the int32 two's-complement value (C's wrap-around)."""
    return ((np.asarray(x, np.int64) + 2**31) % 2**32) - 2**31


def round_half_away(x: np.ndarray) -> np.ndarray:
    """``std::round`` (TfLiteRound): nearest integer, halves away from zero (float in, int64 out)."""
    x = np.asarray(x)
    t = np.trunc(x)
    return (t + np.sign(x) * (np.abs(x - t) >= 0.5)).astype(np.int64)


def round_scale(s: np.ndarray) -> np.ndarray:
    """A positive float32 scale rounded up to :data:`SCALE_BITS` significant bits (float32)."""
    m, e = np.frexp(np.asarray(s, np.float32))
    return np.ldexp(np.ceil(m * np.float32(2**SCALE_BITS)) / np.float32(2**SCALE_BITS), e).astype(np.float32)


def quantize(u: np.ndarray, scale: float, zero: int) -> np.ndarray:
    """TFLite's QUANTIZE (``reference_ops::AffineQuantize``): float32 ``[...]`` -> int8 values (int64).

    ``clamp(round_half_away(u / scale) + zero, -128, 127)`` with the division in float32. The
    quotient is first clipped to ``[-256, 256]`` (NaN counts as -256), which changes no finite
    in-range result and defines what C leaves undefined (NaN, infinities, ``|u / s| >= 2**31``).
    """
    v = np.asarray(u, np.float32) / np.float32(scale)
    v = np.where(np.isnan(v), np.float32(-256), np.clip(v, -256, 256))
    q = round_half_away(v) + int(zero)
    return np.clip(q, INT8_MIN, INT8_MAX)


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul`` (ARM's VQRDMULH) on int32 values."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    s = ab + nudge
    high = np.where(s >= 0, s >> 31, -((-s) >> 31))  # C's division truncates toward zero
    return np.where((a == b) & (a == _I32_MIN), _I32_MAX, high)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2**exponent``, nearest, halves away from zero."""
    x, exponent = np.asarray(x, np.int64), np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier(x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """TFLite's ``MultiplyByQuantizedMultiplier`` (double rounding): ``x * M * 2**(shift - 31)``."""
    shift = np.asarray(shift, np.int64)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(_wrap32(np.asarray(x, np.int64) << left), multiplier), right)


def quantize_multiplier(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TFLite's ``QuantizeMultiplier``: float64 ``real [...]`` -> ``(M int64, shift int64)``,
    ``real ~= M * 2**(shift - 31)`` with ``M`` in ``[2**30, 2**31)`` (0, 0 for 0)."""
    q, shift = np.frexp(np.asarray(real, np.float64))
    m = round_half_away(q * float(1 << 31))
    top = m == (1 << 31)
    m, shift = np.where(top, m // 2, m), np.where(top, shift + 1, shift).astype(np.int64)
    tiny = shift < -31
    return np.where(tiny, 0, m), np.where(tiny, 0, shift)


def shift_round(x: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The ``pow2`` profile's requantisation ``x * 2**shift``: a rounding right shift (halves up,
    ``(x + 2**(r - 1)) >> r`` for ``r = -shift > 0``) or an int32 left shift (wrapping, as in C)."""
    x, shift = np.asarray(x, np.int64), np.asarray(shift, np.int64)
    r = np.maximum(-shift, 0)
    half = np.where(r > 0, np.int64(1) << np.maximum(r - 1, 0), 0)
    return np.where(shift >= 0, _wrap32(x << np.maximum(shift, 0)), (x + half) >> r)  # int32: a left shift wraps


# --- gemmlowp's fixed-point tanh, int32 raw values held in int64 -----------------------------

_srdhm = saturating_rounding_doubling_high_mul


def _sat_shift_left(x: np.ndarray, e: int) -> np.ndarray:
    """``SaturatingRoundingMultiplyByPOT<e>`` for ``e > 0`` (saturating left shift)."""
    threshold = (1 << (31 - e)) - 1
    return np.where(x > threshold, _I32_MAX, np.where(x < -threshold, _I32_MIN, x << e))


def _exp_on_interval(a: np.ndarray) -> np.ndarray:
    """``exp_on_interval_between_negative_one_quarter_and_0_excl`` (F0 -> F0)."""
    constant_term, one_third = 1895147668, 715827883
    x = _wrap32(a + (1 << 28))
    x2 = _srdhm(x, x)
    x3 = _srdhm(x2, x)
    x4 = _srdhm(x2, x2)
    x4_over_4 = rounding_divide_by_pot(x4, 2)
    poly = rounding_divide_by_pot(_wrap32(_srdhm(_wrap32(x4_over_4 + x3), one_third) + x2), 1)
    return _wrap32(constant_term + _srdhm(constant_term, _wrap32(x + poly)))


def _exp_on_negative_values(a: np.ndarray, integer_bits: int) -> np.ndarray:
    """``exp_on_negative_values`` (F``integer_bits`` -> F0), for ``integer_bits <= 5``."""
    frac = 31 - integer_bits
    quarter = 1 << (frac - 2)
    a_mod = _wrap32((a & (quarter - 1)) - quarter)
    result = _exp_on_interval(_sat_shift_left(a_mod, integer_bits))
    remainder = _wrap32(a_mod - a)
    for exponent, multiplier in ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535), (3, 720401), (4, 242)):
        if integer_bits > exponent:
            bit = (remainder & (1 << (frac + exponent))) != 0
            result = np.where(bit, _srdhm(result, multiplier), result)
    return np.where(a == 0, _I32_MAX, result)


def _one_minus_x_over_one_plus_x(a: np.ndarray) -> np.ndarray:
    """``one_minus_x_over_one_plus_x_for_x_in_0_1`` (F0 -> F0), Newton-Raphson division."""
    total = a + _I32_MAX
    half_denominator = np.where(total >= 0, (total + 1) // 2, -((-total + 1) // 2))  # RoundingHalfSum
    x = _wrap32(1515870810 + _srdhm(half_denominator, -1010580540))
    one_f2 = 1 << 29
    for _ in range(3):
        x = _wrap32(x + _sat_shift_left(_srdhm(x, _wrap32(one_f2 - _srdhm(half_denominator, x))), 2))
    return _sat_shift_left(_wrap32(x - one_f2), 2)


def _gemmlowp_tanh(a: np.ndarray, integer_bits: int) -> np.ndarray:
    """gemmlowp's ``tanh`` (F``integer_bits`` -> F0 raw values)."""
    negative = a < 0
    n = np.where(negative, a, _wrap32(-a))
    t = _one_minus_x_over_one_plus_x(_exp_on_negative_values(n, integer_bits + 1))
    return np.where(a == 0, 0, np.where(negative, _wrap32(-t), t))


def tanh_table(input_scale: float, input_zero: int = 0) -> np.ndarray:
    """TFLite Micro's int8 TANH for one input quantisation, for all 256 inputs.

    ``Prepare`` (``micro/kernels/tanh.cc``) and ``reference_integer_ops::Tanh``: the input is
    rescaled to gemmlowp's Q4.27, ``gemmlowp::tanh`` gives Q0.31, rounded to the output scale
    1/128 (zero point 0) and clamped.

    Returns:
      int8 ``[256]``: entry ``k`` is TANH of the int8 input ``k - 128``.
    """
    input_bits = 4
    q, left_shift = np.frexp(np.float64(input_scale) * float(1 << (31 - input_bits)))
    multiplier = int(round_half_away(np.float64(q) * float(1 << 31)))
    radius = int(np.floor(1.0 * ((1 << input_bits) - 1) * (1 << (31 - input_bits)) / (1 << int(left_shift))))
    x = np.arange(INT8_MIN, INT8_MAX + 1, dtype=np.int64) - int(input_zero)
    inner = np.clip(x, -radius + 1, radius - 1)  # the saturated ends are overwritten below
    q4 = multiply_by_quantized_multiplier(inner, multiplier, int(left_shift))
    out = np.clip(rounding_divide_by_pot(_gemmlowp_tanh(q4, input_bits), 31 - 7), INT8_MIN, INT8_MAX)
    out = np.where(x <= -radius, INT8_MIN, np.where(x >= radius, INT8_MAX, out))
    return out.astype(np.int8)


TANH_TABLES = np.stack([tanh_table(s) for s in TANH_IN_SCALES])
"""int8 ``[len(TANH_IN_SCALES), 256]``: TANH at each input scale of :data:`TANH_IN_SCALES` (zero point 0)."""


def tanh_index(scale: float) -> int:
    """The row of :data:`TANH_TABLES` for a TANH input ``scale`` (one of :data:`TANH_IN_SCALES`)."""
    k = TANH_IN_SCALES.index(float(scale)) if float(scale) in TANH_IN_SCALES else -1
    if k < 0:
        raise ValueError(f"TANH input scale {scale!r} is not one of intmath.TANH_IN_SCALES")
    return k

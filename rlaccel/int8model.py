"""An int8 policy as integers and scales, and its forward pass in plain integer arithmetic.

numpy only. :class:`Int8Model` is what the training code's quantiser (``rlaccel.quant``, JAX)
produces after every learner update and what every consumer reads: the numpy actors
(``rlaccel.reference``), the exports (``rlaccel.deploy``: TFLite flatbuffer, C, ONNX QDQ).
:func:`head` is the specification they all reproduce bit for bit, written the way TFLite Micro's
reference kernels compute (``rlaccel.intmath``), one op at a time:

1. **Float preprocessing** (outside the integer model): ``u = clip((obs - mean) * inv_std, -c, c)
   * gain`` in float32, in that order. ``mean``, ``inv_std`` are the observation normaliser
   (``0`` and ``1`` without one; no clip then), ``gain [in]`` the calibrated per-feature
   equalisation (``1 / max|u_i|``) that gives every feature the whole int8 range; the first
   layer's fp32 weights are multiplied by ``1 / gain`` before they are quantised.
2. **QUANTIZE** ``u`` with one scale and zero point (:func:`rlaccel.intmath.quantize`).
3. **FULLY_CONNECTED** per layer ``i``: ``acc = sum_k w_q[k, j] * (x_q[k] - z_in) + b_q[j]`` in
   int32, requantised to the layer's int8 output (``tflite``: multiplier and shift; ``pow2``:
   a rounding shift), plus ``out_zero[i]``, clamped to ``[act_min[i], act_max[i]]`` (ReLU is
   this clamp).
4. **TANH** after a hidden layer when the activation is tanh: a 256-entry table of
   :data:`rlaccel.intmath.TANH_TABLES`, the one for the layer's output scale (a calibrated power
   of two, ``intmath.TANH_IN_SCALES``); output scale 1/128, zero points 0.
5. **DEQUANTIZE** the last layer's int8 output: ``(q - out_zero) * out_scale`` in float32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from rlaccel import intmath

__all__ = ["ACTIVATIONS", "Int8Model", "Int8Payload", "hidden_input_zero", "head", "int8_hidden", "preprocess", "requantize"]

ACTIVATIONS = ("tanh", "relu")  # hidden activations with an integer kernel in both profiles


class Int8Model(NamedTuple):
    """An int8 MLP (a pytree of arrays: JAX makes it, numpy and the exporters read it).

    ``L`` layers; ``tflite`` and ``pow2`` profiles share the fields (module docstring for the
    arithmetic). Scales are float32 with at most ``intmath.SCALE_BITS`` significant bits.

    Attributes:
      gain: ``[in]`` float32, per-feature equalisation applied in float before QUANTIZE.
      in_scale, in_zero: ``[]`` float32 / int32, QUANTIZE's scale and zero point.
      w_q: per layer, int8 ``[in, out]`` weights (zero point 0).
      b_q: per layer, int32 ``[out]`` bias at scale ``s_in * w_scale``.
      w_scale: per layer, float32 ``[out]`` weight scales (``pow2``: one value repeated).
      mult: per layer, int32 ``[out]``: ``tflite``'s quantized multiplier (``pow2``: 0).
      shift: per layer, int32 ``[out]``: requantisation exponent, ``s_in * w_scale / out_scale
        = mult * 2**(shift - 31)`` (``tflite``) or ``= 2**shift`` (``pow2``).
      out_scale, out_zero: per layer, ``[]`` float32 / int32, the layer's int8 output.
      act_min, act_max: per layer, ``[]`` int32, the output clamp (ReLU: ``act_min = out_zero``).
    """

    gain: Any
    in_scale: Any
    in_zero: Any
    w_q: tuple[Any, ...]
    b_q: tuple[Any, ...]
    w_scale: tuple[Any, ...]
    mult: tuple[Any, ...]
    shift: tuple[Any, ...]
    out_scale: tuple[Any, ...]
    out_zero: tuple[Any, ...]
    act_min: tuple[Any, ...]
    act_max: tuple[Any, ...]


class Int8Payload(NamedTuple):
    """An int8 policy as numpy actors receive it without threshold tables: the ``Int8Model`` and
    how to run it. Ray actor processes tabulate it (``rlaccel.sources.host.ray_pool.unpack``);
    ``actors.policy: c`` runs it through the compiled kernel (``rlaccel.deploy.c_kernel``)."""

    model: Any
    activation: str
    profile: str


def preprocess(obs: np.ndarray, gain: np.ndarray, mean: Any = None, inv_std: Any = None, clip: float | None = None) -> np.ndarray:
    """Step 1, float32 ``[..., in] -> [..., in]``: ``clip((obs - mean) * inv_std) * gain``."""
    u = np.asarray(obs, np.float32)
    if mean is not None:
        u = (u - np.asarray(mean, np.float32)) * np.asarray(inv_std, np.float32)
        c = np.float32(clip)
        u = np.minimum(np.maximum(u, -c), c)
    return (u * np.asarray(gain, np.float32)).astype(np.float32)


def requantize(acc: np.ndarray, model: Int8Model, i: int, profile: str) -> np.ndarray:
    """Step 3's output stage of layer ``i``: int32 accumulator ``[..., out]`` -> int8 values (int64)."""
    if profile == "tflite":
        scaled = intmath.multiply_by_quantized_multiplier(acc, np.asarray(model.mult[i], np.int64), np.asarray(model.shift[i], np.int64))
    else:
        scaled = intmath.shift_round(acc, np.asarray(model.shift[i], np.int64))
    return np.clip(scaled + int(model.out_zero[i]), int(model.act_min[i]), int(model.act_max[i]))


def hidden_input_zero(model: Int8Model, i: int, activation: str) -> int:
    """The zero point of layer ``i``'s int8 input (QUANTIZE's, TANH's 0, or the previous layer's)."""
    if i == 0:
        return int(model.in_zero)
    return 0 if activation == "tanh" else int(model.out_zero[i - 1])


def int8_hidden(x_q: np.ndarray, model: Int8Model, i: int, profile: str, activation: str) -> np.ndarray:
    """Layer ``i`` (FULLY_CONNECTED, then TANH for a tanh hidden layer): int8 values ``[..., in]`` -> ``[..., out]`` (int64)."""
    z_in = hidden_input_zero(model, i, activation)
    acc = (np.asarray(x_q, np.int64) - z_in) @ np.asarray(model.w_q[i], np.int64) + np.asarray(model.b_q[i], np.int64)
    y = requantize(acc, model, i, profile)
    if activation == "tanh" and i < len(model.w_q) - 1:
        y = intmath.TANH_TABLES[intmath.tanh_index(model.out_scale[i])].astype(np.int64)[y + 128]
    return y


def head(model: Int8Model, u: np.ndarray, profile: str, activation: str) -> np.ndarray:
    """Steps 2-5: preprocessed observations float32 ``[..., in]`` -> dequantised head float32 ``[..., out]``."""
    x = intmath.quantize(u, float(model.in_scale), int(model.in_zero))
    for i in range(len(model.w_q)):
        x = int8_hidden(x, model, i, profile, activation)
    return (np.float32(model.out_scale[-1]) * (x - int(model.out_zero[-1])).astype(np.float32)).astype(np.float32)

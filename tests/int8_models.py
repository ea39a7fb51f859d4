"""Random int8 models built in numpy only (no JAX): fixtures for the export and runtime tests.

``random_model`` quantises a random fp32 MLP the way ``rlaccel.quant.quantize`` does (scales
rounded to ``intmath.SCALE_BITS`` bits, multipliers from ``intmath.quantize_multiplier``), with
ranges taken from the float forward pass on ``calib`` inputs, so the integers exercise the
whole int8 range. The training code's own quantiser is tested against this in
``tests/test_quant.py``.
"""

from __future__ import annotations

import numpy as np

from rlaccel import intmath
from rlaccel.int8model import Int8Model


def _pow2_up(x: np.ndarray) -> np.ndarray:
    return np.exp2(np.ceil(np.log2(np.maximum(np.asarray(x, np.float64), 1e-30)))).astype(np.float32)


def random_model(dims: list[int], profile: str = "tflite", activation: str = "tanh", seed: int = 0, calib: np.ndarray | None = None) -> tuple[Int8Model, np.ndarray]:
    """``(Int8Model, preprocessed inputs u [4096, dims[0]])`` for an MLP ``dims[0] -> ... -> dims[-1]``."""
    rng = np.random.default_rng(seed)
    layers = [(rng.normal(0, 1.5 / np.sqrt(a), (a, b)).astype(np.float32), rng.normal(0, 0.3, b).astype(np.float32)) for a, b in zip(dims[:-1], dims[1:])]
    u = calib if calib is not None else rng.uniform(-1.0, 1.0, (4096, dims[0])).astype(np.float32)
    gain = np.ones(dims[0], np.float32)
    L = len(layers)
    if profile == "tflite":
        lo, hi = min(float(u.min()), 0.0), max(float(u.max()), 0.0)
        in_scale = intmath.round_scale(np.float32((hi - lo) / 255.0))
        in_zero = int(np.clip(intmath.round_half_away(np.float64(-128 - lo / in_scale)), -128, 127))
    else:
        in_scale, in_zero = _pow2_up(np.abs(u).max() / 127.0), 0
    fields: dict[str, list] = {k: [] for k in ("w_q", "b_q", "w_scale", "mult", "shift", "out_scale", "out_zero", "act_min", "act_max")}
    h, s_in = u.astype(np.float64), np.float32(in_scale)
    for i, (w, b) in enumerate(layers):
        pre = h @ w + b
        last = i == L - 1
        if profile == "tflite":
            w_scale = intmath.round_scale(np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0)
        else:
            w_scale = np.full(w.shape[1], _pow2_up(np.abs(w).max() / 127.0), np.float32)
        w_q = np.clip(intmath.round_half_away(w / w_scale), -127, 127).astype(np.int8)
        b_q = intmath.round_half_away(b / (s_in * w_scale)).astype(np.int32)
        if not last and activation == "tanh":
            s = _pow2_up(np.abs(pre).max() / 127.0)
            out_scale, out_zero, lo_q, hi_q = np.float32(np.clip(s, intmath.TANH_IN_SCALES[-1], intmath.TANH_IN_SCALES[0])), 0, -128, 127
            h = np.tanh(pre)
        elif not last:  # relu
            r = max(float(np.maximum(pre, 0).max()), 1e-6)
            if profile == "tflite":
                out_scale, out_zero, lo_q, hi_q = intmath.round_scale(np.float32(r / 255.0)), -128, -128, 127
            else:
                out_scale, out_zero, lo_q, hi_q = _pow2_up(r / 127.0), 0, 0, 127
            h = np.maximum(pre, 0)
        else:
            lo, hi = min(float(pre.min()), 0.0), max(float(pre.max()), 0.0)
            if profile == "tflite":
                out_scale = intmath.round_scale(np.float32((hi - lo) / 255.0))
                out_zero = int(np.clip(intmath.round_half_away(np.float64(-128 - lo / out_scale)), -128, 127))
            else:
                out_scale, out_zero = _pow2_up(max(-lo, hi) / 127.0), 0
            lo_q, hi_q = -128, 127
        if profile == "tflite":
            mult, shift = intmath.quantize_multiplier(np.float64(s_in) * w_scale.astype(np.float64) / np.float64(out_scale))
        else:
            mult = np.zeros(w.shape[1], np.int64)
            shift = np.round(np.log2(np.float64(s_in) * w_scale.astype(np.float64) / np.float64(out_scale))).astype(np.int64)
        for k, v in (("w_q", w_q), ("b_q", b_q), ("w_scale", w_scale.astype(np.float32)), ("mult", mult.astype(np.int32)), ("shift", shift.astype(np.int32))):
            fields[k].append(v)
        for k, v, t in (("out_scale", out_scale, np.float32), ("out_zero", out_zero, np.int32), ("act_min", lo_q, np.int32), ("act_max", hi_q, np.int32)):
            fields[k].append(np.asarray(v, t))
        s_in = np.float32(intmath.TANH_OUT_SCALE) if activation == "tanh" else np.float32(out_scale)
    model = Int8Model(gain=gain, in_scale=np.asarray(in_scale, np.float32), in_zero=np.asarray(in_zero, np.int32), **{k: tuple(v) for k, v in fields.items()})
    return model, u.astype(np.float32)

"""Quantisation-aware training: the learner trains the weights its int8 actors will hold.

Post-training quantisation (``rlaccel.quant``) rounds every kernel to its channel's int8 grid
after each update. Where the decisions hang on differences far smaller than the values the
weights add up to, that rounding alone changes the policy: DQN CartPole's Q-values sit near
100 while the gaps between actions that pick them are ~0.6, and a greedy int8 Q-network with
only its weights rounded agreed with its fp32 source on 78 % of states (``docs/benchmarks.md``,
"DQN CartPole over 8 seeds").

:func:`fake_quant` returns the layers with each kernel replaced by its int8 version,
dequantised (``w_q * scale``, exactly what the actors compute with), and a straight-through
gradient (the rounding's gradient taken as the identity: Bengio et al. 2013,
https://arxiv.org/abs/1308.3432; Jacob et al. 2018, https://arxiv.org/abs/1712.05877, TFLite's
quantisation-aware training). The learner's loss then sees the network its actors run, and
its gradient steers the fp32 master weights towards weights whose rounding keeps the
decisions. Activations stay fp32 in the learner (their rounding alone kept 97-99 % of the
greedy actions there). Biases stay fp32: they are int32 at ``s_in * w_scale`` in the int8
model, ~2**-20 of their range.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from rlaccel import quant

Array = jax.Array

__all__ = ["fake_quant"]


def fake_quant(layers: Sequence[tuple[Array, Array]], calib: quant.Calibration, profile: str = "tflite") -> list[tuple[Array, Array]]:
    """``[(kernel [in, out], bias [out]), ...]`` with every kernel as ``rlaccel.quant.quantize``
    rounds it and straight-through gradients.

    The first kernel is rounded as ``quantize`` rounds it, in the input's equalised units
    (times :func:`rlaccel.quant.input_absmax`), and divided back, so the layer still takes the
    un-equalised input.

    Args:
      layers: the fp32 layers (``rlaccel.quant.dense_layers``).
      calib: the actors' calibration (the input's ranges).
      profile: ``tflite`` (per-channel scales) or ``pow2`` (one power of two per kernel).

    Returns:
      The layers, kernels fake-quantised: the forward value is the int8 kernel dequantised,
      the gradient with respect to the fp32 kernel is the identity.
    """
    out = []
    for i, (w, b) in enumerate(layers):
        units = quant.input_absmax(calib)[:, None] if i == 0 else jnp.float32(1.0)
        w_q, w_scale = quant.quantize_weights(w * units, profile)
        w_deq = w_q.astype(jnp.float32) * w_scale / units
        out.append((w + jax.lax.stop_gradient(w_deq - w), b))
    return out

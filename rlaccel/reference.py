"""The numpy actors' networks: the int8 one bit-exact with ``rlaccel.int8model.head``.

numpy only (never JAX), so host actor threads and the deploy runtimes share one fast
implementation of the integer model that ``rlaccel.int8model`` specifies (TFLite Micro's
arithmetic, ``rlaccel.intmath``) and ``rlaccel.quant`` computes in JAX:

* Input: the float32 preprocessing ``clip((obs - mean) * inv_std, -c, c) * gain``, QUANTIZE's
  float32 division by the input scale, rounding half away from zero (``trunc(y + copysign(0.5,
  y))`` in float64: exact for float32 ``y``) and the clamp, with the zero point folded into the
  clamp bounds (the first layer takes ``x_q - z``).
* Products: the int8 weights widened once to float64, the bias as one more weight row against
  a constant-1 input, so ``np.matmul`` / ``np.dot`` return the int32 accumulator exactly
  (every partial sum is an integer far below ``2**53``, exact in any order, with or without FMA).
* Each layer's output stage (requantise, zero point, clamp, TANH) is nondecreasing in each
  channel's accumulator, i.e. a step function: ``rlaccel.quant_tables.tables`` tabulates it as
  per-channel thresholds on the integer kernels themselves, and :class:`rlaccel.lookup.LayerLookup` turns them
  into a branch-free lookup whose result is already the next layer's ``x - z`` (or, for the
  last layer, ``q - out_zero``, dequantised with one float32 multiply).

:class:`Fp32Network` is the learner's fp32 MLP in numpy (``np.tanh``: ~1e-7 from XLA).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from rlaccel.lookup import LEVELS, LayerLookup, reach

__all__ = ["ACTIVATIONS", "LEVELS", "Fp32Network", "Int8Network", "Int8Tables", "Normalizer", "dense_layers", "network", "normalize", "reach"]


try:  # the clip ufunc itself: np.clip's Python wrapper costs ~1 µs per call
    from numpy._core.umath import clip as _clip
except ImportError:  # numpy < 2
    from numpy.core.umath import clip as _clip


def _relu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.maximum(x, 0, out=out)


def _elu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    y = np.where(x > 0, x, np.expm1(np.minimum(x, 0)))  # jax.nn.elu's formula (alpha 1)
    if out is None:
        return y
    np.copyto(out, y)
    return out


ACTIVATIONS: dict[str, Callable[..., np.ndarray]] = {"tanh": np.tanh, "relu": _relu, "elu": _elu}
"""numpy activations by name, each ``f(x, out=None)`` (JAX's table: ``rlaccel.networks.ACTIVATIONS``)."""


class Int8Tables(NamedTuple):
    """An int8 policy with its output stages tabulated (a pytree: JAX makes it, numpy reads it).

    Attributes:
      model: the ``rlaccel.int8model.Int8Model`` (integers and scales).
      thresholds: per layer, int32 ``[out, LEVELS]``: entry ``[j, k]`` is the smallest
        accumulator of channel ``j`` whose int8 output is ``>= k - 127`` (``> R_j``, the
        channel's :func:`reach`, where none is).
    """

    model: Any
    thresholds: tuple[Any, ...]


class Normalizer(NamedTuple):
    """The observation normaliser actors apply: ``clip((obs - mean) * inv_std, -clip, clip)``.

    Attributes:
      mean: ``[obs_dim]`` float32.
      inv_std: ``[obs_dim]`` float32, ``1 / sqrt(var + eps)`` computed once (by JAX).
    """

    mean: Any
    inv_std: Any


def normalize(norm: Normalizer | None, x: np.ndarray, clip: float) -> np.ndarray:
    """``clip((x - mean) * inv_std, -clip, clip)`` in float32 (identity when ``norm`` is None)."""
    if norm is None:
        return x
    c = np.float32(clip)
    return np.clip((x - norm.mean) * norm.inv_std, -c, c)


def dense_layers(params: Any) -> list[tuple[Any, Any]]:
    """``[(kernel [in, out], bias [out]), ...]`` of a flax MLP's ``Dense_0 .. Dense_L`` params (any array type)."""
    return [(params[f"Dense_{i}"]["kernel"], params[f"Dense_{i}"]["bias"]) for i in range(len(params))]


class _Network:
    """What both networks share: forward closures over preallocated buffers, per batch size.

    :meth:`forward` keeps its buffers per thread, so one network may serve several actor
    threads; :attr:`forward_one` has one set of buffers: give each thread its own network.
    """

    in_dim: int
    out_dim: int

    def __init__(self) -> None:
        self._local = threading.local()
        self.forward_one: Callable[[np.ndarray], np.ndarray] = self._make_forward((), np.dot)
        """``x float32 [in] -> head float32 [out]``, the batch-1 path (1-D buffers and ``np.dot``,
        a BLAS gemv without ``np.matmul``'s set-up). Returns a reused buffer, overwritten by
        the next call: copy it to keep it. Not thread-safe."""

    def _make_forward(self, lead: tuple[int, ...], matmul: Any) -> Callable[[np.ndarray], np.ndarray]:
        raise NotImplementedError

    _ROW_BY_DOT = False
    """Whether :meth:`forward` computes one row as :attr:`forward_one` does (1-D buffers and
    ``np.dot``): only where the two give the same bits (the int8 network's sums are exact)."""

    def _batch_forward(self, batch: int) -> Callable[[np.ndarray], np.ndarray]:
        """This thread's forward for ``batch`` rows (up to 8 batch sizes are kept per thread)."""
        cache = getattr(self._local, "batches", None)
        if cache is None:
            cache = self._local.batches = {}
        fwd = cache.get(batch)
        if fwd is None:
            if len(cache) >= 8:
                cache.clear()
            fwd = cache[batch] = self._row_forward() if batch == 1 and self._ROW_BY_DOT else self._make_forward((batch,), np.matmul)
        return fwd

    def _row_forward(self) -> Callable[[np.ndarray], np.ndarray]:
        """``x [1, in] -> head [1, out]`` through this thread's own batch-1 closure (``np.dot``
        on 1-D buffers: an int8 HalfCheetah policy, 17-256-256-6, 33 against 42 us a call here)."""
        one = self._make_forward((), np.dot)

        def forward(x: np.ndarray) -> np.ndarray:
            return one(x.reshape(-1))[None]

        forward.latent = one.latent[None]  # type: ignore[attr-defined]  # a view: features() reads it after each call
        return forward

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The head for a batch.

        Args:
          x: ``[B, in]`` float32 raw observations (normalised here when a normaliser is set).

        Returns:
          ``[B, out]`` float32, a fresh array.
        """
        x = np.asarray(x, np.float32)
        return self._batch_forward(x.shape[0])(x).copy()

    def forward_into(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """:meth:`forward` written into ``out`` (``[B, out]`` float32); returns ``out``."""
        np.copyto(out, self._batch_forward(np.shape(x)[0])(np.asarray(x, np.float32)))
        return out

    def features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The head and the last hidden layer's output (gSDE's latent features) for a batch.

        Args:
          x: ``[B, in]`` float32 raw observations.

        Returns:
          ``(latent [B, h], head [B, out])`` float32, fresh arrays; the int8 network's latent is
          its int8 output dequantised, ``(q - zero) * scale`` in float32 (``rlaccel.quant.features``).
        """
        x = np.asarray(x, np.float32)
        fwd = self._batch_forward(x.shape[0])
        head = fwd(x).copy()
        return np.multiply(fwd.latent, self._latent_scale, dtype=np.float32), head  # type: ignore[attr-defined]


class Int8Network(_Network):
    """The int8 network of :class:`Int8Tables`, bit-exact with ``rlaccel.int8model.head`` (module docstring).

    Args:
      tables: numpy leaves (``jax.device_get(rlaccel.quant_tables.tables(qp))`` or an artifact's arrays).
      activation: the hidden activation (``tanh`` or ``relu``): which zero point each layer takes.
      normalizer: the observation normaliser applied first, or ``None`` (inputs used as they are).
      clip_obs: the normaliser's clip.

    Raises:
      ValueError: a threshold table that is not sorted or too wide (a damaged one).
    """

    _ROW_BY_DOT = True  # integer sums, exact in float64 in any order

    def __init__(self, tables: Int8Tables, activation: str = "tanh", normalizer: Normalizer | None = None, clip_obs: float = 10.0):
        from rlaccel.int8model import hidden_input_zero
        from rlaccel.intmath import TANH_OUT_SCALE

        m = tables.model
        self._gain = np.asarray(m.gain, np.float32)
        self._in_scale = np.float32(m.in_scale)
        self.in_dim = self._gain.shape[0]
        self._norm = normalizer is not None
        if normalizer is not None:
            self._mean = np.asarray(normalizer.mean, np.float32)
            self._inv_std = np.asarray(normalizer.inv_std, np.float32)
            self._clip = np.float32(clip_obs)
        z_in = int(m.in_zero)
        self._lo, self._hi = float(-128 - z_in), float(127 - z_in)
        L = len(m.w_q)
        lows = [-128 - hidden_input_zero(m, i + 1, activation) for i in range(L - 1)] + [-128 - int(m.out_zero[-1])]
        self._layers = [
            LayerLookup(np.asarray(m.w_q[i]).astype(np.int64), np.asarray(m.b_q[i]).astype(np.int64), np.asarray(tables.thresholds[i]), lows[i], i) for i in range(L)
        ]
        self._scale = np.float32(m.out_scale[-1])
        self._latent_scale = np.float32(TANH_OUT_SCALE if activation == "tanh" else m.out_scale[-2])  # last hidden layer's output scale
        self.out_dim = self._layers[-1].out
        super().__init__()

    def _make_forward(self, lead: tuple[int, ...], matmul: Any) -> Callable[[np.ndarray], np.ndarray]:
        """``x float32 [*lead, in] -> head float32 [*lead, out]`` (a view of a reused buffer).

        One closure over preallocated buffers and bound ufuncs: a batch-1 call is ~25 numpy
        calls, so Python attribute lookups would be a visible share of it.
        """

        def inp(n: int) -> np.ndarray:
            x = np.empty(lead + (n + 1,))
            x[..., -1] = 1.0
            return x

        ins = [inp(self.in_dim)] + [inp(h.out) for h in self._layers[:-1]]
        outs = [x[..., :-1] for x in ins[1:]] + [np.empty(lead + (self.out_dim,))]
        steps = []
        for h, x, nxt in zip(self._layers, ins, outs):
            bufs = h.buffers(lead)
            if h.mode in ("lut", "lut2"):
                steps.append((h.mode, x, h.w, bufs, h.cell_lo, h.cell_hi, h.lut, h.levels, nxt))
            else:
                steps.append((h.mode, x, h.w, bufs, h.table.searchsorted, h.base, None, None, nxt))
        tmp, y, half = np.empty(lead + (self.in_dim,), np.float32), np.empty(lead + (self.in_dim,)), np.empty(lead + (self.in_dim,))
        x_q, last, head = ins[0][..., :-1], outs[-1], np.empty(lead + (self.out_dim,), np.float32)
        gain, s_in, lo, hi, scale = self._gain, self._in_scale, self._lo, self._hi, self._scale
        norm = self._norm
        mean, inv_std, c = (self._mean, self._inv_std, self._clip) if norm else (None, None, np.float32(0))
        neg_c = -c
        copyto, multiply, divide, add, subtract, floor, trunc, copysign = np.copyto, np.multiply, np.divide, np.add, np.subtract, np.floor, np.trunc, np.copysign
        fmin, fmax = np.fmin, np.fmax

        def forward(x: np.ndarray) -> np.ndarray:
            if norm:  # the float preprocessing, in the exported model's order of float32 operations
                subtract(x, mean, out=tmp)
                multiply(tmp, inv_std, out=tmp)
                _clip(tmp, neg_c, c, out=tmp)
                multiply(tmp, gain, out=tmp)
            else:
                multiply(x, gain, out=tmp)
            divide(tmp, s_in, out=tmp)  # QUANTIZE: float32 division, round half away, clamp
            copyto(y, tmp)
            add(y, copysign(0.5, y, out=half), out=y)
            fmin(fmax(trunc(y, out=y), lo, out=y), hi, out=x_q)  # fmax: NaN -> lo, as intmath.quantize
            for mode, inp_, w, hb, a, b, lut, levels, nxt in steps:
                key = hb[0]
                matmul(inp_, w, out=key)
                if mode == "lut":
                    _, clipped, cell = hb
                    copyto(cell, _clip(key, a, b, out=clipped), casting="unsafe")  # floor: clipped >= 0
                    floor(add(clipped, lut[cell], out=nxt), out=nxt)
                elif mode == "lut2":  # the same lookup gives an index into the layer's levels
                    _, clipped, cell, count, index = hb
                    copyto(cell, _clip(key, a, b, out=clipped), casting="unsafe")
                    copyto(index, add(clipped, lut[cell], out=count), casting="unsafe")  # >= 0: truncation is floor
                    copyto(nxt, levels[index])
                else:
                    subtract(a(key), b, out=nxt, casting="unsafe")
            copyto(head, last, casting="same_kind")  # q - zero: a small integer, exact in float32
            return multiply(head, scale, out=head)

        forward.latent = ins[-1][..., :-1]  # type: ignore[attr-defined]  # the last hidden layer's q - zero, for features()
        return forward


class Fp32Network(_Network):
    """The learner's fp32 MLP in numpy (bias as a constant-1 input column).

    Args:
      layers: ``[(w [in, out], b [out]), ...]`` (:func:`dense_layers` of the flax params).
      activation: a key of :data:`ACTIVATIONS`.
      normalizer, clip_obs: as :class:`Int8Network`.
    """

    def __init__(self, layers: Sequence[tuple[Any, Any]], activation: str, normalizer: Normalizer | None = None, clip_obs: float = 10.0):
        self._layers = [np.vstack([np.asarray(w, np.float32), np.asarray(b, np.float32)[None]]) for w, b in layers]
        self._act = ACTIVATIONS[activation]
        self._norm = normalizer is not None
        if normalizer is not None:
            self._mean = np.asarray(normalizer.mean, np.float32)
            self._inv_std = np.asarray(normalizer.inv_std, np.float32)
            self._clip = np.float32(clip_obs)
        self.in_dim = self._layers[0].shape[0] - 1
        self.out_dim = self._layers[-1].shape[1]
        self._latent_scale = np.float32(1.0)
        super().__init__()

    def _make_forward(self, lead: tuple[int, ...], matmul: Any) -> Callable[[np.ndarray], np.ndarray]:
        """``x float32 [*lead, in] -> head [*lead, out]`` over preallocated buffers."""
        ins = []
        for w in self._layers:
            inp = np.empty(lead + (w.shape[0],), np.float32)
            inp[..., -1] = 1.0
            ins.append(inp)
        out = np.empty(lead + (self.out_dim,), np.float32)
        x0 = ins[0][..., :-1]
        steps = [(inp, w, nxt[..., :-1]) for inp, w, nxt in zip(ins[:-1], self._layers[:-1], ins[1:])]
        last_in, last_w, act, norm = ins[-1], self._layers[-1], self._act, self._norm
        mean, inv_std, c = (self._mean, self._inv_std, self._clip) if norm else (None, None, np.float32(0))
        subtract, multiply, copyto, neg_c = np.subtract, np.multiply, np.copyto, -c

        def forward(x: np.ndarray) -> np.ndarray:
            if norm:
                subtract(x, mean, out=x0)
                multiply(x0, inv_std, out=x0)
                _clip(x0, neg_c, c, out=x0)
            else:
                copyto(x0, x)
            for inp, w, nxt in steps:
                matmul(inp, w, out=nxt)
                act(nxt, out=nxt)
            return matmul(last_in, last_w, out=out)

        forward.latent = last_in[..., :-1]  # type: ignore[attr-defined]  # the last hidden layer's output, for features()
        return forward


def network(policy: Any, activation: str, normalizer: Normalizer | None = None, clip_obs: float = 10.0) -> Int8Network | Fp32Network:
    """The numpy network of an actor's ``policy`` (numpy leaves): :class:`Int8Network` for
    :class:`Int8Tables`, else :class:`Fp32Network` of a flax MLP's ``Dense_i`` params
    (``rlaccel.deploy.c_kernel.network`` adds the C kernel for an ``Int8Payload``).

    Args:
      policy: ``Int8Tables`` or flax params ``{"Dense_0": {"kernel", "bias"}, ...}``.
      activation: the hidden activation.
      normalizer, clip_obs: the observation normaliser applied first, or ``None``.
    """
    if isinstance(policy, Int8Tables):
        return Int8Network(policy, activation, normalizer, clip_obs)
    return Fp32Network(dense_layers(policy), activation, normalizer, clip_obs)

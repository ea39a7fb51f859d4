"""The numpy reference of the actors' networks: int8 bit-exact with ``rlaccel.quant.apply``.

numpy only (never JAX), so host actor threads, the deploy runtimes and future C / TFLite
exports share one definition of the int8 arithmetic. JAX produces :class:`Int8Tables` with
``rlaccel.quant.tables``; :class:`Int8Network` computes from them exactly the integers (and
the float head) that ``quant.apply`` computes under ``jax.jit`` on the CPU that made them:

* Input: ``clip(rint(((obs - mean) * inv_std) * input_mult), lo, hi)`` in float32. Clipping
  the normalised observation to ``+-clip_obs`` before the multiply equals clipping the
  rounded product to ``rint(clip_obs * input_mult)`` afterwards (rounding is monotone), so
  ``lo, hi`` fold both clips into one. ``inv_std`` is a stored value (the actors' own
  ``1 / sqrt(var + eps)``), never recomputed here.
* Products: the int8 weights are widened once to float64 and the bias becomes one more weight
  row against a constant-1 input, so ``np.matmul`` / ``np.dot`` return the int32 accumulator.
  Exact: every product is an integer ``|x_q w_q| <= 127 * 127`` and every partial sum of a dot
  product over ``K`` inputs an integer bounded by ``16,129 K + |b_q| < 2**31``
  (``rlaccel.quant``'s overflow bound); integers below ``2**53`` are exact in float64 and sums
  of them are exact in any order, with or without FMA.
* Hidden activations: ``quant.requantize`` (dequantise, tanh/relu/elu, quantise with the
  next scale) is monotone in each channel's accumulator, i.e. a step function, tabulated as
  per-channel thresholds computed with XLA's own tanh (numpy's tanh differs from XLA's by a
  few ulp, which moves ~2e-6 of the requantised values one level). :class:`_Hidden` turns the
  thresholds into a branch-free lookup.
* Output: ``float32(acc) * out_scale`` (float64 -> float32 rounds the exact integer as
  int32 -> float32 does).

:class:`Fp32Network` is the learner's fp32 MLP in numpy (``np.tanh``: ~1e-7 from XLA).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["ACTIVATIONS", "LEVELS", "QMAX", "Fp32Network", "Int8Network", "Int8Tables", "Normalizer", "dense_layers", "network", "normalize"]

QMAX = 127  # int8 codes are symmetric: -127 .. 127
LEVELS = 254  # thresholds per channel: int8 levels -126 .. 127 (the level -127 needs none)

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
    """An int8 policy as numbers only (a pytree: JAX makes it, numpy and exporters read it).

    Attributes:
      input_mult: ``[in]`` float32, ``1 / s_in`` per input feature (``x_q = rint(x * input_mult)``).
      w_q: per layer, int8 ``[in, out]`` (the first layer's input scale folded in).
      b_q: per layer, int32 ``[out]``: the bias in accumulator units.
      out_scale: per layer, float32 ``[out]``: dequantises the int32 accumulator (``s_x * s_w``).
      act_scales: ``[L-1]`` float32, scale of each hidden activation.
      thresholds: per hidden layer, int32 ``[out, LEVELS]``: entry ``[j, k]`` is the smallest
        accumulator of channel ``j`` whose requantised activation is ``>= k - 126`` (``> R_j``,
        the channel's largest reachable ``|acc|``, where none is).
    """

    input_mult: Any
    w_q: tuple[Any, ...]
    b_q: tuple[Any, ...]
    out_scale: tuple[Any, ...]
    act_scales: Any
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


class _Hidden:
    """One hidden layer of the int8 path: weights with folded bias, and how to requantise.

    ``lut`` (the usual case): the columns of ``w`` are scaled by ``2**-s_j`` and shifted, so
    ``np.matmul`` returns ``key_j = (acc_j - first_j) / 2**s_j + cell0_j``, exactly (every
    term is an integer multiple of ``2**-s_j`` below ``2**53``). ``2**s_j`` is at most the
    smallest gap between channel ``j``'s thresholds, so each cell ``floor(key)`` holds at
    most one threshold, and ``h_q = floor(key + D[cell])``. Branch-free, unlike a binary
    search whose mispredictions cost ~4 µs per 64-wide layer at batch 1 on varying inputs.

    ``search`` (fallback: a jump of two levels at one accumulator value, or a table over
    ``MAX_CELLS``): the accumulator plus disjoint per-channel offsets, one ``searchsorted``
    over all channels' thresholds.
    """

    MAX_CELLS = 1 << 20

    def __init__(self, w: np.ndarray, b: np.ndarray, thresholds: np.ndarray, index: int):
        reach = QMAX * np.abs(w).sum(axis=0) + np.abs(b)  # R_j: |accumulator| bound per channel
        self.out = w.shape[1]
        lut = self._build_lut(thresholds, reach)
        if lut is not None:
            self.mode = "lut"
            shift, add, self.lut, self.cell_lo, self.cell_hi = lut
            bias = (b + add[0]).astype(np.float64) * shift + add[1]
            self.w = np.vstack([w.astype(np.float64) * shift, bias[None]])
            return
        self.mode = "search"
        width = 2 * reach + 2  # channel j's window [-R_j, R_j + 1] shifted by off_j: disjoint, increasing
        off = np.cumsum(width) - width + reach
        table = (thresholds.astype(np.int64) + off[:, None]).reshape(-1)
        if table[-1] >= 2**50 or np.any(np.diff(table) < 0):
            raise ValueError(f"activation table of layer {index} is not sorted or too wide")
        self.table = table.astype(np.float64) - 0.5  # side="left" on t - 0.5 counts t <= an integer key
        self.base = np.arange(self.out, dtype=np.int64) * LEVELS + QMAX
        self.w = np.vstack([w, (b + off)[None]]).astype(np.float64)

    def _build_lut(self, thresholds: np.ndarray, reach: np.ndarray) -> Any:
        """``(column scale [out], (acc shift [out], key shift [out]), lut, cell_lo, cell_hi)`` or ``None``.

        Channel ``j``'s cells: a transition-free pad, ``n_j`` cells of width ``2**s_j`` from
        its first transition ``u_0`` on, a transition-free pad; ``key = (acc - u_0) / 2**s_j +
        cell0_j + 1``. Clipped to its pads, the key lies in cell ``c = floor(key)`` whose
        transition (if any) is at ``thr`` in ``[c, c + 1)``, so ``[key >= thr] =
        floor(key - thr + 1)`` and ``h_q = floor(key + D[c])`` with ``D = base + 1 - thr``
        (``thr = c + 1`` where the cell has none). All values are multiples of ``2**-s_j``
        far below ``2**53``: exact. Built for all channels at once (a new policy every
        learner update must not cost the host learner milliseconds of Python loops).
        """
        t = thresholds.astype(np.int64)  # [out, LEVELS], nondecreasing along each row
        r = reach[:, None]
        if np.any(t[:, 1:] < t[:, :-1]):
            return None  # not a step function: the search path reports it
        valid = (t > -r) & (t <= r)  # the transitions that can happen: contiguous in each row
        pair = valid[:, 1:] & valid[:, :-1]  # consecutive transitions
        if np.any(pair & (t[:, 1:] == t[:, :-1])):
            return None  # two levels at one accumulator value
        q_min = -QMAX + np.count_nonzero(t <= -r, axis=1)  # activation at the lowest reachable accumulator
        empty = ~valid.any(axis=1)  # constant channel: one transition at R + 1, never reached
        big = np.iinfo(np.int64).max
        first = np.where(empty, reach + 1, np.where(valid, t, big).min(axis=1))
        last = np.where(empty, reach + 1, np.where(valid, t, -big).max(axis=1))
        gap = np.where(pair.any(axis=1), np.where(pair, t[:, 1:] - t[:, :-1], big).min(axis=1), 1)
        s = np.frexp(gap.astype(np.float64))[1].astype(np.int64) - 1  # 2**s <= gap: at most one transition per cell
        n = ((last - first) >> s) + 1
        sizes = n + 2
        total = int(sizes.sum())
        if total > self.MAX_CELLS:
            return None
        cell0 = np.cumsum(sizes) - sizes
        rows, cols = np.nonzero(valid)
        rows, u = np.concatenate([rows, np.flatnonzero(empty)]), np.concatenate([t[rows, cols], reach[empty] + 1])
        cell = cell0[rows] + ((u - first[rows]) >> s[rows]) + 1  # cells 1 .. n of each channel hold its transitions
        # D = base + 1 - thr in flat cell units. base[c] = q_min + the channel's transitions in
        # cells before c: the flat running count minus the earlier channels' transitions. Every
        # value is an integer or a multiple of 2**-s_j below 2**21: exact in any order.
        has = np.zeros(total)
        has[cell] = 1.0
        entries = np.cumsum(has)
        entries -= has
        counts = np.bincount(rows, minlength=t.shape[0])
        entries += np.repeat((q_min - (np.cumsum(counts) - counts) + 1).astype(np.float64), sizes)
        key = np.arange(1.0, total + 1.0)  # thr + cell0: c + 1 in a cell without a transition...
        key[cell] = cell0[rows] + ((u - first[rows]) / 2.0 ** s[rows] + 1.0)  # ...else the transition
        entries -= key
        cell_lo = cell0.astype(np.float64)
        return 2.0 ** -s.astype(np.float64), (-first, cell_lo + 1.0), entries, cell_lo, cell_lo + sizes - 1

    def buffers(self, lead: tuple[int, ...]) -> list[np.ndarray]:
        f64 = lead + (self.out,)
        if self.mode == "lut":
            return [np.empty(f64), np.empty(f64), np.empty(f64, np.intp)]
        return [np.empty(f64)]


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

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The head for a batch.

        Args:
          x: ``[B, in]`` float32 raw observations (normalised here when a normaliser is set).

        Returns:
          ``[B, out]`` float32, a fresh array. Forwards for up to 8 batch sizes are kept per thread.
        """
        x = np.asarray(x, np.float32)
        cache = getattr(self._local, "batches", None)
        if cache is None:
            cache = self._local.batches = {}
        fwd = cache.get(x.shape[0])
        if fwd is None:
            if len(cache) >= 8:
                cache.clear()
            fwd = cache[x.shape[0]] = self._make_forward((x.shape[0],), np.matmul)
        return fwd(x).copy()


class Int8Network(_Network):
    """The int8 network of :class:`Int8Tables`, bit-exact with ``rlaccel.quant.apply`` (module docstring).

    Args:
      tables: numpy leaves (``jax.device_get(rlaccel.quant.tables(qp))`` or an artifact's arrays).
      normalizer: the observation normaliser applied first, or ``None`` (inputs used as they are).
      clip_obs: the normaliser's clip.

    Raises:
      ValueError: a threshold table that is not sorted or too wide (a damaged one).
    """

    def __init__(self, tables: Int8Tables, normalizer: Normalizer | None = None, clip_obs: float = 10.0):
        self._mult = np.asarray(tables.input_mult, np.float32)
        self.in_dim = self._mult.shape[0]
        lim = np.full(self.in_dim, np.inf, np.float32)
        self._norm = normalizer is not None
        if normalizer is not None:
            self._mean = np.asarray(normalizer.mean, np.float32)
            self._inv_std = np.asarray(normalizer.inv_std, np.float32)
            lim = np.rint(np.float32(clip_obs) * self._mult)
        self._lo = np.maximum(-lim, -QMAX).astype(np.float32)
        self._hi = np.minimum(lim, QMAX).astype(np.float32)
        w_q, b_q = tables.w_q, tables.b_q
        L = len(w_q)
        self._hidden = [
            _Hidden(np.asarray(w_q[i]).astype(np.int64), np.asarray(b_q[i]).astype(np.int64), np.asarray(tables.thresholds[i]), i) for i in range(L - 1)
        ]
        self._w_out = np.vstack([np.asarray(w_q[-1]), np.asarray(b_q[-1])[None]]).astype(np.float64)
        self._scale = np.asarray(tables.out_scale[-1], np.float32)
        self.out_dim = self._w_out.shape[1]
        super().__init__()

    def _alloc(self, lead: tuple[int, ...]) -> list[Any]:
        """Buffers for a batch shape ``lead`` (``()`` for one observation); inputs end in a 1 column."""

        def inp(n: int) -> np.ndarray:
            x = np.empty(lead + (n + 1,))
            x[..., -1] = 1.0
            return x

        ins = [inp(self.in_dim)] + [inp(h.out) for h in self._hidden]
        return [
            np.empty(lead + (self.in_dim,), np.float32),
            ins,
            [h.buffers(lead) for h in self._hidden],
            np.empty(lead + (self.out_dim,)),
            np.empty(lead + (self.out_dim,), np.float32),
        ]

    def _make_forward(self, lead: tuple[int, ...], matmul: Any) -> Callable[[np.ndarray], np.ndarray]:
        """``x float32 [*lead, in] -> head float32 [*lead, out]`` (a view of a reused buffer).

        One closure over preallocated buffers and bound ufuncs: a batch-1 call is ~20 numpy
        calls, so Python attribute lookups would be a visible share of it.
        """
        tmp, ins, hidden_bufs, acc_out, head = self._alloc(lead)
        steps = []
        for h, inp, nxt, hb in zip(self._hidden, ins[:-1], ins[1:], hidden_bufs):
            if h.mode == "lut":
                steps.append((True, inp, h.w, hb, h.cell_lo, h.cell_hi, h.lut, nxt[..., :-1]))
            else:
                steps.append((False, inp, h.w, hb, h.table.searchsorted, h.base, None, nxt[..., :-1]))
        x_q, last_in, w_out, scale = ins[0][..., :-1], ins[-1], self._w_out, self._scale
        mult, lo, hi = self._mult, self._lo, self._hi
        mean, inv_std, norm = (self._mean, self._inv_std, True) if self._norm else (None, None, False)
        copyto, multiply, floor, add, subtract, rint, clip = np.copyto, np.multiply, np.floor, np.add, np.subtract, np.rint, _clip

        def forward(x: np.ndarray) -> np.ndarray:
            if norm:  # ((x - mean) * inv_std) * mult: the JAX actor's order of float32 operations
                subtract(x, mean, out=tmp)
                multiply(tmp, inv_std, out=tmp)
                multiply(tmp, mult, out=tmp)
            else:
                multiply(x, mult, out=tmp)
            rint(tmp, out=tmp)
            clip(tmp, lo, hi, out=tmp)
            copyto(x_q, tmp)
            for lut_mode, inp, w, hb, a, b, lut, nxt in steps:
                key = hb[0]
                matmul(inp, w, out=key)
                if lut_mode:
                    _, clipped, cell = hb
                    copyto(cell, clip(key, a, b, out=clipped), casting="unsafe")  # floor: clipped >= 0
                    floor(add(clipped, lut[cell], out=nxt), out=nxt)
                else:
                    subtract(a(key), b, out=nxt, casting="unsafe")
            matmul(last_in, w_out, out=acc_out)
            copyto(head, acc_out, casting="same_kind")  # the exact integer, rounded to float32 as int32 -> f32
            return multiply(head, scale, out=head)

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

        return forward


def network(policy: Any, activation: str, normalizer: Normalizer | None = None, clip_obs: float = 10.0) -> Int8Network | Fp32Network:
    """The numpy network of an actor's ``policy`` (numpy leaves): :class:`Int8Network` for
    :class:`Int8Tables`, else :class:`Fp32Network` of a flax MLP's ``Dense_i`` params.

    Args:
      policy: ``Int8Tables`` or flax params ``{"Dense_0": {"kernel", "bias"}, ...}``.
      activation: the hidden activation (the fp32 network's; the int8 tables encode their own).
      normalizer, clip_obs: the observation normaliser applied first, or ``None``.
    """
    if isinstance(policy, Int8Tables):
        return Int8Network(policy, normalizer, clip_obs)
    return Fp32Network(dense_layers(policy), activation, normalizer, clip_obs)

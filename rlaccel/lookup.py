"""Each int8 layer's output stage as a branch-free numpy lookup on its int32 accumulator.

numpy only. ``rlaccel.quant_tables.tables`` gives, per layer and channel, the accumulator thresholds at
which the layer's int8 output (requantise, zero point, clamp, TANH) steps up a level;
:class:`LayerLookup` turns them into the few numpy calls ``rlaccel.reference.Int8Network``
runs per layer, with float64 arithmetic that is exact (module docstring of ``reference``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["LEVELS", "TABLE_ITERATIONS", "LayerLookup", "reach", "thresholds"]

LEVELS = 255  # thresholds per channel: int8 levels -127 .. 127 (the level -128 needs none)
TABLE_ITERATIONS = 32  # bisection steps: the widest window, 2 R + 2 <= 2**32 candidates, closes in 32


def reach(w_q: np.ndarray, b_q: np.ndarray) -> np.ndarray:
    """``[out]`` int64: the bound on ``|acc|`` the tables use, ``255 sum|w| + |b|`` (``rlaccel.quant_tables.reach``)."""
    return 255 * np.abs(np.asarray(w_q, np.int64)).sum(axis=0) + np.abs(np.asarray(b_q, np.int64))


def thresholds(model: Any, activation: str, profile: str) -> tuple[np.ndarray, ...]:
    """``rlaccel.quant_tables.tables``' thresholds in numpy: per layer, int32 ``[out, LEVELS]``, equal
    entry for entry where the level is reachable (a "never" entry is ``R_j + 1``).

    A Ray actor process receives only the ``Int8Model`` (int8 weights and scales, about a third
    of fp32's bytes) and tabulates it here, numpy only. Each entry's search starts from the
    float estimate ``acc ~= (y - z) / multiplier``, checked on the integer kernels (one call for
    all entries: right almost always); an entry it misses is bracketed to 5 accumulators around
    it, or, failing that, bisected over ``[-R_j, R_j + 1]``.
    """
    return tuple(_layer_thresholds(model, i, activation, profile) for i in range(len(model.w_q)))


def _layer_thresholds(model: Any, i: int, activation: str, profile: str) -> np.ndarray:
    from rlaccel import int8model, intmath  # numpy modules (imported here: int8model is not a dependency of LayerLookup)

    tanh = activation == "tanh" and i < len(model.w_q) - 1
    table = intmath.TANH_TABLES[intmath.tanh_index(model.out_scale[i])].astype(np.int64) if tanh else None

    def out(acc: np.ndarray, cols: np.ndarray) -> np.ndarray:
        y = int8model.requantize(acc, _columns(model, i, cols), i, profile)
        return table[y + 128] if tanh else y

    r = reach(model.w_q[i], model.b_q[i])  # [out]
    n = r.shape[0]
    cols = np.broadcast_to(np.arange(n), (LEVELS, n)).reshape(-1)
    rr = r[cols]
    target = np.repeat(np.arange(LEVELS, dtype=np.int64) - 127, n)
    mult = np.asarray(model.mult[i], np.float64).reshape(-1)
    shift = np.asarray(model.shift[i], np.float64).reshape(-1)
    slope = (mult * 2.0 ** (shift - 31) if profile == "tflite" else 2.0**shift) * np.ones(n)
    y_need = np.searchsorted(table, target, side="left") - 128 if tanh else target  # smallest int8 y reaching the level
    estimate = np.ceil((y_need - int(model.out_zero[i]) - 0.5) / slope[cols])
    estimate = np.clip(np.nan_to_num(estimate, nan=0.0, posinf=2.0**40, neginf=-(2.0**40)), -(2.0**40), 2.0**40).astype(np.int64)
    e = np.clip(estimate, -rr, rr + 1)
    e = np.where(y_need > int(model.act_max[i]), rr + 1, np.where(y_need <= int(model.act_min[i]), -rr, e))  # never / always
    # The double rounding (SaturatingRoundingDoublingHighMul, then RoundingDivideByPOT) moves a
    # threshold at most one accumulator from the estimate: evaluate e-2 .. e+1 in one call.
    probe = np.clip(e[None, :] + np.arange(-2, 2)[:, None], -rr, rr + 1)  # [4, E]
    above = out(probe.reshape(-1), np.tile(cols, 4)).reshape(4, -1) >= target
    above |= probe == rr + 1  # "never" sits at R + 1
    found = (probe[0] > -rr) & ~above[0] & above[3]  # the threshold is e-1, e or e+1: the first above
    lo = np.where(found, probe[1] + ~above[1] + (~above[1] & ~above[2]), -rr)
    done = found | ((e == -rr) & above[2])  # or reached already at -R
    hi = np.where(done, lo, rr + 1)
    lo, _ = _bisect(out, target, lo, hi, cols, np.flatnonzero(lo < hi), TABLE_ITERATIONS)  # the rare misses
    return np.ascontiguousarray(np.minimum(lo, rr + 1).reshape(LEVELS, n).T).astype(np.int32)


def _columns(model: Any, i: int, cols: np.ndarray) -> Any:
    """``model`` with layer ``i``'s per-channel output stage gathered at ``cols`` (flat entries)."""
    take = lambda v: np.asarray(v)[cols] if np.ndim(v) else v  # noqa: E731
    fields = {f: tuple(take(x) if j == i else x for j, x in enumerate(getattr(model, f))) for f in ("mult", "shift")}
    return model._replace(**fields)


def _bisect(out: Any, target: np.ndarray, lo: np.ndarray, hi: np.ndarray, cols: np.ndarray, idx: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-entry bisection of entries ``idx``: the smallest ``acc`` in ``[lo, hi]`` with ``out >= target``."""
    lo, hi = lo.copy(), hi.copy()
    for _ in range(iters):
        idx = idx[lo[idx] < hi[idx]]
        if idx.size == 0:
            break
        mid = (lo[idx] + hi[idx]) >> 1
        above = out(mid, cols[idx]) >= target[idx]
        lo[idx] = np.where(above, lo[idx], mid + 1)
        hi[idx] = np.where(above, mid, hi[idx])
    return lo, hi


class LayerLookup:
    """One hidden layer of the int8 path: weights with folded bias, and how to requantise.

    ``lut`` (the usual case): the columns of ``w`` are scaled by ``2**-s_j`` and shifted, so
    ``np.matmul`` returns ``key_j = (acc_j - first_j) / 2**s_j + cell0_j``, exactly (every
    term is an integer multiple of ``2**-s_j`` below ``2**53``). ``2**s_j`` is at most the
    smallest gap between channel ``j``'s thresholds, so each cell ``floor(key)`` holds at
    most one threshold, and ``h_q = floor(key + D[cell])``. Branch-free, unlike a binary
    search whose mispredictions cost ~4 µs per 64-wide layer at batch 1 on varying inputs.

    ``lut2`` (a jump of several levels at one accumulator value, e.g. a TANH at a coarse input
    scale): the same lookup over distinct transitions gives a flat index, one gather maps it
    to the level.

    ``search`` (fallback: a table over ``MAX_CELLS``): the accumulator plus disjoint
    per-channel offsets, one ``searchsorted`` over all channels' thresholds.
    """

    MAX_CELLS = 1 << 20

    def __init__(self, w: np.ndarray, b: np.ndarray, thresholds: np.ndarray, low: int, index: int):
        """``w int64 [in, out]``, ``b int64 [out]``; the output is ``level + low + 128`` (``low``: the
        lowest output, i.e. ``-128 - z`` for a next-layer zero point ``z``)."""
        self.low = low
        bound = reach(w, b)  # R_j: |accumulator| bound per channel
        self.out = w.shape[1]
        lut = self._build_lut(thresholds, bound)
        if lut is not None:
            shift, add, self.lut, self.cell_lo, self.cell_hi, self.levels = lut
            self.mode = "lut" if self.levels is None else "lut2"
            bias = (b + add[0]).astype(np.float64) * shift + add[1]
            self.w = np.vstack([w.astype(np.float64) * shift, bias[None]])
            return
        self.mode = "search"
        width = 2 * bound + 2  # channel j's window [-R_j, R_j + 1] shifted by off_j: disjoint, increasing
        off = np.cumsum(width) - width + bound
        table = (thresholds.astype(np.int64) + off[:, None]).reshape(-1)
        if table[-1] >= 2**50 or np.any(np.diff(table) < 0):
            raise ValueError(f"activation table of layer {index} is not sorted or too wide")
        self.table = table.astype(np.float64) - 0.5  # side="left" on t - 0.5 counts t <= an integer key
        self.base = np.arange(self.out, dtype=np.int64) * LEVELS - low
        self.w = np.vstack([w, (b + off)[None]]).astype(np.float64)

    def _build_lut(self, thresholds: np.ndarray, reach: np.ndarray) -> Any:
        """``(column scale [out], (acc shift [out], key shift [out]), lut, cell_lo, cell_hi, levels)`` or ``None``.

        ``levels`` is ``None`` unless some accumulator value jumps several levels: then the
        lookup counts distinct transitions into an index of ``levels`` (one more gather).

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
        same_next = np.zeros(t.shape, bool)
        same_next[:, :-1] = t[:, 1:] == t[:, :-1]
        keep = valid & ~same_next  # one transition per distinct accumulator value (a run's last threshold)
        before = np.count_nonzero(t <= -r, axis=1)  # levels passed below the lowest reachable accumulator
        levels = None
        if np.any(valid & same_next):  # several levels at one accumulator value: count transitions, then map
            kept = keep.sum(axis=1)
            start = np.cumsum(kept + 1) - (kept + 1)
            levels = np.empty(int((kept + 1).sum()))
            levels[start] = self.low + before
            rk, ck = np.nonzero(keep)
            levels[start[rk] + 1 + np.arange(rk.size) - (np.cumsum(kept) - kept)[rk]] = self.low + ck + 1
            q_min = start  # the lookup gives an index into ``levels``
        else:
            q_min = self.low + before  # activation at the lowest reachable accumulator
        empty = ~valid.any(axis=1)  # constant channel: one transition at R + 1, never reached
        big = np.iinfo(np.int64).max
        first = np.where(empty, reach + 1, np.where(valid, t, big).min(axis=1))
        last = np.where(empty, reach + 1, np.where(valid, t, -big).max(axis=1))
        diff = t[:, 1:] - t[:, :-1]
        step = valid[:, 1:] & valid[:, :-1] & (diff > 0)  # consecutive distinct transitions
        gap = np.where(step.any(axis=1), np.where(step, diff, big).min(axis=1), 1)
        s = np.frexp(gap.astype(np.float64))[1].astype(np.int64) - 1  # 2**s <= gap: at most one transition per cell
        n = ((last - first) >> s) + 1
        sizes = n + 2
        total = int(sizes.sum())
        if total > self.MAX_CELLS:
            return None
        cell0 = np.cumsum(sizes) - sizes
        rows, cols = np.nonzero(keep)
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
        return 2.0 ** -s.astype(np.float64), (-first, cell_lo + 1.0), entries, cell_lo, cell_lo + sizes - 1, levels

    def buffers(self, lead: tuple[int, ...]) -> list[np.ndarray]:
        f64 = lead + (self.out,)
        if self.mode == "lut":
            return [np.empty(f64), np.empty(f64), np.empty(f64, np.intp)]
        if self.mode == "lut2":
            return [np.empty(f64), np.empty(f64), np.empty(f64, np.intp), np.empty(f64), np.empty(f64, np.intp)]
        return [np.empty(f64)]

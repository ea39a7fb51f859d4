"""Each int8 layer's output stage as a branch-free numpy lookup on its int32 accumulator.

numpy only. ``rlaccel.quant.tables`` gives, per layer and channel, the accumulator thresholds at
which the layer's int8 output (requantise, zero point, clamp, TANH) steps up a level;
:class:`LayerLookup` turns them into the few numpy calls ``rlaccel.reference.Int8Network``
runs per layer, with float64 arithmetic that is exact (module docstring of ``reference``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["LEVELS", "LayerLookup", "reach"]

LEVELS = 255  # thresholds per channel: int8 levels -127 .. 127 (the level -128 needs none)


def reach(w_q: np.ndarray, b_q: np.ndarray) -> np.ndarray:
    """``[out]`` int64: the bound on ``|acc|`` the tables use, ``255 sum|w| + |b|`` (``rlaccel.quant.reach``)."""
    return 255 * np.abs(np.asarray(w_q, np.int64)).sum(axis=0) + np.abs(np.asarray(b_q, np.int64))



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

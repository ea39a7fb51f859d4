"""Policy runtimes: ``policy.act(obs) -> action`` without JAX (numpy, onnxruntime) or with it.

Every backend takes one observation ``[obs_dim]`` or a batch ``[B, obs_dim]`` and returns the
deterministic action: ``argmax`` of the logits / Q-values (an ``int``, or ``int64 [B]``), or
the Gaussian mean clipped to the action bounds (``float32 [A]`` or ``[B, A]``). The PPO
observation normaliser is applied inside.

**numpy-int8** computes exactly the integers of the training actors' int8 path
(``rlaccel.quant.apply`` under ``jax.jit`` on a CPU), with float BLAS:

* Input: ``clip(rint(((obs - mean) * inv_std) * input_mult), lo, hi)`` in float32, as XLA
  evaluates ``normalize`` (it rewrites ``/ sqrt`` to ``* rsqrt``; ``inv_std`` is XLA's
  value, stored at export). Clipping to ``+-clip_obs`` before the multiply equals clipping
  the rounded product to ``rint(clip_obs * input_mult)`` afterwards (rounding is monotone),
  so ``lo, hi`` fold both clips into one.
* Products: the int8 weights are widened once to float64 and the bias becomes one more
  weight row against a constant-1 input, so ``np.matmul`` / ``np.dot`` return the int32
  accumulator. This is exact: every product is an integer ``|x_q w_q| <= 127 * 127``, and
  every partial sum of a dot product over ``K`` inputs is an integer bounded by
  ``R = 16,129 K + |b_q| < 2**31`` (``rlaccel.quant``'s own overflow bound). Integers below
  ``2**53`` are exact in float64 and sums of them are exact in any order, with or without
  FMA, so BLAS returns the same integer as an int32 accumulator.
* Hidden activations: ``quant.requantize`` (dequantise, tanh/relu/elu, quantise with the
  next scale) is monotone in each channel's accumulator, so it is a step function, which the
  artifact tabulates as per-channel thresholds computed with XLA's own tanh (numpy's tanh
  differs from XLA's by a few ulp: 2.4e-6 of the requantised values in the transition range
  come out one level apart, measured on a trained CartPole layer). At load time the
  thresholds become a branch-free lookup (:class:`_Hidden`): the hidden layer's columns are
  scaled by a power of two and shifted (still exact: multiples of ``2**-s`` below
  ``2**53``) so that ``floor(key)`` indexes a cell holding at most one threshold, and
  ``h_q = floor(key + D[cell])``. A binary search (``np.searchsorted``) gives the same
  integers but mispredicts branches on every new observation (~4 µs per 64-wide layer).
* Output: ``float32(acc) * out_scale``, as ``quant.apply`` (float64 -> float32 rounds the
  exact integer as int32 -> float32 does).

Buffers are preallocated per batch size, so a policy object is not thread-safe: give each
thread its own (``load_policy`` is cheap).
"""

from __future__ import annotations

import functools
import json
from math import isfinite
from pathlib import Path
from typing import Any

import numpy as np

from rlaccel.deploy.artifact import LEVELS, Artifact, PolicyError, read

BACKENDS = ("numpy-int8", "numpy-fp32", "onnx-int8", "onnx-fp32", "jax", "jax-int8", "jax-fp32")
QMAX = 127
_F64_EXACT = 2**53

try:  # the clip ufunc itself: np.clip's Python wrapper costs ~1 µs per call
    from numpy._core.umath import clip as _clip
except ImportError:  # numpy < 2
    from numpy.core.umath import clip as _clip


class Policy:
    """A deterministic policy: ``act(obs) -> action``; subclasses implement :meth:`head`."""

    backend = ""

    def __init__(self, artifact: Artifact, name: str = "policy"):
        self.artifact = artifact
        self.meta = artifact.meta
        self.name = name
        self.obs_dim = artifact.obs_dim
        self._zeros = np.zeros(self.obs_dim, np.float32)
        self.discrete = artifact.discrete
        space = self.meta["action_space"]
        if self.discrete:
            self.num_actions = int(space["n"])
        else:
            self._low = np.asarray(space["low"], np.float32).reshape(-1)
            self._high = np.asarray(space["high"], np.float32).reshape(-1)

    def _batch(self, obs: Any) -> tuple[np.ndarray, bool]:
        """``obs`` as float32 ``[B, obs_dim]`` and whether it was a single observation."""
        try:
            x = np.asarray(obs, dtype=np.float32)
        except (TypeError, ValueError):
            raise PolicyError(f"{self.name}: observation is not numeric ({type(obs).__name__})") from None
        if x.ndim == 1 and x.shape[0] == self.obs_dim:
            x, single = x.reshape(1, -1), True
        elif x.ndim == 2 and x.shape[1] == self.obs_dim:
            single = False
        else:
            raise PolicyError(
                f"{self.name}: observation shape {tuple(x.shape)} does not match the policy's observation space "
                f"({self.obs_dim},) of {self.meta.get('env', '?')} (pass [{self.obs_dim}] or [batch, {self.obs_dim}])"
            )
        if not np.isfinite(x).all():
            raise self._non_finite()
        return x, single

    def _non_finite(self) -> PolicyError:
        return PolicyError(f"{self.name}: observation contains NaN or infinity")

    def head(self, x: np.ndarray) -> np.ndarray:
        """Raw policy output ``float32 [B, out]`` (logits, Gaussian mean or Q-values) for ``x [B, obs_dim]``."""
        raise NotImplementedError

    def act(self, obs: Any) -> Any:
        """Deterministic action for ``obs [obs_dim]`` (one) or ``[B, obs_dim]`` (a batch).

        Returns:
          Discrete: ``int`` (one) or ``int64 [B]``. Continuous: ``float32 [A]`` or ``[B, A]``,
          the mean clipped to the action space's bounds.

        Raises:
          PolicyError: the observation's shape does not match the observation space.
        """
        x, single = self._batch(obs)
        head = self.head(x)
        if self.discrete:
            a = head.argmax(axis=1)
            return int(a[0]) if single else a
        a = np.minimum(np.maximum(head, self._low), self._high)
        return a[0] if single else a

    def check_spaces(self, observation_space: Any, action_space: Any) -> None:
        """Raise :class:`PolicyError` unless gymnasium spaces match the ones the policy was trained on."""
        obs_shape = tuple(getattr(observation_space, "shape", ()) or ())
        if obs_shape != (self.obs_dim,):
            raise PolicyError(f"{self.name}: env observation space has shape {obs_shape}, the policy expects ({self.obs_dim},)")
        n = getattr(action_space, "n", None)
        if self.discrete:
            if n is None or int(n) != self.num_actions:
                raise PolicyError(f"{self.name}: env action space is {action_space}, the policy outputs Discrete({self.num_actions})")
        else:
            shape = tuple(getattr(action_space, "shape", ()) or ())
            if n is not None or shape != self._low.shape:
                raise PolicyError(f"{self.name}: env action space is {action_space}, the policy outputs Box{self._low.shape}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.meta.get('algo')} {self.meta.get('env')} backend={self.backend}>"


def _hidden_sizes(a: Artifact) -> list[int]:
    return [a.obs_dim, *(int(h) for h in a.meta["policy"]["hidden"]), int(a.meta["policy"]["out_dim"])]


class _Hidden:
    """One hidden layer of the numpy-int8 path: weights with folded bias, and how to requantise.

    ``lut`` (the usual case): the columns of ``w`` are scaled by ``2**-s_j`` and shifted, so
    ``np.matmul`` returns ``key_j = (acc_j - first_j) / 2**s_j + cell0_j``, exactly (every
    term is an integer multiple of ``2**-s_j`` below ``2**53``). ``2**s_j`` is at most the
    smallest gap between channel ``j``'s thresholds, so each cell ``floor(key)`` holds at
    most one threshold; the cell's entry (a complex number: real = that threshold in key
    units or +inf, imag = the activation below it) gives ``h_q = base + (key >= thr)``.
    Branch-free, unlike a binary search whose mispredictions cost ~4 µs per 64-wide layer
    at batch 1 on varying inputs.

    ``search`` (fallback: a jump of two levels at one accumulator value, or a table over
    ``MAX_CELLS``): the accumulator plus disjoint per-channel offsets, one ``searchsorted``
    over all channels' thresholds.
    """

    MAX_CELLS = 1 << 20

    def __init__(self, w: np.ndarray, b: np.ndarray, thresholds: np.ndarray, name: str, index: int):
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
            raise PolicyError(f"{name}: activation table of layer {index} is not sorted or too wide")
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
        far below ``2**53``: exact.
        """
        shifts, firsts, cell0s, entries = [], [], [], []
        total = 0
        for t, r in zip(thresholds.astype(np.int64), reach):
            q_min = -QMAX + int(np.count_nonzero(t <= -r))  # activation at the lowest reachable accumulator
            u = t[(t > -r) & (t <= r)]  # the transitions that can happen
            if u.size and np.any(np.diff(u) == 0):
                return None  # two levels at one accumulator value
            if u.size == 0:
                u = np.asarray([r + 1])  # constant channel: its one transition is never reached
            gap = int(np.diff(u).min()) if u.size > 1 else 1
            s = gap.bit_length() - 1  # 2**s <= gap: at most one transition per cell
            n = int((u[-1] - u[0]) >> s) + 1
            cell0 = total
            total += n + 2
            if total > self.MAX_CELLS:
                return None
            cell = ((u - u[0]) >> s) + 1  # 1 .. n: the cell of each transition
            starts = np.arange(n + 2, dtype=np.float64)
            thr = starts + 1.0
            thr[cell] = (u - u[0]) / 2.0**s + 1.0
            base = q_min + np.searchsorted(cell, np.arange(n + 2), side="left").astype(np.float64)
            base[-1] = q_min + u.size
            thr[-1] = n + 2.0
            entries.append(base + 1.0 - (thr + cell0))
            shifts.append(s)
            firsts.append(int(u[0]))
            cell0s.append(cell0)
        cell_lo = np.asarray(cell0s, np.float64)
        sizes = np.diff(np.r_[cell_lo, total])
        return 2.0 ** -np.asarray(shifts, np.float64), (-np.asarray(firsts, np.int64), cell_lo + 1.0), np.concatenate(entries), cell_lo, cell_lo + sizes - 1

    def buffers(self, lead: tuple[int, ...]) -> list[np.ndarray]:
        f64 = lead + (self.out,)
        if self.mode == "lut":
            return [np.empty(f64), np.empty(f64), np.empty(f64, np.intp)]
        return [np.empty(f64)]


class _NumpyPolicy(Policy):
    """What both numpy backends share: one forward closure over preallocated buffers per batch size."""

    def _make_forward(self, lead: tuple[int, ...], matmul: Any) -> Any:
        """``x float32 [*lead, obs_dim] -> head float32 [*lead, out]`` (a view of a reused buffer)."""
        raise NotImplementedError

    def head(self, x: np.ndarray) -> np.ndarray:
        """``float32 [B, out]`` for ``x float32 [B, obs_dim]``; forwards for up to 8 batch sizes are kept."""
        n = x.shape[0]
        fwd = self._batches.get(n)
        if fwd is None:
            if len(self._batches) >= 8:
                self._batches.clear()
            fwd = self._batches[n] = self._make_forward((n,), np.matmul)
        return fwd(x).copy()

    def act(self, obs: Any) -> Any:
        """See :meth:`Policy.act`; a float32 ``[obs_dim]`` array takes the batch-1 path (``_act_single``)."""
        if type(obs) is np.ndarray and obs.dtype == np.float32 and obs.shape == (self.obs_dim,):
            if not isfinite(obs.dot(self._zeros)):  # 0 * nan = 0 * inf = nan; ~0.3 µs
                raise self._non_finite()
            return self._act_single(obs)
        return super().act(obs)


class NumpyInt8Policy(_NumpyPolicy):
    """The int8 policy in numpy, bit-exact with ``rlaccel.quant.apply`` (module docstring)."""

    backend = "numpy-int8"

    def __init__(self, artifact: Artifact, name: str = "policy"):
        super().__init__(artifact, name)
        arr, norm = artifact.arrays, artifact.meta["normalization"]
        L = artifact.num_layers
        self._mult = arr["int8.input_mult"]
        self._norm = bool(norm.get("norm_obs"))
        lim = np.full(self.obs_dim, np.inf, np.float32)
        if self._norm:
            self._mean, self._inv_std = arr["obs.mean"], arr["obs.inv_std"]
            lim = np.rint(np.float32(norm["clip_obs"]) * self._mult)
        self._lo = np.maximum(-lim, -QMAX).astype(np.float32)
        self._hi = np.minimum(lim, QMAX).astype(np.float32)
        self._hidden = [
            _Hidden(arr[f"int8.w{i}"].astype(np.int64), arr[f"int8.b{i}"].astype(np.int64), arr[f"int8.thresholds{i}"], name, i) for i in range(L - 1)
        ]
        self._w_out = np.vstack([arr[f"int8.w{L - 1}"], arr[f"int8.b{L - 1}"][None]]).astype(np.float64)
        self._scale = arr[f"int8.out_scale{L - 1}"]
        self._act_single = self._make_single()
        self._batches: dict[int, Any] = {}

    def _alloc(self, lead: tuple[int, ...]) -> list[Any]:
        """Buffers for a batch shape ``lead`` (``()`` for one observation); inputs end in a 1 column."""
        def inp(n: int) -> np.ndarray:
            x = np.empty(lead + (n + 1,))
            x[..., -1] = 1.0
            return x

        ins = [inp(self.obs_dim)] + [inp(h.out) for h in self._hidden]
        return [
            np.empty(lead + (self.obs_dim,), np.float32),
            ins,
            [h.buffers(lead) for h in self._hidden],
            np.empty(lead + (self._w_out.shape[1],)),
            np.empty(lead + (self._w_out.shape[1],), np.float32),
        ]

    def _quantize_input(self, x: np.ndarray, tmp: np.ndarray, out: np.ndarray) -> None:
        if self._norm:
            np.subtract(x, self._mean, out=tmp)
            np.multiply(tmp, self._inv_std, out=tmp)
            np.multiply(tmp, self._mult, out=tmp)
        else:
            np.multiply(x, self._mult, out=tmp)
        np.rint(tmp, out=tmp)
        _clip(tmp, self._lo, self._hi, out=tmp)
        np.copyto(out, tmp)

    def _make_forward(self, lead: tuple[int, ...], matmul: Any) -> Any:
        """``x float32 [*lead, obs_dim] -> head float32 [*lead, out]`` (a view of a reused buffer).

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
        quantize = functools.partial(self._quantize_input, tmp=tmp, out=x_q)
        copyto, multiply, floor, add, subtract = np.copyto, np.multiply, np.floor, np.add, np.subtract
        clip = _clip

        def forward(x: np.ndarray) -> np.ndarray:
            quantize(x)
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

    def _make_single(self) -> Any:
        """The batch-1 path: 1-D buffers and ``np.dot`` (a BLAS gemv without ``np.matmul``'s set-up)."""
        forward = self._make_forward((), np.dot)
        if self.discrete:
            return lambda x: int(forward(x).argmax())
        low, high, minimum, maximum = self._low, self._high, np.minimum, np.maximum
        return lambda x: minimum(maximum(forward(x), low), high)
class NumpyFp32Policy(_NumpyPolicy):
    """The learner's fp32 policy in numpy (``np.tanh``; not bit-exact with XLA, ~1e-7 apart)."""

    backend = "numpy-fp32"

    def __init__(self, artifact: Artifact, name: str = "policy"):
        super().__init__(artifact, name)
        arr, norm = artifact.arrays, artifact.meta["normalization"]
        self._norm = bool(norm.get("norm_obs"))
        if self._norm:
            self._mean, self._inv_std = arr["obs.mean"], arr["obs.inv_std"]
            self._clip = np.float32(norm["clip_obs"])
        self._act = {"tanh": np.tanh, "relu": lambda x, out: np.maximum(x, 0, out=out), "elu": _elu}[artifact.meta["policy"]["activation"]]
        self._layers = [np.vstack([arr[f"fp32.w{i}"], arr[f"fp32.b{i}"][None]]) for i in range(artifact.num_layers)]
        self._batches: dict[int, Any] = {}
        forward = self._make_forward((), np.dot)
        if self.discrete:
            self._act_single = lambda x: int(forward(x).argmax())
        else:
            low, high, minimum, maximum = self._low, self._high, np.minimum, np.maximum
            self._act_single = lambda x: minimum(maximum(forward(x), low), high)

    def _make_forward(self, lead: tuple[int, ...], matmul: Any) -> Any:
        """``x float32 [*lead, obs_dim] -> head [*lead, out]`` over preallocated buffers (bias as a 1 column)."""
        ins = []
        for w in self._layers:
            inp = np.empty(lead + (w.shape[0],), np.float32)
            inp[..., -1] = 1.0
            ins.append(inp)
        out = np.empty(lead + (self._layers[-1].shape[1],), np.float32)
        x0 = ins[0][..., :-1]
        steps = [(inp, w, nxt[..., :-1]) for inp, w, nxt in zip(ins[:-1], self._layers[:-1], ins[1:])]
        last_in, last_w, act, norm = ins[-1], self._layers[-1], self._act, self._norm
        mean, inv_std, c = (self._mean, self._inv_std, self._clip) if norm else (None, None, None)
        subtract, multiply, copyto = np.subtract, np.multiply, np.copyto

        def forward(x: np.ndarray) -> np.ndarray:
            if norm:
                subtract(x, mean, out=x0)
                multiply(x0, inv_std, out=x0)
                _clip(x0, -c, c, out=x0)
            else:
                copyto(x0, x)
            for inp, w, nxt in steps:
                matmul(inp, w, out=nxt)
                act(nxt, out=nxt)
            return matmul(last_in, last_w, out=out)

        return forward


def _elu(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    np.copyto(out, np.where(x > 0, x, np.expm1(np.minimum(x, 0))))
    return out


class OnnxPolicy(Policy):
    """The artifact's network as an ONNX model (``rlaccel.deploy.onnx_model``) on onnxruntime's CPU provider."""

    def __init__(self, artifact: Artifact, precision: str, name: str = "policy", model_bytes: bytes | None = None, threads: int = 1):
        super().__init__(artifact, name)
        import onnxruntime as ort

        from rlaccel.deploy.onnx_model import build_model

        self.backend = f"onnx-{precision}"
        if model_bytes is None:
            model_bytes = build_model(artifact, precision).SerializeToString()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        self._run = self.session.run

    def head(self, x: np.ndarray) -> np.ndarray:
        return self._run(["head"], {"obs": x})[0]

    def act(self, obs: Any) -> Any:
        x, single = self._batch(obs)
        a = self._run(["action"], {"obs": x})[0]
        if self.discrete:
            return int(a[0]) if single else a
        return a[0] if single else a


class JaxPolicy(Policy):
    """The artifact run by JAX: ``int8`` through ``rlaccel.quant.apply`` (the training actors'
    code), ``fp32`` through the same MLP as the learner; one ``jax.jit`` per batch shape."""

    def __init__(self, artifact: Artifact, precision: str, name: str = "policy"):
        super().__init__(artifact, name)
        import jax
        import jax.numpy as jnp

        from rlaccel import normalize, quant

        self.backend = f"jax-{precision}"
        arr, norm, L = artifact.arrays, artifact.meta["normalization"], artifact.num_layers
        activation = artifact.meta["policy"]["activation"]
        stats = normalize.RunningStats(mean=jnp.asarray(arr["obs.mean"]), var=jnp.asarray(arr["obs.var"]), count=jnp.float32(1)) if norm.get("norm_obs") else None
        clip_obs = float(norm.get("clip_obs", 10.0))
        if precision == "int8":
            params: Any = quant.QuantParams(
                input_mult=jnp.asarray(arr["int8.input_mult"]),
                layers=tuple(
                    quant.QuantLayer(w_q=jnp.asarray(arr[f"int8.w{i}"]), b_q=jnp.asarray(arr[f"int8.b{i}"]), out_scale=jnp.asarray(arr[f"int8.out_scale{i}"]))
                    for i in range(L)
                ),
                act_scales=jnp.asarray(arr["int8.act_scales"]),
                activation=activation,
            )
            net = quant.apply
        else:
            params = [(jnp.asarray(arr[f"fp32.w{i}"]), jnp.asarray(arr[f"fp32.b{i}"])) for i in range(L)]
            act_fn = {"tanh": jnp.tanh, "relu": jax.nn.relu, "elu": jax.nn.elu}[activation]

            def net(layers: Any, x: Any) -> Any:
                for w, b in layers[:-1]:
                    x = act_fn(x @ w + b)
                w, b = layers[-1]
                return x @ w + b

        def head(params: Any, stats: Any, x: Any) -> Any:
            if stats is not None:
                x = normalize.normalize(stats, x, clip=clip_obs)
            return net(params, x)

        self._params, self._stats = params, stats
        self._head = jax.jit(head)

    def head(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._head(self._params, self._stats, x))


def load_policy(path: str | Path, backend: str = "numpy-int8", **kwargs: Any) -> Policy:
    """Load an exported policy (``scripts/export.py``) for one of the runtimes.

    Args:
      path: a ``.rlpolicy`` artifact, or an ``.onnx`` model written by ``scripts/export.py
        --format onnx-int8|onnx-fp32`` (onnx backends only; it carries the metadata).
      backend: ``numpy-int8`` (bit-exact with the training actors; no JAX), ``numpy-fp32``,
        ``onnx-int8`` (QDQ model), ``onnx-fp32``, ``jax`` (= ``jax-int8``, the actors'
        ``rlaccel.quant`` code) or ``jax-fp32``.
      **kwargs: ``threads`` for the onnx backends (onnxruntime intra-op threads, default 1).

    Raises:
      PolicyError: unknown backend, unreadable/edited/truncated/future-version artifact.
    """
    if backend not in BACKENDS:
        raise PolicyError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    path = Path(path)
    if path.suffix == ".onnx":
        if not backend.startswith("onnx-"):
            raise PolicyError(f"{path}: an ONNX model runs on the onnx-int8 / onnx-fp32 backends, not {backend}")
        artifact, model_bytes = _read_onnx(path)
        return OnnxPolicy(artifact, backend.split("-")[1], str(path), model_bytes=model_bytes, **kwargs)
    artifact = read(path)
    if backend == "numpy-int8":
        return NumpyInt8Policy(artifact, str(path))
    if backend == "numpy-fp32":
        return NumpyFp32Policy(artifact, str(path))
    if backend.startswith("onnx-"):
        return OnnxPolicy(artifact, backend.split("-")[1], str(path), **kwargs)
    return JaxPolicy(artifact, "fp32" if backend == "jax-fp32" else "int8", str(path))


def _read_onnx(path: Path) -> tuple[Artifact, bytes]:
    """An exported ONNX model and the rlaccel metadata it carries (``metadata_props``)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        raw = path.read_bytes()
        model = onnx.load_from_string(raw)
    except OSError as e:
        raise PolicyError(f"{path}: cannot read model ({e.strerror})") from None
    except (DecodeError, ValueError) as e:
        raise PolicyError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "rlaccel_meta" not in props:
        raise PolicyError(f"{path}: ONNX model has no rlaccel metadata (export it with scripts/export.py)")
    return Artifact(meta=json.loads(props["rlaccel_meta"]), arrays={}), raw


"""The C export's integer kernels compiled once, for any int8 model: host actors' ``actors.policy: c``.

The C export (``rlaccel.deploy.c_model``) writes one model's weights into its source, so each
model is a compile. Host actors get a new model after every learner update (thousands a run),
so here the same kernels (the export's QUANTIZE, requantisation and FULLY_CONNECTED text,
reused verbatim) sit behind one generic entry point that reads the model from pointers::

    void rl_head(const rl_model *m, const float *obs, float *head, int8_t *latent, int n);

compiled once per profile and kept in the C cache (``rlaccel.deploy.c_runtime.cache_dir``).
:class:`CInt8Network` fills an ``rl_model`` from an ``Int8Model``'s numpy arrays (no threshold
tables: building one is ~0.1 ms against ~13 ms for the numpy reference's lookup tables of a
17-256-256-6 policy) and has the numpy networks' interface (``forward``, ``features``), bit for
bit ``rlaccel.int8model.head`` (``tests/test_c_kernel.py``).

Compiled ``-O3`` for the host it runs on (``-march=native``; the cache key holds the CPU's
model and flags, so a cache shared between machines never runs another CPU's code).
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
from pathlib import Path
from typing import Any

import numpy as np

from rlaccel import intmath
from rlaccel.deploy.c_model import kernels, layers, validate
from rlaccel.deploy.c_runtime import cache_dir, compile_library, find_compiler
from rlaccel.int8model import Int8Model, Int8Payload, hidden_input_zero
from rlaccel.reference import Fp32Network, Int8Network
from rlaccel.reference import network as numpy_network

__all__ = ["CFLAGS", "CInt8Network", "library", "network", "unavailable"]

CFLAGS = ("-O3", "-march=native", "-std=c99", "-shared", "-fPIC")

MAX_WIDTH = 4096  # the config's widest layer (rlaccel.schema); the kernel's stack buffers

_DRIVER = """
typedef struct {
    int32_t n_layers, norm, in_zero, out_zero_last;
    float in_scale, clip, out_scale;
    const float *gain, *mean, *inv_std;
    const int32_t *dims;                      /* [L + 1] */
    const int8_t *const *w;                   /* [L] of [out][in], row-major */
    const int32_t *const *bias;               /* [L], the input zero point folded in */
    const int32_t *const *mult, *const *shift;
    const int32_t *out_zero, *act_min, *act_max; /* [L] */
    const int8_t *const *tanh_table;          /* [L], NULL for none */
} rl_model;

#define RL_MAX_WIDTH %(max_width)d

/* n observations obs[n][dims[0]] -> head[n][dims[L]]; latent (may be NULL) gets the last hidden
 * layer's int8 outputs [n][dims[L - 1]]. The same arithmetic as the C export's policy.c. */
void rl_head(const rl_model *m, const float *obs, float *head, int8_t *latent, int n)
{
    int8_t a[RL_MAX_WIDTH], b[RL_MAX_WIDTH];
    int i, k, l, L = m->n_layers, in = m->dims[0], out = m->dims[L];
    for (i = 0; i < n; ++i) {
        const float *o = obs + (long)i * in;
        int8_t *x = a, *y = b, *t;
        for (k = 0; k < in; ++k) {
            if (m->norm) {
                float u = (o[k] - m->mean[k]) * m->inv_std[k];
                u = u < -m->clip ? -m->clip : u;  /* NaN passes through, as numpy's clip */
                u = u > m->clip ? m->clip : u;
                x[k] = quantize_with(u * m->gain[k], m->in_scale, m->in_zero);
            } else {
                x[k] = quantize_with(o[k] * m->gain[k], m->in_scale, m->in_zero);
            }
        }
        for (l = 0; l < L; ++l) {
            if (latent && l == L - 1)
                for (k = 0; k < m->dims[l]; ++k) latent[(long)i * m->dims[l] + k] = x[k];
            fully_connected(x, m->dims[l], m->dims[l + 1], m->w[l], m->bias[l], m->mult ? m->mult[l] : 0, m->shift[l],
                            m->out_zero[l], m->act_min[l], m->act_max[l], m->tanh_table[l], y);
            t = x; x = y; y = t;
        }
        for (k = 0; k < out; ++k) /* DEQUANTIZE, one float32 product */
            head[(long)i * out + k] = (float)((int32_t)x[k] - m->out_zero_last) * m->out_scale;
    }
}
"""

_PRELUDE = """/* rlaccel's host-actor kernel (generated; see rlaccel/deploy/c_kernel.py). */
#include <float.h>
#include <stdint.h>
#include <stddef.h>

#if defined(FLT_EVAL_METHOD) && (FLT_EVAL_METHOD == 1 || FLT_EVAL_METHOD == 2)
#error "float expressions are evaluated in a wider type (x87?): compile with SSE (-mfpmath=sse -msse2)"
#endif
"""

_VOIDP = ctypes.c_void_p


class _Model(ctypes.Structure):
    """``rl_model`` of :data:`_DRIVER`, field for field (pointers into numpy arrays)."""

    _fields_ = [
        ("n_layers", ctypes.c_int32), ("norm", ctypes.c_int32), ("in_zero", ctypes.c_int32), ("out_zero_last", ctypes.c_int32),
        ("in_scale", ctypes.c_float), ("clip", ctypes.c_float), ("out_scale", ctypes.c_float),
        ("gain", _VOIDP), ("mean", _VOIDP), ("inv_std", _VOIDP), ("dims", _VOIDP), ("w", _VOIDP), ("bias", _VOIDP), ("mult", _VOIDP), ("shift", _VOIDP),
        ("out_zero", _VOIDP), ("act_min", _VOIDP), ("act_max", _VOIDP), ("tanh_table", _VOIDP),
    ]  # fmt: skip


_LIBRARIES: dict[str, Any] = {}
_LOCK = threading.Lock()


def _cpu_id() -> str:
    """This CPU's model and flags (``-march=native`` code runs only where they match)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    keep = [line for line in text.splitlines() if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(keep)))


def library(profile: str) -> Any:
    """The compiled kernel of ``profile`` (``tflite`` or ``pow2``), compiled on first use and cached.

    Raises:
      rlaccel.deploy.artifact.PolicyError: no C compiler, or it failed.
    """
    with _LOCK:
        if profile not in _LIBRARIES:
            source = _PRELUDE + f"#define RLACCEL_MAX_IN {MAX_WIDTH}\n" + kernels(profile) + _DRIVER % {"max_width": MAX_WIDTH}
            command = [*find_compiler(), *CFLAGS, "kernel.c", "-o"]
            digest = hashlib.sha256(repr((command, source, _cpu_id())).encode()).hexdigest()[:20]
            directory = cache_dir() / f"kernel-{digest}"
            if not (directory / "policy.so").exists():
                compile_library(directory, {"kernel.c": source}, command)
            lib = ctypes.CDLL(str(directory / "policy.so"))
            lib.rl_head.argtypes = [ctypes.POINTER(_Model), _VOIDP, _VOIDP, _VOIDP, ctypes.c_int]
            lib.rl_head.restype = None
            _LIBRARIES[profile] = lib
        return _LIBRARIES[profile]


def unavailable(profile: str) -> str | None:
    """``None`` where :func:`library` builds (or has built) ``profile``'s kernel, else why not (one line)."""
    from rlaccel.deploy.artifact import PolicyError

    try:
        library(profile)
    except PolicyError as e:
        return str(e).splitlines()[0]
    return None


def _pointers(arrays: list[np.ndarray]) -> Any:
    return (_VOIDP * len(arrays))(*[a.ctypes.data for a in arrays])


class CInt8Network:
    """An int8 model's head through the compiled kernel: ``rlaccel.int8model.head`` bit for bit.

    The numpy networks' interface (``rlaccel.reference``): :meth:`forward`, :meth:`features`,
    ``in_dim``, ``out_dim``. Thread-safe (the kernel keeps its buffers on the stack).

    Args:
      model: the ``Int8Model`` (numpy leaves).
      profile: ``tflite`` or ``pow2``.
      activation: ``tanh`` or ``relu``.
      normalizer: ``rlaccel.reference.Normalizer`` applied first, or ``None``.
      clip_obs: the normaliser's clip.

    Raises:
      ValueError: a model the C kernels cannot run (``c_model``'s checks: profile, activation,
        shifts, accumulator range), or a layer wider than ``MAX_WIDTH``.
      rlaccel.deploy.artifact.PolicyError: no C compiler.
    """

    def __init__(self, model: Int8Model, profile: str, activation: str, normalizer: Any = None, clip_obs: float = 10.0):
        validate(model, profile, activation)
        L = len(model.w_q)
        dims = [int(np.shape(model.w_q[0])[0])] + [int(np.shape(w)[1]) for w in model.w_q]
        if max(dims) > MAX_WIDTH:
            raise ValueError(f"c kernel: layers wider than {MAX_WIDTH} ({dims})")
        self.in_dim, self.out_dim = dims[0], dims[-1]
        self._lib = library(profile)
        keep: list[Any] = []  # every array the struct points into lives as long as this object

        def arr(x: Any, dtype: Any) -> np.ndarray:
            a = np.ascontiguousarray(np.asarray(x), dtype)
            keep.append(a)
            return a

        arrays = layers(model, activation)  # the C export's rows, folded biases and TANH tables
        w = [arr(rows, np.int8) for rows, _, _ in arrays]
        bias = [arr(b, np.int32) for _, b, _ in arrays]
        tanh = [None if k is None else arr(intmath.TANH_TABLES[k], np.int8) for _, _, k in arrays]
        norm = normalizer is not None
        m = _Model(
            n_layers=L, norm=int(norm), in_zero=int(model.in_zero), out_zero_last=int(model.out_zero[-1]),
            in_scale=float(np.float32(model.in_scale)), clip=float(np.float32(clip_obs)), out_scale=float(np.float32(model.out_scale[-1])),
        )  # fmt: skip
        m.gain = arr(model.gain, np.float32).ctypes.data
        if norm:
            m.mean, m.inv_std = arr(normalizer.mean, np.float32).ctypes.data, arr(normalizer.inv_std, np.float32).ctypes.data
        m.dims = arr(dims, np.int32).ctypes.data
        for name, xs in (("w", w), ("bias", bias), ("shift", [arr(model.shift[i], np.int32) for i in range(L)])):
            table = _pointers(xs)
            keep.append(table)
            setattr(m, name, ctypes.addressof(table))
        if profile == "tflite":
            mult = _pointers([arr(model.mult[i], np.int32) for i in range(L)])
            keep.append(mult)
            m.mult = ctypes.addressof(mult)
        for name, values in (("out_zero", model.out_zero), ("act_min", model.act_min), ("act_max", model.act_max)):
            setattr(m, name, arr([int(v) for v in values], np.int32).ctypes.data)
        tables = (_VOIDP * L)(*[t.ctypes.data if t is not None else None for t in tanh])
        keep.append(tables)
        m.tanh_table = ctypes.addressof(tables)
        self._model, self._keep = m, keep
        self._ref, self._call = ctypes.byref(m), self._lib.rl_head
        self._latent_dim = dims[-2] if L > 1 else dims[0]
        self._latent_zero = hidden_input_zero(model, L - 1, activation)
        self._latent_scale = np.float32(intmath.TANH_OUT_SCALE if activation == "tanh" else model.out_scale[-2]) if L > 1 else np.float32(1.0)

    def _run(self, x: np.ndarray, latent: np.ndarray | None, out: np.ndarray | None = None) -> np.ndarray:
        """One kernel call: ``x [B, in]`` -> ``out [B, out]`` (a fresh array when ``None``, else a
        C-contiguous float32 one, written in place), the latent features into ``latent``."""
        x = np.ascontiguousarray(x, np.float32)
        n = x.shape[0] if x.ndim == 2 else -1
        if x.shape != (n, self.in_dim):
            raise ValueError(f"c kernel: observations of shape {x.shape}, expected [B, {self.in_dim}]")
        if out is None:
            out = np.empty((n, self.out_dim), np.float32)
        elif out.shape != (n, self.out_dim) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"c kernel: head buffer {out.shape} {out.dtype}, expected a C-contiguous float32 [{n}, {self.out_dim}]")
        self._call(self._ref, x.ctypes.data, out.ctypes.data, None if latent is None else latent.ctypes.data, n)
        return out

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Raw observations ``[B, in]`` float32 -> head ``[B, out]`` float32 (a fresh array)."""
        return self._run(x, None)

    def forward_into(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """:meth:`forward` written into ``out``, a C-contiguous ``[B, out]`` float32 array (a row
        block of a batch's buffer): one kernel call, nothing allocated. Returns ``out``."""
        return self._run(x, None, out)

    def features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(latent [B, h], head [B, out])``: the last hidden layer's int8 output dequantised, as
        ``rlaccel.reference.Int8Network.features``."""
        latent = np.empty((np.shape(x)[0], self._latent_dim), np.int8)
        head = self._run(x, latent)
        return np.multiply(latent.astype(np.float32) - np.float32(self._latent_zero), self._latent_scale, dtype=np.float32), head


def network(policy: Any, activation: str, normalizer: Any = None, clip_obs: float = 10.0) -> CInt8Network | Int8Network | Fp32Network:
    """The network a numpy actor computes ``policy`` (numpy leaves) with: :class:`CInt8Network`
    for an ``Int8Payload`` (``actors.policy: c``), else ``rlaccel.reference.network`` (the
    numpy reference's int8 tables or the fp32 MLP). The actors of every algorithm build theirs here."""
    if isinstance(policy, Int8Payload):
        return CInt8Network(policy.model, policy.profile, policy.activation, normalizer, clip_obs)
    return numpy_network(policy, activation, normalizer, clip_obs)

"""The ``c-int8`` backend: the C export (``rlaccel.deploy.c_model``) compiled on load and called through ctypes.

:class:`CHead` writes ``policy.h`` / ``policy.c`` plus a small ctypes glue file into a cache
directory named by the hash of their text and of the compile command
(``$RLACCEL_CACHE/c/<hash>``, default ``~/.cache/rlaccel/c/<hash>``), compiles them with the
system C compiler (``$CC``, else ``cc``, else ``gcc``; ``-O2 -std=c99 -shared -fPIC``) once, and
loads the shared library. Its heads are the C export's, bit for bit
:func:`rlaccel.int8model.head` (``tests/test_c_export.py``).

The glue adds what only a Python caller needs: static input / output buffers for the batch-1
path (one zero-argument ctypes call: 1.3 µs a decision against 2.1 µs when the pointers are
passed as ``ndarray.ctypes.data`` and 2.9 µs with a fresh output array each call), and ``rlaccel_policy_bench``, the bare C call timed with
``clock_gettime`` (:meth:`CHead.bench_bare_ns`). A ``CHead`` reuses its buffers: not
thread-safe; give each thread its own.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from rlaccel.deploy.artifact import PolicyError
from rlaccel.deploy.c_model import c_sources
from rlaccel.int8model import Int8Model

__all__ = ["CFLAGS", "CHead", "cache_dir", "compile_library", "find_compiler", "latency_ns"]

CFLAGS = ("-O2", "-std=c99", "-shared", "-fPIC")

_GLUE = """\
/* ctypes glue for rlaccel's c-int8 backend (not part of the export). */
#define _POSIX_C_SOURCE 199309L
#include <time.h>

#include "policy.h"

float rlaccel_ctypes_obs[RLACCEL_OBS_DIM];
float rlaccel_ctypes_head[RLACCEL_HEAD_DIM];

/* Batch 1 on the static buffers: a ctypes call without arguments to convert. */
void rlaccel_ctypes_head_one(void) { rlaccel_policy_head(rlaccel_ctypes_obs, rlaccel_ctypes_head); }

/* ns per decision of n calls of rlaccel_policy_head on obs (policy.c is another translation
 * unit: nothing is hoisted out of the loop). */
double rlaccel_policy_bench(const float *obs, int n)
{
    float head[RLACCEL_HEAD_DIM];
    volatile float sink = 0.0f;
    struct timespec t0, t1;
    int i;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (i = 0; i < n; ++i) {
        rlaccel_policy_head(obs, head);
        sink = head[0];
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    (void)sink;
    return ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / (n > 0 ? n : 1);
}
"""


def cache_dir() -> Path:
    """``$RLACCEL_CACHE/c`` or ``~/.cache/rlaccel/c``: where compiled policies are kept."""
    root = os.environ.get("RLACCEL_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "rlaccel") / "c"


def find_compiler() -> list[str]:
    """The C compiler command: ``$CC`` (split like a shell word list), else ``cc``, else ``gcc``.

    Raises:
      PolicyError: ``$CC`` names no executable, or neither ``cc`` nor ``gcc`` is on ``PATH``.
    """
    cc = os.environ.get("CC", "").strip()
    if cc:
        cmd = shlex.split(cc)
        if shutil.which(cmd[0]) is None:
            raise PolicyError(f"c-int8: C compiler $CC={cc!r} not found; set CC to a C compiler or unset it to use cc / gcc")
        return cmd
    for name in ("cc", "gcc"):
        if shutil.which(name):
            return [name]
    raise PolicyError("c-int8: no C compiler: neither cc nor gcc is on PATH and $CC is not set (install gcc, or set CC)")


class CHead:
    """An int8 model's head, computed by its C export compiled into a shared library.

    Args:
      model, profile, activation, mean, inv_std, clip: as :func:`rlaccel.deploy.c_model.write_c`.

    Raises:
      PolicyError: no C compiler, or the compiler failed (its message included).
    """

    def __init__(self, model: Int8Model, profile: str, activation: str, mean: Any = None, inv_std: Any = None, clip: float | None = None):
        sources = c_sources(model, profile, activation, mean, inv_std, clip)
        del sources["main.c"]
        sources["rlaccel_ctypes.c"] = _GLUE
        cc = find_compiler()
        command = [*cc, *CFLAGS, "policy.c", "rlaccel_ctypes.c", "-o"]
        digest = hashlib.sha256(repr((command, sorted(sources.items()))).encode()).hexdigest()[:20]
        self.directory = cache_dir() / digest
        self.library_path = self.directory / "policy.so"
        if not self.library_path.exists():
            compile_library(self.directory, sources, command)
        self.lib = ctypes.CDLL(str(self.library_path))
        self.obs_dim = int(np.shape(model.w_q[0])[0])
        self.head_dim = int(np.shape(model.w_q[-1])[1])
        self._batch = self.lib.rlaccel_policy_head_batch
        self._batch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        self._batch.restype = None
        self._bench = self.lib.rlaccel_policy_bench
        self._bench.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self._bench.restype = ctypes.c_double
        self._one = self.lib.rlaccel_ctypes_head_one
        self._one.argtypes = []
        self._one.restype = None
        self._in = np.ctypeslib.as_array((ctypes.c_float * self.obs_dim).in_dll(self.lib, "rlaccel_ctypes_obs"))
        self._out = np.ctypeslib.as_array((ctypes.c_float * self.head_dim).in_dll(self.lib, "rlaccel_ctypes_head"))

    def head_one(self, obs: np.ndarray) -> np.ndarray:
        """One observation float32 ``[obs_dim]`` -> head float32 ``[head_dim]`` (a fresh array).

        The batch-1 path: ``obs`` is copied (cast to float32) into the library's static input
        buffer and one argument-free ctypes call runs the C head. Shapes are not checked here
        (a wrong size raises numpy's broadcast error).
        """
        self._in[:] = obs
        self._one()
        return self._out.copy()

    def head(self, obs: np.ndarray) -> np.ndarray:
        """Observations ``[B, obs_dim]`` -> heads float32 ``[B, head_dim]`` (one C call)."""
        x = np.ascontiguousarray(obs, np.float32)
        if x.ndim != 2 or x.shape[1] != self.obs_dim:
            raise PolicyError(f"c-int8: observations of shape {x.shape}, expected [B, {self.obs_dim}]")
        out = np.empty((x.shape[0], self.head_dim), np.float32)
        self._batch(x.ctypes.data, out.ctypes.data, x.shape[0])
        return out

    def bench_bare_ns(self, n: int = 1_000, obs: np.ndarray | None = None, repeats: int = 101) -> float:
        """ns per decision of the bare C call ``rlaccel_policy_head`` on ``obs [obs_dim]`` (zeros by default).

        The median over ``repeats`` C loops of ``n`` calls each, timed by ``clock_gettime`` inside
        the library: robust to the odd preemption of a shared machine.
        """
        x = np.ascontiguousarray(np.zeros(self.obs_dim) if obs is None else obs, np.float32)
        return float(np.median([self._bench(x.ctypes.data, int(n)) for _ in range(repeats)]))


def compile_library(directory: Path, sources: dict[str, str], command: list[str]) -> None:
    """Write ``sources`` into ``directory`` and compile ``policy.so`` there under a temporary
    name, renamed into place once complete (concurrent loaders never see half a library)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in sources.items():
        (directory / name).write_text(text)
    tmp = f"policy.{os.getpid()}.tmp.so"
    try:
        proc = subprocess.run([*command, tmp], check=False, cwd=directory, capture_output=True, text=True, timeout=120)
    except OSError as e:
        raise PolicyError(f"c-int8: cannot run the C compiler {command[0]!r}: {e.strerror}") from None
    if proc.returncode != 0:
        raise PolicyError(f"c-int8: `{shlex.join(command)} {tmp}` failed in {directory} (exit {proc.returncode}):\n{proc.stderr.strip()[-2000:]}")
    os.replace(directory / tmp, directory / "policy.so")


def latency_ns(head: CHead, obs: np.ndarray, calls: int = 20_000, warmup: int = 2_000) -> dict[str, float]:
    """Batch-1 latency of :meth:`CHead.head_one` through ctypes, one ``perf_counter_ns`` per call.

    Args:
      head: the compiled head.
      obs: observations float32 ``[N, obs_dim]``, cycled through.
      calls, warmup: timed calls, and untimed calls before them.

    Returns:
      ``{"p50", "p95", "p99", "mean"}`` in ns through ctypes, and ``"bare"``: the bare C call's
      ns per decision (:meth:`CHead.bench_bare_ns`).
    """
    obs = np.ascontiguousarray(obs, np.float32)
    one, clock, n = head.head_one, time.perf_counter_ns, len(obs)
    for i in range(warmup):
        one(obs[i % n])
    rows = [obs[i % n] for i in range(calls)]
    times = np.empty(calls, np.int64)
    for i, x in enumerate(rows):
        t0 = clock()
        one(x)
        times[i] = clock() - t0
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(times.mean()), "bare": head.bench_bare_ns(obs=obs[0])}

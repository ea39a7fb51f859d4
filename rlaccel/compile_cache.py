"""How rlaccel compiles: JAX's persistent compilation cache, on by default (a second run of a
config skips its compiles), and the compile effort (:func:`jit`).

:func:`enable` is called before a run's first compile (``rlaccel.api.run_checked``, the
training loop's caller, and ``rlaccel.sweep.run.run_grid``).

A run's compiles (init, the training chunk, the probe's and the evaluation's programs) are
most of its start-up: 5-8 s of a 500k-step CartPole run's 12 s here, 14 s of an RL Zoo
Pendulum run's 18 s. With the cache, a run whose programs were compiled before (same config,
any seed: the seed is an input, not a constant) loads them from disk instead.

Where (:func:`cache_dir`):

* ``JAX_COMPILATION_CACHE_DIR`` set: JAX's own setting is used as it is.
* ``RLACCEL_COMPILE_CACHE=off`` (or ``0``, ``false``, ``no``): no cache (``rlaccel bench`` runs its
  rows so, as their compile time is part of what they measure).
* ``RLACCEL_COMPILE_CACHE=<dir>``: that directory.
* Otherwise ``$XDG_CACHE_HOME/rlaccel/xla-<jax version>-<machine>`` (``~/.cache`` without
  ``XDG_CACHE_HOME``), ``<machine>`` a hash of the CPU's model and feature flags: executables
  compiled for one CPU are never offered to another (a home directory shared by several
  machines), nor to another JAX.

JAX keeps programs that took at least :data:`MIN_COMPILE_S` to compile, up to
:data:`MAX_BYTES` per directory (least recently used evicted). The eviction takes a file lock
(``filelock``, a dependency); where the package is missing the cap is not set, since JAX
then fails every cache read and write instead (a warning each). The cache is trusted code:
keep it where only you can write (JAX's documentation says the same). On some CPUs JAX
0.9-0.10 rejects every cached CPU executable when loading it (jax-ml/jax#38445, LLVM tuning
flags taken for CPU features): there the cache saves nothing and logs a line per program;
``RLACCEL_COMPILE_CACHE=off`` silences it.

Compile effort: ``RLACCEL_XLA_EFFORT=fast`` (or :func:`effort`) compiles every program
rlaccel builds with XLA's backend optimisations and CPU fusion emitters off
(:data:`FAST_OPTIONS`, per program through ``jax.jit``'s ``compiler_options``): on CPU it
compiles about twice as fast and runs about twice as slow (one int8 PPO CartPole update here:
2.1 s against 4.7 s to compile, 9.0 against 4.1 ms to run). For runs whose compile is most
of their time: smoke runs, a config's first check, the test suite (``tests/conftest.py``).
Benchmarks never use it (:func:`bench_env`). The persistent cache keys on the options, so
the two efforts never share an executable.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["EFFORT_ENV", "ENV", "FAST_OPTIONS", "MAX_BYTES", "MIN_COMPILE_S", "AheadProgram", "Beside", "bench_env", "cache_dir", "compiler_options", "effort", "enable", "jit", "jit_once", "spec"]

ENV = "RLACCEL_COMPILE_CACHE"
EFFORT_ENV = "RLACCEL_XLA_EFFORT"
FAST_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
MIN_COMPILE_S = 0.2
MAX_BYTES = 2 * 1024**3
_OFF = ("off", "0", "false", "no", "none")


def _machine() -> str:
    """A short hash of what decides which compiled code runs here: CPU model and flags."""
    lines = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    lines.append(line.strip())
                if line.strip() == "":  # the first processor's entry is enough
                    break
    except OSError:
        pass
    text = "\n".join([platform.machine(), platform.processor(), *lines])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _has_filelock() -> bool:
    """Whether ``filelock`` imports (JAX's cache eviction needs it)."""
    try:
        import filelock  # noqa: F401
    except ImportError:
        return False
    return True


def cache_dir() -> Path | None:
    """The directory compiled programs are kept in, or ``None`` (off); see the module docstring."""
    jax_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if jax_dir:
        return Path(jax_dir)
    value = os.environ.get(ENV, "").strip()
    if value.lower() in _OFF:
        return None
    if value:
        return Path(value).expanduser()
    from importlib import metadata

    try:
        version = metadata.version("jax")
    except metadata.PackageNotFoundError:
        version = "unknown"
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return home / "rlaccel" / f"xla-{version}-{_machine()}"


def enable() -> Path | None:
    """Point JAX at :func:`cache_dir` (before a run's first compile); returns it, or ``None``.

    Sets the environment (read by JAX at import, and inherited by actor processes) when JAX is
    not imported yet, else JAX's config. ``JAX_COMPILATION_CACHE_DIR`` already set: nothing
    is changed.
    """
    path = cache_dir()
    if path is None or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return path
    settings = {
        "jax_compilation_cache_dir": str(path),
        "jax_persistent_cache_min_compile_time_secs": MIN_COMPILE_S,
        "jax_compilation_cache_max_size": MAX_BYTES if _has_filelock() else -1,  # -1: no cap (module docstring)
    }
    settings = {k: v for k, v in settings.items() if k == "jax_compilation_cache_dir" or k.upper() not in os.environ}  # the user's own JAX_* win
    for name, value in settings.items():
        os.environ[name.upper()] = str(value)
    if "jax" in sys.modules:
        import jax

        for name, value in settings.items():
            jax.config.update(name, value)
    return path


def compiler_options() -> dict[str, Any] | None:
    """XLA options for the next program: :data:`FAST_OPTIONS` when ``RLACCEL_XLA_EFFORT=fast``
    and JAX's backend is the CPU, else ``None`` (XLA's defaults). Read at each call."""
    if os.environ.get(EFFORT_ENV, "").strip().lower() != "fast":
        return None
    return _fast_on_cpu()


def _fast_on_cpu() -> dict[str, Any] | None:
    """:data:`FAST_OPTIONS` where JAX's backend is the CPU, else ``None``: those this XLA knows
    (:func:`_known_options`)."""
    import jax

    return _known_options(tuple(FAST_OPTIONS.items())) if jax.default_backend() == "cpu" else None


@functools.cache
def _known_options(options: tuple[tuple[str, Any], ...]) -> dict[str, Any] | None:
    """``options`` less those this XLA rejects, found by compiling a scalar program once per
    process (XLA's versions add and drop options: JAX 0.12's XLA has no
    ``xla_cpu_use_fusion_emitters``, and a program compiled with it fails)."""
    import jax
    import jax.numpy as jnp

    kept = dict(options)
    while kept:
        try:
            jax.jit(lambda x: x + 1, compiler_options=kept).lower(jnp.float32(0)).compile()
            break
        except jax.errors.JaxRuntimeError as e:  # INVALID_ARGUMENT: No such compile option: 'name'
            unknown = [name for name in kept if f"'{name}'" in str(e)]
            if not unknown:
                raise
            for name in unknown:
                del kept[name]
    return kept or None


def jit(fun: Callable, **kwargs: Any) -> Any:
    """``jax.jit(fun, **kwargs)`` at the effort of :func:`compiler_options`. For top-level
    programs only (JAX applies ``compiler_options`` to the outermost jit)."""
    import jax

    return jax.jit(fun, compiler_options=compiler_options(), **kwargs)


def jit_once(fun: Callable, **kwargs: Any) -> Any:
    """``jax.jit`` for a program a run executes once (its init): :data:`FAST_OPTIONS` on the
    CPU whatever the effort, since compiling it fast saves more than running it slower costs
    (PPO CartPole's init: 0.42 s to compile against 0.85 s, 3 ms to run against 2 ms). Its
    values may differ from a default-effort compile's in the last float bits (fusion)."""
    import jax

    return jax.jit(fun, compiler_options=_fast_on_cpu(), **kwargs)


@contextlib.contextmanager
def effort(level: str) -> Iterator[None]:
    """Programs built inside compile at ``level`` ("fast"; any other, e.g. "default": XLA's
    defaults). Sets ``RLACCEL_XLA_EFFORT``, so processes started inside inherit it."""
    before = os.environ.get(EFFORT_ENV)
    os.environ[EFFORT_ENV] = level
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(EFFORT_ENV, None)
        else:
            os.environ[EFFORT_ENV] = before


def bench_env(env: dict[str, str], directory: str | Path | None = None) -> dict[str, str]:
    """``env`` for a benchmark row's process, at XLA's default effort: no cache, so every
    compile is counted (a cold start), or with ``directory`` the cache there for every row,
    baselines included (run the bench twice with one directory: the second run is the warm start)."""
    env = dict(env)
    for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "JAX_COMPILATION_CACHE_MAX_SIZE", EFFORT_ENV):
        env.pop(name, None)
    if directory is None:
        env[ENV] = "off"
    else:
        env.update({ENV: str(directory), "JAX_COMPILATION_CACHE_DIR": str(directory), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": str(MIN_COMPILE_S)})
    return env


class AheadProgram:
    """A jitted program compiled once: beside the caller from its arguments' shapes
    (:meth:`start`), or on first use (the evaluation's, ``rlaccel.eval_episodes``).

    Attributes:
      compile_s: seconds its compile took (in whichever thread).
      blocked_s: seconds callers spent compiling it or waiting for it.
    """

    def __init__(self, program: Any, thread_name: str = "rlaccel-compile"):
        self._program = program
        self.thread_name = thread_name
        self._compiled: Any = None
        self._beside: Beside | None = None
        self.compile_s = 0.0
        self.blocked_s = 0.0

    def start(self, *args: Any) -> None:
        """Compile for ``args``' shapes, dtypes and devices in a thread (only they are read)."""
        if self._compiled is None and self._beside is None:
            import jax

            specs = jax.tree.map(spec, args)
            self._beside = Beside(lambda: self._compile(specs), self.thread_name)

    def wait(self) -> None:
        """Wait for a compile :meth:`start` began (a caller that ends before it used the program:
        no thread left compiling while the process exits)."""
        if self._beside is not None:
            self._beside.wait()

    def _compile(self, args: tuple) -> None:
        start = time.perf_counter()
        self._compiled = self._program.lower(*args).compile()
        self.compile_s = time.perf_counter() - start

    def __call__(self, *args: Any) -> Any:
        if self._compiled is None:
            start = time.perf_counter()
            if self._beside is not None:
                beside, self._beside = self._beside, None
                beside.join()
            else:
                self._compile(args)
            self.blocked_s += time.perf_counter() - start
        return self._compiled(*args)


class Beside:
    """``fn()`` run in a daemon thread beside the caller (a compile); :meth:`join` waits and
    re-raises what it raised, :meth:`wait` only waits."""

    def __init__(self, fn: Any, name: str):
        self._errors: list[BaseException] = []

        def run() -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - re-raised by join()
                self._errors.append(e)

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def wait(self) -> None:
        self._thread.join()

    def join(self) -> None:
        self.wait()
        if self._errors:
            raise self._errors[0]


def spec(x: Any, sharding: Any = None) -> Any:
    """``x``'s shape, dtype, weak type and device, or ``sharding`` instead (what an
    ahead-of-time compile reads; ``x`` an array or a ``jax.ShapeDtypeStruct``)."""
    import jax
    import numpy as np

    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding or getattr(x, "sharding", None), weak_type=getattr(x, "weak_type", False))

"""How many threads XLA's CPU backend runs programs on (``placement.cpu_threads``).

XLA's CPU client executes every program's kernels on one intra-op thread pool (its threads are
named ``tf_XLAEigen``), sized once, when JAX starts the backend: one thread per CPU the process
may run on (its affinity mask), and never fewer than the CPU devices
(``--xla_force_host_platform_device_count``). Independent kernels of one program then run on
different threads at once. An RL update on small networks is a long chain of microsecond
kernels; handing some of them to another thread costs more in wake-ups than it saves. Measured
on a 2-core Xeon VM (PPO CartPole-v1, 4 x 128, 2x64, the fused program of 200 updates, each
setting in its own process, PureJaxRL's program in the same process): with two threads ours
used 1.45 cores and ran at 0.70x PureJaxRL's speed; with one thread 1.00 core and 1.22-1.25x
(``docs/benchmarks.md``, "One XLA CPU thread"). Large batches (brax with thousands of envs, big networks) are the
other way round, so the default (``auto``) asks for one thread for rlaccel's JAX-native
classic-control envs only, and leaves ``brax:`` and ``gym:`` envs XLA's pool.

JAX has no option for the pool's size, and it reads the affinity mask when the backend starts.
:func:`start` starts the CPU backend with the calling thread restricted to ``threads`` of its
CPUs, then gives it and every thread the backend started, the pool's included, the whole mask
back: the pool keeps ``threads`` threads, and they run on any CPU (threads that existed before
keep their masks). Only the CPU client starts under the mask (its factory in JAX's registry is
wrapped for the start): a GPU client sizes its own thread pools from the mask as well, and
under a one-CPU mask an H200 compiled rlaccel's CartPole chunk in 52 s instead of 4.7
(``docs/benchmarks.md``, "On a GPU"). Linux only (``os.sched_setaffinity``); elsewhere, or
once JAX's backends run (a process that used JAX before the run), the pool stays as it is:
:func:`start` says so in its return value.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["start"]

_started_with: int | None = None


def start(threads: int | None) -> str | None:
    """Start JAX's backends with ``threads`` CPU intra-op threads (``None``: XLA's default).

    Returns ``None`` when the pool has the size asked for (or none was asked for), else one
    line saying why it could not be applied.
    """
    global _started_with
    if threads is None or threads == _started_with:
        return None
    import jax
    from jax._src import xla_bridge  # no public way to ask whether the backends run

    if xla_bridge.backends_are_initialized():
        return f"placement.cpu_threads={threads}: JAX's backends already run in this process; XLA's CPU thread pool keeps its size"
    if not hasattr(os, "sched_setaffinity"):
        return f"placement.cpu_threads={threads}: needs os.sched_setaffinity (Linux); XLA's CPU thread pool keeps its default size"
    cpus = os.sched_getaffinity(0)
    if threads < len(cpus):
        registration = xla_bridge._backend_factories.get("cpu")  # noqa: SLF001 (see above)
        if registration is None or not dataclasses.is_dataclass(registration):
            _under_mask(sorted(cpus)[:threads], cpus, jax.devices)  # every backend under the mask
        else:  # only the CPU client's: a GPU client sizes its compile and launch threads from it too
            def cpu_factory():  # noqa: ANN202 (XLA's client type)
                return _under_mask(sorted(cpus)[:threads], cpus, registration.factory)

            xla_bridge._backend_factories["cpu"] = dataclasses.replace(registration, factory=cpu_factory)  # noqa: SLF001
            try:
                jax.devices()  # starts the backends: the CPU pool is sized from the mask
            finally:
                xla_bridge._backend_factories["cpu"] = registration  # noqa: SLF001
    _started_with = threads
    return None


def _under_mask(mask: list[int], cpus: set[int], start: Callable[[], T]) -> T:
    """``start()`` with the calling thread restricted to the CPUs in ``mask``; afterwards it
    and every thread ``start`` made (a client's pool) get ``cpus`` back: sized by the mask,
    running anywhere. Threads that existed before keep whatever mask they have."""
    before = set(os.listdir("/proc/self/task"))
    os.sched_setaffinity(0, mask)
    try:
        return start()
    finally:
        os.sched_setaffinity(0, cpus)
        for task in set(os.listdir("/proc/self/task")) - before:
            try:
                os.sched_setaffinity(int(task), cpus)
            except ProcessLookupError:  # a thread that ended meanwhile
                pass

"""Placement: which device learns, which device acts, and in which precision.

``resolve(config.placement)`` turns the config's device names into ``jax.Device`` objects:

* ``auto``: the first GPU if JAX sees one, else the first CPU device;
* ``cpu`` / ``gpu``: the first device of that platform (``gpu`` without a GPU is an error);
* ``<platform>:<index>``: that device, e.g. ``cpu:1`` (:func:`start` asks JAX for the CPU
  devices a placement names, one per core at most; ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
  sets another count);
* actor ``learner``: the learner's device.

Same device for both: the fused runner (one compiled program). Different devices: the
split runner (rollouts on the actor device, updates on the learner device), pipelined unless
``placement.pipeline: false`` (rollout k+1 runs while update k does; ``rlaccel.sources.split``).

Host actors' PPO learner on a CPU may train its policy and value towers on two CPU devices
(``placement.learner.towers``, :func:`tower_devices`; ``agents/ppo/towers.py``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from rlaccel import cpu_threads
from rlaccel.config import ConfigError, PlacementConfig


class PlacementError(ConfigError):
    """A device that does not exist on this machine (exit code 2 from the CLI)."""


@dataclasses.dataclass(frozen=True)
class Placement:
    """Resolved placement."""

    learner: jax.Device
    actor: jax.Device
    precision: str  # "int8" | "fp32"
    pipeline: bool = False  # split only: acting overlaps learning, one update of policy lag
    learners: tuple[jax.Device, ...] = ()  # data parallel: every learner device of the run (all processes)

    @property
    def fused(self) -> bool:
        """Actor and learner share a device: run everything as one compiled program."""
        return self.actor == self.learner

    @property
    def parallel(self) -> bool:
        """Data parallel over :attr:`learners` (``placement.learner.devices``, or several processes)."""
        return len(self.learners) > 1

    def describe(self) -> str:
        """One line for the log: ``learner cpu:0 fp32, actors cpu:0 int8 (fused)``."""
        if self.parallel:
            hosts = len({d.process_index for d in self.learners})
            where = f"{len(self.learners)} x {self.learner.platform}" + (f" on {hosts} processes" if hosts > 1 else f" ({', '.join(_name(d) for d in self.learners)})")
            return f"learner {where} fp32, actors on each {self.precision} (data parallel)"
        mode = "fused" if self.fused else "split"
        return f"learner {_name(self.learner)} fp32, actors {_name(self.actor)} {self.precision} ({mode})"


def _name(device: jax.Device) -> str:
    return f"{device.platform}:{device.id}"


def _devices(platform: str) -> list[jax.Device]:
    try:
        return list(jax.devices(platform))
    except RuntimeError:  # JAX raises RuntimeError for a backend that is not present
        return []


def available() -> list[str]:
    """Names of every device JAX sees, e.g. ``["cpu:0", "cpu:1"]``."""
    return [_name(d) for d in jax.devices()] + [
        _name(d) for d in _devices("cpu") if jax.default_backend() != "cpu"
    ]


def device(spec: str, key: str) -> jax.Device:
    """One device from its config name.

    Raises:
      PlacementError: naming ``key``, the missing device and what exists.
    """
    spec = spec.strip().lower()
    if spec == "auto":
        gpus = _devices("gpu")
        return gpus[0] if gpus else _devices("cpu")[0]
    platform, index = _split_spec(spec)
    if platform not in ("cpu", "gpu", "tpu"):
        raise PlacementError(f"{key}: unknown device {spec!r}; use auto, cpu, gpu or <platform>:<index>")
    found = _devices(platform)
    if not found:
        raise PlacementError(f"{key}: {spec!r} requested but JAX sees no {platform.upper()} (devices: {', '.join(available())})")
    if not index:
        return found[0]
    if not index.isdigit() or int(index) >= len(found):
        hint = f"; this process may use {cpu_cores()} core(s), one CPU device each (XLA_FLAGS=--xla_force_host_platform_device_count=N sets another count)" if platform == "cpu" else ""
        raise PlacementError(f"{key}: no device {spec!r} (devices: {', '.join(available())}){hint}")
    return found[int(index)]


def _split_spec(spec: str) -> tuple[str, str]:
    """``"cpu:1" -> ("cpu", "1")``, ``"CUDA" -> ("gpu", "")``: a device name's platform (``cuda``
    read as ``gpu``) and index, lower-cased."""
    platform, _, index = spec.strip().lower().partition(":")
    return ("gpu" if platform == "cuda" else platform), index


def learner_devices(config: PlacementConfig) -> tuple[jax.Device, ...]:
    """Data parallelism's devices: the first ``placement.learner.devices`` devices of the
    learner's platform in every process, ordered by process then id (``()``: not data parallel).

    Raises:
      PlacementError: an indexed device (``cpu:1``) or actors elsewhere with several devices,
        or more devices than a process has.
    """
    count = config.learner.devices
    if count == 1 and jax.process_count() == 1:
        return ()
    spec = config.learner.device.strip().lower()
    key = "placement.learner.devices"
    if ":" in spec:
        raise PlacementError(f"placement.learner.device: {spec!r} names one device; with {key}: {count} (or several processes) give a platform: auto, cpu, gpu")
    if config.actor.device.strip().lower() != "learner":
        raise PlacementError(f"placement.actor.device: with {key}: {count} (or several processes) every learner device acts on its own envs; use learner")
    if config.pipeline is True:
        raise PlacementError(f"placement.pipeline: true pipelines a split placement; with {key}: {count} (or several processes) acting and learning share each device (use auto)")
    platform = device(spec, "placement.learner.device").platform
    local = sorted((d for d in jax.local_devices() if d.platform == platform), key=lambda d: d.id)
    if count != "all" and count > len(local):
        raise PlacementError(f"{key}: {count} requested but this process has {len(local)} {platform} device(s) ({', '.join(_name(d) for d in local)})")
    per_process = len(local) if count == "all" else count
    by_process: dict[int, list[jax.Device]] = {}
    for d in sorted((d for d in jax.devices() if d.platform == platform), key=lambda d: (d.process_index, d.id)):
        by_process.setdefault(d.process_index, []).append(d)
    return tuple(d for p in sorted(by_process) for d in by_process[p][:per_process])


def towers_wanted(config: Any) -> bool:
    """Whether a run (a whole config) trains its policy and value towers on two devices
    (``placement.learner.towers``; no JAX started: :func:`start` reads it to ask for the devices).

    Raises:
      PlacementError: ``split`` asked where it cannot apply, the line naming why.
    """
    towers = config.placement.learner.towers
    if towers == "together":
        return False
    why = _towers_blocker(config)
    if towers == "split" and why:
        raise PlacementError(f"placement.learner.towers: split: {why}")
    return why is None


def _towers_blocker(config: Any) -> str | None:
    if config.env_kind != "gym":
        return f"only the learner of host actors (gym: envs) splits its towers; {config.env} runs in JAX"
    if config.placement.learner.devices != 1:
        return "data parallelism (placement.learner.devices) keeps both towers on every device"
    blocker = getattr(config.agent, "towers_blocker", None)
    if blocker is None:
        return f"{config.algo} has no separate policy and value towers"
    if cpu_cores() < 2:
        return "this process may run on one CPU core only"
    return blocker()


def tower_devices(config: Any) -> tuple[jax.Device, ...]:
    """The two CPU devices the towers train on (the learner's first), or ``()``
    (:func:`towers_wanted` false, a learner on a GPU, or a process started with one CPU device).

    Raises:
      PlacementError: ``split`` where it cannot apply.
    """
    if not towers_wanted(config):
        return ()
    split = config.placement.learner.towers == "split"
    learner = device(config.placement.learner.device, "placement.learner.device")
    cpus = _devices("cpu")
    if learner.platform != "cpu" or len(cpus) < 2:
        if split:
            why = f"the learner is on {_name(learner)}" if learner.platform != "cpu" else "JAX runs with one CPU device in this process"
            raise PlacementError(f"placement.learner.towers: split needs two CPU devices for a CPU learner; {why}")
        return ()
    return (learner, next(d for d in cpus if d != learner))


def actor_runtime(config: Any) -> str:
    """What host actor threads compute their policy with (``actors.policy``): ``numpy``, ``c``
    or ``jax``. ``auto``: ``c`` for an int8 policy on actor threads where the C kernel compiles
    on this host (``rlaccel.deploy.c_kernel``, compiled once and cached), else ``numpy``.

    Raises:
      PlacementError: ``c`` where the kernel cannot be built (no C compiler), naming the key.
    """
    policy = config.actors.policy
    if policy in ("numpy", "jax"):
        return policy
    if config.placement.actor.precision != "int8" or config.actors.backend != "thread":
        return "numpy"  # the kernel is int8's; Ray actor processes tabulate the model
    from rlaccel.deploy import c_kernel  # ctypes and a C compiler: only for an int8 policy

    why = c_kernel.unavailable(config.placement.actor.int8_profile)
    if why is not None and policy == "c":
        raise PlacementError(f"actors.policy: c: {why}")
    return "numpy" if why else "c"


def start(config: Any) -> str | None:
    """:func:`start_backend` for a run, with the CPU devices its placement names
    (:func:`cpu_devices_named`; two where its towers split, :func:`towers_wanted`) where JAX's
    CPU backend has not started (a count set in ``XLA_FLAGS`` stands: :func:`split_cpu`)."""
    split_cpu(max(2 if towers_wanted(config) else 1, cpu_devices_named(config.placement)))
    return start_backend(config.placement, config.env_kind)


def cpu_devices_named(config: PlacementConfig) -> int:
    """The CPU devices a placement names, at most one per core (:func:`cpu_cores`): one more
    than the highest ``cpu:K`` of the learner and the actors, or the learner's ``devices: N``
    (``all``: one per core) where its device is ``cpu`` or ``auto`` (where ``auto`` is a GPU,
    the CPU devices go unused); ``1`` otherwise. A CPU is one device unless asked: actors on
    ``cpu:1`` beside a learner on ``cpu:0`` run on a 2-core machine without ``XLA_FLAGS``."""
    n = 1
    for spec in (config.learner.device, config.actor.device):
        platform, index = _split_spec(spec)
        if platform == "cpu" and index.isdigit():
            n = max(n, int(index) + 1)
    if _split_spec(config.learner.device) in (("auto", ""), ("cpu", "")):
        n = max(n, cpu_cores() if config.learner.devices == "all" else config.learner.devices)
    return min(n, cpu_cores())


def split_cpu(devices: int) -> None:
    """Ask JAX for ``devices`` CPU devices (``jax_num_cpu_devices``), unless its backends run
    already or a count is set (``XLA_FLAGS``'s ``--xla_force_host_platform_device_count``, or
    ``jax_num_cpu_devices`` above 1): those stand. XLA's CPU thread pool then has at least as
    many threads (``rlaccel.cpu_threads``), so programs on different devices run at once."""
    from jax._src import xla_bridge  # no public way to ask whether the backends run

    forced = "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    if devices > 1 and not xla_bridge.backends_are_initialized() and not forced and jax.config.jax_num_cpu_devices < 2:
        jax.config.update("jax_num_cpu_devices", devices)


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` off Linux)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def start_backend(config: PlacementConfig, env_kind: str | None = None) -> str | None:
    """Start JAX's backends as ``config`` asks (``cpu_threads``; ``auto``: one thread for a
    JAX-native classic-control env or a ``gym:`` env, ``env_kind`` ``"jax"`` or ``"gym"``,
    XLA's pool for ``brax:``); a no-op once they run. Returns a one-line notice where the
    setting could not apply (``rlaccel.cpu_threads``)."""
    threads = config.cpu_threads
    if threads == "auto":
        threads = 1 if env_kind in ("jax", "gym") else None
    return cpu_threads.start(threads)


def resolve(config: PlacementConfig) -> Placement:
    """Devices for the learner and the actors (JAX's backends start here, :func:`start_backend`)."""
    start_backend(config)
    learners = learner_devices(config)
    if learners:  # data parallel: this process's first learner device stands for it
        first = next(d for d in learners if d.process_index == jax.process_index())
        return Placement(learner=first, actor=first, precision=config.actor.precision, learners=learners)
    learner = device(config.learner.device, "placement.learner.device")
    if config.actor.device.strip().lower() == "learner":
        actor = learner
    else:
        actor = device(config.actor.device, "placement.actor.device")
    pipeline = config.pipeline
    if pipeline is True and actor == learner:
        raise PlacementError(f"placement.pipeline: true needs the actors on another device than the learner (both on {_name(actor)}); set placement.actor.device, or pipeline: auto")
    return Placement(learner=learner, actor=actor, precision=config.actor.precision, pipeline=actor != learner and pipeline is not False)

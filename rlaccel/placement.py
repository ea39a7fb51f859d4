"""Placement: which device learns, which device acts, and in which precision.

``resolve(config.placement)`` turns the config's device names into ``jax.Device`` objects:

* ``auto``: the first GPU if JAX sees one, else the first CPU device;
* ``cpu`` / ``gpu``: the first device of that platform (``gpu`` without a GPU is an error);
* ``<platform>:<index>``: that device, e.g. ``cpu:1`` (two CPU devices exist with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=2``);
* actor ``learner``: the learner's device.

Same device for both: the fused runner (one compiled program). Different devices: the
split runner (rollouts on the actor device, updates on the learner device).
"""

from __future__ import annotations

import dataclasses

import jax

from rlaccel.config import ConfigError, PlacementConfig


class PlacementError(ConfigError):
    """A device that does not exist on this machine (exit code 2 from the CLI)."""


@dataclasses.dataclass(frozen=True)
class Placement:
    """Resolved placement."""

    learner: jax.Device
    actor: jax.Device
    precision: str  # "int8" | "fp32"

    @property
    def fused(self) -> bool:
        """Actor and learner share a device: run everything as one compiled program."""
        return self.actor == self.learner

    def describe(self) -> str:
        """One line for the log: ``learner cpu:0 fp32, actors cpu:0 int8 (fused)``."""
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
    platform, _, index = spec.partition(":")
    if platform == "cuda":
        platform = "gpu"
    if platform not in ("cpu", "gpu", "tpu"):
        raise PlacementError(f"{key}: unknown device {spec!r}; use auto, cpu, gpu or <platform>:<index>")
    found = _devices(platform)
    if not found:
        raise PlacementError(f"{key}: {spec!r} requested but JAX sees no {platform.upper()} (devices: {', '.join(available())})")
    if not index:
        return found[0]
    if not index.isdigit() or int(index) >= len(found):
        raise PlacementError(f"{key}: no device {spec!r} (devices: {', '.join(available())})")
    return found[int(index)]


def resolve(config: PlacementConfig) -> Placement:
    """Devices for the learner and the actors."""
    learner = device(config.learner.device, "placement.learner.device")
    if config.actor.device.strip().lower() == "learner":
        actor = learner
    else:
        actor = device(config.actor.device, "placement.actor.device")
    return Placement(learner=learner, actor=actor, precision=config.actor.precision)

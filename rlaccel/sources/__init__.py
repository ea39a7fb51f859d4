"""Step sources: where a run's steps come from (see ``rlaccel.sources.base``).

:func:`make` picks one from the config: ``gym:`` envs get host actor threads, or Ray actor
processes with ``actors.backend: ray`` (``rlaccel.sources.host``); JAX and brax envs get the fused program when actors and learner
share a device, the split one when they do not (``rlaccel.sources.device``).
"""

from __future__ import annotations

from typing import Any

from rlaccel.sources.base import SourceFault, StepSource, latency_percentiles

__all__ = ["SourceFault", "StepSource", "latency_percentiles", "make"]


def make(config: Any, console: Any = None) -> StepSource:
    """The step source ``config`` calls for (imports JAX and the algorithm's code)."""
    from rlaccel import agent as agent_lib
    from rlaccel import envs, placement

    where = placement.resolve(config.placement)
    if config.env_kind == "gym" and config.actors.backend == "ray":
        from rlaccel.sources.host.ray_source import RaySource

        return RaySource(config, where, console=console)
    if config.env_kind == "gym":
        from rlaccel.sources.host import HostSource

        return HostSource(config, where, console=console)
    from rlaccel.sources.device import make_source

    env = envs.make(config.env, auto_reset=True, **config.env_kwargs)
    return make_source(agent_lib.make(config, env), env, where)

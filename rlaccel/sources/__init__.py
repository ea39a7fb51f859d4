"""Step sources: where a run's steps come from (see ``rlaccel.sources.base``).

:func:`make` picks one from the config: ``gym:`` envs get host actor threads, or Ray actor
processes with ``actors.backend: ray`` (``rlaccel.sources.host``); JAX and brax envs get the fused program when actors and learner
share a device (``rlaccel.sources.fused``), the split one when they do not
(``rlaccel.sources.split``, pipelined unless ``placement.pipeline: false``), and the
data-parallel one over several learner devices or processes (``rlaccel.sources.parallel``):
:func:`make_source`.
"""

from __future__ import annotations

from typing import Any

from rlaccel.sources.base import SourceFault, StepSource, latency_percentiles

__all__ = ["SourceFault", "StepSource", "latency_percentiles", "make", "make_source"]


def make(config: Any, console: Any = None) -> StepSource:
    """The step source ``config`` calls for (imports JAX and the algorithm's code)."""
    source = _make(config, console)
    source.probes = config.logging.probe_seconds is not None
    return source


def _make(config: Any, console: Any) -> StepSource:
    from rlaccel import agent as agent_lib
    from rlaccel import envs, placement

    where = placement.resolve(config.placement)
    if config.env_kind == "gym" and config.actors.backend == "ray":
        from rlaccel.sources.host.ray_source import RaySource

        return RaySource(config, where, console=console)
    if config.env_kind == "gym":
        from rlaccel.sources.host import HostSource

        return HostSource(config, where, console=console)
    env = envs.make(config.env, auto_reset=True, **config.env_kwargs)
    return make_source(agent_lib.make(config, env), env, where)


def make_source(spec: Any, env: Any, placement: Any) -> StepSource:
    """The JAX-env source a resolved ``rlaccel.placement.Placement`` calls for, for an
    ``rlaccel.agent.AgentSpec``: ``FusedSource`` on one device, ``SplitSource`` on two."""
    from rlaccel.sources.fused import FusedSource
    from rlaccel.sources.split import SplitSource

    args = (spec.agent, env, spec.num_envs, spec.num_steps)
    if placement.parallel:  # placement.learner.devices > 1, or several processes
        from rlaccel.sources.parallel import ParallelSource

        source = ParallelSource(*args, placement.precision, placement.learners)
        source.num_updates = spec.num_updates
        return source
    devices = {"precision": placement.precision, "learner_device": placement.learner, "actor_device": placement.actor}
    source = FusedSource(*args, **devices) if placement.fused else SplitSource(*args, **devices, pipeline=placement.pipeline)
    source.num_updates = spec.num_updates
    return source

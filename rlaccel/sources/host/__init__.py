"""Host actors for gymnasium envs: actor threads (``actors.py``) and the learner that feeds on
their batches (``source.py``). See ``rlaccel.sources.host.source`` for the whole picture."""

from rlaccel.sources.host.actors import ActorThread, Batch, JaxActor, ParamBoard
from rlaccel.sources.host.source import ActorFault, HostSource

__all__ = ["ActorFault", "ActorThread", "Batch", "HostSource", "JaxActor", "ParamBoard"]

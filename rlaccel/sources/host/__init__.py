"""Host actors for gymnasium envs: actor threads (``actors.py``) or Ray actor processes
(``ray_cluster.py``, ``ray_pool.py``, ``ray_source.py``) stepping envs (``stepping.py``), and the learner that
feeds on their batches (``source.py``). See ``rlaccel.sources.host.source`` for the whole picture.

The names below are imported on first use, so a Ray actor process that imports
``rlaccel.sources.host.ray_pool`` (numpy, gymnasium) does not import JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ActorFault", "ActorThread", "Batch", "HostSource", "JaxActor", "ParamBoard", "RaySource"]

_HOME = {
    "ActorThread": "actors", "Batch": "actors", "JaxActor": "actors", "ParamBoard": "actors",
    "ActorFault": "source", "HostSource": "source", "RaySource": "ray_source",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)

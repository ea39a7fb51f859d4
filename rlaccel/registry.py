"""The algorithm registry: each algorithm is one folder that declares itself here.

An algorithm (``agents/<algo>/__init__.py``) builds an :class:`Algorithm` and either
registers it with :func:`register` or is found through the ``rlaccel.algorithms`` entry
point group (how the built-in ``ppo`` and ``dqn`` and any installed plug-in are found, so
nothing in ``rlaccel/`` names an algorithm). The JAX parts are named as ``"module:attr"``
strings and imported on first use, so config validation and ``import rlaccel`` stay JAX-free.

What an algorithm declares:

* ``config``: its section's frozen dataclass (SB3 / RL Zoo names). Fields that may be traced
  in a sweep (arithmetic only: never a shape, a loop length or a Python branch) carry
  ``metadata={"traced": True}`` (:func:`traced_field`).
* ``make``: ``(config: rlaccel.config.Config, env) -> rlaccel.agent.AgentSpec``.
* ``numpy_actor``: a class built as ``cls(actor_params, version, section)`` from numpy
  actor parameters (the int8 policy as ``rlaccel.quant.Int8Tables``); host actors act with
  it (``noise(rng, T, B)`` then ``act(obs [B, obs_dim], noise[t]) -> (action, extras)``).
* ``export``: ``(section, fp32 actor params, agent state) -> ExportSpec``: what the deploy
  artifact needs besides the network (observation normaliser, head kind).
"""

from __future__ import annotations

import dataclasses
import importlib
from importlib import metadata
from typing import Any, Callable

__all__ = ["Algorithm", "ExportSpec", "get", "load", "names", "register", "traced_field", "traced_fields"]

ENTRY_POINT_GROUP = "rlaccel.algorithms"


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    """What an exported policy needs besides its layers (numpy leaves).

    Attributes:
      head: ``logits`` | ``gaussian_mean`` | ``q_values`` (how ``act`` turns the head into an action).
      obs_mean, obs_inv_std: the observation normaliser applied before the network
        (``clip((obs - mean) * inv_std, -clip_obs, clip_obs)``), or ``None``.
      clip_obs: the normaliser's clip.
      log_std: the Gaussian policy's log standard deviation (continuous actions), or ``None``.
    """

    head: str
    obs_mean: Any = None
    obs_inv_std: Any = None
    clip_obs: float = 10.0
    log_std: Any = None


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """One registered algorithm (see the module docstring for each field's contract)."""

    name: str
    config: type
    make: str | Callable[..., Any]
    numpy_actor: str | Callable[..., Any]
    export: str | Callable[..., Any]
    discrete_only: bool = False
    """The algorithm needs a discrete action space (DQN)."""
    description: str = ""


_REGISTRY: dict[str, Algorithm] = {}
_ENTRY_POINTS_LOADED = False


def register(algo: Algorithm, *, replace: bool = False) -> Algorithm:
    """Add ``algo`` to the registry; returns it.

    Raises:
      ValueError: the name is taken (pass ``replace=True`` to swap it, e.g. in tests).
    """
    if algo.name in _REGISTRY and not replace and _REGISTRY[algo.name] is not algo:
        raise ValueError(f"algorithm {algo.name!r} is already registered")
    _REGISTRY[algo.name] = algo
    return algo


def unregister(name: str) -> None:
    """Remove an algorithm (tests that register a toy one clean up with this)."""
    _REGISTRY.pop(name, None)


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            algo = ep.load()
            register(algo() if callable(algo) and not isinstance(algo, Algorithm) else algo)


def names() -> list[str]:
    """Registered algorithm names, sorted."""
    _load_entry_points()
    return sorted(_REGISTRY)


def get(name: str) -> Algorithm:
    """The algorithm called ``name``.

    Raises:
      KeyError: none is; the message lists the registered ones.
    """
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown algorithm {name!r}; registered: {', '.join(repr(n) for n in sorted(_REGISTRY))}") from None


def load(ref: str | Callable[..., Any]) -> Any:
    """``"package.module:attr"`` -> the attribute (imported now); a callable is returned as is."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def traced_field(default: Any, doc: str = "") -> Any:
    """A dataclass field that a sweep may trace (vmap over) instead of compiling per value."""
    return dataclasses.field(default=default, metadata={"traced": True, "doc": doc})


def traced_fields(config_cls: type) -> tuple[str, ...]:
    """Names of the fields of an algorithm section marked with :func:`traced_field`."""
    return tuple(f.name for f in dataclasses.fields(config_cls) if f.metadata.get("traced"))

"""rlaccel: JAX reinforcement learning with pluggable placement and int8 actors.

``import rlaccel`` is light (it does not import JAX), so a robot with only numpy can run an
exported policy::

    policy = rlaccel.load_policy("runs/ppo_cartpole/policy.rlpolicy", backend="numpy-int8")
    action = policy.act(obs)
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_policy"]


def load_policy(path: Any, backend: str = "numpy-int8", **kwargs: Any) -> Any:
    """Load an exported policy; see :func:`rlaccel.deploy.load_policy` (imported on first use)."""
    from rlaccel.deploy import load_policy as _load_policy

    return _load_policy(path, backend, **kwargs)

"""rlaccel: JAX reinforcement learning with pluggable placement and int8 actors.

``import rlaccel`` is light (it does not import JAX); JAX is imported when training starts::

    run = rlaccel.train("configs/ppo_cartpole.yaml")          # logging, checkpoints, summary.json
    policy = run.policy(backend="numpy-int8")                 # what the int8 actors ran, in numpy
    policy = rlaccel.load_policy("runs/x/policy.rlpolicy")    # on a robot: numpy only
    action = policy.act(obs)
"""

from __future__ import annotations

from typing import Any

__all__ = ["Run", "load_policy", "train"]


def train(config: Any, overrides: Any = None, run_dir: Any = None, progress: bool = True, **kwargs: Any) -> Any:
    """Train an agent; see :func:`rlaccel.api.train` (imported on first use)."""
    from rlaccel.api import train as _train

    return _train(config, overrides, run_dir, progress, **kwargs)


def load_policy(path: Any, backend: str = "numpy-int8", **kwargs: Any) -> Any:
    """Load an exported policy; see :func:`rlaccel.deploy.load_policy` (imported on first use)."""
    from rlaccel.deploy import load_policy as _load_policy

    return _load_policy(path, backend, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "Run":
        from rlaccel.api import Run

        return Run
    raise AttributeError(f"module 'rlaccel' has no attribute {name!r}")

"""What the training loop writes beside TensorBoard's rows: the decision costs of the actors'
policy, the probes' medians and the hyperparameters, for ``summary.json`` (``rlaccel.loop``)."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from rlaccel import costs as costs_lib

__all__ = ["decision_costs", "flat_hparams", "probe_medians"]


def decision_costs(source: Any, state: Any) -> dict[str, float]:
    """``rlaccel.costs.decision_costs`` of the actors' fp32 policy (shapes only), ``{}`` for a
    policy that is not a flax MLP or a source without one agent (sweeps)."""
    agent = getattr(source, "agent", None)
    try:
        params = jax.eval_shape(lambda a: agent.actor_params(a, "fp32"), state.agent)
        dims = costs_lib.layer_dims(getattr(params, "policy", None))
    except Exception:  # noqa: BLE001 - any agent without an MLP policy simply has no cost row
        return {}
    return costs_lib.decision_costs(dims) if dims else {}


def probe_medians(probes: list[dict[str, float]]) -> dict[str, float | None]:
    """Each probe metric's median over the probes (finite values; ``None`` when there is none)."""
    out = {}
    for k in dict.fromkeys(k for p in probes for k in p):
        finite = [p[k] for p in probes if k in p and math.isfinite(p[k])]
        out[k] = float(np.median(finite)) if finite else None
    return out


def flat_hparams(config: Any) -> dict[str, Any]:
    """The algorithm section flattened to ``{"ppo.clip_eps": 0.2, ...}`` (TensorBoard's hparams), with env, algo and seed."""
    out: dict[str, Any] = {"env": config.env, "algo": config.algo, "seed": config.seed}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk(config.algo, config.to_dict()[config.algo])
    return out

"""``actors.backend: ray``: the host source with Ray actor processes instead of threads.

:class:`RaySource` is :class:`~rlaccel.sources.host.source.HostSource` (the same learner step,
the same ``Transition [T, n_envs]`` batches in actor order, the same int8 parameters the
numpy actors of the registry act with) whose actors are
:class:`~rlaccel.sources.host.ray_pool.RemoteActor` processes on a local Ray cluster or
on the cluster at ``actors.address`` (``ray_cluster.py``). Every update the learner puts the
actor parameters into Ray's object store once (``ActorPool.publish``); the actors take the
newest version between batches. No GIL is shared: actors and learner step in parallel, on one
machine or many.

Logged besides the host metrics: ``actor/broadcast_bytes`` (the int8 parameters one update
broadcasts), ``actor/broadcast_bytes_fp32`` (what the fp32 policy would have cost), and
``actor/restarts`` (actor processes restarted so far, plus fresh envs after an env error
with ``actors.restart_on_env_error``). ``summary.json`` adds ``actor_restarts`` and
``actor_nodes`` (pid, node id and ip of every actor).
"""

from __future__ import annotations

import traceback
from typing import Any

import jax
import numpy as np

from rlaccel.sources.host.actors import Batch, to_batch
from rlaccel.sources.host.ray_cluster import Cluster
from rlaccel import quant
from rlaccel.sources.host.ray_pool import ActorPool, ProcessDied
from rlaccel.sources.host.source import ActorFault, HostSource, learner_name
from rlaccel.state import TrainState

__all__ = ["RaySource"]


def tree_bytes(tree: Any) -> int:
    """Bytes of every array leaf of ``tree`` (arrays or ``ShapeDtypeStruct`` s)."""
    return int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))


class RaySource(HostSource):
    """Ray actor processes + the learner on its device (``HostSource``'s arguments)."""

    def __init__(self, config: Any, where: Any, console: Any = None):
        super().__init__(config, where, console)
        self._cluster: Cluster | None = None
        self._pool: ActorPool | None = None
        self._nodes: list[dict[str, Any]] = []
        self._bytes = {"int8": 0, "fp32": 0}

    def describe(self) -> str:
        cluster = self._cluster.describe() if self._cluster is not None else ("local Ray cluster" if self.config.actors.address is None else f"Ray cluster at {self.config.actors.address}")
        return (
            f"host actors on ray: {self.num_actors} actor process(es) x {self.envs_per_actor} {self.env.gym_id} envs on a {cluster}, "
            f"{self.where.precision} numpy policy; learner {learner_name(self.where.learner, self.spec.learner_sharding)} fp32"
        )

    def actor_params(self, agent_state: Any) -> Any:
        """The agent's actor parameters as they are: an int8 policy stays ``QuantParams`` (the
        actor processes tabulate it, not the learner)."""
        return self.agent.actor_params(agent_state, self.where.precision)

    def host_params(self, params: Any) -> Any:
        """What is broadcast: numpy copies, every int8 policy as an :class:`Int8Payload`
        (its ``Int8Model``: int8 weights, int32 biases, scales)."""
        return quant.payloads(jax.device_get(params))

    def start(self, state: TrainState, stop: Any) -> None:
        """Start (or join) the cluster, the actor processes, and publish the first parameters.
        A failure here is recorded as the run's fault (the first chunk then ends at once)."""
        self._stop = stop
        self._faults.clear()
        params = self.host_params(self._params(state.agent))
        self._bytes = {"int8": tree_bytes(params), "fp32": tree_bytes(jax.eval_shape(lambda a: self.agent.actor_params(a, "fp32"), state.agent))}
        env, cfg = self.env, self.config
        specs = [
            dict(
                index=i, gym_id=env.gym_id, gym_kwargs=dict(env.kwargs), action_space=env.action_space, obs_dim=env.obs_dim, num_envs=self.envs_per_actor,
                num_steps=self.spec.num_steps, seed=cfg.seed, algo=cfg.algo, section=cfg.agent,
            )  # fmt: skip
            for i in range(self.num_actors)
        ]
        try:
            self._cluster = Cluster(cfg.actors, self.num_actors)
            self._pool = ActorPool(specs, cfg.actors, self._faults)
            self._pool.publish(params, int(state.update))
            self._board = self._pool  # run_chunk publishes every update through it
            self._nodes = self._pool.where()
        except Exception as e:  # noqa: BLE001 - reported as the run's fault, with a checkpoint
            self._faults.append((None, RuntimeError(f"cannot start the Ray actors: {type(e).__name__}: {e}"), traceback.format_exc()))

    def _next_batches(self) -> list[Batch] | None:
        """The next batch of every actor, in actor order; ``None`` on a stop or a fault."""
        if self._faults or self._pool is None:
            return None
        got = []
        for i in range(self.num_actors):
            self._window.fill.append(self._pool.ready_fraction(i))
            steps = self._pool.take(i, lambda: self._stop.requested, self.config.actors.timeout_s)
            if steps is None:
                return None
            got.append(to_batch(i, steps))
        return got

    def probe(self, state: TrainState, seconds_per_update: float) -> tuple[TrainState, dict[str, float]]:
        state, out = super().probe(state, seconds_per_update)
        out["actor/broadcast_bytes"] = float(self._bytes["int8"])
        out["actor/broadcast_bytes_fp32"] = float(self._bytes["fp32"])
        out["actor/restarts"] = float(self._pool.restarts if self._pool is not None else 0)
        return state, out

    def close(self) -> list[str]:
        """Kill the actor processes; stop the local cluster (or leave the joined one)."""
        warnings = []
        pool, cluster, self._pool, self._cluster = self._pool, self._cluster, None, None
        self._restarts = pool.restarts if pool is not None else 0
        try:
            if pool is not None:
                pool.close()
        finally:
            if cluster is not None:
                try:
                    cluster.close()
                except Exception as e:  # noqa: BLE001 - the run's result stands; say what is left
                    warnings.append(f"stopping Ray failed ({type(e).__name__}: {e}); check for leftover ray processes")
        return warnings

    @property
    def fault(self) -> ActorFault | None:
        if self._faults and isinstance(self._faults[0][1], ProcessDied):
            index, exc, _ = self._faults[0]
            return ActorFault(f"actor {index} ({self.config.env}): {exc}")
        return super().fault

    def summary_extra(self) -> dict[str, Any]:
        restarts = self._pool.restarts if self._pool is not None else getattr(self, "_restarts", 0)
        return {"actor_restarts": restarts, "actor_nodes": self._nodes}

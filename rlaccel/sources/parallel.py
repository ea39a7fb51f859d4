"""Data parallelism for JAX and brax envs: one run on every learner device of every process.

:class:`ParallelSource` (``placement.learner.devices: N | all``, or several processes through
``rlaccel.distributed``) splits the ``B`` envs over the ``D`` devices of a 1-D mesh (axis
``rlaccel.distributed.AXIS``): device ``i`` steps envs ``i * B / D ..`` with its own (int8)
actors. A chunk of updates is one compiled program; each update is

1. ``agent.actor_params``: re-quantise, on every device (parameters are replicated);
2. ``rollout.draw_noise`` for all ``B`` envs as one sharded computation (env axis over the
   devices): the same numbers as on one device, since JAX's threefry is partitionable;
3. ``shard_map``: every device runs ``T`` steps of its own envs (``rollout.env_step``);
4. ``shard_map``: the trajectories are all-gathered, so every device holds the whole
   ``[T, B]`` rollout as one device would, and the agent's ``update`` runs on each device with
   ``axis_name``: values, GAE, normalisers and calibration are computed whole; every minibatch
   (SB3's ``batch_size``, global) is split over the devices, each differentiates its rows,
   and the gradients are averaged (one flat ``lax.pmean``). An algorithm whose ``update`` takes no
   ``axis_name`` runs the whole update on every device (acting is still split).

Same config and seed: the same data as ``FusedSource`` on one device, and parameters equal
up to the float rounding of the averaged gradient (``tests/test_distributed.py``). The
checkpointed state is the global one (envs ``[B]``), so a run resumes on another number of
devices or processes.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rlaccel import compile_cache
from rlaccel import distributed
from rlaccel import rollout as rollout_lib
from rlaccel.agent import Agent, Metrics
from rlaccel.distributed import AXIS
from rlaccel.placement import Placement
from rlaccel.sources.base import SourceFault
from rlaccel.sources.device import DeviceSource
from rlaccel.state import TrainState, apply_update

Array = jax.Array

__all__ = ["ParallelSource", "check_shares", "gather_envs", "takes_axis"]


def takes_axis(update: Any) -> bool:
    """Whether an agent's ``update`` accepts ``axis_name`` (splits each minibatch's gradient)."""
    try:
        return "axis_name" in inspect.signature(update).parameters
    except (TypeError, ValueError):
        return False


def check_shares(section: Any, algo: str, devices: int) -> None:
    """Every device gets an equal share of the envs (and of each minibatch).

    Raises:
      rlaccel.schema.ConfigError: ``<algo>.n_envs`` or ``<algo>.batch_size`` not divisible by ``devices``.
    """
    from rlaccel.schema import ConfigError

    for name in ("n_envs", "batch_size"):
        value = getattr(section, name, None)
        if isinstance(value, int) and value % devices:
            raise ConfigError(f"{algo}.{name}: {value} is not divisible by the {devices} learner devices (placement.learner.devices); each takes an equal share")


def gather_envs(tree: Any, axis_name: str) -> Any:
    """Every leaf ``[T, b, ...]`` gathered over ``axis_name`` along its env axis to ``[T, B, ...]``
    (device order), in one collective: leaves of 4-byte dtypes and bools travel bit for bit in
    one ``uint32`` buffer ``[T, b, K]`` (across hosts each collective is a network round trip)."""
    leaves, treedef = jax.tree.flatten(tree)
    packed = [i for i, x in enumerate(leaves) if x.dtype == jnp.bool_ or x.dtype.itemsize == 4]
    columns = []
    for i in packed:
        x = leaves[i].reshape(*leaves[i].shape[:2], -1)
        columns.append(x.astype(jnp.uint32) if x.dtype == jnp.bool_ else jax.lax.bitcast_convert_type(x, jnp.uint32))
    out = [x if i in packed else jax.lax.all_gather(x, axis_name, axis=1, tiled=True) for i, x in enumerate(leaves)]
    if columns:
        buffer = jax.lax.all_gather(jnp.concatenate(columns, axis=2), axis_name, axis=1, tiled=True)
        start = 0
        for i, column in zip(packed, columns):
            x, piece = leaves[i], buffer[:, :, start : start + column.shape[2]]
            start += column.shape[2]
            value = piece != 0 if x.dtype == jnp.bool_ else jax.lax.bitcast_convert_type(piece, x.dtype)
            out[i] = value.reshape(x.shape[0], buffer.shape[1], *x.shape[2:])
    return jax.tree.unflatten(treedef, out)


class ParallelSource(DeviceSource):
    """Envs split over ``devices``, gradients averaged, parameters replicated (module docstring).

    Args:
      agent, env, num_envs, num_steps, precision: as ``DeviceSource``; ``num_envs`` is global.
      devices: every learner device of the run, all processes, in mesh order
        (``rlaccel.placement.Placement.learners``).
    """

    checkpoint_meta = {"mode": "parallel"}

    def __init__(self, agent: Agent, env: Any, num_envs: int, num_steps: int, precision: str, devices: tuple[jax.Device, ...]):
        mine = [d for d in devices if d.process_index == jax.process_index()]
        super().__init__(agent, env, num_envs, num_steps, precision, learner_device=mine[0], actor_device=mine[0])
        self.devices = tuple(devices)
        self.mesh = jax.sharding.Mesh(np.asarray(self.devices), (AXIS,))
        self.local_envs = num_envs // len(self.devices)
        self.splits_gradients = takes_axis(agent.update)
        update = functools.partial(agent.update, axis_name=AXIS) if self.splits_gradients else agent.update
        self._learner_agent = agent._replace(update=update)
        # Probes time one device's share (its envs, its compiled pieces), never a collective.
        self._probe = DeviceSource(agent, env, self.local_envs, num_steps, precision, learner_device=mine[0])
        self._fault: SourceFault | None = None

    # -- shardings --------------------------------------------------------------------------

    def _sharding(self, spec: P) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    def shardings(self, state: TrainState) -> TrainState:
        """Where each leaf of ``state`` lives: envs split along their first axis, the rest replicated."""
        replicated, split = self._sharding(P()), self._sharding(P(AXIS))
        return jax.tree.map(lambda _: replicated, state.replace(rollout=None)).replace(rollout=jax.tree.map(lambda _: split, state.rollout))

    def initial_state(self, key: Array) -> TrainState:
        """:meth:`init` on this process's first device, fetched to the host (numpy): the same
        in every process, and the template a checkpoint restores into; :meth:`place` shards it."""
        with jax.default_device(self.learner_device):
            return jax.device_get(compile_cache.jit_once(self.init)(key))

    def compile_ahead(self, key: Array, num_updates: int) -> None:
        """Nothing: the chunk compiles for the placed state's mesh shardings (:meth:`compile`)."""

    def place(self, state: TrainState) -> TrainState:
        """``state`` as global arrays on the mesh (from host values, or resharded)."""

        def put(x: Any, sharding: NamedSharding) -> Array:
            if isinstance(x, jax.Array) and (x.sharding == sharding or not x.is_fully_addressable):
                return x if x.sharding == sharding else jax.device_put(x, sharding)
            host = np.asarray(jax.device_get(x))
            return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

        return jax.tree.map(put, state, self.shardings(state))

    def describe(self) -> str:
        return Placement(learner=self.learner_device, actor=self.actor_device, precision=self.precision, learners=self.devices).describe()

    # -- the program ----------------------------------------------------------------------------

    def act_split(self, actor_params: Any, rollout: rollout_lib.RolloutState, noise: rollout_lib.StepNoise) -> tuple[Any, Any, Any]:
        """Every device steps its own envs ``T`` times: ``(rollout, transitions [T, B], episodes [T, B])``,
        the env axis split over the devices."""

        def local(actor_params: Any, rollout: rollout_lib.RolloutState, noise: rollout_lib.StepNoise) -> tuple[Any, Any, Any]:
            body = functools.partial(rollout_lib.env_step, env=self.env, act=self.agent.act, actor_params=actor_params)
            rollout, (transitions, episodes) = jax.lax.scan(body, rollout, noise)
            return rollout, transitions, episodes

        steps = P(None, AXIS)
        return jax.shard_map(local, mesh=self.mesh, in_specs=(P(), P(AXIS), steps), out_specs=(P(AXIS), steps, steps), check_vma=False)(
            actor_params, rollout, noise
        )

    def learn_split(self, state: TrainState, transitions: Any, episodes: Any, key: Array) -> tuple[TrainState, Metrics]:
        """The whole rollout on every device, the update with gradients averaged over them
        (``state`` without envs, replicated in and out)."""

        def local(state: TrainState, transitions: Any, episodes: Any, key: Array) -> tuple[TrainState, Metrics]:
            transitions, episodes = gather_envs((transitions, episodes), AXIS)
            return apply_update(self._learner_agent, state, transitions, episodes, key)

        # check_vma=False: the replicated outputs are replicated by construction (the same
        # program on the same gathered numbers, gradients pmean'd); with the check on, JAX would
        # also sum the gradient of replicated parameters over the devices by itself.
        return jax.shard_map(local, mesh=self.mesh, in_specs=(P(), P(None, AXIS), P(None, AXIS), P()), out_specs=(P(), P()), check_vma=False)(
            state, transitions, episodes, key
        )

    def update_step(self, state: TrainState, _: Any = None) -> tuple[TrainState, Metrics]:
        """Re-quantise, draw the rollout's randomness, act on every device, learn (a scan body)."""
        key, key_rollout, key_update = jax.random.split(state.key, 3)
        actor_params = self.agent.actor_params(state.agent, self.precision)
        noise = rollout_lib.draw_noise(self.env, self.agent, key_rollout, self.num_steps, self.num_envs)
        noise = jax.lax.with_sharding_constraint(noise, self._sharding(P(None, AXIS)))
        rollout, transitions, episodes = self.act_split(actor_params, state.rollout, noise)
        new_state, metrics = self.learn_split(state.replace(rollout=None, key=key), transitions, episodes, key_update)
        return new_state.replace(rollout=rollout), metrics

    def train_chunk(self, state: TrainState, num_updates: int) -> tuple[TrainState, Metrics]:
        """``num_updates`` updates; metrics ``[num_updates]``, replicated."""
        return jax.lax.scan(self.update_step, state, None, length=num_updates)

    def compile(self, state: TrainState, num_updates: int) -> Any:
        """The chunk compiled for the mesh. The state is not donated: after a lost process
        the last good state stays readable (for ``summary.json``).

        Several processes: the probe's pieces are compiled here too, before any chunk is
        timed. Compiled at the first probe instead, each process would take its own time over
        it and the faster one would wait that long inside its next chunk's first collective
        (counted as training time)."""
        if num_updates not in self._chunks:
            shardings = self.shardings(state)
            chunk = compile_cache.jit(self.train_chunk, static_argnums=1, in_shardings=(shardings,), out_shardings=(shardings, self._sharding(P())))
            self._chunks[num_updates] = chunk.lower(state, num_updates).compile()
            if jax.process_count() > 1 and self.probes:
                self._probe.pieces(self.local_view(state))  # once: cached by the probe's source
        return self._chunks[num_updates]

    def start(self, state: TrainState, stop: Any) -> None:
        """Several processes: wait until every process is here (after its compile and the
        writer's setup), so the first timed chunk does not include another's start-up."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("rlaccel: first chunk")

    def run_chunk(self, state: TrainState, num_updates: int) -> tuple[TrainState, Metrics]:
        """One compiled chunk. Several processes: it blocks here, so a process that died shows
        as :attr:`fault` (``rlaccel.distributed.ProcessLost``) with no metrics."""
        self._fault = None
        try:
            new_state, metrics = self.compile(state, num_updates)(state)
            if jax.process_count() > 1:
                jax.block_until_ready(metrics)
        except Exception as e:  # only a lost process is handled here
            if not distributed.is_lost_peer(e):
                raise
            self._fault = distributed.lost(e, int(np.max(self.local_view(state).update)))
            return state, {}
        return new_state, metrics

    @property
    def fault(self) -> SourceFault | None:
        return self._fault

    # -- what this process can read alone ------------------------------------------------------

    def local_view(self, state: TrainState) -> TrainState:
        """This process's first device's shards of ``state``: replicated leaves whole, the envs
        of that device (``[B / D]``); no collective."""

        def mine(x: Any) -> Any:
            if not isinstance(x, jax.Array):
                return x
            return next(s.data for s in x.addressable_shards if s.device == self.learner_device)

        return jax.tree.map(mine, state)

    def probe(self, state: TrainState, seconds_per_update: float, num_calls: int = 32) -> tuple[TrainState, dict[str, float]]:
        """``DeviceSource.probe`` on this process's first device and its envs. Decision latency
        is one device's ``act`` over its ``B / D`` envs; ``time/actor_sps`` and
        ``time/learner_sps`` are that device's rates times ``D`` (every device acts on as many
        envs at once), an estimate, timed without collectives so processes need not agree on
        when to probe."""
        _, out = self._probe.probe(self.local_view(state), seconds_per_update, num_calls)  # (pieces: reads it)
        for name in ("time/actor_sps", "time/learner_sps"):
            out[name] = out[name] * len(self.devices)
        return state, out

    def final_stats(self, state: TrainState) -> dict[str, Any]:
        return super().final_stats(self.local_view(state))

    def summary_extra(self) -> dict[str, Any]:
        return {
            "probe_compile_s": self._probe.pieces_compile_s,
            "devices": len(self.devices),
            "processes": len({d.process_index for d in self.devices}),
            "gradients_split": self.splits_gradients,
        }

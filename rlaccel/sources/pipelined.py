"""A pipelined chunk as one compiled program over the learner and actor devices.

Where the two devices of a split placement share a platform in this process (two CPU
devices, two GPUs), :class:`OneProgram` compiles a chunk of ``count`` pipelined updates into
one SPMD program (``jax.shard_map`` over the mesh ``(learner, actor)``, axis ``role``). Every
step of its loop, each device runs its own branch (``lax.cond`` on ``lax.axis_index``), then
the two swap what they made with one ``lax.ppermute``: the learner's freshly quantised actor
parameters go to the actor device, the actor device's trajectories to the learner, packed
together into one buffer of 32-bit words (each collective is a rendezvous of the devices)::

    step              0       1        2         3        ...  count + 1
    learner device    q(θ0)   .        U0(R0)    U1(R1)   ...  U(count-1)
    actor device      .       R0(θ0)   R1(θ0)    R2(θ1)   ...  .

``Rk`` acts with ``θ(k-1)`` (``θ0`` for the chunk's first two), ``Uk`` makes ``θ(k+1)`` and
quantises it: the run ``rlaccel.sources.split.SplitSource`` dispatches from the host
(one update of policy lag, the serial runner's key chain), with nothing dispatched inside
the chunk. Two CPU devices share XLA's intra-op thread pool; there the host-dispatched
pipeline paid for ~10 executions per update and their hand-offs between threads and ran no
faster than the serial split, while this program runs a step in about the learner's update
alone (``docs/placement-and-int8.md``). Devices of different platforms (a GPU learner with
CPU actors) cannot share one program: they keep the host-dispatched pipeline.

The envs' state and the learner's state enter and leave as the packed buffers, each device's
with a zero buffer of the same shape on the other device (allocated once: the learner's state
takes that memory twice, the replay buffer included).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rlaccel import compile_cache
from rlaccel.agent import Metrics
from rlaccel.sources.wire import Wire
from rlaccel.state import TrainState

__all__ = ["OneProgram", "applies"]

AXIS = "role"  # mesh axis: index 0 learns, index 1 acts


def applies(learner: jax.Device, actor: jax.Device) -> bool:
    """Whether a pipelined chunk on ``learner`` and ``actor`` can be one program: two devices
    of one platform, both this process's."""
    here = jax.process_index()
    return learner != actor and learner.platform == actor.platform and learner.process_index == actor.process_index == here


def _words(tree: Any) -> jax.Array:
    """Every leaf of ``tree`` as 32-bit words, in one 1-D ``uint32`` buffer (bit for bit:
    4-byte dtypes are bitcast, narrower ones widened to ``int32`` first)."""
    def word(x: jax.Array) -> jax.Array:
        x = x if x.dtype.itemsize == 4 else x.astype(jnp.int32)
        return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)

    return jnp.concatenate([word(x) for x in jax.tree.leaves(tree)])


def _from_words(words: jax.Array, like: Any) -> Any:
    """The inverse of :func:`_words` for a tree shaped like ``like``."""
    leaves, start = [], 0
    for s in jax.tree.leaves(like):
        n = int(np.prod(s.shape, dtype=np.int64))
        wide = s.dtype if s.dtype.itemsize == 4 else jnp.int32
        leaves.append(jax.lax.bitcast_convert_type(words[start : start + n], wide).astype(s.dtype).reshape(s.shape))
        start += n
    return jax.tree.unflatten(jax.tree.structure(like), leaves)


def _swap(to_actor: Any, to_learner: Any) -> tuple[Any, Any]:
    """One collective per step (inside ``shard_map``): the learner device's ``to_actor`` and
    the actor device's ``to_learner`` cross over, as one buffer both ways (each side fills
    its own part; a rendezvous costs the two devices more than the bytes)."""
    sent = _words(to_actor)
    got = jax.lax.ppermute(jnp.concatenate([sent, _words(to_learner)]), AXIS, [(0, 1), (1, 0)])
    return _from_words(got[: sent.size], to_actor), _from_words(got[sent.size :], to_learner)


class OneProgram:
    """Pipelined chunks of a ``SplitSource`` (``source``) as one program (module docstring)."""

    def __init__(self, source: Any):
        self.source = source
        self.devices = (source.learner_device, source.actor_device)
        self.mesh = Mesh(np.array(self.devices), (AXIS,))
        self.split = NamedSharding(self.mesh, P(AXIS))
        self.replicated = NamedSharding(self.mesh, P())
        self._executables: dict[int, Any] = {}
        self._spare: dict[tuple[Any, ...], jax.Array] = {}
        self._spec: Any = None

    # -- the program -------------------------------------------------------------------------

    def _wires(self, state: TrainState) -> None:
        """Wires for the learner's state (without envs) and the envs' state, the way into and
        out of a chunk, compiled for ``state``'s shapes; the shapes of what crosses over every
        step (made once)."""
        if self._spec is not None:
            return
        src = self.source
        learner, envs = state.replace(rollout=None), state.rollout
        params = jax.eval_shape(lambda agent: src.agent.actor_params(agent, src.precision), state.agent)
        batch = jax.eval_shape(src.act_phase, params, envs, state.key)[1:]
        learner, envs = (jax.tree.map(compile_cache.spec, tree) for tree in (learner, envs))
        self.learner_wire, self.envs_wire = Wire(learner, self.devices[0]), Wire(envs, self.devices[1])
        self._spec = (learner, params, batch)
        self.learner_wire.compile(learner)  # a chunk's way in and out, each side on its own device
        self.envs_wire.compile(envs)

    def _local(self, learner_buffers: tuple, envs_buffers: tuple, key: jax.Array, count: jax.Array, *, length: int) -> tuple:
        """One device's share of a chunk (inside ``shard_map``): its buffers in and out."""
        src = self.source
        _, params_spec, batch_spec = self._spec
        learner, envs = self.learner_wire.unpack(learner_buffers), self.envs_wire.unpack(envs_buffers)
        is_learner = jax.lax.axis_index(AXIS) == 0

        def split3(chain: jax.Array, _: Any) -> tuple[jax.Array, tuple[jax.Array, ...]]:
            chain, key_rollout, key_update = jax.random.split(chain, 3)
            return chain, (chain, key_rollout, key_update)

        _, (chain, keys_rollout, keys_update) = jax.lax.scan(split3, key, None, length=length)  # the serial runner's keys
        zeros = functools.partial(jax.tree.map, lambda s: jnp.zeros(s.shape, s.dtype))
        rows_spec = jax.eval_shape(src.learn_phase, learner, params_spec, *batch_spec, key)[1]
        rows = jax.tree.map(lambda s: jnp.zeros((length, *s.shape), s.dtype), rows_spec)
        params, batch = zeros(params_spec), zeros(batch_spec)

        def step(i: jax.Array, carry: tuple) -> tuple:
            learner, envs, on_actor, sent, behaviour, batch, rows = carry
            k_learn, k_act = i - 2, i - 1  # the update the learner makes, the rollout the actors collect

            def learn_side() -> tuple:
                def update() -> tuple:
                    state, metrics = src.learn_phase(learner.replace(key=chain[k_learn]), behaviour, *batch, keys_update[k_learn])
                    return state, jax.tree.map(lambda r, m: jax.lax.dynamic_update_index_in_dim(r, m, k_learn, 0), rows, metrics)

                state, new_rows = jax.lax.cond(k_learn >= 0, update, lambda: (learner, rows))
                return state, envs, src.agent.actor_params(state.agent, src.precision), batch, new_rows

            def act_side() -> tuple:
                def act() -> tuple:
                    new_envs, transitions, episodes = src.act_phase(on_actor, envs, keys_rollout[k_act])
                    return new_envs, (transitions, episodes)

                new_envs, made = jax.lax.cond((k_act >= 0) & (k_act < count), act, lambda: (envs, batch))
                return learner, new_envs, on_actor, made, rows

            learner, envs, made_params, made_batch, rows = jax.lax.cond(is_learner, learn_side, act_side)
            on_actor, batch = _swap(made_params, made_batch)  # each side keeps what it is sent
            return learner, envs, on_actor, made_params, sent, batch, rows  # rollout k acted with what was sent before it

        carry = (learner, envs, params, params, params, batch, rows)
        learner, envs, *_, rows = jax.lax.fori_loop(0, count + 2, step, carry)
        return self.learner_wire.pack(learner), self.envs_wire.pack(envs), rows

    def compile(self, state: TrainState, num_updates: int) -> Any:
        """The program for chunks of up to ``length`` updates (the longest asked for so far),
        compiled ahead of time from ``state``'s shapes (it may be abstract)."""
        self._wires(state)
        length = max([num_updates, *self._executables])
        if length not in self._executables:
            buffers = jax.eval_shape(self.learner_wire.pack, self._spec[0]), jax.eval_shape(self.envs_wire.pack, state.rollout)
            spread = lambda s: jax.ShapeDtypeStruct((2 * s.shape[0],), s.dtype, sharding=self.split)  # noqa: E731
            args = (*jax.tree.map(spread, buffers), jax.ShapeDtypeStruct(state.key.shape, state.key.dtype, sharding=self.replicated), jax.ShapeDtypeStruct((), jnp.int32, sharding=self.replicated))
            local = functools.partial(self._local, length=length)
            program = jax.shard_map(local, mesh=self.mesh, in_specs=(P(AXIS), P(AXIS), P(), P()), out_specs=P(AXIS), check_vma=False)
            self._executables = {length: compile_cache.jit(program).lower(*args).compile()}
        return self._executables[length]

    # -- running it --------------------------------------------------------------------------

    def _spread(self, buffers: tuple[jax.Array, ...], side: int) -> tuple[jax.Array, ...]:
        """Buffers living on ``devices[side]`` as arrays over the mesh (a zero buffer, kept
        for the next chunk, on the other device)."""
        other = self.devices[1 - side]
        out = []
        for b in buffers:
            key = (b.shape, b.dtype, other)
            if key not in self._spare:
                self._spare[key] = jax.device_put(np.zeros(b.shape, b.dtype), other)
            parts = [b, self._spare[key]][:: 1 - 2 * side]
            out.append(jax.make_array_from_single_device_arrays((2 * b.shape[0], *b.shape[1:]), self.split, parts))
        return tuple(out)

    def _take(self, tree: Any, side: int) -> Any:
        """Each leaf's shard on ``devices[side]`` (no copy)."""
        device = self.devices[side]
        return jax.tree.map(lambda x: next(s.data for s in x.addressable_shards if s.device == device), tree)

    def run(self, state: TrainState, num_updates: int) -> tuple[TrainState, Metrics]:
        """``num_updates`` pipelined updates, dispatched: the new state (learner's on the learner
        device, envs on the actor device) and metrics ``[num_updates]`` on the learner device."""
        executable = self.compile(state, num_updates)
        (length,) = self._executables
        learner = self._spread(self.learner_wire.packed(state.replace(rollout=None)), 0)
        envs = self._spread(self.envs_wire.packed(state.rollout), 1)
        key = jax.device_put(state.key, self.replicated)
        count = jax.device_put(np.int32(num_updates), self.replicated)
        learner, envs, rows = executable(learner, envs, key, count)
        learner = self.learner_wire.unpacked(self._take(learner, 0))
        envs = self.envs_wire.unpacked(self._take(envs, 1))
        rows = self._take(rows, 0)
        if num_updates < length:
            rows = {name: x[:num_updates] for name, x in rows.items()}
        return learner.replace(rollout=envs), rows

"""A pipelined chunk as one compiled program over the learner and actor devices.

Where the two devices of a split placement are two CPU devices of this process,
:class:`OneProgram` compiles a chunk of ``count`` pipelined updates into
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
CPU actors) cannot share one program, and two GPUs have not been measured: both keep the
host-dispatched pipeline.

The learner's state and the envs' state enter the program as they live, each array beside a
spare of zeros of its shape on the other device (made once: the learner's state takes its
memory twice, a replay buffer included), and leave it as each device's shard, with nothing
copied or dispatched per leaf; only the PRNG key and scalar leaves (counters) are copied to
both devices, the scalars sent across again at the chunk's end.
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
from rlaccel.state import TrainState

__all__ = ["OneProgram", "applies"]

AXIS = "role"  # mesh axis: index 0 learns, index 1 acts


def applies(learner: jax.Device, actor: jax.Device) -> bool:
    """Whether a pipelined chunk on ``learner`` and ``actor`` is one program: two CPU devices,
    both this process's (the one pair measured and tested here; the program itself is
    platform-neutral SPMD)."""
    here = jax.process_index()
    cpus = learner.platform == actor.platform == "cpu"
    return learner != actor and cpus and learner.process_index == actor.process_index == here


def _words(tree: Any) -> jax.Array:
    """Every leaf of ``tree`` as 32-bit words, in one 1-D ``uint32`` buffer (bit for bit:
    4-byte dtypes are bitcast, narrower ones widened to ``int32`` first)."""
    def word(x: jax.Array) -> jax.Array:
        x = x if x.dtype.itemsize == 4 else x.astype(jnp.int32)
        return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)

    return jnp.concatenate([jnp.zeros((0,), jnp.uint32), *(word(x) for x in jax.tree.leaves(tree))])


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


def _specs(tree: Any) -> Any:
    """Per leaf: split along its leading axis over the mesh, or (a scalar) the same on both."""
    return jax.tree.map(lambda x: P() if np.ndim(x) == 0 else P(AXIS), tree)


def _scalars(tree: Any) -> list[jax.Array]:
    return [x for x in jax.tree.leaves(tree) if np.ndim(x) == 0]


def _with_scalars(tree: Any, scalars: list[jax.Array]) -> Any:
    """``tree`` with its scalar leaves replaced, in order, by ``scalars``."""
    new = iter(scalars)
    return jax.tree.map(lambda x: next(new) if np.ndim(x) == 0 else x, tree)


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

    # -- the program -------------------------------------------------------------------------

    def _local(self, learner: TrainState, envs: Any, key: jax.Array, count: jax.Array, act_only: jax.Array, *, length: int) -> tuple:
        """One device's share of a chunk (inside ``shard_map``): ``(learner state, envs,
        metrics [length], the last rollout's observations as the learner received them)``;
        each side's own state is the one kept (:meth:`run`), its scalars made the same on both
        devices, the metrics the learner's. With ``act_only`` the learner makes no update and the
        envs the rollouts stepped are dropped at the end, once: the state leaves as it entered
        (the probe's timing of acting, ``SplitSource.timed_rollout``)."""
        src = self.source
        params_spec = jax.eval_shape(lambda agent: src.agent.actor_params(agent, src.precision), learner.agent)
        batch_spec = jax.eval_shape(src.act_phase, params_spec, envs, learner.key)[1:]
        is_learner = jax.lax.axis_index(AXIS) == 0

        def split3(chain: jax.Array, _: Any) -> tuple[jax.Array, tuple[jax.Array, ...]]:
            chain, key_rollout, key_update = jax.random.split(chain, 3)
            return chain, (chain, key_rollout, key_update)

        _, (chain, keys_rollout, keys_update) = jax.lax.scan(split3, key, None, length=length)  # the serial runner's keys (``key`` is on both devices)
        zeros = functools.partial(jax.tree.map, lambda s: jnp.zeros(s.shape, s.dtype))
        rows_spec = jax.eval_shape(src.learn_phase, learner, params_spec, *batch_spec, learner.key)[1]
        rows = jax.tree.map(lambda s: jnp.zeros((length, *s.shape), s.dtype), rows_spec)
        params, batch = zeros(params_spec), zeros(batch_spec)

        def step(i: jax.Array, carry: tuple) -> tuple:
            learner, envs, on_actor, sent, behaviour, batch, rows = carry
            k_learn, k_act = i - 2, i - 1  # the update the learner makes, the rollout the actors collect

            def learn_side() -> tuple:
                def update() -> tuple:
                    state, metrics = src.learn_phase(learner.replace(key=chain[k_learn]), behaviour, *batch, keys_update[k_learn])
                    return state, jax.tree.map(lambda r, m: jax.lax.dynamic_update_index_in_dim(r, m, k_learn, 0), rows, metrics)

                state, new_rows = jax.lax.cond((k_learn >= 0) & ~act_only, update, lambda: (learner, rows))
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
        learner, stepped, _, _, _, batch, rows = jax.lax.fori_loop(0, count + 2, step, carry)
        envs = jax.tree.map(lambda entered, out: jnp.where(act_only, entered, out), envs, stepped)  # acting only: as they entered
        # Arrays leave as each device's shard (the source keeps its own side's); scalars leave
        # the same on both devices, each side's sent to the other.
        learner_there, envs_there = _swap(_scalars(learner), _scalars(envs))
        pick = lambda mine, there, own: [jnp.where(own, a, b) for a, b in zip(mine, there)]  # noqa: E731
        learner = _with_scalars(learner, pick(_scalars(learner), learner_there, is_learner))
        envs = _with_scalars(envs, pick(_scalars(envs), envs_there, ~is_learner))
        return learner, envs, rows, batch[0].obs

    def compile(self, state: TrainState, num_updates: int) -> Any:
        """The program for chunks of up to ``length`` updates (the longest asked for so far),
        compiled ahead of time from ``state``'s shapes (it may be abstract)."""
        length = max([num_updates, *self._executables])
        if length not in self._executables:
            learner, envs = (jax.tree.map(self._on_mesh, tree) for tree in (state.replace(rollout=None), state.rollout))
            local = functools.partial(self._local, length=length)
            specs = (_specs(learner), _specs(envs))
            program = jax.shard_map(local, mesh=self.mesh, in_specs=(*specs, P(), P(), P()), out_specs=(*specs, P(AXIS), P(AXIS)), check_vma=False)
            key = compile_cache.spec(state.key, sharding=self.replicated)
            count, act_only = (jax.ShapeDtypeStruct((), dtype, sharding=self.replicated) for dtype in (jnp.int32, jnp.bool_))
            self._executables = {length: compile_cache.jit(program).lower(learner, envs, key, count, act_only).compile()}
        return self._executables[length]

    @property
    def length(self) -> int:
        """The compiled program's chunk length (0 before the first compile): a call of up to
        this many updates runs it, a longer one compiles it again."""
        return max(self._executables, default=0)

    # -- running it --------------------------------------------------------------------------

    def _on_mesh(self, x: Any) -> jax.ShapeDtypeStruct:
        """How a state leaf enters the program: an array as a shard per device (its own and
        a spare), a scalar on both."""
        if np.ndim(x) == 0:
            return compile_cache.spec(x, sharding=self.replicated)
        return jax.ShapeDtypeStruct((2 * x.shape[0], *x.shape[1:]), x.dtype, sharding=self.split)

    def _enter(self, tree: Any, side: int) -> Any:
        """``tree``, living on ``devices[side]``, as the program takes it (:meth:`_on_mesh`):
        each array beside a spare of its shape on the other device (zeros, made once and
        kept: the program only reads a side's own state), the scalars copied over."""
        other = self.devices[1 - side]

        def spread(x: jax.Array) -> jax.Array:
            key = (x.shape, x.dtype, other)
            if key not in self._spare:
                self._spare[key] = jax.device_put(np.zeros(x.shape, x.dtype), other)
            parts = [x, self._spare[key]][:: 1 - 2 * side]
            return jax.make_array_from_single_device_arrays((2 * x.shape[0], *x.shape[1:]), self.split, parts)

        scalars = jax.device_put(_scalars(tree), self.replicated)
        return _with_scalars(jax.tree.map(lambda x: x if np.ndim(x) == 0 else spread(x), tree), scalars)

    def _take(self, tree: Any, side: int) -> Any:
        """Each leaf's shard (or a scalar's copy) on ``devices[side]`` (no copy made)."""
        device = self.devices[side]
        return jax.tree.map(lambda x: next(s.data for s in x.addressable_shards if s.device == device), tree)

    def run(self, state: TrainState, num_updates: int, act_only: bool = False) -> tuple[TrainState, Metrics, jax.Array]:
        """``num_updates`` pipelined updates, dispatched: the new state (learner's on the learner
        device, envs on the actor device), metrics ``[num_updates]`` and the last rollout's
        observations ``[T, B, obs_dim]``, both on the learner device. ``act_only``: rollouts
        alone, the state left as it was (:meth:`_local`)."""
        executable = self.compile(state, num_updates)
        (length,) = self._executables
        learner, envs = self._enter(state.replace(rollout=None), 0), self._enter(state.rollout, 1)
        key, count, acting = jax.device_put((state.key, np.int32(num_updates), np.bool_(act_only)), self.replicated)
        learner, envs, rows, obs = executable(learner, envs, key, count, acting)
        rows = self._take(rows, 0)
        if num_updates < length:
            rows = {name: x[:num_updates] for name, x in rows.items()}
        return self._take(learner, 0).replace(rollout=self._take(envs, 1)), rows, self._take(obs, 0)

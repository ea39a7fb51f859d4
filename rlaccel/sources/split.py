"""The split step source: rollouts on the actor device, updates on the learner device.

Each update has three compiled pieces (``DeviceSource.pieces``): ``actor_params`` (the
re-quantise step) and ``learn`` on the learner device, ``rollout`` on the actor device;
parameters and trajectories move between them with ``jax.device_put`` as soon as they exist,
each packed into one buffer per dtype (:class:`Wire`). Pipelined chunks on two CPU devices
are one program over both instead (``rlaccel.sources.pipelined``, the same run bit for bit);
other pairs (a GPU learner with CPU actors) run the pieces.
Dispatch is asynchronous, so the host only queues work: nothing inside a chunk waits for a
device, and the chunk blocks once, when the loop fetches its metrics.

**Pipelined** (``placement.pipeline``: ``auto`` or ``true``, the default for two devices):
the actor device runs rollout k+1 while the learner runs update k, so the two devices work
at the same time and an update costs about ``max(act, learn)`` instead of their sum
(``docs/placement-and-int8.md``)::

    actor device    R0(θ0)  R1(θ0)  R2(θ1)  R3(θ2)  ...      Rk acts with θ(k-1)
    learner device          U0(R0)  U1(R1)  U2(R2)  ...      Uk makes θ(k+1)

Rollout k+1 acts with the parameters of update k-1 (θk), one update of policy lag, logged per
update as ``actor/policy_lag``. PPO's ratio uses the behaviour log-probabilities the actors
recorded, so the lagged rollout is still corrected exactly (IMPALA / Sebulba do the same);
DQN is off-policy. A chunk's first rollout acts with the newest parameters (lag 0): between
chunks the state is complete (nothing is in flight), so checkpoints and ``--resume`` stay
exact, at the cost of one unoverlapped rollout per chunk (``logging.log_interval`` updates).
The PRNG stream is the serial runner's, so ``pipeline: false`` and chunks of one update give
the serial run bit for bit.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlaccel import compile_cache
from rlaccel.agent import Metrics
from rlaccel.sources import pipelined
from rlaccel.sources.device import DeviceSource, seconds_per_step
from rlaccel.state import TrainState

__all__ = ["SplitSource", "Wire"]


class Wire:
    """Moves one pytree structure to ``device`` as one flat buffer per dtype: a handful of
    transfers instead of one per leaf (an int8 policy has ~30 leaves, and each ``device_put``
    of a leaf costs the host ~10 µs). Packing runs where the tree lives, unpacking on
    ``device``, each one small compiled program; the values arrive bit for bit."""

    def __init__(self, example: Any, device: jax.Device):
        leaves, self.treedef = jax.tree.flatten(example)
        self.specs = [(tuple(x.shape), jnp.dtype(x.dtype)) for x in leaves]
        self.dtypes = sorted({d for _, d in self.specs}, key=str)
        self.device = device
        self._pack, self._unpack = compile_cache.jit(self.pack), compile_cache.jit(self.unpack)

    def pack(self, tree: Any) -> tuple[jax.Array, ...]:
        """``tree`` -> one 1-D buffer per dtype (jittable)."""
        leaves = jax.tree.leaves(tree)
        return tuple(jnp.concatenate([x.reshape(-1) for x, (_, d) in zip(leaves, self.specs) if d == dtype]) for dtype in self.dtypes)

    def unpack(self, buffers: tuple[jax.Array, ...]) -> Any:
        """The inverse of :meth:`pack` (jittable)."""
        offsets, leaves = dict.fromkeys(self.dtypes, 0), []
        for shape, dtype in self.specs:
            n, start = int(np.prod(shape, dtype=np.int64)), offsets[dtype]
            leaves.append(buffers[self.dtypes.index(dtype)][start : start + n].reshape(shape))
            offsets[dtype] = start + n
        return jax.tree.unflatten(self.treedef, leaves)

    def __call__(self, tree: Any) -> Any:
        """``tree`` on :attr:`device` (dispatched: nothing waits for it)."""
        return self._unpack(jax.device_put(self._pack(tree), self.device))


class SplitSource(DeviceSource):
    """Rollouts on the actor device, updates on the learner device, parameters in between.

    Args (besides :class:`rlaccel.sources.device.DeviceSource`'s):
      pipeline: overlap rollout k+1 with update k (one update of policy lag); ``False``:
        quantise -> rollout -> update in turn.
      one_program: pipelined chunks as one program over both devices where they are two CPU
        devices (``rlaccel.sources.pipelined``); ``False``: dispatched from the host, as
        other pairs always are.
    """

    def __init__(self, *args: Any, pipeline: bool = True, one_program: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pipeline = pipeline
        self._lag_sum = 0.0
        self._lag_count = 0
        self._wires: dict[str, Wire] = {}
        one = one_program and pipeline and pipelined.applies(self.learner_device, self.actor_device)
        self._program = pipelined.OneProgram(self) if one else None

    @property
    def learns_in_pieces(self) -> bool:  # type: ignore[override]
        """Whether chunks run the separately compiled ``learn`` piece (not with one program,
        whose probe estimates the learner's speed from the step's time instead)."""
        return self._program is None

    @property
    def acting_overlaps(self) -> bool:  # type: ignore[override]
        return self._program is not None

    @property
    def rollout_piece(self) -> bool:  # type: ignore[override]
        """The one program times acting itself (:meth:`timed_rollout`); the pieces' chunks need the piece."""
        return self._program is None

    def timed_rollout(self, state: TrainState, pieces: dict[str, Any], actor_params: Any, key: Any) -> tuple[TrainState, float, Any, Any]:
        """With one program: the program acting only (``OneProgram.run``'s ``act_only``), timed
        per step without its fixed cost per call (``seconds_per_step``, 9 steps against 1: the
        call costs ~3 ms for CartPole's state, a step ~0.5 ms; each step's exchange of
        parameters and trajectories counted as acting), never more steps than the chunk's
        compiled length (a longer call would compile the program again: 6-7 s each for
        Pendulum's chunks of 8, two of them per probe before); else the ``rollout`` piece."""
        if self._program is None:
            return super().timed_rollout(state, pieces, actor_params, key)
        most = max(2, self._program.length)
        seconds, obs = seconds_per_step(lambda steps: jax.block_until_ready(self._program.run(state, steps, act_only=True))[2], many=min(9, most), most=most)
        return state, seconds, obs, None

    def describe(self) -> str:
        line = super().describe()
        if not self.pipeline:
            return line
        return line[:-1] + (", pipelined, one program)" if self._program is not None else ", pipelined)")

    def summary_extra(self) -> dict[str, Any]:
        """``actor/policy_lag``: the mean over the run's updates (0 without pipelining)."""
        lag = self._lag_sum / self._lag_count if self._lag_count else 0.0
        return {**super().summary_extra(), "actor/policy_lag": lag}

    def compile(self, state: TrainState, num_updates: int) -> None:
        """Compile the pipelined chunk as one program where the devices allow it
        (``rlaccel.sources.pipelined``; the probe's pieces beside it), else the pieces for
        their devices (one set for every chunk length) and the wires between them (one
        rollout, not kept)."""
        if self._program is not None:
            self.compile_pieces_beside(state)
            self.join_ahead()
            self._program.compile(state, num_updates)
            if self._pieces_thread is not None:  # no chunk runs beside a compile
                self.pieces(state)
            return
        self.join_ahead()
        pieces = self.pieces(state)
        params = self._send_params(pieces["actor_params"](state.agent))
        _, transitions, episodes = pieces["rollout"](params, state.rollout, self._to_actor(state.key))
        jax.block_until_ready(self._send_batch(transitions, episodes))

    def _compile_abstract(self, state: TrainState, num_updates: int) -> None:
        """What :meth:`compile_ahead` compiles: the one program, or the pieces."""
        if self._program is None:
            return super()._compile_abstract(state, num_updates)
        self._program.compile(state, num_updates)

    def _to_actor(self, x: Any) -> Any:
        return jax.device_put(x, self.actor_device)

    def _send(self, name: str, tree: Any, device: jax.Device) -> Any:
        """``tree`` to ``device`` through the :class:`Wire` called ``name`` (made on first use)."""
        if name not in self._wires:
            self._wires[name] = Wire(tree, device)
        return self._wires[name](tree)

    def _send_params(self, params: Any) -> Any:
        """Actor parameters, made on the learner, to the actor device."""
        return self._send("params", params, self.actor_device)

    def _send_batch(self, transitions: Any, episodes: Any) -> Any:
        """A rollout's ``(transitions, episodes)``, made on the actor device, to the learner."""
        return self._send("batch", (transitions, episodes), self.learner_device)

    def run_chunk(self, state: TrainState, num_updates: int) -> tuple[TrainState, Metrics]:
        """``num_updates`` updates dispatched from the host; metrics ``[num_updates]`` on the
        learner device (pipelined: with ``actor/policy_lag``, updates between the parameters a
        rollout acted with and those of the serial runner, 0 or 1)."""
        if self.pipeline and self._program is not None:
            state, metrics, _ = self._program.run(state, num_updates)
            lags = [0] + [1] * (num_updates - 1)
        else:
            run = self._pipelined if self.pipeline else self._serial
            state, rows, lags = run(self.pieces(state), state, num_updates)
            metrics = jax.tree.map(lambda *xs: jnp.stack(xs), *rows)
        self._lag_sum += float(sum(lags))
        self._lag_count += len(lags)
        if self.pipeline:
            metrics["actor/policy_lag"] = jax.device_put(np.asarray(lags, np.float32), self.learner_device)
        return state, metrics

    def _serial(self, pieces: dict[str, Any], state: TrainState, num_updates: int) -> tuple[TrainState, list[Metrics], list[int]]:
        """Quantise on the learner -> parameters to the actor -> rollout there -> trajectories
        to the learner -> update there, one update after the other."""
        rows = []
        for _ in range(num_updates):
            key, key_rollout, key_update = jax.random.split(state.key, 3)
            actor_params = pieces["actor_params"](state.agent)
            rollout, transitions, episodes = pieces["rollout"](self._send_params(actor_params), state.rollout, self._to_actor(key_rollout))
            transitions, episodes = self._send_batch(transitions, episodes)
            learner_state, metrics = pieces["learn"](state.replace(rollout=None, key=key), actor_params, transitions, episodes, key_update)
            state = learner_state.replace(rollout=rollout)
            rows.append(metrics)
        return state, rows, [0] * num_updates

    def _pipelined(self, pieces: dict[str, Any], state: TrainState, num_updates: int) -> tuple[TrainState, list[Metrics], list[int]]:
        """Rollout k+1 (actor device, parameters θk) dispatched before update k (learner device).

        The keys are the serial runner's: ``key, key_rollout, key_update = split(key)`` per
        update, a chain that does not depend on the updates, so it runs ahead of them.
        """
        key, key_rollout, key_update = jax.random.split(state.key, 3)
        params = pieces["actor_params"](state.agent)  # θk on the learner (what the actors hold)
        on_actor = self._send_params(params)
        rollout, transitions, episodes = pieces["rollout"](on_actor, state.rollout, self._to_actor(key_rollout))
        behaviour = params  # the parameters the pending rollout acts with
        learner = state.replace(rollout=None)
        rows, lags = [], []
        for i in range(num_updates):
            batch = self._send_batch(transitions, episodes)  # trajectories k, moved once they exist
            lags.append(0 if i == 0 else 1)
            next_key = key
            if i + 1 < num_updates:  # rollout k+1 on the actor device, with the parameters it holds
                next_key, key_rollout, next_update = jax.random.split(key, 3)
                rollout, transitions, episodes = pieces["rollout"](on_actor, rollout, self._to_actor(key_rollout))
            learner, metrics = pieces["learn"](learner.replace(key=key), behaviour, *batch, key_update)
            rows.append(metrics)
            if i + 1 < num_updates:  # θ(k+1) for rollout k+2: quantised and moved as soon as update k is queued
                behaviour = params
                params = pieces["actor_params"](learner.agent)
                on_actor = self._send_params(params)
                key, key_update = next_key, next_update
        return learner.replace(rollout=rollout), rows, lags

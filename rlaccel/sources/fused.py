"""The fused step source: actors on the learner's device, a chunk of updates (re-quantise ->
rollout -> learner update, :class:`rlaccel.sources.device.DeviceSource`'s phases) as one
compiled program. It is pure, so ``jax.vmap`` over seeds works unchanged (:func:`make_train`,
sweeps)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlaccel import compile_cache
from rlaccel.agent import Metrics
from rlaccel.sources.device import DeviceSource, seconds_per_step
from rlaccel.state import TrainState

Array = jax.Array

__all__ = ["FusedSource", "make_train"]


class FusedSource(DeviceSource):
    """Actor and learner in one compiled program on one device."""

    rollout_piece = False  # its chunk times acting (:meth:`timed_rollout`)

    def update_step(self, state: TrainState, _: Any = None) -> tuple[TrainState, Metrics]:
        """Re-quantise, roll out, learn (a scan body)."""
        key, key_update, actor_params, rollout, transitions, episodes = self._act(state)
        return self.learn_phase(state.replace(rollout=rollout, key=key), actor_params, transitions, episodes, key_update)

    def _act(self, state: TrainState) -> tuple[Array, Array, Any, Any, Any, Any]:
        """An update's keys, re-quantisation and rollout (the first half of :meth:`update_step`)."""
        key, key_rollout, key_update = jax.random.split(state.key, 3)
        actor_params = self.agent.actor_params(state.agent, self.precision)
        rollout, transitions, episodes = self.act_phase(actor_params, state.rollout, key_rollout)
        return key, key_update, actor_params, rollout, transitions, episodes

    def train_chunk(self, state: TrainState, num_updates: int) -> tuple[TrainState, Metrics]:
        """``num_updates`` updates; metrics stacked ``[num_updates]``. Pure: jit/vmap it."""
        return jax.lax.scan(self.update_step, state, None, length=num_updates)

    def train(self, key: Array, num_updates: int) -> tuple[TrainState, Metrics]:
        """A whole run as one pure function (``jax.jit(jax.vmap(...))`` it for many seeds)."""
        return self.train_chunk(self.init(key), num_updates)

    def train_upto(self, state: TrainState, count: Array, length: int, act_only: Array) -> tuple[TrainState, Metrics, Array]:
        """``count`` updates (traced, ``0 <= count <= length``): one program serves every chunk
        length up to ``length``. Metrics ``[length]``, rows past ``count`` zero. The updates
        are :meth:`update_step`'s arithmetic, as :meth:`train_chunk`'s.

        With ``act_only`` (a traced bool), each step re-quantises and rolls out, then drops
        what it did: the state comes back unchanged, metrics zero, and with int8 actors the
        last rollout's observations ``[T, B, obs_dim]`` come out (third output; zeros when
        learning; fp32 actors: empty, no copy per update). That is how
        the probe times acting (:meth:`timed_rollout`) with this program instead of
        compiling a rollout of its own: 68 kernels, 0.9 core-seconds of compile for PPO
        CartPole (the chunk: ~270, 2.6); 96 kernels, 1.5 core-seconds for the RL Zoo's PPO
        Pendulum (the chunk: ~370, 4.1). Time to result, alternated with the commit before:
        CartPole 5.6-5.8 -> 5.1-5.2 s, zoo Pendulum 6.3 -> 5.4-5.5 s.
        """

        learns = 1 - act_only.astype(jnp.int32)  # 0 or 1 learner updates per step
        act, learn_phase = jax.jit(self._act), jax.jit(self.learn_phase)  # each traced once (jit's cache)
        key, key_update, actor_params, rollout, transitions, episodes = jax.eval_shape(act, state)
        shapes = jax.eval_shape(learn_phase, state.replace(rollout=rollout, key=key), actor_params, transitions, episodes, key_update)[1]
        rows = jax.tree.map(lambda x: jnp.zeros((length, *x.shape), x.dtype), shapes)
        keep_obs = self.precision == "int8"  # the probe's quantisation metrics compare int8 and fp32 on them
        obs = jnp.zeros((self.num_steps, *state.rollout.obs.shape) if keep_obs else (0,), state.rollout.obs.dtype)

        def body(i: Array, carry: tuple[TrainState, Metrics, Array]) -> tuple[TrainState, Metrics, Array]:
            state, rows, obs = carry
            key, key_update, actor_params, rollout, transitions, episodes = act(state)

            def learn(_: Array, carry: tuple[TrainState, Metrics]) -> tuple[TrainState, Metrics]:
                # The rollout's outputs go in tied to the carried state (an optimization
                # barrier): left loop-invariant, XLA hoisted the learner's work on them alone
                # (the minibatch gathers) out of this loop, to run even with no trip (zoo
                # Pendulum acting only: 8.5 ms per step, 2.6 ms tied).
                state, (rollout_, key_, params, *batch) = jax.lax.optimization_barrier((carry[0], (rollout, key, actor_params, transitions, episodes, key_update)))
                state, metrics = learn_phase(state.replace(rollout=rollout_, key=key_), params, *batch)
                return state, jax.tree.map(lambda r, m: jax.lax.dynamic_update_index_in_dim(r, m, i, 0), carry[1], metrics)

            # Learning as a loop of 0 or 1 trips, not a lax.cond: a cond copied the state it
            # updates in place (DQN's replay buffer: 8x slower); the rows it writes are carried.
            state, rows = jax.lax.fori_loop(0, learns, learn, (state, rows))
            return state, rows, jnp.where(act_only, transitions.obs, obs) if keep_obs else obs

        return jax.lax.fori_loop(0, count, body, (state, rows, obs))

    def compile(self, state: TrainState, num_updates: int) -> Any:
        """``(state, count, act_only) -> (state, metrics [length], observations)`` compiled
        ahead of time (donates ``state``) for chunks of up to ``length`` updates, ``length``
        the first chunk's: a shorter chunk (the last one of a run, one after ``--resume`` at
        another boundary, a ``stop_at``) runs the same executable, with nothing more to compile."""
        self.compile_pieces_beside(state)  # beside compile_ahead's (after init)
        self.join_ahead()
        if self._ahead_spec is not None:  # once, for the first real state
            if jax.tree.map(compile_cache.spec, state) != self._ahead_spec:  # compiled ahead for shapes it does not have
                self._chunks = {}
            self._ahead_spec = None
        executable = self._compile_abstract(state, num_updates)
        if self._pieces_thread is not None:  # no chunk runs beside a compile (it would time its slowdown)
            self.pieces(state)
        return executable

    def _compile_abstract(self, state: TrainState, num_updates: int) -> Any:
        """The chunk's executable for ``state``'s shapes and devices (it may be abstract)."""
        length = max([num_updates, *self._chunks])
        if length not in self._chunks:
            lowered = compile_cache.jit(self.train_upto, static_argnums=2, donate_argnums=0).lower(state, np.int32(0), length, np.bool_(False))
            self._chunks = {length: lowered.compile()}
        return self._chunks[length]

    def run_chunk(self, state: TrainState, num_updates: int) -> tuple[TrainState, Metrics]:
        """One compiled chunk, dispatched; metrics ``[num_updates]`` stay on the learner device
        (a chunk shorter than the executable's length is trimmed on the host, after it ran)."""
        executable = self.compile(state, num_updates)
        (length,) = self._chunks
        state, metrics, _ = executable(state, np.int32(num_updates), np.bool_(False))
        if num_updates < length:
            metrics = {k: np.asarray(v)[:num_updates] for k, v in metrics.items()}
        return state, metrics

    def timed_rollout(self, state: TrainState, pieces: dict[str, Any], actor_params: Any, key: Array) -> tuple[TrainState, float, Array, None]:
        """The chunk's program in its acting-only mode (:meth:`train_upto`): re-quantisation
        and rollout as training runs them, the state given back unchanged (the chunk donates
        ``state``: go on with the one returned), timed per step without the program's fixed
        cost per call (:func:`rlaccel.sources.device.seconds_per_step`)."""
        executable = self.compile(state, 1)

        def run(steps: int) -> Array:
            nonlocal state  # each call donates the state it is given and hands it back
            state, _, obs = jax.block_until_ready(executable(state, np.int32(steps), np.bool_(True)))
            return obs

        seconds, obs = seconds_per_step(run, many=3)
        return state, seconds, obs, None


def make_train(config: Any) -> Any:
    """``train(key) -> (final TrainState, metrics [num_updates])``: a whole fused run, pure.

    ``jax.jit(jax.vmap(make_train(config)))(keys)`` trains one agent per key in one compile;
    any registered algorithm. Acting precision comes from ``config.placement.actor.precision``.
    """
    from rlaccel import agent as agent_lib
    from rlaccel import envs

    env = envs.make(config.env, auto_reset=True, **config.env_kwargs)
    spec = agent_lib.make(config, env)
    source = FusedSource(spec.agent, env, spec.num_envs, spec.num_steps, precision=config.placement.actor.precision)
    return functools.partial(source.train, num_updates=spec.num_updates)

"""What the JAX-env step sources share: :class:`DeviceSource`, an update's two phases
(:meth:`DeviceSource.act_phase`, :meth:`DeviceSource.learn_phase`), init, placement, the
probe's compiled pieces and the probe itself: decision latency and the separate speeds of
acting and learning, timed on the host around blocking calls (between chunks, never inside
them).

* ``rlaccel.sources.fused.FusedSource`` (actors on the learner's device): a chunk of
  updates (re-quantise -> rollout -> learner update) is one compiled program.
* ``rlaccel.sources.split.SplitSource`` (two devices): the rollout is compiled for the
  actor device, the update for the learner device; trajectories move to the learner and
  freshly quantised actor parameters move back after every update, pipelined by default.
  ``rlaccel.sources.make_source`` picks one of the two from the placement.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlaccel import compile_cache
from rlaccel import quant
from rlaccel import rollout as rollout_lib
from rlaccel.agent import Agent, Metrics
from rlaccel.placement import Placement
from rlaccel.sources.base import StepSource, latency_percentiles
from rlaccel.state import TrainState, apply_update, init_state

Array = jax.Array


def neutral(spec: jax.ShapeDtypeStruct) -> np.ndarray:
    """A host array of ``spec``'s shape and dtype, 0.5 (floats) or 0: noise for a call whose
    time does not depend on its values (no PRNG program compiled to draw it)."""
    return np.full(spec.shape, 0.5 if jnp.issubdtype(spec.dtype, jnp.floating) else 0, spec.dtype)


def quant_metrics(agent: Agent, agent_state: Any, actor_params: Any, obs: Array) -> Metrics:
    """int8 actor vs its fp32 source on the observations ``obs [..., obs_dim]`` the actors saw.

    ``quant/action_agreement`` is the fraction of equal greedy actions (discrete) or the mean
    absolute difference of the deterministic actions (continuous).
    """
    fp32 = agent.actor_params(agent_state, "fp32")
    obs = obs.reshape(-1, obs.shape[-1])
    head_q, head_f = agent.head(actor_params, obs), agent.head(fp32, obs)
    if agent.discrete:
        agreement = jnp.mean((jnp.argmax(head_q, -1) == jnp.argmax(head_f, -1)).astype(jnp.float32))
    else:
        agreement = jnp.mean(jnp.abs(head_q - head_f))
    return {
        "quant/weight_rel_error": quant.weight_rel_error(quant.dense_layers(fp32.policy), actor_params.policy),
        "quant/logit_mae": jnp.mean(jnp.abs(head_q - head_f)),
        "quant/action_agreement": agreement,
    }


def seconds_per_step(run: Callable[[int], Any], many: int = 3, repeats: int = 2, resolve_s: float = 1e-3, most: int = 4096) -> tuple[float, Any]:
    """Seconds one step of a compiled program takes, without its fixed cost per call: the
    fastest of ``repeats`` blocking calls of ``run(many)`` against ``run(1)``, their difference
    over ``many - 1``; ``many`` grows fourfold until the difference spans ``resolve_s`` (or
    reaches ``most``, never passing it), so a step far shorter than the call's cost is still
    resolved. Also returns what the first call gave back.

    ``run(steps)`` makes one blocking call (a probe's acting-only chunk: ~0.2 ms of fixed cost
    for CartPole's fused program, half a PPO rollout, ~20 DQN steps; ~3 ms for the pipelined
    program over two devices)."""
    first, times = None, {}
    while True:
        for _ in range(repeats):
            for steps in (1, many):
                start = time.perf_counter()
                out = run(steps)
                times.setdefault(steps, []).append(time.perf_counter() - start)
                first = out if first is None else first
        low, high = min(times[1]), min(times[many])
        if high - low >= resolve_s or many >= most:
            return ((high - low) / (many - 1) if high > low else high / many), first
        many = min(4 * many, most)


class DeviceSource(StepSource):
    """What both JAX-env sources share: the phases of an update, init, placement and probes.

    Args:
      agent: the algorithm's pure functions.
      env: an auto-reset JAX env.
      num_envs: ``B``.
      num_steps: rollout length ``T`` per update.
      precision: ``"int8"`` or ``"fp32"`` acting.
      learner_device, actor_device: where each side runs (``None``: JAX's default).
    """

    def __init__(
        self,
        agent: Agent,
        env: Any,
        num_envs: int,
        num_steps: int,
        precision: str = "int8",
        learner_device: jax.Device | None = None,
        actor_device: jax.Device | None = None,
    ):
        self.agent = agent
        self.env = env
        self.steps_per_update = num_envs * num_steps
        self.num_updates = 0  # set by rlaccel.sources.make
        self.num_envs = num_envs
        self.num_steps = num_steps
        self.precision = precision
        self.learner_device = learner_device or jax.local_devices()[0]  # this process's (several processes: jax.devices()[0] is process 0's)
        self.actor_device = actor_device or self.learner_device
        self._pieces: dict[str, Any] | None = None
        self._pieces_lock = threading.Lock()
        self._pieces_thread: compile_cache.Beside | None = None
        self._ahead: compile_cache.Beside | None = None
        self._chunks: dict[int, Any] = {}
        self._ahead_spec: Any = None  # the abstract state compile_ahead compiled for
        self.pieces_compile_s = 0.0

    # -- pure pieces ----------------------------------------------------------------------

    def init(self, key: Array) -> TrainState:
        """Fresh agent and envs from one key (pure; placement is applied by :meth:`place`)."""
        key, key_agent, key_env = jax.random.split(key, 3)
        return init_state(self.agent.init(key_agent), rollout_lib.reset(self.env, key_env, self.num_envs), key)

    def act_phase(self, actor_params: Any, rollout: rollout_lib.RolloutState, key: Array) -> tuple[Any, Any, Any]:
        """``T`` steps of acting: ``(rollout state, transitions [T, B], episode info [T, B])``."""
        return rollout_lib.collect_rollout(rollout, actor_params, key, env=self.env, agent=self.agent, num_steps=self.num_steps)

    def learn_phase(self, state: TrainState, actor_params: Any, transitions: Any, episodes: Any, key: Array) -> tuple[TrainState, Metrics]:
        """The learner update on a rollout, and episode bookkeeping (``rlaccel.state.apply_update``)."""
        del actor_params  # the learner only needs what the actors recorded
        return apply_update(self.agent, state, transitions, episodes, key)

    # -- placement and probes ---------------------------------------------------------------

    def describe(self) -> str:
        return Placement(learner=self.learner_device, actor=self.actor_device, precision=self.precision).describe()

    def summary_extra(self) -> dict[str, Any]:
        return {"probe_compile_s": self.pieces_compile_s}

    def place(self, state: TrainState) -> TrainState:
        """Put the learner's state on the learner device and the envs on the actor device."""
        state = jax.device_put(state, self.learner_device)
        return state.replace(rollout=jax.device_put(state.rollout, self.actor_device))

    def pieces(self, state: TrainState) -> dict[str, Any]:
        """The update's phases compiled ahead of time for their devices (once per source).

        ``actor_params`` and ``learn`` run on the learner device; ``act`` and ``rollout`` on
        the actor device; ``noise`` is the shapes of one acting call's noise (the probe fills
        them with :func:`neutral` values: nothing compiled to draw them). ``learn`` takes the
        state without its envs (``rollout=None``) and is only compiled where the source
        executes it (:attr:`learns_in_pieces`). Only ``state``'s shapes, dtypes and devices are read (it
        may be abstract).
        """
        if self._pieces_thread is not None:  # compiling beside the chunk (:meth:`compile_pieces_beside`)
            thread, self._pieces_thread = self._pieces_thread, None
            thread.join()
        return self._build_pieces(state)

    def _build_pieces(self, state: TrainState) -> dict[str, Any]:
        with self._pieces_lock:
            if self._pieces is None:
                start = time.perf_counter()
                self._pieces = self._compile_pieces(jax.tree.map(compile_cache.spec, state))
                self.pieces_compile_s = time.perf_counter() - start
        return self._pieces

    def _compile_pieces(self, state: TrainState) -> dict[str, Any]:
        """:meth:`pieces` from an abstract ``state`` (``jax.ShapeDtypeStruct`` leaves)."""
        on_actor = jax.sharding.SingleDeviceSharding(self.actor_device)
        on_learner = jax.sharding.SingleDeviceSharding(self.learner_device)

        def placed(tree: Any, sharding: Any) -> Any:
            return jax.tree.map(functools.partial(compile_cache.spec, sharding=sharding), tree)

        learner_state = state.replace(rollout=None)
        # Pieces a probe runs once and does not time compile fast (compile_cache.jit_once):
        # the quantisation metrics, and the re-quantisation unless chunks run it.
        untimed = compile_cache.jit_once
        requantise = compile_cache.jit if self.learns_in_pieces else untimed
        params_exec = requantise(self.agent.actor_params, static_argnums=1).lower(state.agent, self.precision).compile()
        actor_params = placed(jax.eval_shape(lambda agent: self.agent.actor_params(agent, self.precision), state.agent), on_actor)
        key = placed(state.key, on_actor)

        noise = placed(jax.eval_shape(lambda k: self.agent.noise(k, self.num_envs), state.key), on_actor)
        pieces = {
            "actor_params": params_exec,
            "noise": noise,  # one acting call's noise, its shapes: the act's time does not depend on its values
            "act": compile_cache.jit(self.agent.act).lower(actor_params, state.rollout.obs, noise).compile(),
        }
        if self.rollout_piece:
            pieces["rollout"] = compile_cache.jit(self.act_phase).lower(actor_params, state.rollout, key).compile()
        # What the learner-side pieces take: the rollout's outputs moved to the learner.
        _, transitions, episodes = placed(jax.eval_shape(self.act_phase, actor_params, state.rollout, key), on_learner)
        learner_params = placed(actor_params, on_learner)
        if self.precision == "int8":
            metrics_fn = functools.partial(quant_metrics, self.agent)
            pieces["quant_metrics"] = untimed(metrics_fn).lower(state.agent, learner_params, transitions.obs).compile()
        if self.learns_in_pieces:
            pieces["learn"] = compile_cache.jit(self.learn_phase).lower(learner_state, learner_params, transitions, episodes, state.key).compile()
        return pieces

    def compile_pieces_beside(self, state: TrainState) -> None:
        """Compile the probe's pieces in a thread, from ``state``'s shapes, while the caller
        compiles its chunk (a fused source: its updates do not run the pieces, only probes
        do; :meth:`FusedSource.compile` waits for them before the first chunk runs). Over six
        alternated 500k-step CartPole runs here, time to result 12.7 s against 13.8 s
        compiling them one after the other, env steps/s unchanged. Compiled beside the first
        chunks instead, they took ~17 % of the chunks' speed, and so of the run's env steps/s:
        500k-step CartPole, 4 runs alternated, fp32 188-202k env steps/s while they could
        overlap the first chunks, 209-213k waited for (int8 183-185k, 190-207k), time to
        result the same (7.3-7.6 s, 9.4-9.9 s). Nothing happens without probes or once the
        pieces exist."""
        if not self.probes or self._pieces is not None or self._pieces_thread is not None:
            return
        spec = jax.tree.map(compile_cache.spec, state)  # read now: the first chunk donates ``state``
        self._pieces_thread = compile_cache.Beside(lambda: self._build_pieces(spec), "rlaccel-probe-compile")

    def abstract_state(self, key: Array) -> TrainState:
        """:meth:`init`'s output as :meth:`place` puts it (``jax.ShapeDtypeStruct`` leaves with
        their devices), without computing it."""
        state = jax.eval_shape(self.init, key)
        on_learner = functools.partial(compile_cache.spec, sharding=jax.sharding.SingleDeviceSharding(self.learner_device))
        on_actor = functools.partial(compile_cache.spec, sharding=jax.sharding.SingleDeviceSharding(self.actor_device))
        return jax.tree.map(on_learner, state.replace(rollout=None)).replace(rollout=jax.tree.map(on_actor, state.rollout))

    def compile_ahead(self, key: Array, num_updates: int) -> None:
        """Start compiling what :meth:`compile` will need from :meth:`abstract_state`, in a
        thread beside the caller's :meth:`initial_state`; :meth:`compile` waits for it.

        What overlaps is Python's share of the two: init's trace, lowering and run beside the
        chunk's XLA compile, and the chunk's trace beside init's. Two XLA compiles at once gain
        nothing here (one already keeps ~1.9 of the two cores busy: two 2.5 s compiles took
        5.0 s one after the other, 5.9 s at once). PPO CartPole, 500k steps, fp32, alternated
        with the loop compiling after init: time to result 7.54 s against 7.81 (mean of 4)."""
        spec = self._ahead_spec = self.abstract_state(key)
        self._ahead = compile_cache.Beside(lambda: self._compile_abstract(spec, num_updates), "rlaccel-chunk-compile")

    def _compile_abstract(self, state: TrainState, num_updates: int) -> None:
        """What :meth:`compile_ahead` compiles from an abstract ``state``: the pieces."""
        self._build_pieces(state)

    def join_ahead(self) -> None:
        """Wait for :meth:`compile_ahead`'s compile (re-raising its error), if one was started."""
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            ahead.join()

    def close(self) -> list[str]:
        """Wait for compiles still running (a run that ended before its first chunk or probe)."""
        for thread in (self._ahead, self._pieces_thread):
            if thread is not None:
                thread.wait()
        return []

    learns_in_pieces = False
    """Whether updates run the separately compiled ``learn`` piece (split) or a fused chunk."""
    acting_overlaps = False
    """Whether a chunk's rollouts run while its updates do (the pipelined program): the probe
    then takes the learner's share of an update to be the whole step."""
    rollout_piece = True
    """Whether the probe times acting with a separately compiled ``rollout`` piece (a fused
    chunk times it with its own program instead: :meth:`FusedSource.timed_rollout`)."""

    def probe(self, state: TrainState, seconds_per_update: float, num_calls: int = 32) -> tuple[TrainState, dict[str, float]]:
        """Time the compiled pieces between chunks.

        Args:
          state: the current training state (a fused source's chunk consumes it).
          seconds_per_update: wall time per update of the last chunk (host clock).
          num_calls: timed decisions.

        Returns:
          The state to go on with (``state``'s values), and the metrics:
          ``actor/decision_latency_us_*``: one blocking ``act`` over all envs, ``num_calls``
          times. ``time/actor_sps``: one blocking rollout (:meth:`timed_rollout`).
          ``time/learner_sps``: one blocking learner update where the source has that piece
          (split); in a fused chunk the learner's share is the update's time minus the
          rollout's, in a pipelined program (:attr:`acting_overlaps`) the step's whole time
          when the rollout takes less. With int8 actors, ``quant/*``: the int8 policy against
          its fp32 source on that rollout's observations.
        """
        pieces = self.pieces(state)
        actor_params = jax.device_put(pieces["actor_params"](state.agent), self.actor_device)
        key = jax.device_put(jax.random.PRNGKey(0), self.actor_device)
        noise = jax.device_put(jax.tree.map(neutral, pieces["noise"]), self.actor_device)
        obs = state.rollout.obs
        jax.block_until_ready(pieces["act"](actor_params, obs, noise))  # warm caches before timing
        times = []
        for _ in range(num_calls):
            start = time.perf_counter()
            jax.block_until_ready(pieces["act"](actor_params, obs, noise))
            times.append(time.perf_counter() - start)
        out = latency_percentiles(times, self.num_envs)

        samples = self.num_envs * self.num_steps
        state, t_act, rollout_obs, batch = self.timed_rollout(state, pieces, actor_params, key)
        out["time/actor_sps"] = samples / t_act
        learner_params = jax.device_put(actor_params, self.learner_device)
        if "quant_metrics" in pieces:
            rollout_obs = jax.device_put(rollout_obs, self.learner_device)
            out.update({k: float(v) for k, v in pieces["quant_metrics"](state.agent, learner_params, rollout_obs).items()})
        if "learn" in pieces:
            start = time.perf_counter()
            jax.block_until_ready(pieces["learn"](state.replace(rollout=None), learner_params, *batch, state.key))
            t_learn = time.perf_counter() - start
            out["time/learner_sps"] = samples / t_learn
        elif seconds_per_update > t_act:
            out["time/learner_sps"] = samples / (seconds_per_update - (0.0 if self.acting_overlaps else t_act))
        else:  # the standalone rollout took longer than a whole update: no estimate
            out["time/learner_sps"] = float("nan")
        return state, out

    def timed_rollout(self, state: TrainState, pieces: dict[str, Any], actor_params: Any, key: Array) -> tuple[TrainState, float, Array, Any]:
        """One blocking rollout of the ``rollout`` piece from ``state``'s envs (not advanced).

        Returns:
          ``(state, seconds, observations [T, B, obs_dim], (transitions, episodes))``, the
          last two on the learner device.
        """
        start = time.perf_counter()
        _, transitions, episodes = jax.block_until_ready(pieces["rollout"](actor_params, state.rollout, key))
        seconds = time.perf_counter() - start
        transitions, episodes = jax.device_put((transitions, episodes), self.learner_device)
        return state, seconds, transitions.obs, (transitions, episodes)

"""Host actors for gymnasium envs: actor threads on the host, the learner on its device.

The second execution mode, for simulators that are not JAX (gymnasium's MuJoCo robots, a
user's own gymnasium env): Sebulba in DeepMind's Podracer paper
(Hessel et al. 2021, https://arxiv.org/abs/2104.06272).

* ``num_actors`` :class:`ActorThread` s each step a gymnasium vector env of
  ``n_envs / num_actors`` copies and act with a :class:`NumpyPolicy` (int8 by default, the
  exact integer scheme of ``rlaccel.quant`` computed in numpy, so a decision needs no device
  round trip), or, on request (``actors.policy: jax``), with the agent's compiled ``act`` on
  the actor device. Every ``n_steps`` steps an actor pushes a :class:`Batch` (``Transition``
  ``[T, b]``, episode info, per-decision latencies, the parameter version it acted with) into
  its bounded queue (``actors.queue_size`` batches); a full queue blocks the actor, which
  bounds the policy lag.
* The learner (the calling thread) takes one batch per actor, concatenates them to
  ``Transition [T, n_envs]`` and runs the runner's ``learn_phase`` (the agent's pure
  ``update``: PPO computes values there) on its device, then publishes the new actor
  parameters (re-quantised, with the observation-normalisation statistics that ``update``
  refreshed from the actors' data) under a version number. Actors pick them up between
  batches. ``actor/policy_lag`` = learner version minus the batch's behaviour version;
  PPO's ratio uses the behaviour log-probabilities the actors recorded, so lag is absorbed by
  the clipping.
* Faults: an env that raises (in ``reset`` or ``step``) stops the run: every thread is
  told to stop and joined (queue operations time out, so nothing waits forever), the
  learner's last good state is checkpointed, and :class:`ActorFault` names the env id and
  the actor (the CLI exits with code 1). SIGINT / SIGTERM do the same through
  ``rlaccel.guards.stop_on_signals`` (exit 130 / 143).

Measurements: ``actor/decision_latency_us_p50/_p95/_p99`` are host-clock timings of every
policy call (observations in, actions out) of the logging interval; ``time/actor_sps`` the
actors' summed stepping speed (env steps per second of batch collection);
``time/learner_sps`` samples per second of the learner (update plus parameter publication,
blocking); ``actor/queue_fill`` the queues' fill (0..1) when the learner takes a batch;
``time/fps`` env steps consumed per second of wall time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import queue
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces
from rich.console import Console

from rlaccel import agents, checkpoint, guards, quant
from rlaccel import placement as placement_lib
from rlaccel.config import Config
from rlaccel.driver import open_run_dir, restore_latest, run_summary
from rlaccel.logging import MetricLogger, make_progress, write_json
from rlaccel.rollout import EpisodeInfo, Transition
from rlaccel.runners import (
    EPISODE_WINDOW,
    Runner,
    TrainState,
    latency_percentiles,
)

__all__ = ["ActorFault", "Batch", "NumpyPolicy", "int8_forward", "train"]

POLL_S = 0.05  # how often blocked queue operations look at the stop flag


class ActorFault(RuntimeError):
    """An actor thread failed (its env raised); the message names the env id and the actor."""


# ---------------------------------------------------------------------------------------------
# The actor's policy in numpy.


def int8_forward(qp: quant.QuantParams, x: np.ndarray, plan: list[tuple[np.ndarray, np.ndarray, bool]] | None = None) -> np.ndarray:
    """``rlaccel.quant.apply`` in numpy: normalised observations ``[B, in]`` -> float head ``[B, out]``.

    The same integer scheme, value for value: int8 inputs (per-feature multipliers), int8
    weights, int32 accumulators plus the int32 bias, rescaling to float only before tanh / elu
    and at the output, integer-only requantisation for ReLU. The int8 x int8 dot products run
    through BLAS on int8 values held in float32 (float64 for fan-ins over 1,040): every
    product and partial sum is an integer below 2**24 (2**53), so the accumulator is exact.
    Where ``|acc| + |bias|`` cannot reach 2**24 the bias is added in float32 too (exact);
    otherwise the accumulator goes through int32 as in XLA.

    Args:
      qp: int8 policy with numpy leaves.
      x: ``[B, in]`` float32.
      plan: :func:`int8_plan` of ``qp`` (cached per parameter version by :class:`NumpyPolicy`).
    """
    plan = plan or int8_plan(qp)
    h = _quantize(x * qp.input_mult)
    last = len(qp.layers) - 1
    for i, (layer, (w, b, float_bias)) in enumerate(zip(qp.layers, plan)):
        acc = h.astype(w.dtype, copy=False) @ w
        if float_bias:
            acc = acc.astype(np.float32, copy=False) + b
        else:
            acc = (acc.astype(np.int32) + layer.b_q).astype(np.float32)
        if i == last:
            return acc * layer.out_scale
        s_next = qp.act_scales[i]
        if qp.activation == "relu":
            h = np.maximum(_quantize(acc * (layer.out_scale / s_next)), 0, out=None)
        else:
            h = _quantize(_ACTIVATIONS[qp.activation](acc * layer.out_scale) * (np.float32(1.0) / s_next))
    raise AssertionError("unreachable")


def int8_plan(qp: quant.QuantParams) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """Per layer: ``w_q`` in its exact BLAS dtype, the bias to add, and whether that add can
    happen in float32 (``K * 127**2 + max|b_q| < 2**24``) rather than in int32."""
    plan = []
    for layer in qp.layers:
        fan_in = layer.w_q.shape[0]
        exact_f32 = fan_in * quant.QMAX * quant.QMAX < 2**24
        w = layer.w_q.astype(np.float32 if exact_f32 else np.float64)
        bias_max = int(np.max(np.abs(layer.b_q.astype(np.int64)))) if layer.b_q.size else 0
        float_bias = exact_f32 and fan_in * quant.QMAX * quant.QMAX + bias_max < 2**24
        plan.append((w, layer.b_q.astype(np.float32) if float_bias else layer.b_q, float_bias))
    return plan


def _quantize(x: np.ndarray) -> np.ndarray:
    """``clip(round(x), -127, 127)``, kept in float32 (the values are the int8 codes exactly)."""
    x = np.rint(x)
    np.maximum(x, -quant.QMAX, out=x)
    return np.minimum(x, quant.QMAX, out=x)


def _elu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0), "elu": _elu}


class NumpyPolicy:
    """PPO's actor (``agents.ppo.train.act``) in numpy: normalise, fp32 or int8 head, sample.

    Built once per published parameter version from the host copy of the agent's
    ``ActorParams`` and shared read-only by every actor thread.

    Args:
      actor_params: ``agents.ppo.train.ActorParams`` with numpy leaves.
      version: the learner update that produced them.
      activation: hidden activation of the policy MLP.
      norm_obs, clip_obs: observation normalisation, as the learner applies it.
    """

    def __init__(self, actor_params: Any, version: int, activation: str, norm_obs: bool, clip_obs: float):
        self.version = version
        self.policy = actor_params.policy
        self.int8 = isinstance(self.policy, quant.QuantParams)
        self.log_std = None if actor_params.log_std is None else np.asarray(actor_params.log_std, np.float32)
        self.activation = _ACTIVATIONS[activation]
        stats = actor_params.obs_stats
        self.norm_obs, self.clip_obs = norm_obs, np.float32(clip_obs)
        self.mean = np.asarray(stats.mean, np.float32)
        self.inv_std = (1.0 / np.sqrt(np.asarray(stats.var, np.float64) + 1e-8)).astype(np.float32)
        if self.int8:
            self.plan = int8_plan(self.policy)
        else:
            self.layers = [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in quant.dense_layers(self.policy)]

    def head(self, obs: np.ndarray) -> np.ndarray:
        """Raw observations ``[B, obs_dim]`` -> logits or Gaussian mean ``[B, A]`` float32."""
        x = obs
        if self.norm_obs:
            x = np.clip((obs - self.mean) * self.inv_std, -self.clip_obs, self.clip_obs)
        if self.int8:
            return int8_forward(self.policy, x, self.plan)
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < last:
                x = self.activation(x)
        return x

    def noise(self, rng: np.random.Generator, num_steps: int, num_envs: int, action_dim: int) -> np.ndarray:
        """A batch's sampling noise ``[T, B, A]`` (drawn once, as ``rollout.draw_noise`` does):
        Gumbel for a categorical policy, standard normal for a Gaussian one."""
        if self.log_std is None:
            return -np.log(-np.log(rng.random((num_steps, num_envs, action_dim), np.float32) + np.float32(1e-20)))
        return rng.standard_normal((num_steps, num_envs, action_dim), np.float32)

    def act(self, obs: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``(action [B] int32 or [B, A] float32, behaviour log-prob [B])``.

        The same formulas as ``agents.ppo.networks.sample`` / ``log_prob``: the Gumbel-max trick
        (categorical) or ``mean + std * noise`` (Gaussian, unclipped).
        """
        head = self.head(obs)
        if self.log_std is None:
            action = np.argmax(head + noise, axis=-1)
            top = head.max(axis=-1)
            log_norm = top + np.log(np.exp(head - top[:, None]).sum(axis=-1))
            return action, head[np.arange(head.shape[0]), action] - log_norm
        action = head + np.exp(self.log_std) * noise
        logp = np.sum(-0.5 * np.square(noise) - self.log_std - np.float32(0.5 * math.log(2 * math.pi)), axis=-1)
        return action, logp.astype(np.float32)


class JaxPolicy(NumpyPolicy):
    """``actors.policy: jax``: the agent's compiled ``act`` on the actor device (noise from numpy)."""

    def __init__(self, actor_params: Any, version: int, act_fn: Any, device: jax.Device, discrete: bool):
        self.version = version
        self.params = jax.device_put(actor_params, device)
        self.act_fn, self.device = act_fn, device
        self.log_std = None if discrete else np.zeros(())  # only decides the noise's distribution

    def act(self, obs: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        action, extras = self.act_fn(self.params, jax.device_put(obs, self.device), jax.device_put(noise, self.device))
        return np.asarray(action), np.asarray(extras.log_prob)


class ParamBoard:
    """The newest published policy; one tuple assignment, so readers never see half an update."""

    def __init__(self, policy: NumpyPolicy):
        self.policy = policy

    def publish(self, policy: NumpyPolicy) -> None:
        self.policy = policy


# ---------------------------------------------------------------------------------------------
# Actor threads.


@dataclasses.dataclass
class Batch:
    """What one actor pushes: ``n_steps`` steps of its ``b`` envs."""

    actor: int
    version: int  # parameter version the actor acted with
    transitions: Transition  # numpy [T, b, ...]
    episodes: EpisodeInfo  # numpy [T, b]
    latency_s: np.ndarray  # [T] seconds per policy call
    collect_s: float  # wall time of the whole batch


class ActorThread(threading.Thread):
    """Steps a gymnasium vector env with the published policy; pushes :class:`Batch` es.

    Args:
      index: actor number (names it in messages; seeds its envs and noise).
      env: an ``envs.gym.GymEnv``.
      num_envs, num_steps: ``b`` copies, ``T`` steps per batch.
      board: where the learner publishes policies.
      out: the bounded batch queue.
      stop: set by anyone to stop every thread.
      faults: where a failure is reported (``(index, exception, traceback text)``).
      seed: base seed.
    """

    def __init__(self, index: int, env: Any, num_envs: int, num_steps: int, board: ParamBoard, out: queue.Queue, stop: threading.Event, faults: list, seed: int):
        super().__init__(name=f"actor-{index}", daemon=True)
        self.index, self.env, self.num_envs, self.num_steps = index, env, num_envs, num_steps
        self.board, self.out, self.stop, self.faults = board, out, stop, faults
        self.seed = seed + 1000 * index

    def run(self) -> None:
        venv = None
        try:
            venv = self.env.make_vector(self.num_envs, self.seed)
            self._loop(venv)
        except BaseException as e:  # noqa: BLE001 - whatever kills an actor must reach the learner
            self.faults.append((self.index, e, traceback.format_exc()))
            self.stop.set()
        finally:
            if venv is not None:
                with contextlib.suppress(Exception):  # a broken env may fail to close too
                    venv.close()

    def _loop(self, venv: Any) -> None:
        env, b, T = self.env, self.num_envs, self.num_steps
        rng = np.random.default_rng(self.seed)
        box = isinstance(env.action_space, spaces.Box)
        action_dim = env.action_dim if box else env.num_actions
        low, high = (env.action_space.low, env.action_space.high) if box else (None, None)
        obs, _ = venv.reset(seed=self.seed)
        ep_ret = np.zeros(b, np.float32)
        ep_len = np.zeros(b, np.int32)
        while not self.stop.is_set():
            policy = self.board.policy
            o = np.empty((T, b, env.obs_dim), np.float32)
            next_o = np.empty((T, b, env.obs_dim), np.float32)
            act = np.empty((T, b, action_dim), np.float32) if box else np.empty((T, b), np.int32)
            logp = np.empty((T, b), np.float32)
            rew = np.empty((T, b), np.float32)
            term = np.empty((T, b), bool)
            trunc = np.empty((T, b), bool)
            done = np.empty((T, b), bool)
            ret = np.empty((T, b), np.float32)
            length = np.empty((T, b), np.int32)
            lat = np.empty(T, np.float64)
            noise = policy.noise(rng, T, b, action_dim)
            start = time.perf_counter()
            for t in range(T):
                if self.stop.is_set():
                    return
                o[t] = obs
                t0 = time.perf_counter()
                act[t], logp[t] = policy.act(o[t], noise[t])
                lat[t] = time.perf_counter() - t0
                obs, rew[t], term[t], trunc[t], info = venv.step(np.clip(act[t], low, high) if box else act[t])
                next_o[t] = obs
                if "final_obs" in info:  # SAME_STEP autoreset: obs is the next episode's first
                    for i in np.flatnonzero(info["_final_obs"]):
                        next_o[t, i] = info["final_obs"][i]
                done[t] = term[t] | trunc[t]
                ep_ret += rew[t]
                ep_len += 1
                ret[t], length[t] = ep_ret, ep_len
                ep_ret[done[t]] = 0.0
                ep_len[done[t]] = 0
            batch = Batch(
                actor=self.index,
                version=policy.version,
                transitions=Transition(obs=o, action=act, reward=rew, terminated=term, truncated=trunc, next_obs=next_o, extras=_extras(logp)),
                episodes=EpisodeInfo(done=done, episode_return=ret, episode_length=length),
                latency_s=lat,
                collect_s=time.perf_counter() - start,
            )
            while not self.stop.is_set():
                try:
                    self.out.put(batch, timeout=POLL_S)
                    break
                except queue.Full:
                    continue


def _extras(log_prob: np.ndarray) -> Any:
    from rlaccel.agents.ppo.train import ActorExtras

    return ActorExtras(log_prob=log_prob)


def _concat(batches: list[Batch]) -> tuple[Transition, EpisodeInfo]:
    """One batch per actor, in actor order, along the env axis: ``[T, n_envs, ...]``."""
    cat = lambda *xs: np.concatenate(xs, axis=1)
    return jax.tree.map(cat, *[b.transitions for b in batches]), jax.tree.map(cat, *[b.episodes for b in batches])


# ---------------------------------------------------------------------------------------------
# The learner loop.


class HostRunner:
    """Actor threads + the learner on its device, for a ``gym:`` env (PPO).

    Args:
      config: a validated config whose env is ``gym:<id>``.
      console: where notices go.
    """

    def __init__(self, config: Config, console: Console | None = None):
        from rlaccel import envs

        self.config = config
        self.console = console or Console(stderr=True)
        self.where = placement_lib.resolve(config.placement)
        self.env = envs.make(config.env)
        self.spec = agents.make(config, self.env)
        self.agent = self.spec.agent
        cfg = config.agent
        self.cfg = cfg
        self.actors_cfg = config.actors
        self.num_actors = config.actors.num_actors
        self.envs_per_actor = self.spec.num_envs // self.num_actors
        self.runner = Runner(self.agent, None, self.spec.num_envs, self.spec.num_steps, precision=self.where.precision, learner_device=self.where.learner, actor_device=self.where.actor)
        self._learn = jax.jit(self.learner_step)
        self._params = jax.jit(self.agent.actor_params, static_argnums=1)
        self._act = jax.jit(self.agent.act) if config.actors.policy == "jax" else None

    def init(self, key: jax.Array) -> TrainState:
        """Fresh learner state (no envs inside: they live in the actor threads)."""
        key, key_agent = jax.random.split(key)
        return TrainState(
            agent=self.agent.init(key_agent),
            rollout=None,
            key=key,
            update=jnp.zeros((), jnp.int32),
            recent_returns=jnp.zeros((EPISODE_WINDOW,), jnp.float32),
            recent_lengths=jnp.zeros((EPISODE_WINDOW,), jnp.float32),
            episodes=jnp.zeros((), jnp.int32),
        )

    def describe(self) -> str:
        return (
            f"host actors: {self.num_actors} thread(s) x {self.envs_per_actor} {self.env.gym_id} envs, "
            f"{self.where.precision} {self.actors_cfg.policy} policy; learner {self.where.learner.platform}:{self.where.learner.id} fp32"
        )

    def learner_step(self, state: TrainState, transitions: Transition, episodes: EpisodeInfo) -> tuple[TrainState, Any, Any]:
        """One update on the actors' batch ``[T, n_envs]`` and the re-quantised actor parameters
        for the next batches: one compiled call, so the learner loop dispatches and waits once."""
        key, key_update = jax.random.split(state.key)
        state, metrics = self.runner.learn_phase(state.replace(key=key), None, transitions, episodes, key_update)
        return state, metrics, self.agent.actor_params(state.agent, self.where.precision)

    def policy(self, state: TrainState) -> NumpyPolicy:
        """Re-quantise on the learner, fetch to the host: the policy actors start with."""
        return self.policy_from(self._params(state.agent, self.where.precision), int(state.update))

    def policy_from(self, params: Any, version: int) -> NumpyPolicy:
        """The actors' policy object for actor parameters ``params`` (on the learner device)."""
        if self._act is not None:
            return JaxPolicy(params, version, self._act, self.where.actor, self.agent.discrete)
        norm = self.cfg.normalization
        return NumpyPolicy(jax.device_get(params), version, self.cfg.policy_kwargs.activation, norm.norm_obs, norm.clip_obs)

    def empty_batch(self) -> tuple[Transition, EpisodeInfo]:
        """Zeros shaped like a learner batch ``[T, n_envs]`` (for compiling ahead of time)."""
        T, B, env = self.spec.num_steps, self.spec.num_envs, self.env
        box = isinstance(env.action_space, spaces.Box)
        z = lambda *s, dtype=np.float32: np.zeros((T, B, *s), dtype)
        transitions = Transition(
            obs=z(env.obs_dim),
            action=z(env.action_dim) if box else z(dtype=np.int32),
            reward=z(),
            terminated=z(dtype=bool),
            truncated=z(dtype=bool),
            next_obs=z(env.obs_dim),
            extras=_extras(z()),
        )
        return transitions, EpisodeInfo(done=z(dtype=bool), episode_return=z(), episode_length=z(dtype=np.int32))

    def compile(self, state: TrainState) -> Any:
        """The learner step compiled for the learner device."""
        transitions, episodes = jax.device_put(self.empty_batch(), self.where.learner)
        return self._learn.lower(state, transitions, episodes).compile()


def train(
    config: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    console: Console | None = None,
    stop_at: int | None = None,
    stop: guards.StopFlag | None = None,
) -> dict[str, Any]:
    """Train PPO on a ``gym:`` env with host actor threads (``rlaccel.driver.train`` dispatches here).

    Writes TensorBoard events, checkpoints and ``summary.json`` as the fused driver does, and
    follows its protocol: on SIGINT / SIGTERM (``stop``, from ``guards.stop_on_signals``) the
    actors are stopped and joined, the learner's state is checkpointed and the summary's
    ``exit_code`` is 130 / 143.

    Args:
      config: a validated config whose env is ``gym:<id>``.
      run_dir: the run directory.
      resume: continue from the newest checkpoint (the envs start fresh episodes).
      console: where the progress bar and notices go.
      stop_at: stop after this many updates, as if a signal had arrived.
      stop: the caller's signal flag; ``None``: install ``guards.stop_on_signals`` here.

    Returns:
      The summary (also in ``run_dir/summary.json``).

    Raises:
      ActorFault: an actor's env raised (or no batch came for ``actors.timeout_s``); every
        thread was joined, the learner's last good state checkpointed and ``summary.json``
        written (``status: failed``). The CLI exits with code 1.
      guards.NonFiniteError: a guarded learner metric became NaN / Inf (the poisoned state
        is not checkpointed).
      rlaccel.checkpoint.CheckpointError: ``resume`` without a usable checkpoint.
    """
    if stop is None:
        with guards.stop_on_signals() as flag:
            return train(config, run_dir, resume=resume, console=console, stop_at=stop_at, stop=flag)
    console = console or Console(stderr=True)
    run_dir = Path(run_dir)
    host = HostRunner(config, console)
    spec, learner = host.spec, host.where.learner
    steps_per_update = spec.steps_per_update
    ckpt_dir = run_dir / "checkpoints"
    state = jax.jit(host.init)(jax.random.PRNGKey(config.seed))
    if resume:
        state, path = restore_latest(ckpt_dir, state)
    open_run_dir(run_dir, config)
    console.print(f"placement: {host.describe()}")
    if resume:
        console.print(f"resumed from {path} (update {int(state.update)}); the envs start fresh episodes")
    state = jax.device_put(state, learner)
    start_update = update = int(state.update)
    end_update = spec.num_updates if stop_at is None else max(start_update, min(stop_at, spec.num_updates))

    compile_start = time.perf_counter()
    learn = host.compile(state)
    compile_s = time.perf_counter() - compile_start

    logger = MetricLogger(run_dir, tensorboard=config.logging.tensorboard, purge_step=start_update * steps_per_update + 1 if resume else None)
    logger.log(start_update * steps_per_update, {"time/compile_s": compile_s})
    meta = {"config": config.to_dict(), "steps_per_update": steps_per_update, "mode": "host"}

    def save(u: int) -> Path:
        return checkpoint.save(ckpt_dir, u, state, {**meta, "update": u}, keep=config.logging.keep_checkpoints)

    halt = threading.Event()  # tells every actor thread to stop
    faults: list = []
    queues = [queue.Queue(maxsize=config.actors.queue_size) for _ in range(host.num_actors)]  # one per actor, bounded
    board = ParamBoard(host.policy(state))
    threads = [ActorThread(i, host.env, host.envs_per_actor, spec.num_steps, board, q, halt, faults, config.seed) for i, q in enumerate(queues)]
    window = _Window()
    probes: list[dict[str, float]] = []
    last_ckpt = start_update if resume else -1
    train_s = 0.0
    wall_start = time.perf_counter()
    interval = config.logging.log_interval
    failure: guards.NonFiniteError | None = None
    progress = make_progress(console, enabled=config.logging.progress)
    with progress:
        task = progress.add_task(f"{config.algo} {config.env}", total=spec.num_updates * steps_per_update, completed=update * steps_per_update, sps="-", ret="-")
        for t in threads:
            t.start()
        try:
            loop_start = time.perf_counter()
            while update < end_update:
                got = _next_batches(queues, halt, stop, config.actors.timeout_s, window, faults)
                if got is None:  # a fault or a signal
                    break
                transitions, episodes = jax.device_put(_concat(got), learner)
                t0 = time.perf_counter()
                new_state, metrics, params = learn(state, transitions, episodes)
                metrics = jax.device_get(metrics)
                bad = guards.first_nonfinite({k: np.reshape(v, 1) for k, v in metrics.items()})
                if bad is not None:
                    logger.log((update + 1) * steps_per_update, metrics)
                    failure = guards.NonFiniteError(update + 1, bad[1], float(metrics[bad[1]]))
                    break
                state = new_state
                update += 1
                board.publish(host.policy_from(params, update))
                window.learn_s += time.perf_counter() - t0
                window.add(got, update)
                logger.log(update * steps_per_update, metrics)
                if update % interval == 0 or update == end_update:
                    elapsed = time.perf_counter() - loop_start
                    train_s += elapsed
                    probes.append(window.metrics(steps_per_update, elapsed))
                    logger.log(update * steps_per_update, probes[-1])
                    ret = float(metrics["rollout/ep_rew_mean"])
                    progress.update(task, completed=update * steps_per_update, sps=f"{probes[-1]['time/fps']:,.0f}", ret=f"{ret:.1f}" if math.isfinite(ret) else "-")
                    window = _Window()
                    loop_start = time.perf_counter()
                if config.logging.checkpoint_interval and update - max(last_ckpt, start_update) >= config.logging.checkpoint_interval and update < end_update:
                    save(update)
                    last_ckpt = update
        finally:
            halt.set()
            stuck = _join(threads, config.actors.timeout_s)
            if stuck:
                console.print(f"[yellow]warning[/]: actor thread(s) {stuck} did not stop within {config.actors.timeout_s} s (stuck inside the env); abandoned")

    if failure is None and update > last_ckpt:
        save(update)  # after a fault or a signal: the learner's last good state
    latest = checkpoint.latest(ckpt_dir)
    error = None
    if faults:
        index, exc, _tb = faults[0]
        error = f"{config.env}: {exc}" if index is None else f"actor {index} ({config.env}): the env raised {type(exc).__name__}: {exc}"
        status, stopped_by, exit_code = "failed", None, 1
    elif failure is not None:
        error = str(failure)
        status, stopped_by, exit_code = "diverged", None, 1
    elif update < spec.num_updates:
        status, stopped_by, exit_code = "stopped", stop.name or "stop_at", stop.exit_code
    else:
        status, stopped_by, exit_code = "completed", None, 0
    summary = run_summary(
        config, run_dir, state, status=status, stopped_by=stopped_by, exit_code=exit_code, error=error, checkpoint_path=latest,
        updates=(start_update, update), steps_per_update=steps_per_update,
        times={"wall_s": time.perf_counter() - wall_start + compile_s, "compile_s": compile_s, "train_s": train_s},
        placement=host.describe(), probes=probes,
    )  # fmt: skip
    logger.close()
    write_json(run_dir / "summary.json", summary)
    if faults:
        raise ActorFault(f"{error}; every actor stopped, checkpoint of the learner's last good state (update {update}): {latest}") from faults[0][1]
    if failure is not None:
        raise failure
    if stopped_by is not None:
        console.print(f"stopped by {stopped_by} after update {update}; checkpoint {latest}; continue with --resume {run_dir}")
    return summary


class _Window:
    """Host measurements over one logging interval."""

    def __init__(self) -> None:
        self.latency: list[np.ndarray] = []
        self.actor_sps: list[float] = []
        self.lag: list[int] = []
        self.fill: list[float] = []
        self.learn_s = 0.0
        self.updates = 0

    def add(self, got: list[Batch], version: int) -> None:
        self.updates += 1
        for b in got:
            self.latency.append(b.latency_s)
            self.actor_sps.append(b.latency_s.size * b.transitions.reward.shape[1] / b.collect_s)
            self.lag.append(version - 1 - b.version)  # learner version when it consumed the batch

    def metrics(self, steps_per_update: int, elapsed: float) -> dict[str, float]:
        """The interval's ``time/*`` speeds, decision-latency percentiles (µs), lag and queue fill."""
        out = latency_percentiles(list(np.concatenate(self.latency)), 1) if self.latency else {}
        out.pop("actor/decision_latency_us_per_env", None)  # one call serves b envs, not all
        n_actors = len(self.actor_sps) / max(self.updates, 1)
        out["time/fps"] = self.updates * steps_per_update / elapsed
        out["time/actor_sps"] = float(np.mean(self.actor_sps) * n_actors) if self.actor_sps else float("nan")
        out["time/learner_sps"] = self.updates * steps_per_update / self.learn_s if self.learn_s > 0 else float("nan")
        out["actor/policy_lag"] = float(np.mean(self.lag)) if self.lag else float("nan")
        out["actor/queue_fill"] = float(np.mean(self.fill)) if self.fill else float("nan")
        return out


def _next_batches(queues: list[queue.Queue], halt: threading.Event, flag: guards.StopFlag, timeout_s: float, window: _Window, faults: list) -> list[Batch] | None:
    """The next batch of every actor, in actor order; ``None`` when the run must stop (a fault,
    a signal, or no batch for ``timeout_s``: a stuck env, recorded in ``faults``)."""
    got = []
    for q in queues:
        window.fill.append(q.qsize() / q.maxsize)
        last = time.perf_counter()
        while True:
            if halt.is_set() or flag.requested:
                return None
            try:
                got.append(q.get(timeout=POLL_S))
                break
            except queue.Empty:
                if time.perf_counter() - last > timeout_s:
                    faults.append((None, TimeoutError(f"no trajectory batch for {timeout_s} s (actors.timeout_s): an env is stuck"), ""))
                    halt.set()
                    return None
    return got


def _join(threads: list[threading.Thread], timeout_s: float) -> list[int]:
    """Join every thread (each within ``timeout_s``); the indices of those still running."""
    deadline = time.perf_counter() + timeout_s
    for t in threads:
        if t.is_alive() or t.ident is not None:
            t.join(max(0.0, deadline - time.perf_counter()))
    return [i for i, t in enumerate(threads) if t.is_alive()]

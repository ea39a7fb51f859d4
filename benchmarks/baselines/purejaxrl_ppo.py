# Baseline: PureJaxRL PPO on gymnax CartPole-v1, for speed comparison only.
#
# This file re-implements `purejaxrl/ppo.py` (plus the `LogWrapper` /
# `FlattenObservationWrapper` pieces of `purejaxrl/wrappers.py`) from
# PureJaxRL by Chris Lu et al. (https://github.com/luchris429/purejaxrl,
# Apache License 2.0).  It is rewritten here, not copied, so that the
# rlaccel benchmarks can measure how fast PureJaxRL's PPO runs on this
# machine.  The computation is meant to match the original op for op and has
# deliberately NOT been optimised:
#   * `make_train(config)` returns `train(rng)`; the nested closures are
#     `_update_step`, `_env_step`, `_calculate_gae`, `_update_epoch` and
#     `_update_minbatch`, all driven by `jax.lax.scan`;
#   * flax linen `ActorCritic` with separate 2x64 tanh actor and critic MLPs,
#     orthogonal init (sqrt(2) hidden, 0.01 actor head, 1.0 critic head);
#   * every env step splits the key twice (action sampling, env step), and the
#     environment auto-resets gymnax style: a reset is computed on every step
#     and selected with `done`;
#   * optax chain(clip_by_global_norm, adam(linear schedule, eps=1e-5)),
#     clipped value loss, GAE using `done` (reverse scan, unroll=16),
#     advantages normalised per minibatch, minibatches from a random
#     permutation of the flattened batch.
#
# Differences from the original, all interface-only:
#   * distrax is not installed here, so `Categorical` below is a small
#     stand-in that performs the same computations as distrax.Categorical
#     (log_softmax-normalised logits, jax.random.categorical sampling,
#     one-hot log_prob, -sum(p * log p) entropy).
#   * The environment IS gymnax (`gymnax.make("CartPole-v1")`, gymnax 1.0.1).
#     gymnax 1.x returns `(obs, state, reward, terminated, truncated, info)`
#     from `step`, while PureJaxRL was written against the older 5-tuple
#     `(obs, state, reward, done, info)` in which `done` covered both the pole
#     falling and the 500-step time limit.  `_LegacyStepAPI` turns the new
#     interface back into the old one (done = terminated | truncated, info =
#     {"discount"}), so PPO sees exactly what it saw with the gymnax release
#     PureJaxRL was developed against.
#   * NUM_UPDATES is cast to int (jax.lax.scan needs an integer length).
#   * The orthogonal kernel initializer gives the same values as flax's, but
#     under vmap it runs its per-seed QRs one after another instead of in one
#     batch (see `_orthogonal`).  Without this, the 16-seed run deadlocks in
#     jaxlib 0.10.2's batched CPU LAPACK kernel on a 2-core machine.  This only
#     affects initialisation, not the timed training loop.
#   * DEBUG (the per-update print callback) is off: it is I/O, not PPO.

from __future__ import annotations

import time
from functools import partial
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.linen.initializers import constant, orthogonal
from flax.training.train_state import TrainState
from gymnax.environments import spaces

REFERENCE_CONFIG: dict[str, Any] = {
    "LR": 2.5e-4,
    "NUM_ENVS": 4,
    "NUM_STEPS": 128,
    "TOTAL_TIMESTEPS": 5e5,
    "UPDATE_EPOCHS": 4,
    "NUM_MINIBATCHES": 4,
    "GAMMA": 0.99,
    "GAE_LAMBDA": 0.95,
    "CLIP_EPS": 0.2,
    "ENT_COEF": 0.01,
    "VF_COEF": 0.5,
    "MAX_GRAD_NORM": 0.5,
    "ACTIVATION": "tanh",
    "ENV_NAME": "CartPole-v1",
    "ANNEAL_LR": True,
    "DEBUG": False,
}


# ---------------------------------------------------------------------------
# distrax.Categorical stand-in (same arithmetic as distrax's implementation)
# ---------------------------------------------------------------------------
class Categorical:
    def __init__(self, logits):
        # distrax normalises logits with log_softmax on construction.
        self.logits = jax.nn.log_softmax(logits, axis=-1)

    @property
    def probs(self):
        return jax.nn.softmax(self.logits, axis=-1)

    @property
    def num_categories(self):
        return self.logits.shape[-1]

    def sample(self, seed):
        probs = self.probs
        ok = jnp.logical_and(
            jnp.all(jnp.isfinite(probs), axis=-1), jnp.all(probs >= 0, axis=-1)
        )
        draws = jax.random.categorical(seed, self.logits, axis=-1).astype(int)
        return jnp.where(ok, draws, jnp.ones_like(draws) * -1)

    def log_prob(self, value):
        one_hot = jax.nn.one_hot(value, self.num_categories, dtype=self.logits.dtype)
        outside = jnp.logical_or(value < 0, value > self.num_categories - 1)
        picked = jnp.where(one_hot == 0, jnp.zeros_like(one_hot), self.logits * one_hot)
        return jnp.where(outside, -jnp.inf, jnp.sum(picked, axis=-1))

    def entropy(self):
        logp = self.logits
        p = jnp.exp(logp)
        plogp = jnp.where(p == 0, jnp.zeros_like(p), logp * p)
        return -jnp.sum(plogp, axis=-1)


# ---------------------------------------------------------------------------
# Environment wrappers (PureJaxRL's wrappers.py, re-written)
# ---------------------------------------------------------------------------
class _Wrapper:
    def __init__(self, env):
        self._env = env

    def __getattr__(self, name):
        return getattr(self._env, name)


class _LegacyStepAPI(_Wrapper):
    """gymnax 1.x step() -> pre-1.0 gymnax 5-tuple used by PureJaxRL."""

    @partial(jax.jit, static_argnums=(0,))
    def reset(self, key, params=None):
        return self._env.reset(key, params)

    @partial(jax.jit, static_argnums=(0,))
    def step(self, key, state, action, params=None):
        obs, state, reward, terminated, truncated, info = self._env.step(
            key, state, action, params
        )
        done = jnp.logical_or(terminated, truncated)
        return obs, state, reward, done, {"discount": info["discount"]}


class FlattenObservationWrapper(_Wrapper):
    def observation_space(self, params):
        inner = self._env.observation_space(params)
        assert isinstance(inner, spaces.Box), "Only Box spaces are supported."
        return spaces.Box(
            low=inner.low,
            high=inner.high,
            shape=(int(np.prod(inner.shape)),),
            dtype=inner.dtype,
        )

    @partial(jax.jit, static_argnums=(0,))
    def reset(self, key, params=None):
        obs, state = self._env.reset(key, params)
        return jnp.reshape(obs, (-1,)), state

    @partial(jax.jit, static_argnums=(0,))
    def step(self, key, state, action, params=None):
        obs, state, reward, done, info = self._env.step(key, state, action, params)
        return jnp.reshape(obs, (-1,)), state, reward, done, info


@struct.dataclass
class LogEnvState:
    env_state: Any
    episode_returns: float
    episode_lengths: int
    returned_episode_returns: float
    returned_episode_lengths: int
    timestep: int


class LogWrapper(_Wrapper):
    """Tracks running and last-finished episode return/length per env."""

    @partial(jax.jit, static_argnums=(0,))
    def reset(self, key, params=None):
        obs, env_state = self._env.reset(key, params)
        return obs, LogEnvState(env_state, 0, 0, 0, 0, 0)

    @partial(jax.jit, static_argnums=(0,))
    def step(self, key, state, action, params=None):
        obs, env_state, reward, done, info = self._env.step(
            key, state.env_state, action, params
        )
        ep_ret = state.episode_returns + reward
        ep_len = state.episode_lengths + 1
        state = LogEnvState(
            env_state=env_state,
            episode_returns=ep_ret * (1 - done),
            episode_lengths=ep_len * (1 - done),
            returned_episode_returns=state.returned_episode_returns * (1 - done)
            + ep_ret * done,
            returned_episode_lengths=state.returned_episode_lengths * (1 - done)
            + ep_len * done,
            timestep=state.timestep + 1,
        )
        info["returned_episode_returns"] = state.returned_episode_returns
        info["returned_episode_lengths"] = state.returned_episode_lengths
        info["timestep"] = state.timestep
        info["returned_episode"] = done
        return obs, state, reward, done, info


# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------
def _orthogonal(scale):
    """flax `orthogonal(scale)`, made safe to vmap on jaxlib 0.10.x CPU.

    The values are exactly those of `flax.linen.initializers.orthogonal`.  The
    only change is how the initializer behaves under `jax.vmap` (the
    multi-seed `jit(vmap(train))` run): instead of one batched LAPACK QR per
    layer it runs the per-seed QRs one after another.  jaxlib 0.10.2 fans a
    batched CPU LAPACK call out over XLA's intra-op thread pool and blocks on
    it; when the thunk executor runs as many batched QRs concurrently as the
    pool has threads (2 on a 2-core machine: the actor and critic layers are
    independent), every pool thread waits on work queued behind itself and
    the program deadlocks.  This runs once, at initialisation, so it has no
    effect on the timed training loop.
    """
    base = orthogonal(scale)

    def init(key, shape, dtype=jnp.float32):
        return jax.custom_batching.sequential_vmap(lambda k: base(k, shape, dtype))(key)

    return init


class ActorCritic(nn.Module):
    action_dim: Sequence[int]
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x):
        act = nn.relu if self.activation == "relu" else nn.tanh

        a = nn.Dense(64, kernel_init=_orthogonal(np.sqrt(2)), bias_init=constant(0.0))(x)
        a = act(a)
        a = nn.Dense(64, kernel_init=_orthogonal(np.sqrt(2)), bias_init=constant(0.0))(a)
        a = act(a)
        a = nn.Dense(
            self.action_dim, kernel_init=_orthogonal(0.01), bias_init=constant(0.0)
        )(a)
        pi = Categorical(logits=a)

        c = nn.Dense(64, kernel_init=_orthogonal(np.sqrt(2)), bias_init=constant(0.0))(x)
        c = act(c)
        c = nn.Dense(64, kernel_init=_orthogonal(np.sqrt(2)), bias_init=constant(0.0))(c)
        c = act(c)
        c = nn.Dense(1, kernel_init=_orthogonal(1.0), bias_init=constant(0.0))(c)
        return pi, jnp.squeeze(c, axis=-1)


class Transition(NamedTuple):
    done: jnp.ndarray
    action: jnp.ndarray
    value: jnp.ndarray
    reward: jnp.ndarray
    log_prob: jnp.ndarray
    obs: jnp.ndarray
    info: jnp.ndarray


# ---------------------------------------------------------------------------
# PPO (PureJaxRL's make_train, re-written)
# ---------------------------------------------------------------------------
def make_train(config):
    config = dict(config)
    config["NUM_UPDATES"] = int(
        config["TOTAL_TIMESTEPS"] // config["NUM_STEPS"] // config["NUM_ENVS"]
    )
    config["MINIBATCH_SIZE"] = (
        config["NUM_ENVS"] * config["NUM_STEPS"] // config["NUM_MINIBATCHES"]
    )
    env, env_params = gymnax.make(config["ENV_NAME"])
    env = _LegacyStepAPI(env)
    env = FlattenObservationWrapper(env)
    env = LogWrapper(env)

    def linear_schedule(count):
        frac = (
            1.0
            - (count // (config["NUM_MINIBATCHES"] * config["UPDATE_EPOCHS"]))
            / config["NUM_UPDATES"]
        )
        return config["LR"] * frac

    def train(rng):
        # network + optimiser
        network = ActorCritic(
            env.action_space(env_params).n, activation=config["ACTIVATION"]
        )
        rng, _rng = jax.random.split(rng)
        init_x = jnp.zeros(env.observation_space(env_params).shape)
        network_params = network.init(_rng, init_x)
        if config["ANNEAL_LR"]:
            tx = optax.chain(
                optax.clip_by_global_norm(config["MAX_GRAD_NORM"]),
                optax.adam(learning_rate=linear_schedule, eps=1e-5),
            )
        else:
            tx = optax.chain(
                optax.clip_by_global_norm(config["MAX_GRAD_NORM"]),
                optax.adam(config["LR"], eps=1e-5),
            )
        train_state = TrainState.create(
            apply_fn=network.apply, params=network_params, tx=tx
        )

        # environments
        rng, _rng = jax.random.split(rng)
        reset_rng = jax.random.split(_rng, config["NUM_ENVS"])
        obsv, env_state = jax.vmap(env.reset, in_axes=(0, None))(reset_rng, env_params)

        def _update_step(runner_state, unused):
            # ---- rollout ----
            def _env_step(runner_state, unused):
                train_state, env_state, last_obs, rng = runner_state

                rng, _rng = jax.random.split(rng)
                pi, value = network.apply(train_state.params, last_obs)
                action = pi.sample(seed=_rng)
                log_prob = pi.log_prob(action)

                rng, _rng = jax.random.split(rng)
                rng_step = jax.random.split(_rng, config["NUM_ENVS"])
                obsv, env_state, reward, done, info = jax.vmap(
                    env.step, in_axes=(0, 0, 0, None)
                )(rng_step, env_state, action, env_params)
                transition = Transition(
                    done, action, value, reward, log_prob, last_obs, info
                )
                return (train_state, env_state, obsv, rng), transition

            runner_state, traj_batch = jax.lax.scan(
                _env_step, runner_state, None, config["NUM_STEPS"]
            )

            # ---- advantages ----
            train_state, env_state, last_obs, rng = runner_state
            _, last_val = network.apply(train_state.params, last_obs)

            def _calculate_gae(traj_batch, last_val):
                def _get_advantages(carry, transition):
                    gae, next_value = carry
                    done, value, reward = (
                        transition.done,
                        transition.value,
                        transition.reward,
                    )
                    delta = reward + config["GAMMA"] * next_value * (1 - done) - value
                    gae = delta + config["GAMMA"] * config["GAE_LAMBDA"] * (1 - done) * gae
                    return (gae, value), gae

                _, advantages = jax.lax.scan(
                    _get_advantages,
                    (jnp.zeros_like(last_val), last_val),
                    traj_batch,
                    reverse=True,
                    unroll=16,
                )
                return advantages, advantages + traj_batch.value

            advantages, targets = _calculate_gae(traj_batch, last_val)

            # ---- optimisation ----
            def _update_epoch(update_state, unused):
                def _update_minbatch(train_state, batch_info):
                    traj_batch, advantages, targets = batch_info

                    def _loss_fn(params, traj_batch, gae, targets):
                        pi, value = network.apply(params, traj_batch.obs)
                        log_prob = pi.log_prob(traj_batch.action)

                        # clipped value loss
                        value_pred_clipped = traj_batch.value + (
                            value - traj_batch.value
                        ).clip(-config["CLIP_EPS"], config["CLIP_EPS"])
                        value_losses = jnp.square(value - targets)
                        value_losses_clipped = jnp.square(value_pred_clipped - targets)
                        value_loss = (
                            0.5 * jnp.maximum(value_losses, value_losses_clipped).mean()
                        )

                        # clipped surrogate objective
                        ratio = jnp.exp(log_prob - traj_batch.log_prob)
                        gae = (gae - gae.mean()) / (gae.std() + 1e-8)
                        loss_actor1 = ratio * gae
                        loss_actor2 = (
                            jnp.clip(
                                ratio,
                                1.0 - config["CLIP_EPS"],
                                1.0 + config["CLIP_EPS"],
                            )
                            * gae
                        )
                        loss_actor = -jnp.minimum(loss_actor1, loss_actor2).mean()
                        entropy = pi.entropy().mean()

                        total_loss = (
                            loss_actor
                            + config["VF_COEF"] * value_loss
                            - config["ENT_COEF"] * entropy
                        )
                        return total_loss, (value_loss, loss_actor, entropy)

                    grad_fn = jax.value_and_grad(_loss_fn, has_aux=True)
                    total_loss, grads = grad_fn(
                        train_state.params, traj_batch, advantages, targets
                    )
                    train_state = train_state.apply_gradients(grads=grads)
                    return train_state, total_loss

                train_state, traj_batch, advantages, targets, rng = update_state
                rng, _rng = jax.random.split(rng)
                batch_size = config["MINIBATCH_SIZE"] * config["NUM_MINIBATCHES"]
                assert batch_size == config["NUM_STEPS"] * config["NUM_ENVS"]
                permutation = jax.random.permutation(_rng, batch_size)
                batch = (traj_batch, advantages, targets)
                batch = jax.tree_util.tree_map(
                    lambda x: x.reshape((batch_size,) + x.shape[2:]), batch
                )
                shuffled_batch = jax.tree_util.tree_map(
                    lambda x: jnp.take(x, permutation, axis=0), batch
                )
                minibatches = jax.tree_util.tree_map(
                    lambda x: jnp.reshape(
                        x, [config["NUM_MINIBATCHES"], -1] + list(x.shape[1:])
                    ),
                    shuffled_batch,
                )
                train_state, total_loss = jax.lax.scan(
                    _update_minbatch, train_state, minibatches
                )
                return (train_state, traj_batch, advantages, targets, rng), total_loss

            update_state = (train_state, traj_batch, advantages, targets, rng)
            update_state, loss_info = jax.lax.scan(
                _update_epoch, update_state, None, config["UPDATE_EPOCHS"]
            )
            train_state = update_state[0]
            metric = traj_batch.info
            rng = update_state[-1]
            if config.get("DEBUG"):

                def callback(info):
                    rets = info["returned_episode_returns"][info["returned_episode"]]
                    steps = info["timestep"][info["returned_episode"]] * config["NUM_ENVS"]
                    for t in range(len(steps)):
                        print(f"global step={steps[t]}, episodic return={rets[t]}")

                jax.debug.callback(callback, metric)

            runner_state = (train_state, env_state, last_obs, rng)
            return runner_state, metric

        rng, _rng = jax.random.split(rng)
        runner_state = (train_state, env_state, obsv, _rng)
        runner_state, metric = jax.lax.scan(
            _update_step, runner_state, None, config["NUM_UPDATES"]
        )
        return {"runner_state": runner_state, "metrics": metric}

    return train


# ---------------------------------------------------------------------------
# Benchmark driver
# ---------------------------------------------------------------------------
def _final_returns(metrics, last_updates: int = 10) -> np.ndarray:
    """Per-seed mean return of episodes finished in the last `last_updates`
    updates.  `metrics` arrays have shape [seeds, updates, steps, envs]."""
    rets = np.asarray(metrics["returned_episode_returns"])[:, -last_updates:]
    done = np.asarray(metrics["returned_episode"])[:, -last_updates:]
    out = []
    for r, d in zip(rets, done):
        out.append(float(r[d].mean()) if d.any() else float("nan"))
    return np.asarray(out)


def run(num_seeds: int = 1, total_timesteps: int = 500_000, seed: int = 42, num_envs: int = 4) -> dict:
    config = dict(REFERENCE_CONFIG)
    config["TOTAL_TIMESTEPS"] = total_timesteps
    config["NUM_ENVS"] = num_envs
    num_updates = int(total_timesteps // config["NUM_STEPS"] // config["NUM_ENVS"])
    steps_per_seed = num_updates * config["NUM_STEPS"] * config["NUM_ENVS"]

    rng = jax.random.PRNGKey(seed)
    if num_seeds > 1:
        rngs = jax.random.split(rng, num_seeds)
        train_jit = jax.jit(jax.vmap(make_train(config)))
        arg = rngs
    else:
        train_jit = jax.jit(make_train(config))
        arg = rng

    t0 = time.perf_counter()
    compiled = train_jit.lower(arg).compile()
    compile_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(arg))
    train_s = time.perf_counter() - t0

    metrics = out["metrics"]
    if num_seeds == 1:
        metrics = jax.tree_util.tree_map(lambda x: x[None], metrics)
    finals = _final_returns(metrics)

    env_steps = steps_per_seed * num_seeds
    return {
        "name": "purejaxrl_ppo",
        "num_seeds": num_seeds,
        "env_steps": env_steps,
        "compile_s": compile_s,
        "train_s": train_s,
        "sps": env_steps / train_s,
        "final_return_mean": float(np.mean(finals)),
        "final_return_min": float(np.min(finals)),
    }


if __name__ == "__main__":
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
    print(run(1))
    print(run(16))

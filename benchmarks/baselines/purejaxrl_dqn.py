# Baseline: PureJaxRL DQN on gymnax CartPole-v1, for speed comparison only.
#
# Re-implements `purejaxrl/dqn.py` from PureJaxRL by Chris Lu et al.
# (https://github.com/luchris429/purejaxrl, Apache License 2.0), itself a port of CleanRL's
# `dqn_jax.py`, so that `scripts/bench.py` can measure PureJaxRL's DQN on this machine in
# the same run as rlaccel's. Rewritten, not copied, and deliberately not optimised: one
# `lax.scan` over env steps of 10 gymnax envs, a flashbax flat buffer, `lax.cond` for the
# learn phase and the target update, MSE TD loss, plain Adam, its default configuration.
#
# Interface-only differences: gymnax 1.x returns (obs, state, reward, terminated,
# truncated, info); `done = terminated | truncated` restores the 5-tuple PureJaxRL was
# written for. No wandb.

from __future__ import annotations

import time
from typing import Any

import flashbax as fbx
import flax
import flax.linen as nn
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

REFERENCE_CONFIG: dict[str, Any] = {
    "NUM_ENVS": 10,
    "BUFFER_SIZE": 10000,
    "BUFFER_BATCH_SIZE": 128,
    "TOTAL_TIMESTEPS": 5e5,
    "EPSILON_START": 1.0,
    "EPSILON_FINISH": 0.05,
    "EPSILON_ANNEAL_TIME": 25e4,
    "TARGET_UPDATE_INTERVAL": 500,
    "LR": 2.5e-4,
    "LEARNING_STARTS": 10000,
    "TRAINING_INTERVAL": 10,
    "GAMMA": 0.99,
    "TAU": 1.0,
}


class QNetwork(nn.Module):
    action_dim: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(120)(x))
        x = nn.relu(nn.Dense(84)(x))
        return nn.Dense(self.action_dim)(x)


@flax.struct.dataclass
class TimeStep:
    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    done: jax.Array


class CustomTrainState(TrainState):
    target_network_params: Any
    timesteps: int
    n_updates: int


def make_train(config: dict):
    num_updates = int(config["TOTAL_TIMESTEPS"] // config["NUM_ENVS"])
    env, env_params = gymnax.make("CartPole-v1")

    def reset(rng):
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(rng, config["NUM_ENVS"]), env_params)
        return obs, state, jnp.zeros(config["NUM_ENVS"]), jnp.zeros(config["NUM_ENVS"])

    def step(rng, state, ep_ret, action):
        obs, state, reward, terminated, truncated, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(rng, config["NUM_ENVS"]), state, action, env_params
        )
        done = jnp.logical_or(terminated, truncated)
        ep_ret = ep_ret + reward
        returned = jnp.where(done, ep_ret, 0.0)
        return obs, state, reward, done, jnp.where(done, 0.0, ep_ret), returned

    def train(rng):
        rng, rng_env = jax.random.split(rng)
        obs, env_state, ep_ret, _ = reset(rng_env)
        buffer = fbx.make_flat_buffer(
            max_length=config["BUFFER_SIZE"],
            min_length=config["BUFFER_BATCH_SIZE"],
            sample_batch_size=config["BUFFER_BATCH_SIZE"],
            add_sequences=False,
            add_batch_size=config["NUM_ENVS"],
        )
        example = TimeStep(obs=jnp.zeros(4), action=jnp.zeros((), jnp.int32), reward=jnp.zeros(()), done=jnp.zeros((), bool))
        buffer_state = buffer.init(example)
        network = QNetwork(action_dim=env.action_space(env_params).n)
        rng, rng_init = jax.random.split(rng)
        params = network.init(rng_init, jnp.zeros(4))
        state = CustomTrainState.create(
            apply_fn=network.apply, params=params, target_network_params=jax.tree.map(jnp.copy, params),
            tx=optax.adam(config["LR"]), timesteps=0, n_updates=0,
        )  # fmt: skip

        def eps_greedy(rng, q_vals, t):
            rng_a, rng_e = jax.random.split(rng)
            eps = jnp.clip(
                (config["EPSILON_FINISH"] - config["EPSILON_START"]) / config["EPSILON_ANNEAL_TIME"] * t + config["EPSILON_START"],
                config["EPSILON_FINISH"],
            )
            greedy = jnp.argmax(q_vals, axis=-1)
            random = jax.random.randint(rng_a, greedy.shape, 0, q_vals.shape[-1])
            return jnp.where(jax.random.uniform(rng_e, greedy.shape) < eps, random, greedy)

        def update_step(carry, _):
            state, buffer_state, env_state, last_obs, ep_ret, rng = carry
            rng, rng_a, rng_s = jax.random.split(rng, 3)
            action = eps_greedy(rng_a, network.apply(state.params, last_obs), state.timesteps)
            obs, env_state, reward, done, ep_ret, returned = step(rng_s, env_state, ep_ret, action)
            state = state.replace(timesteps=state.timesteps + config["NUM_ENVS"])
            buffer_state = buffer.add(buffer_state, TimeStep(obs=last_obs, action=action, reward=reward, done=done))

            def learn(state, rng):
                batch = buffer.sample(buffer_state, rng).experience
                q_next = jnp.max(network.apply(state.target_network_params, batch.second.obs), axis=-1)
                target = batch.first.reward + (1 - batch.first.done) * config["GAMMA"] * q_next

                def loss_fn(params):
                    q = network.apply(params, batch.first.obs)
                    chosen = jnp.take_along_axis(q, batch.first.action[:, None], axis=-1)[:, 0]
                    return jnp.mean((chosen - target) ** 2)

                loss, grads = jax.value_and_grad(loss_fn)(state.params)
                return state.apply_gradients(grads=grads).replace(n_updates=state.n_updates + 1), loss

            rng, rng_learn = jax.random.split(rng)
            is_learn_time = (
                buffer.can_sample(buffer_state)
                & (state.timesteps > config["LEARNING_STARTS"])
                & (state.timesteps % config["TRAINING_INTERVAL"] == 0)
            )
            state, loss = jax.lax.cond(is_learn_time, learn, lambda s, r: (s, jnp.array(0.0)), state, rng_learn)
            state = jax.lax.cond(
                state.timesteps % config["TARGET_UPDATE_INTERVAL"] == 0,
                lambda s: s.replace(target_network_params=optax.incremental_update(s.params, s.target_network_params, config["TAU"])),
                lambda s: s,
                state,
            )
            return (state, buffer_state, env_state, obs, ep_ret, rng), {"returned": returned, "done": done}

        carry = (state, buffer_state, env_state, obs, ep_ret, rng)
        carry, metrics = jax.lax.scan(update_step, carry, None, num_updates)
        return metrics

    return train


def run(total_timesteps: int = 500_000, seed: int = 0) -> dict:
    """Compile and time one seed; final return = mean of the last 100 finished episodes."""
    config = dict(REFERENCE_CONFIG, TOTAL_TIMESTEPS=total_timesteps)
    key = jax.random.PRNGKey(seed)
    start = time.perf_counter()
    compiled = jax.jit(make_train(config)).lower(key).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    metrics = jax.block_until_ready(compiled(key))
    train_s = time.perf_counter() - start
    returned = np.asarray(metrics["returned"]).reshape(-1)[np.asarray(metrics["done"]).reshape(-1)]
    env_steps = int(total_timesteps // config["NUM_ENVS"]) * config["NUM_ENVS"]
    return {
        "name": "purejaxrl_dqn",
        "env_steps": env_steps,
        "compile_s": compile_s,
        "train_s": train_s,
        "sps": env_steps / train_s,
        "final_return": float(returned[-100:].mean()),
    }


if __name__ == "__main__":
    print(run())

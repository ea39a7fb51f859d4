"""PureJaxRL's DQN as an rlaccel configuration (``configs/dqn_cartpole_purejaxrl.yaml``): its
settings, its loss and gradient worked in numpy as ``purejaxrl/dqn.py`` writes them, plain Adam,
and its schedules (epsilon, first gradient step, target copies) update by update."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from rlaccel.agents.dqn import train as dqn_train

from rlaccel import config as config_lib
from rlaccel import compile_cache, envs, replay
from rlaccel.rollout import Transition

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/dqn_cartpole_purejaxrl.yaml"


def baseline_settings() -> dict:
    """``REFERENCE_CONFIG`` of ``benchmarks/baselines/purejaxrl_dqn.py`` (PureJaxRL's CartPole
    settings), read without importing gymnax or flashbax."""
    tree = ast.parse((ROOT / "benchmarks/baselines/purejaxrl_dqn.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "REFERENCE_CONFIG":
            return ast.literal_eval(node.value)
    raise AssertionError("REFERENCE_CONFIG not found")


@pytest.fixture(scope="module")
def config() -> config_lib.Config:
    return config_lib.load(CONFIG)


@pytest.fixture(scope="module")
def setup(config: config_lib.Config) -> tuple:
    """The config's agent with small counts (learning starts after 30 transitions, a target copy
    every 20, so a few updates cover both), a fresh state whose target network differs from the
    online one (so "max of the target" and "target at the online argmax" differ), the Q-network,
    and ``loss_fn`` with its gradient, jitted."""
    cfg = dataclasses.replace(config.dqn, learning_starts=30, target_update_interval=20, buffer_size=100)
    env = envs.make(config.env, auto_reset=True)
    agent = dqn_train.make_agent(cfg, env, config.total_timesteps, dqn_train.num_updates(cfg, config.total_timesteps), calibrate=False)
    state = compile_cache.jit(agent.init)(jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    state = state.replace(target_params=jax.tree.map(lambda x: np.asarray(x) + rng.normal(0.0, 0.1, x.shape).astype(np.float32), state.params))
    qnet = dqn_train.nets_lib.make_q_network(2, cfg.policy_kwargs)
    loss = compile_cache.jit(jax.value_and_grad(dqn_train.loss_fn, has_aux=True), static_argnames=("qnet", "cfg"))
    return cfg, agent, state, qnet, loss


def test_config_is_purejaxrls_cartpole_settings(config: config_lib.Config) -> None:
    ref, cfg = baseline_settings(), config.dqn
    assert config.env == "CartPole-v1" and config.total_timesteps == ref["TOTAL_TIMESTEPS"]
    assert (cfg.n_envs, cfg.buffer_size, cfg.batch_size) == (ref["NUM_ENVS"], ref["BUFFER_SIZE"], ref["BUFFER_BATCH_SIZE"])
    assert (cfg.learning_rate, cfg.lr_schedule, cfg.gamma, cfg.tau) == (ref["LR"], "constant", ref["GAMMA"], ref["TAU"])
    assert (cfg.learning_starts, cfg.target_update_interval) == (ref["LEARNING_STARTS"], ref["TARGET_UPDATE_INTERVAL"])
    # TRAINING_INTERVAL counts env steps; PureJaxRL's timesteps grow by NUM_ENVS per vector step.
    assert cfg.train_freq * cfg.n_envs == ref["TRAINING_INTERVAL"] and cfg.gradient_steps == 1
    assert (cfg.exploration_initial_eps, cfg.exploration_final_eps) == (ref["EPSILON_START"], ref["EPSILON_FINISH"])
    assert cfg.exploration_fraction * config.total_timesteps == ref["EPSILON_ANNEAL_TIME"]
    # The algorithm: max of the target net, squared error, plain Adam, done = terminated | truncated,
    # PureJaxRL's QNetwork (120-84 ReLU, flax's default init), its online params acting in fp32.
    assert (cfg.double_q, cfg.loss, cfg.max_grad_norm, cfg.adam_eps, cfg.handle_timeout_termination, cfg.n_step) == (False, "mse", None, 1e-8, False, 1)
    assert (cfg.policy_kwargs.net_arch, cfg.policy_kwargs.activation, cfg.policy_kwargs.ortho_init) == ((120, 84), "relu", False)
    assert config.placement.actor.precision == "fp32"


def numpy_q(params: dict, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """PureJaxRL's QNetwork in float64: Q-values and the pre-activations."""
    layers = [(np.asarray(params[f"Dense_{i}"]["kernel"], np.float64), np.asarray(params[f"Dense_{i}"]["bias"], np.float64)) for i in range(3)]
    pre, h = [], np.asarray(x, np.float64)
    for w, b in layers[:2]:
        pre.append(h @ w + b)
        h = np.maximum(pre[-1], 0.0)
    return h @ layers[2][0] + layers[2][1], pre


def numpy_purejaxrl_loss_and_grads(params: dict, target_params: dict, batch: dqn_train.Replayed, gamma: float, done: np.ndarray) -> tuple[float, dict]:
    """``_learn_phase`` of purejaxrl/dqn.py by hand: ``target = r + (1 - done) * gamma *
    max_a Q_target(s', a)``, ``loss = mean((Q(s, a) - target) ** 2)``, and its gradient by
    backpropagation written out."""
    obs, action, reward = np.asarray(batch.obs, np.float64), np.asarray(batch.action), np.asarray(batch.reward, np.float64)
    q_next, _ = numpy_q(target_params, np.asarray(batch.next_obs))
    target = reward + (1.0 - done) * gamma * q_next.max(axis=-1)
    q, (pre0, pre1) = numpy_q(params, obs)
    rows = np.arange(len(action))
    err = q[rows, action] - target
    dq = np.zeros_like(q)
    dq[rows, action] = 2.0 * err / len(err)
    w1, w2 = (np.asarray(params[f"Dense_{i}"]["kernel"], np.float64) for i in (1, 2))
    h0, h1 = np.maximum(pre0, 0.0), np.maximum(pre1, 0.0)
    d1 = (dq @ w2.T) * (pre1 > 0)
    d0 = (d1 @ w1.T) * (pre0 > 0)
    grads = {
        "Dense_2": {"kernel": h1.T @ dq, "bias": dq.sum(0)},
        "Dense_1": {"kernel": h0.T @ d1, "bias": d1.sum(0)},
        "Dense_0": {"kernel": obs.T @ d0, "bias": d0.sum(0)},
    }
    return float(np.mean(err**2)), grads


def random_items(n: int, seed: int) -> dqn_train.Replayed:
    """``n`` transitions with a unique reward each (it identifies an item after sampling)."""
    rng = np.random.default_rng(seed)
    return dqn_train.Replayed(
        obs=jnp.asarray(rng.normal(size=(n, 4)), jnp.float32),
        action=jnp.asarray(rng.integers(0, 2, n), jnp.int32),
        reward=jnp.asarray(np.arange(n) + 0.5, jnp.float32),
        next_obs=jnp.asarray(rng.normal(size=(n, 4)), jnp.float32),
        terminated=jnp.asarray(np.arange(n) % 5 == 1),
        truncated=jnp.asarray(np.arange(n) % 5 == 3),
    )


def test_loss_and_gradient_equal_purejaxrls_by_hand(setup: tuple) -> None:
    cfg, _, state, qnet, loss_and_grad = setup
    params, target_params = state.params, state.target_params
    items = random_items(64, seed=0)
    buffer = compile_cache.jit(lambda items: replay.add(replay.init(jax.tree.map(lambda x: x[0], items), 64), items))(items)
    sample = compile_cache.jit(dqn_train.sample_batch, static_argnames="cfg")
    batch, gamma = sample(buffer, jax.random.PRNGKey(2), cfg)
    idx = np.asarray(batch.reward).astype(int)  # which stored item each row is
    done = np.asarray(items.terminated | items.truncated)[idx]  # PureJaxRL's done: no bootstrap after either
    np.testing.assert_array_equal(np.asarray(batch.terminated), done)
    assert done.any() and not done.all() and np.asarray(items.truncated)[idx].any()

    (loss, _), grads = loss_and_grad(params, target_params, batch, gamma, qnet=qnet, cfg=cfg)
    want_loss, want_grads = numpy_purejaxrl_loss_and_grads(params, target_params, batch, gamma, done.astype(np.float64))
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    for layer, leaves in want_grads.items():
        for name, want in leaves.items():
            np.testing.assert_allclose(np.asarray(grads[layer][name]), want, rtol=1e-4, atol=1e-6 * np.abs(want).max(), err_msg=f"{layer}.{name}")

    # SB3's default bootstraps truncated steps from their final observation: other targets.
    sb3 = dataclasses.replace(cfg, handle_timeout_termination=True)
    batch_sb3, _ = sample(buffer, jax.random.PRNGKey(2), sb3)
    np.testing.assert_array_equal(np.asarray(batch_sb3.terminated), np.asarray(items.terminated)[idx])
    (loss_sb3, _), _ = loss_and_grad(params, target_params, batch_sb3, gamma, qnet=qnet, cfg=cfg)  # the loss reads no timeout option
    want_sb3, _ = numpy_purejaxrl_loss_and_grads(params, target_params, batch, gamma, np.asarray(items.terminated, np.float64)[idx])
    np.testing.assert_allclose(float(loss_sb3), want_sb3, rtol=1e-5)
    assert abs(want_sb3 - want_loss) > 1e-4 * want_loss


def test_double_q_values_the_online_argmax_with_the_target_net(setup: tuple) -> None:
    cfg, _, state, qnet, loss_and_grad = setup
    params, target_params = state.params, state.target_params
    batch = random_items(256, seed=1)
    online, _ = numpy_q(params, np.asarray(batch.next_obs))
    target, _ = numpy_q(target_params, np.asarray(batch.next_obs))
    picks_differ = online.argmax(-1) != target.argmax(-1)
    assert picks_differ.any()  # where double DQN's bootstrap value is below the max
    done = np.asarray(batch.terminated, np.float64)
    q, _ = numpy_q(params, np.asarray(batch.obs))
    q_taken = q[np.arange(256), np.asarray(batch.action)]
    reward = np.asarray(batch.reward, np.float64)
    losses = {}
    for double, next_value in ((False, target.max(-1)), (True, target[np.arange(256), online.argmax(-1)])):
        (loss, _), _ = loss_and_grad(params, target_params, batch, 0.99, qnet=qnet, cfg=dataclasses.replace(cfg, double_q=double))
        np.testing.assert_allclose(float(loss), np.mean((q_taken - reward - 0.99 * (1 - done) * next_value) ** 2), rtol=1e-5)
        losses[double] = float(loss)
    assert losses[True] != losses[False]


def numpy_adam(grads: list[np.ndarray], lr: float, eps: float = 1e-8, b1: float = 0.9, b2: float = 0.999) -> np.ndarray:
    """``optax.adam``'s updates for a sequence of gradients, by hand; the summed update."""
    m = v = total = 0.0
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        total = total - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return total


def test_no_gradient_clipping_is_plain_adam(config: config_lib.Config) -> None:
    # Gradients far above SB3's clip of 10, then small ones: a clip changes their relative weight.
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=8) * scale for scale in (100.0, 1.0, 30.0)]
    lr = config.dqn.learning_rate
    totals = {}
    for clip in (None, 10.0):
        tx = dqn_train.make_optimizer(dataclasses.replace(config.dqn, max_grad_norm=clip), optax.constant_schedule(lr))

        def run(grads: jax.Array, tx: optax.GradientTransformation = tx) -> jax.Array:
            params = {"w": jnp.zeros(8, jnp.float32)}
            opt_state = tx.init(params)
            for g in grads:
                updates, opt_state = tx.update({"w": g}, opt_state, params)
                params = optax.apply_updates(params, updates)
            return params["w"]

        totals[clip] = np.asarray(compile_cache.jit(run)(jnp.asarray(np.stack(grads), jnp.float32)))
    np.testing.assert_allclose(totals[None], numpy_adam(grads, lr), rtol=1e-5, atol=1e-10)
    assert not np.allclose(totals[10.0], totals[None], rtol=1e-3)


def purejaxrl_epsilon(ref: dict, t: int) -> float:
    """``eps_greedy_exploration``'s epsilon at ``t`` env steps (``jnp.clip`` with a lower bound only)."""
    return max(ref["EPSILON_FINISH"], ref["EPSILON_START"] + (ref["EPSILON_FINISH"] - ref["EPSILON_START"]) / ref["EPSILON_ANNEAL_TIME"] * t)


def test_epsilon_first_gradient_step_and_target_copies_follow_purejaxrl(setup: tuple) -> None:
    ref = baseline_settings()
    cfg, agent, state, _, _ = setup
    items = random_items(cfg.n_envs, seed=2)
    traj = Transition(**{k: v[None] for k, v in items._asdict().items()}, extras=())
    update = compile_cache.jit(agent.update)
    epsilon = compile_cache.jit(lambda s: agent.actor_params(s, "fp32").epsilon)
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))))
    for k in range(5):  # update k acts at PureJaxRL's t = 10 k, then its timesteps = 10 (k + 1)
        t, timesteps = k * cfg.n_envs, (k + 1) * cfg.n_envs
        np.testing.assert_allclose(float(epsilon(state)), purejaxrl_epsilon(ref, t), rtol=1e-6)
        before = state.target_params
        state, metrics = update(state, traj, jax.random.PRNGKey(k))
        assert (float(metrics["train/grad_norm"]) > 0) == (timesteps > cfg.learning_starts), k  # PureJaxRL: timesteps > LEARNING_STARTS
        copied = not same(state.target_params, before)
        assert copied == (timesteps % cfg.target_update_interval == 0), k
        assert not copied or same(state.target_params, state.params), k  # tau = 1: a hard copy
    for k in (12_500, 20_000, 25_000, 40_000):  # halfway, 80 %, the end of the anneal, past it
        t = k * cfg.n_envs
        np.testing.assert_allclose(float(epsilon(state.replace(step=jnp.int32(k)))), purejaxrl_epsilon(ref, t), rtol=1e-6)

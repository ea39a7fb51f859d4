"""gSDE (generalised State-Dependent Exploration, Raffin et al. CoRL 2021) for PPO, SB3's semantics.

* The exploration matrices a rollout acts with (``rollout.draw_noise``, the numpy actor's
  ``noise``) change exactly every ``sde_sample_freq`` steps, one per env, and with ``-1`` only
  at the start of a rollout.
* Log-probability, entropy and the sampled action against a numpy hand computation of SB3's
  ``StateDependentNoiseDistribution`` formulas, and against SB3 itself where it is installed.
* int8 actors: the latent features are the int8 network's last hidden layer, dequantised;
  JAX (``quant.features``), the op-by-op spec (``int8model``) and the numpy reference agree bit
  for bit, and the numpy host actor samples what the compiled actor samples for the same matrix.
* ``net_arch={pi: [...], vf: [...]}``: separate towers; int8 quantises only the policy's.
* Learning (slow): the RL Zoo's Pendulum-v1 PPO block with int8 actors, then exported: the
  artifact's deterministic action is the int8 mean, bit for bit.
"""

from __future__ import annotations

import functools
import json
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium import spaces
from rlaccel.agents.ppo import sde
from rlaccel.agents.ppo import train as ppo_train
from rlaccel.agents.ppo.actor import PPOActor

from rlaccel import checkpoint, compile_cache, envs, int8model, intmath, quant, quant_tables, rollout
from rlaccel import config as config_lib
from rlaccel.config import ConfigError
from rlaccel.reference import Int8Network, network

PENDULUM = "configs/ppo_pendulum.yaml"

# RL Zoo hyperparams/ppo.yml, Pendulum-v1 (n_timesteps 1e5; SB3 defaults for what it leaves out:
# batch_size 64, vf_coef 0.5, max_grad_norm 0.5, net_arch 64-64 tanh, log_std_init 0, no normalize).
ZOO_PENDULUM = [
    "total_timesteps=100000", "ppo.n_envs=4", "ppo.n_steps=1024", "ppo.gae_lambda=0.95", "ppo.gamma=0.9", "ppo.n_epochs=10",
    "ppo.ent_coef=0.0", "ppo.learning_rate=0.001", "ppo.clip_range=0.2", "ppo.use_sde=true", "ppo.sde_sample_freq=4",
    "ppo.batch_size=64", "ppo.vf_coef=0.5", "ppo.max_grad_norm=0.5", "ppo.normalize=false",
    "ppo.policy_kwargs={net_arch: [64, 64], activation_fn: tanh, log_std_init: 0.0, ortho_init: true}",
]  # fmt: skip


def _agent(overrides: list[str], env=None):
    """``(config, env, agent)`` for PPO Pendulum (or ``env``'s spaces) with gSDE and ``overrides``."""
    cfg = config_lib.load(PENDULUM, ["ppo.use_sde=true", *overrides])
    env = env or envs.make(cfg.env, auto_reset=True)
    return cfg, env, ppo_train.make_agent(cfg.agent, env, num_updates=10)


def _calibrated(agent, obs: np.ndarray, key: int = 0):
    """``(state, int8 actor params, fp32 actor params)``: a fresh agent state calibrated on ``obs``
    (one compiled call: eager JAX costs more than compiling here)."""

    def make(key):
        state = agent.calibrate(agent.init(key), jnp.asarray(obs))
        return state, agent.actor_params(state, "int8"), agent.actor_params(state, "fp32")

    return compile_cache.jit(make)(jax.random.PRNGKey(key))


def _observations(n: int, seed: int) -> np.ndarray:
    """``[n, 3]`` Pendulum-like observations (cos, sin, angular velocity, wider than the env's)."""
    return (np.random.default_rng(seed).standard_normal((n, 3)) * [0.7, 0.7, 3.0]).astype(np.float32)


@pytest.fixture(scope="module")
def pendulum():
    """A gSDE PPO Pendulum agent (32-24 tanh policy, normalised observations, sde_sample_freq 4),
    calibrated, with its int8 and fp32 actor parameters."""
    cfg, env, agent = _agent(["ppo.normalize=true", "ppo.sde_sample_freq=4", "ppo.policy_kwargs.net_arch=[32, 24]", "ppo.policy_kwargs.log_std_init=-1.0"])
    obs = _observations(256, 4)
    state, int8, fp32 = _calibrated(agent, obs)
    return SimpleNamespace(cfg=cfg, env=env, agent=agent, obs=obs, state=state, int8=int8, fp32=fp32)


def _changes(noise: np.ndarray) -> list[int]:
    """Steps ``t >= 1`` whose matrices differ from step ``t - 1``'s (checking that every env
    resamples at once)."""
    B = noise.shape[1]
    changed = [[not np.array_equal(noise[t, b], noise[t - 1, b]) for b in range(B)] for t in range(1, len(noise))]
    assert all(all(c) or not any(c) for c in changed), "some envs resampled and others not"
    return [t for t in range(1, len(noise)) if changed[t - 1][0]]


@pytest.mark.parametrize("freq", [4, 3, -1])
def test_exploration_matrix_is_resampled_exactly_every_sde_sample_freq_steps(pendulum, freq):
    """SB3 draws one matrix per env at rollout start and again when ``step % freq == 0``
    (its step counter restarts with each rollout); ``-1``: only at rollout start. Checked on
    what the compiled rollout scans over (``rollout.draw_noise``) and on the numpy host actor's noise."""
    T, B = 10, 3
    agent = pendulum.agent._replace(rollout_noise=functools.partial(sde.rollout_noise, latent_dim=24, action_dim=1, sample_freq=freq))
    expected = [t for t in range(1, T) if freq > 0 and t % freq == 0]
    draw = compile_cache.jit(lambda key: rollout.draw_noise(pendulum.env, agent, key, T, B).act)
    first, second = np.asarray(draw(jax.random.PRNGKey(0))), np.asarray(draw(jax.random.PRNGKey(1)))
    assert first.shape == (T, B, 24, 1)
    assert _changes(first) == expected
    assert all(not np.array_equal(first[0, 0], first[0, b]) for b in range(1, B))  # one matrix per env
    assert not np.array_equal(first[0], second[0])  # the next rollout starts with fresh ones
    assert abs(float(first.std()) - 1.0) < 0.2  # standard normal: the actor multiplies by std

    section = config_lib.replace(pendulum.cfg, **{"ppo.sde_sample_freq": freq}).agent
    host = PPOActor(jax.device_get(pendulum.fp32), 0, section).noise(np.random.default_rng(0), T, B)
    host = np.stack([host[t] for t in range(T)])
    assert host.shape == (T, B, 24, 1) and _changes(host) == expected
    if freq == 4:  # the agent built from the config binds the same frequency
        np.testing.assert_array_equal(draw(jax.random.PRNGKey(0)), compile_cache.jit(lambda key: rollout.draw_noise(pendulum.env, pendulum.agent, key, T, B).act)(jax.random.PRNGKey(0)))


def _hand_sde(mean, latent, log_std, eps_std_normal):
    """SB3's StateDependentNoiseDistribution by hand (float64): returns (action, log_prob, entropy)."""
    latent, mean, log_std = (np.asarray(x, np.float64) for x in (latent, mean, log_std))
    std = np.exp(log_std) * np.ones((latent.shape[1], mean.shape[1]))  # get_std: full_std or broadcast
    variance = (latent**2) @ (std**2)
    sigma = np.sqrt(variance + 1e-6)
    action = mean + np.einsum("bh,bha->ba", latent, std * eps_std_normal)  # get_noise: bmm per env
    log_prob = np.sum(-((action - mean) ** 2) / (2 * sigma**2) - np.log(sigma) - 0.5 * math.log(2 * math.pi), axis=1)
    entropy = np.sum(0.5 + 0.5 * math.log(2 * math.pi) + np.log(sigma), axis=1)
    return action, log_prob, entropy


@pytest.mark.parametrize("full_std", [True, False])
def test_log_prob_entropy_and_sample_match_a_hand_computation(full_std):
    """The actor's sample and behaviour log-probability and the learner's log-probability and
    entropy, for a random policy (log_std not all equal, two actions), against SB3's formulas in numpy."""
    env = SimpleNamespace(observation_space=spaces.Box(-5.0, 5.0, (3,)), action_space=spaces.Box(-1.0, 1.0, (2,)))
    cfg, _, agent = _agent([f"ppo.policy_kwargs.full_std={str(full_std).lower()}", "ppo.policy_kwargs.net_arch=[16, 8]"], env)
    state = compile_cache.jit(agent.init)(jax.random.PRNGKey(1))
    assert state.params["log_std"].shape == ((8, 2) if full_std else (8, 1))
    assert np.all(np.asarray(state.params["log_std"]) == cfg.agent.policy_kwargs.log_std_init)
    log_std = jax.random.uniform(jax.random.PRNGKey(2), state.params["log_std"].shape, minval=-1.5, maxval=0.5)
    params = {**state.params, "log_std": log_std}
    rng = np.random.default_rng(0)
    obs = rng.uniform(-3, 3, (32, 3)).astype(np.float32)
    noise = rng.standard_normal((32, 8, 2)).astype(np.float32)

    nets = ppo_train.nets_lib.make_networks(env.observation_space, env.action_space, cfg.agent.policy_kwargs, use_sde=True)
    dist = functools.partial(ppo_train.action_distribution, nets, activation="tanh")

    @jax.jit
    def compute(params):
        actor = agent.actor_params(state.replace(params=params), "fp32")
        action, extras = agent.act(actor, obs, noise)
        logp, entropy = dist(params, obs, action)
        grads = jax.grad(lambda p: dist(p, obs, action)[0].sum())(params)
        entropy_grads = jax.grad(lambda p: dist(p, obs, action)[1].sum())(params)
        return ppo_train.nets_lib.policy_features(params["policy"], obs, "tanh"), action, extras.log_prob, logp, entropy, grads, entropy_grads

    (latent, mean), action, behaviour_logp, logp, entropy, grads, entropy_grads = compute(params)
    want_action, want_logp, want_entropy = _hand_sde(mean, latent, log_std, noise.astype(np.float64))
    np.testing.assert_allclose(action, want_action, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(behaviour_logp, want_logp, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(logp, want_logp, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(entropy, want_entropy, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logp, behaviour_logp, rtol=1e-6, atol=1e-5)  # on-policy: ratio 1 at the first step
    assert float(jnp.abs(grads["log_std"]).sum()) > 0 and float(jnp.abs(grads["policy"]["Dense_2"]["kernel"]).sum()) > 0
    # learn_features=False: the latent is a constant to the std, so the entropy (a function of
    # the std alone) moves log_std and not the policy's layers.
    assert float(jnp.abs(entropy_grads["log_std"]).sum()) > 0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(entropy_grads["policy"]))


def test_matches_stable_baselines3_state_dependent_noise_distribution():
    """SB3's own ``StateDependentNoiseDistribution`` (torch) given our latent, mean, log_std and
    exploration matrices: the same actions, log-probabilities and entropies."""
    th = pytest.importorskip("torch")
    distributions = pytest.importorskip("stable_baselines3.common.distributions")
    rng = np.random.default_rng(3)
    B, h, A = 5, 6, 2
    latent = rng.uniform(-1, 1, (B, h)).astype(np.float32)
    mean = rng.standard_normal((B, A)).astype(np.float32)
    log_std = rng.uniform(-1, 0.5, (h, A)).astype(np.float32)
    z = rng.standard_normal((B, h, A)).astype(np.float32)

    dist = distributions.StateDependentNoiseDistribution(A, full_std=True)
    dist.latent_sde_dim = h
    dist.sample_weights(th.tensor(log_std), batch_size=B)
    dist.exploration_matrices = th.tensor(np.exp(log_std) * z)  # SB3's N(0, std) draws: ours, std * z
    dist.proba_distribution(th.tensor(mean), th.tensor(log_std), th.tensor(latent))
    sb3_action = dist.sample()
    std = sde.scale(jnp.asarray(latent), jnp.asarray(log_std), A)
    action = sde.sample(jnp.asarray(mean), jnp.asarray(latent), jnp.asarray(log_std), jnp.asarray(z))
    np.testing.assert_allclose(action, sb3_action.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sde.log_prob(jnp.asarray(mean), std, action), dist.log_prob(sb3_action).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sde.entropy(std), dist.entropy().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(jnp.asarray(mean)), dist.mode().numpy())  # deterministic action: the mean


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_int8_latent_is_the_dequantised_last_hidden_layer(pendulum, activation):
    """``quant.features`` (JAX, the training actors) = the spec's integer layers dequantised
    (``int8model``) = ``reference.Int8Network.features`` (numpy host actors), bit for bit; the
    int8 latent tracks the fp32 one (the same structure, within the int8 resolution)."""
    if activation == "tanh":
        state, int8, obs = pendulum.state, pendulum.int8, pendulum.obs
    else:
        _, _, agent = _agent(["ppo.normalize=true", "ppo.policy_kwargs.activation_fn=relu", "ppo.policy_kwargs.net_arch=[32, 24]", "ppo.policy_kwargs.ortho_init=false"])
        obs = pendulum.obs
        state, int8, _ = _calibrated(agent, obs)
    norm = jax.device_get(int8.obs_norm)
    x = np.clip((obs - norm.mean) * norm.inv_std, -10, 10).astype(np.float32)  # what the actors' normaliser computes
    latent, head = compile_cache.jit(quant.features)(int8.policy, x)

    m = jax.device_get(int8.policy.model)
    q = intmath.quantize(int8model.preprocess(x, m.gain), float(m.in_scale), int(m.in_zero))
    for i in range(len(m.w_q) - 1):
        q = int8model.int8_hidden(q, m, i, "tflite", activation)
    scale, zero = (intmath.TANH_OUT_SCALE, 0) if activation == "tanh" else (float(m.out_scale[-2]), int(m.out_zero[-2]))
    np.testing.assert_array_equal(latent, (q - zero).astype(np.float32) * np.float32(scale))
    np.testing.assert_array_equal(head, int8model.head(m, int8model.preprocess(x, m.gain), "tflite", activation))

    host = Int8Network(jax.device_get(compile_cache.jit(quant_tables.tables)(int8.policy)), activation)
    host_latent, host_head = host.features(x)
    np.testing.assert_array_equal(host_latent, latent)
    np.testing.assert_array_equal(host_head, head)
    np.testing.assert_array_equal(host.features(x[:1])[0], latent[:1])  # another batch size, other buffers

    fp32_latent, _ = compile_cache.jit(ppo_train.nets_lib.policy_features, static_argnums=2)(state.params["policy"], x, activation)
    assert latent.shape == fp32_latent.shape == (256, 24) and head.shape == (256, 1)
    assert float(jnp.mean(jnp.abs(latent - fp32_latent))) < 2 * scale  # within two int8 steps on average
    fp32_host = network(jax.device_get(state.params["policy"]), activation)
    np.testing.assert_allclose(fp32_host.features(x)[0], fp32_latent, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_host_actor_samples_what_the_device_actor_samples(pendulum, precision):
    """The numpy actor (host mode) and the compiled ``act`` (fused / split), given the same
    observations and exploration matrices: the same mean, actions and log-probabilities
    (to float rounding: numpy's einsum / exp / log are not XLA's)."""
    device_params = pendulum.int8 if precision == "int8" else pendulum.fp32
    host = PPOActor(jax.device_get(compile_cache.jit(quant_tables.with_tables)(device_params)), 0, pendulum.cfg.agent)
    assert host.sde and host.latent_dim == 24 and host.sample_freq == 4
    obs, noise = pendulum.obs, host.noise(np.random.default_rng(6), 8, 256)
    act = compile_cache.jit(pendulum.agent.act)
    for t in (0, 7):
        a_host, x_host = host.act(obs, noise[t])
        a_dev, x_dev = act(device_params, obs, jnp.asarray(noise[t]))
        np.testing.assert_allclose(a_host, a_dev, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(x_host.log_prob, x_dev.log_prob, rtol=1e-5, atol=1e-4)
    head = np.asarray(compile_cache.jit(pendulum.agent.head)(device_params, obs))
    if precision == "int8":
        np.testing.assert_array_equal(host.head(obs), head)
    assert not np.allclose(a_host, head, atol=1e-3)  # the matrix moved the actions off the mean


def test_separate_policy_and_value_towers_and_int8_quantises_only_the_policy():
    """``net_arch={pi: [32, 16], vf: [64, 48]}``: the value net is 64-48, the policy 32-16 with
    gSDE features of width 16 and ``log_std [16, 1]`` (``full_std: false``); the int8 actor is
    the policy tower alone; the learner's loss runs on both."""
    cfg, env, agent = _agent(["ppo.policy_kwargs.net_arch={pi: [32, 16], vf: [64, 48]}", "ppo.policy_kwargs.full_std=false", "ppo.policy_kwargs.ortho_init=false"])
    state = jax.eval_shape(agent.init, jax.random.PRNGKey(0))
    shapes = jax.tree.map(lambda x: x.shape, state.params)
    assert [shapes["policy"][f"Dense_{i}"]["kernel"] for i in range(3)] == [(3, 32), (32, 16), (16, 1)]
    assert [shapes["value"][f"Dense_{i}"]["kernel"] for i in range(3)] == [(3, 64), (64, 48), (48, 1)]
    assert shapes["log_std"] == (16, 1) and state.calib.hidden_max.shape == (2,)
    int8 = jax.eval_shape(lambda s: agent.actor_params(s, "int8"), state).policy
    assert [w.shape for w in int8.model.w_q] == [(3, 32), (32, 16), (16, 1)]
    assert jax.eval_shape(lambda k: agent.rollout_noise(k, 4, 2), jax.random.PRNGKey(0)).shape == (4, 2, 16, 1)

    nets = ppo_train.nets_lib.make_networks(env.observation_space, env.action_space, cfg.agent.policy_kwargs, use_sde=True)
    obs = _observations(64, 8)
    advantage = np.random.default_rng(9).standard_normal(64).astype(np.float32)

    @jax.jit
    def grads(key):
        params = agent.init(key).params
        action = obs[:, :1] * 0.5
        behaviour, _ = ppo_train.action_distribution(nets, params, obs, action, "tanh")
        mb = ppo_train.Minibatch(obs=obs, action=action, behaviour_log_prob=behaviour, value=jnp.zeros(64), advantage=advantage, ret=jnp.ones(64))
        return jax.grad(lambda p: ppo_train.loss_fn(p, mb, 0.2, nets=nets, cfg=cfg.agent)[0])(params)

    g = grads(jax.random.PRNGKey(0))
    assert all(float(jnp.abs(g[k]["Dense_0"]["kernel"]).sum()) > 0 for k in ("policy", "value"))


def test_use_sde_with_discrete_actions_is_a_config_error():
    cfg = config_lib.load("configs/ppo_cartpole.yaml", ["ppo.use_sde=true"])
    with pytest.raises(ConfigError, match="ppo.use_sde"):
        ppo_train.build(cfg, envs.make(cfg.env))


@pytest.mark.slow
@pytest.mark.optimized  # learns: XLA's default effort, as users run
def test_zoo_pendulum_block_learns_with_int8_actors_and_exports_the_mean(tmp_path):
    """The RL Zoo's Pendulum-v1 PPO block (gSDE, sde_sample_freq 4, 1e5 steps) with int8 actors
    (tflite profile), one seed: training return >= -400 (measured -190 +- 10 over seeds 0-2;
    without gSDE -228 in the same run), then exported: the artifact's action is the int8 mean
    (what the compiled actor's head computes, clipped to the bounds), bit for bit, and it
    keeps its return on gymnasium's own Pendulum-v1."""
    from rlaccel.deploy import load_policy
    from rlaccel.deploy.evaluate import episode_returns
    from rlaccel.deploy.export import export
    from rlaccel.sources.fused import make_train

    cfg = config_lib.load(PENDULUM, ZOO_PENDULUM + ["placement.actor.precision=int8"])
    state, metrics = compile_cache.jit(make_train(cfg))(jax.random.PRNGKey(0))
    final = float(metrics["rollout/ep_rew_mean"][-1])
    assert final >= -400, f"zoo Pendulum-v1 with gSDE reached {final:.1f} in 1e5 steps"

    run_dir = tmp_path / "pendulum_gsde"
    checkpoint.save(run_dir / "checkpoints", int(state.update), state, {"config": cfg.to_dict()})
    (run_dir / "config.yaml").write_text(json.dumps(cfg.to_dict()))
    policy = load_policy(export(run_dir), "numpy-int8")
    assert np.asarray(policy.artifact.arrays["log_std"]).shape == (64, 1)
    obs = (np.random.default_rng(7).standard_normal((500, 3)) * [0.7, 0.7, 3.0]).astype(np.float32)
    agent = ppo_train.build(cfg, envs.make(cfg.env)).agent
    mean = np.asarray(compile_cache.jit(lambda a, o: agent.head(agent.actor_params(a, "int8"), o))(state.agent, obs))
    np.testing.assert_array_equal(policy.act(obs), np.clip(mean, -2.0, 2.0))
    assert float(np.mean(episode_returns(policy, "Pendulum-v1", 5, seed=100))) >= -400

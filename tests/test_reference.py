"""Tests for ``rlaccel.reference`` (the numpy int8 reference) and the numpy actors built on it.

Oracles: JAX's own compiled int8 path (``quant.apply`` under ``jax.jit``, what the actors run),
the previous exporter's numpy-driven bisection on ``quant.requantize`` (kept here as
:func:`old_bisection`), and the JAX agents' ``head`` / ``act`` / ``networks.log_prob``.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rlaccel.agents.dqn.actor import DQNActor
from rlaccel.agents.ppo import networks as ppo_nets
from rlaccel.agents.ppo.actor import ActorExtras, PPOActor

from rlaccel import agent as agent_lib
from rlaccel import config as config_lib
from rlaccel import envs, normalize, quant, reference
from rlaccel.reference import LEVELS, QMAX

REPO = Path(__file__).resolve().parents[1]
CLIP_OBS = 5.0  # small, so that many of the wide test observations are clipped


def old_bisection(w_q: np.ndarray, b_q: np.ndarray, out_scale: np.ndarray, s_next: np.ndarray, activation: str) -> np.ndarray:
    """The exporter's table before ``quant.tables`` (``deploy.export.activation_thresholds``):
    all ``254 x out`` bisections driven from numpy until every one has closed, one jitted
    ``requantize`` call per step. ``int32 [out, 254]``."""
    reach = QMAX * np.abs(w_q.astype(np.int64)).sum(axis=0) + np.abs(b_q.astype(np.int64))
    fn = jax.jit(functools.partial(quant.requantize, activation=activation))
    target = (np.arange(LEVELS) - (QMAX - 1))[:, None]  # [254, 1] levels -126 .. 127
    lo = np.broadcast_to(-reach, (LEVELS, reach.size)).copy()
    hi = lo * 0 + reach + 1
    scale, s_next = jnp.asarray(out_scale, jnp.float32), jnp.asarray(s_next, jnp.float32)
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        q = np.asarray(fn(jnp.asarray(mid, jnp.int32), scale, s_next)).astype(np.int64)
        above = q >= target
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid + 1)
    return np.ascontiguousarray(lo.T).astype(np.int32)


def _random_policy(activation: str, seed: int = 0):
    """A calibrated random 6-64-48-3 policy with a non-trivial normaliser:
    ``(QuantParams, Int8Tables (numpy), Normalizer (numpy), observations [4096, 6])``.

    Hidden channel 5 of the first layer is all zero (weights and bias: a constant channel whose
    table is all "never" above 0), and one bias is large, so the tables cover edge cases."""
    rng = np.random.default_rng(seed)
    dims = [6, 64, 48, 3]
    layers = []
    for fan_in, fan_out in zip(dims[:-1], dims[1:]):
        w = rng.normal(size=(fan_in, fan_out)) * 1.4 / np.sqrt(fan_in)
        b = 0.1 * rng.normal(size=fan_out)
        layers.append([w.astype(np.float32), b.astype(np.float32)])
    layers[0][0][:, 5], layers[0][1][5] = 0.0, 0.0
    layers[1][1][7] = 3.0
    layers = [(jnp.asarray(w), jnp.asarray(b)) for w, b in layers]
    stats = normalize.RunningStats(
        mean=jnp.asarray(rng.normal(size=6), jnp.float32), var=jnp.asarray(rng.random(6) * 3 + 0.1, jnp.float32), count=jnp.float32(100)
    )
    norm = normalize.normalizer(stats)
    raw = jnp.asarray(rng.normal(size=(2048, 6)) * 2 + 0.5, jnp.float32)
    calib = quant.update(quant.init(6, 3), layers, normalize.apply(norm, raw, CLIP_OBS), activation)
    qp = jax.jit(quant.quantize, static_argnums=2)(layers, calib, activation)
    tables = jax.device_get(jax.jit(quant.tables)(qp))
    # Wider than the calibration data: clipped inputs, saturated int8 codes, hidden extremes.
    obs = (rng.normal(size=(4096, 6)) * np.array([1, 2, 4, 8, 16, 32]) + 0.5).astype(np.float32)
    return qp, tables, jax.device_get(norm), obs


@pytest.fixture(scope="module", params=["tanh", "relu", "elu"])
def policy(request):
    return request.param, *_random_policy(request.param)


def test_int8_network_is_bit_exact_with_jitted_quant_apply(policy):
    """(a) Every output of the numpy reference equals JAX's, at batch 2048 and batch 1."""
    activation, qp, tables, norm, obs = policy
    jax_head = jax.jit(lambda qp, norm, x: quant.apply(qp, normalize.apply(norm, x, CLIP_OBS)))
    expected = np.asarray(jax_head(qp, norm, obs))
    net = reference.Int8Network(tables, norm, CLIP_OBS)
    assert [h.mode for h in net._hidden] == ["lut", "lut"]
    got = net.forward(obs[:2048])
    assert got.dtype == np.float32 and got.shape == (2048, 3)
    assert np.array_equal(got, expected[:2048])
    assert np.array_equal(net.forward(obs[2048:]), expected[2048:])  # cached closure, new data
    single = np.asarray(jax_head(qp, norm, obs[:300, None, :]))[:, 0]  # JAX at batch 1 too
    np.testing.assert_array_equal(single, expected[:300])
    assert all(np.array_equal(net.forward(obs[i : i + 1])[0], expected[i]) for i in range(300))
    assert all(np.array_equal(net.forward_one(obs[i]), expected[i]) for i in range(3000))
    # Without a normaliser the inputs go in as they are.
    plain = reference.Int8Network(tables)
    assert np.array_equal(plain.forward(obs), np.asarray(jax.jit(quant.apply)(qp, obs)))


def test_int8_network_search_fallback_equals_lookup(policy, monkeypatch):
    activation, qp, tables, norm, obs = policy
    lut = reference.Int8Network(tables, norm, CLIP_OBS)
    monkeypatch.setattr(reference._Hidden, "MAX_CELLS", 0)
    search = reference.Int8Network(tables, norm, CLIP_OBS)
    assert [h.mode for h in search._hidden] == ["search", "search"]
    np.testing.assert_array_equal(search.forward(obs), lut.forward(obs))
    assert all(np.array_equal(search.forward_one(o), lut.forward(o[None])[0]) for o in obs[:500])


def test_quant_tables_equal_the_old_bisection(policy):
    """(b) The jitted fixed-step bisection gives the old exporter's tables entry for entry,
    including where "never" landed (``R + 1`` or ``R + 2``)."""
    activation, qp, tables, norm, obs = policy
    qp = jax.device_get(qp)
    assert len(tables.thresholds) == 2
    for i in range(2):
        layer = qp.layers[i]
        old = old_bisection(np.asarray(layer.w_q), np.asarray(layer.b_q), np.asarray(layer.out_scale), np.asarray(qp.act_scales)[i], activation)
        assert tables.thresholds[i].dtype == np.int32 and tables.thresholds[i].shape == (layer.w_q.shape[1], LEVELS)
        np.testing.assert_array_equal(tables.thresholds[i], old)
    for name in ("w_q", "b_q", "out_scale"):
        for got, layer in zip(getattr(tables, name), qp.layers):
            np.testing.assert_array_equal(got, np.asarray(getattr(layer, name)))


def test_network_forward_is_thread_safe(policy):
    """``forward`` keeps its buffers per thread: actor threads may share one network."""
    activation, qp, tables, norm, obs = policy
    net = reference.Int8Network(tables, norm, CLIP_OBS)
    expected = net.forward(obs)
    errors = []

    def work(k: int) -> None:
        for i in range(200):
            rows = obs[(k * 997 + i * 16) % 4000 :][:16]
            if not np.array_equal(net.forward(rows), expected[(k * 997 + i * 16) % 4000 :][:16]):
                errors.append((k, i))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_fp32_network_matches_the_jax_mlp(policy):
    activation, qp, tables, norm, obs = policy
    rng = np.random.default_rng(1)
    layers = [(rng.normal(size=(a, b)).astype(np.float32) / np.sqrt(a), rng.normal(size=b).astype(np.float32)) for a, b in [(6, 32), (32, 3)]]
    from rlaccel.networks import ACTIVATIONS

    def jax_mlp(x):
        x = normalize.apply(norm, x, CLIP_OBS)
        return ACTIVATIONS[activation](x @ layers[0][0] + layers[0][1]) @ layers[1][0] + layers[1][1]

    net = reference.Fp32Network(layers, activation, norm, CLIP_OBS)
    expected = np.asarray(jax.jit(jax_mlp)(obs))
    np.testing.assert_allclose(net.forward(obs), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.stack([net.forward_one(o).copy() for o in obs[:100]]), expected[:100], rtol=1e-5, atol=1e-5)


def test_numpy_normalizer_is_the_jax_one(policy):
    activation, qp, tables, norm, obs = policy
    got = reference.normalize(norm, obs, CLIP_OBS)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.asarray(jax.jit(normalize.apply, static_argnums=2)(norm, obs, CLIP_OBS)))


# --------------------------------------------------------------------------------------------
# The numpy actors against the JAX agents.


def _agent(overrides: list[str], config_file: Path | None = None):
    """``(config, agent, state)``: a fresh agent state with a non-trivial observation normaliser
    (PPO), calibrated by ``agent.calibrate`` on wide observations; and those observations."""
    config = config_lib.load(config_file, overrides) if config_file else config_lib.load(overrides=overrides)
    env = envs.make(config.env, auto_reset=True)
    agent = agent_lib.make(config, env).agent
    state = jax.jit(agent.init)(jax.random.PRNGKey(2))
    rng = np.random.default_rng(3)
    obs_dim = env.observation_space.shape[0]
    obs = (rng.standard_normal((2048, obs_dim)) * 2.0 + 0.5).astype(np.float32)
    if hasattr(state, "obs_stats"):
        stats = normalize.RunningStats(mean=jnp.asarray(rng.standard_normal(obs_dim), jnp.float32), var=jnp.asarray(rng.random(obs_dim) * 3 + 0.1, jnp.float32), count=jnp.float32(512))
        state = state.replace(obs_stats=stats)
    state = jax.jit(agent.calibrate)(state, jnp.asarray(obs[:1024]))
    assert int(state.calib.rollouts) == 1
    return config, agent, state, obs


def _actor_params(agent, state, precision: str):
    """``(JAX actor params, the numpy actors' copy: int8 policy as Int8Tables)``."""
    params = jax.jit(agent.actor_params, static_argnums=1)(state, precision)
    return params, jax.device_get(jax.jit(quant.with_tables)(params))


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_ppo_actor_matches_the_jax_actor(env_id, precision):
    """(c) Heads (int8: exactly equal), actions and behaviour log-probabilities."""
    config, agent, state, obs = _agent([f"env={env_id}", "ppo.normalize=true", "ppo.policy_kwargs.log_std_init=-0.5"])
    params, host_params = _actor_params(agent, state, precision)
    assert isinstance(host_params.policy, reference.Int8Tables if precision == "int8" else dict)
    assert host_params.obs_norm is not None and isinstance(host_params.obs_norm, reference.Normalizer)
    actor = PPOActor(host_params, 7, config.ppo)
    assert actor.version == 7 and actor.discrete == (env_id == "CartPole-v1")
    head = np.asarray(jax.jit(agent.head)(params, obs))
    if precision == "int8":
        np.testing.assert_array_equal(actor.head(obs), head)
    else:
        np.testing.assert_allclose(actor.head(obs), head, rtol=1e-5, atol=1e-5)

    noise = actor.noise(np.random.default_rng(0), 3, obs.shape[0])
    assert noise.shape == (3, obs.shape[0], actor.action_dim) and noise.dtype == np.float32
    action, extras = actor.act(obs, noise[1])
    assert type(extras) is ActorExtras and extras.log_prob.shape == (obs.shape[0],) and extras.log_prob.dtype == np.float32
    jax_action, jax_extras = jax.jit(agent.act)(params, obs, noise[1])
    assert type(jax_extras) is ActorExtras  # the very type the learner compiles with
    log_std = None if host_params.log_std is None else jnp.asarray(host_params.log_std)
    if actor.discrete:
        assert action.dtype == np.int32 and action.shape == (obs.shape[0],)
        if precision == "int8":
            np.testing.assert_array_equal(action, np.asarray(jax_action))
        else:
            assert np.mean(action == np.asarray(jax_action)) >= 0.999
    else:
        assert action.dtype == np.float32 and action.shape == (obs.shape[0], actor.action_dim)
        np.testing.assert_allclose(action, np.asarray(jax_action), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(extras.log_prob, np.asarray(ppo_nets.log_prob(jnp.asarray(head), log_std, jnp.asarray(action))), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(extras.log_prob, np.asarray(jax_extras.log_prob), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_ppo_actor_noise_distributions():
    config, agent, state, _ = _agent(["env=CartPole-v1"])
    _, host_params = _actor_params(agent, state, "int8")
    gumbel = PPOActor(host_params, 0, config.ppo).noise(np.random.default_rng(0), 100, 100)
    # 20,000 draws: standard errors ~0.009 (mean) and ~0.03 (variance; the Gumbel tail is heavy): 5 sigma bounds.
    assert abs(gumbel.mean() - np.euler_gamma) < 0.05 and abs(gumbel.var() - np.pi**2 / 6) < 0.15
    config, agent, state, _ = _agent(["env=Pendulum-v1"])
    _, host_params = _actor_params(agent, state, "int8")
    normal = PPOActor(host_params, 0, config.ppo).noise(np.random.default_rng(0), 100, 100)
    assert abs(normal.mean()) < 0.04 and abs(normal.std() - 1) < 0.03


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_dqn_actor_greedy_and_uniform(precision):
    """(d) Epsilon 0: the argmax of the JAX head; epsilon 1: the noise's uniform random actions."""
    config, agent, state, obs = _agent([], REPO / "configs" / "dqn_cartpole.yaml")
    params, host_params = _actor_params(agent, state, precision)
    head = np.asarray(jax.jit(agent.head)(params, obs))
    greedy = DQNActor(host_params._replace(epsilon=np.float32(0.0)), 3, config.dqn)
    assert greedy.version == 3 and greedy.num_actions == 2
    noise = greedy.noise(np.random.default_rng(0), 5, obs.shape[0])
    assert noise.shape == (5, obs.shape[0])
    action, extras = greedy.act(obs, noise[0])
    assert extras == () and action.dtype == np.int32 and action.shape == (obs.shape[0],)
    if precision == "int8":
        np.testing.assert_array_equal(greedy.head(obs), head)
        np.testing.assert_array_equal(action, head.argmax(-1))
    else:
        clear = np.abs(head[:, 0] - head[:, 1]) > 1e-4  # numpy's fp32 is ~1e-7 from XLA's: skip near-ties
        assert clear.mean() > 0.99
        np.testing.assert_array_equal(action[clear], head.argmax(-1)[clear])
    jax_action, _ = jax.jit(agent.act)(params._replace(epsilon=jnp.float32(0.0)), obs, _jax_noise(noise[0]))
    clear = np.abs(head[:, 0] - head[:, 1]) > (0 if precision == "int8" else 1e-4)
    np.testing.assert_array_equal(np.asarray(jax_action)[clear], action[clear])

    explore = DQNActor(host_params._replace(epsilon=np.float32(1.0)), 3, config.dqn)
    noise = explore.noise(np.random.default_rng(1), 100, 128)
    actions = np.stack([explore.act(obs[:128], noise[t])[0] for t in range(100)])
    np.testing.assert_array_equal(actions, noise["action"])
    counts = np.bincount(actions.reshape(-1), minlength=2)
    assert counts.size == 2 and abs(counts[0] - 6400) < 5 * np.sqrt(12800 * 0.25)  # uniform within 5 sigma


def _jax_noise(noise_t: np.ndarray):
    """The numpy actor's noise record as the JAX actor's ``ExplorationNoise``."""
    from rlaccel.agents.dqn.networks import ExplorationNoise

    return ExplorationNoise(uniform=jnp.asarray(noise_t["uniform"]), random_action=jnp.asarray(noise_t["action"]))


def test_reference_and_numpy_actors_do_not_import_jax():
    code = (
        "import sys, numpy as np\n"
        "import rlaccel.reference, rlaccel.agents.ppo.actor, rlaccel.agents.dqn.actor\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax')]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr

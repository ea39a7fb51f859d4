"""Tests for ``rlaccel.reference`` (the numpy int8 reference) and the numpy actors built on it.

Oracles: the numpy spec ``rlaccel.int8model.head`` (TFLite Micro's arithmetic, ``rlaccel.intmath``),
JAX's own compiled int8 path (``quant.apply`` under ``jax.jit``, what the actors run), and the
JAX agents' ``head`` / ``act`` / ``networks.log_prob``.
"""

from __future__ import annotations

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
from rlaccel import compile_cache, envs, int8model, intmath, lookup, normalize, quant, quant_tables, reference
from rlaccel.reference import LEVELS

REPO = Path(__file__).resolve().parents[1]
CLIP_OBS = 5.0  # small, so that many of the wide test observations are clipped


def _policy(profile: str, activation: str, seed: int, hidden_gain: float):
    """A calibrated random 6-64-48-3 policy with a non-trivial normaliser:
    ``(QuantParams, Int8Tables (numpy), Normalizer (numpy), observations [12288, 6])``.

    Hidden channel 5 of the first layer and head 1 are all zero (weights and bias: constant
    channels), feature 4 is 0 throughout calibration, one bias is large; ``hidden_gain`` scales
    the second layer, so calibration picks finer TANH input scales for small values."""
    rng = np.random.default_rng(seed)
    dims = [6, 64, 48, 3]
    layers = [[(rng.normal(size=(a, b)) * 1.4 / np.sqrt(a)).astype(np.float32), (0.1 * rng.normal(size=b)).astype(np.float32)] for a, b in zip(dims[:-1], dims[1:])]
    layers[0][0][:, 5], layers[0][1][5] = 0.0, 0.0
    layers[1][0] *= hidden_gain
    layers[1][1] *= hidden_gain
    layers[1][1][7] = 3.0 * hidden_gain
    layers[2][0][:, 1], layers[2][1][1] = 0.0, 0.0
    layers = [(jnp.asarray(w), jnp.asarray(b)) for w, b in layers]
    stats = normalize.RunningStats(mean=jnp.asarray(rng.normal(size=6), jnp.float32), var=jnp.asarray(rng.random(6) * 3 + 0.1, jnp.float32), count=jnp.float32(100))
    norm = normalize.normalizer(stats)
    raw = rng.normal(size=(2048, 6)) * 2 + 0.5
    raw[:, 4] = np.asarray(stats.mean)[4]  # normalised feature 4 is 0 in calibration
    calib = _update(quant.init(6, 3), layers, _normalize(norm, jnp.asarray(raw, jnp.float32)), activation)
    qp = _quantize(layers, calib, activation, profile)
    tables = jax.device_get(_tables(qp))
    # Wider than the calibration data: clipped inputs, saturated int8 codes, hidden extremes;
    # the last 2048 far out of range (up to ~1e6).
    obs = rng.normal(size=(12288, 6)) * np.array([1, 2, 4, 8, 16, 32]) + 0.5
    obs[-2048:] *= 10.0 ** rng.uniform(1, 5, size=(2048, 1))
    return qp, tables, jax.device_get(norm), obs.astype(np.float32)


_update = jax.jit(quant.update, static_argnums=3)
_quantize = jax.jit(quant.quantize, static_argnums=(2, 3))
_tables = jax.jit(quant_tables.tables)
_normalize = jax.jit(lambda norm, x: normalize.apply(norm, x, CLIP_OBS))
_jax_head = jax.jit(lambda qp, norm, x: quant.apply(qp, normalize.apply(norm, x, CLIP_OBS)))
_apply = jax.jit(quant.apply)


@pytest.fixture(scope="module", params=[(p, a) for p in ("tflite", "pow2") for a in ("tanh", "relu")], ids=lambda c: "-".join(c))
def policies(request):
    profile, activation = request.param
    return profile, activation, [_policy(profile, activation, seed, g) for seed, g in ((0, 1.0), (1, 0.03), (2, 0.002))]


@pytest.mark.slow
def test_all_int8_paths_are_bit_exact(policies):
    """jitted ``quant.apply`` == ``int8model.head`` == ``Int8Network.forward`` == ``forward_one``,
    bit for bit, on 12,288 observations (2048 far out of range), with and without the normaliser."""
    profile, activation, cases = policies
    tanh_rows, modes = set(), set()
    for qp, tables, norm, obs in cases:
        m = tables.model
        if activation == "tanh":
            tanh_rows |= {intmath.tanh_index(float(s)) for s in m.out_scale[:-1]}
        expected = np.asarray(_jax_head(qp, norm, obs))
        spec = int8model.head(m, int8model.preprocess(obs, m.gain, norm.mean, norm.inv_std, CLIP_OBS), profile, activation)
        np.testing.assert_array_equal(spec, expected)
        net = reference.Int8Network(tables, activation, norm, CLIP_OBS)
        modes.update(h.mode for h in net._layers)  # TANH at 2**-5 jumps levels: "lut2"
        got = net.forward(obs)
        assert got.dtype == np.float32 and got.shape == (obs.shape[0], 3)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(net.forward(obs[:300]), expected[:300])  # another batch size
        np.testing.assert_array_equal(np.stack([net.forward_one(o).copy() for o in obs]), expected)
        np.testing.assert_array_equal(np.concatenate([net.forward(o[None]) for o in obs[:500]]), expected[:500])  # a row: forward_one's way, per thread
        assert not np.any(expected[:, 1])  # the all-zero head
        # Without a normaliser the (far out of range) inputs go in as they are.
        plain = np.asarray(_apply(qp, obs))
        np.testing.assert_array_equal(reference.Int8Network(tables, activation).forward(obs), plain)
        np.testing.assert_array_equal(int8model.head(m, int8model.preprocess(obs, m.gain), profile, activation), plain)
    assert "lut" in modes and (activation != "tanh" or "lut2" in modes), modes  # both lookups exercised
    if activation == "tanh":
        assert len(tanh_rows) >= 2, tanh_rows  # calibration picked several TANH input scales


def test_tables_are_the_output_stage_thresholds(policies):
    """``thresholds[i][j, k]``: the smallest accumulator in ``[-R_j, R_j + 1]`` whose output (by
    the numpy spec, ``int8model.requantize`` and TANH) is ``>= k - 127``; above ``R_j``: never."""
    profile, activation, cases = policies
    for _, tables, _, _ in cases:
        m = tables.model
        for i, t in enumerate(tables.thresholds):
            t = np.asarray(t, np.int64)
            r = reference.reach(m.w_q[i], m.b_q[i])[:, None]
            assert tables.thresholds[i].dtype == np.int32 and t.shape == (m.w_q[i].shape[1], LEVELS)

            def out(acc, i=i):
                y = int8model.requantize(acc, m, i, profile)
                if activation == "tanh" and i < len(m.w_q) - 1:
                    y = intmath.TANH_TABLES[intmath.tanh_index(m.out_scale[i])].astype(np.int64)[y + 128]
                return y

            level = np.arange(LEVELS) - 127
            y_at = np.stack([out(np.clip(t[:, k], -r[:, 0], r[:, 0])) for k in range(LEVELS)], axis=1)
            y_below = np.stack([out(np.clip(t[:, k] - 1, -r[:, 0], r[:, 0])) for k in range(LEVELS)], axis=1)
            inside = (t > -r) & (t <= r)
            assert np.all((y_at >= level)[inside] & (y_below < level)[inside])
            assert np.all((y_at >= level)[t <= -r])  # already reached at -R
            assert np.all((y_at < level)[t > r]) and np.all(t[t > r] <= r.repeat(LEVELS, 1)[t > r] + 2)


def test_numpy_tabulation_equals_the_jax_tables(policies):
    """``lookup.thresholds`` (what a Ray actor process computes from the broadcast ``Int8Model``)
    equals ``quant_tables.tables`` (JAX) entry for entry, a level no accumulator reaches being ``R_j + 1``
    in both; and ``quant_tables.tables``' estimate-first search equals bisection of every entry."""
    profile, activation, cases = policies
    bisect = compile_cache.jit(lambda qp, i: quant_tables._thresholds(qp, i, estimate=False), static_argnums=1)
    for qp, tables, _, _ in cases:
        got = lookup.thresholds(tables.model, activation, profile)
        assert len(got) == len(tables.thresholds)
        for i, (mine, theirs) in enumerate(zip(got, tables.thresholds)):
            assert mine.dtype == np.int32 and np.array_equal(mine, np.asarray(theirs))
            assert np.array_equal(np.asarray(bisect(qp, i)), np.asarray(theirs))


def test_int8_network_search_fallback_equals_lookup(policies, monkeypatch):
    profile, activation, cases = policies
    _, tables, norm, obs = cases[0]
    lut = reference.Int8Network(tables, activation, norm, CLIP_OBS)
    monkeypatch.setattr(lookup.LayerLookup, "MAX_CELLS", 0)
    search = reference.Int8Network(tables, activation, norm, CLIP_OBS)
    assert [h.mode for h in search._layers] == ["search"] * 3 and "lut" in [h.mode for h in lut._layers]
    np.testing.assert_array_equal(search.forward(obs), lut.forward(obs))
    assert all(np.array_equal(search.forward_one(o), lut.forward(o[None])[0]) for o in obs[:500])


def test_network_forward_is_thread_safe(policies):
    """``forward`` keeps its buffers per thread: actor threads may share one network."""
    profile, activation, cases = policies
    _, tables, norm, obs = cases[0]
    net = reference.Int8Network(tables, activation, norm, CLIP_OBS)
    expected = net.forward(obs)
    errors = []

    def work(k: int) -> None:
        for i in range(200):
            rows = obs[(k * 997 + i * 16) % 4000 :][:16]
            if not np.array_equal(net.forward(rows), expected[(k * 997 + i * 16) % 4000 :][:16]):
                errors.append((k, i))
            row = (k * 997 + i) % 4000  # and one row at a time (its own batch-1 buffers)
            if not np.array_equal(net.forward(obs[row : row + 1]), expected[row : row + 1]):
                errors.append((k, i, "row"))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
def test_fp32_network_matches_the_jax_mlp(activation):
    rng = np.random.default_rng(1)
    stats = normalize.RunningStats(mean=jnp.asarray(rng.normal(size=6), jnp.float32), var=jnp.asarray(rng.random(6) * 3 + 0.1, jnp.float32), count=jnp.float32(100))
    norm = jax.device_get(normalize.normalizer(stats))
    obs = (rng.normal(size=(4096, 6)) * np.array([1, 2, 4, 8, 16, 32]) + 0.5).astype(np.float32)
    layers = [(rng.normal(size=(a, b)).astype(np.float32) / np.sqrt(a), rng.normal(size=b).astype(np.float32)) for a, b in [(6, 32), (32, 3)]]
    from rlaccel.networks import ACTIVATIONS

    def jax_mlp(x):
        x = normalize.apply(norm, x, CLIP_OBS)
        return ACTIVATIONS[activation](x @ layers[0][0] + layers[0][1]) @ layers[1][0] + layers[1][1]

    net = reference.Fp32Network(layers, activation, norm, CLIP_OBS)
    expected = np.asarray(compile_cache.jit(jax_mlp)(obs))
    np.testing.assert_allclose(net.forward(obs), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.stack([net.forward_one(o).copy() for o in obs[:100]]), expected[:100], rtol=1e-5, atol=1e-5)


def test_numpy_normalizer_is_the_jax_one(policies):
    _, _, cases = policies
    _, _, norm, obs = cases[0]
    got = reference.normalize(norm, obs, CLIP_OBS)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.asarray(compile_cache.jit(normalize.apply, static_argnums=2)(norm, obs, CLIP_OBS)))


# --------------------------------------------------------------------------------------------
# The numpy actors against the JAX agents.


def _agent(overrides: list[str], config_file: Path | None = None):
    """``(config, agent, state)``: a fresh agent state with a non-trivial observation normaliser
    (PPO), calibrated by ``agent.calibrate`` on wide observations; and those observations."""
    config = config_lib.load(config_file, overrides) if config_file else config_lib.load(overrides=overrides)
    env = envs.make(config.env, auto_reset=True)
    agent = agent_lib.make(config, env).agent
    state = compile_cache.jit(agent.init)(jax.random.PRNGKey(2))
    rng = np.random.default_rng(3)
    obs_dim = env.observation_space.shape[0]
    obs = (rng.standard_normal((2048, obs_dim)) * 2.0 + 0.5).astype(np.float32)
    if hasattr(state, "obs_stats"):
        stats = normalize.RunningStats(mean=jnp.asarray(rng.standard_normal(obs_dim), jnp.float32), var=jnp.asarray(rng.random(obs_dim) * 3 + 0.1, jnp.float32), count=jnp.float32(512))
        state = state.replace(obs_stats=stats)
    state = compile_cache.jit(agent.calibrate)(state, jnp.asarray(obs[:1024]))
    assert int(state.calib.rollouts) == 1
    return config, agent, state, obs


def _actor_params(agent, state, precision: str):
    """``(JAX actor params, the numpy actors' copy: int8 policy as Int8Tables)``."""
    params = compile_cache.jit(agent.actor_params, static_argnums=1)(state, precision)
    return params, jax.device_get(compile_cache.jit(quant_tables.with_tables)(params))


@pytest.mark.slow
@pytest.mark.parametrize(
    "env_id, precision, profile",
    [("CartPole-v1", "int8", "tflite"), ("CartPole-v1", "fp32", "tflite"), ("Pendulum-v1", "int8", "pow2"), ("Pendulum-v1", "fp32", "tflite")],
)
def test_ppo_actor_matches_the_jax_actor(env_id, precision, profile):
    """(c) Heads (int8: exactly equal), actions and behaviour log-probabilities."""
    overrides = [f"env={env_id}", "ppo.normalize=true", "ppo.policy_kwargs.log_std_init=-0.5", f"placement.actor.int8_profile={profile}"]
    config, agent, state, obs = _agent(overrides)
    params, host_params = _actor_params(agent, state, precision)
    assert isinstance(host_params.policy, reference.Int8Tables if precision == "int8" else dict)
    assert host_params.obs_norm is not None and isinstance(host_params.obs_norm, reference.Normalizer)
    actor = PPOActor(host_params, 7, config.ppo)
    assert actor.version == 7 and actor.discrete == (env_id == "CartPole-v1")
    head = np.asarray(compile_cache.jit(agent.head)(params, obs))
    if precision == "int8":
        np.testing.assert_array_equal(actor.head(obs), head)
    else:
        np.testing.assert_allclose(actor.head(obs), head, rtol=1e-5, atol=1e-5)

    noise = actor.noise(np.random.default_rng(0), 3, obs.shape[0])
    assert noise.shape == (3, obs.shape[0], actor.action_dim) and noise.dtype == np.float32
    action, extras = actor.act(obs, noise[1])
    assert type(extras) is ActorExtras and extras.log_prob.shape == (obs.shape[0],) and extras.log_prob.dtype == np.float32
    jax_action, jax_extras = compile_cache.jit(agent.act)(params, obs, noise[1])
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


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_dqn_actor_greedy_and_uniform(precision):
    """(d) Epsilon 0: the argmax of the JAX head; epsilon 1: the noise's uniform random actions."""
    config, agent, state, obs = _agent([], REPO / "configs" / "dqn_cartpole.yaml")
    params, host_params = _actor_params(agent, state, precision)
    head = np.asarray(compile_cache.jit(agent.head)(params, obs))
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
    jax_action, _ = compile_cache.jit(agent.act)(params._replace(epsilon=jnp.float32(0.0)), obs, _jax_noise(noise[0]))
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


def test_elu_with_int8_actors_is_a_config_error():
    with pytest.raises(config_lib.ConfigError, match=r"ppo\.policy_kwargs\.activation_fn"):
        config_lib.load(overrides=["ppo.policy_kwargs.activation_fn=elu"])
    config_lib.load(overrides=["ppo.policy_kwargs.activation_fn=elu", "placement.actor.precision=fp32"])  # fp32 actors: fine

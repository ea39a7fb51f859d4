"""Host actors (``rlaccel.host``) for ``gym:`` envs.

* The numpy actor policy against the agent's own JAX functions: the int8 forward against
  ``rlaccel.quant.apply`` (same integer codes), fp32 heads and behaviour log-probabilities
  against ``agents.ppo`` (the learner recomputes them with these formulas).
* ``gym:`` ids: spaces from gymnasium, a misspelt id exits 2 with a suggestion.
* End to end: PPO through host actor threads learns gymnasium's own CartPole-v1 (>= 475);
  an env that raises inside ``step`` stops the run with exit code 1, a message naming the
  env id and the actor, a checkpoint, and every thread joined; SIGINT exits 130 with a
  checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_helpers import run_main, set_args
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from rlaccel.agents.ppo import networks as nets_lib

from rlaccel import agent as agent_lib, checkpoint, envs, host, quant
from rlaccel import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAILING_ID = "rlaccel-test/FailingCartPole-v0"
FAIL_AT_STEP = 40


class FailingCartPole(CartPoleEnv):
    """gymnasium's CartPole, whose ``step`` raises on its 40th call."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def step(self, action):
        self.calls += 1
        if self.calls >= FAIL_AT_STEP:
            raise RuntimeError("simulator exploded")
        return super().step(action)


gymnasium.register(FAILING_ID, entry_point=FailingCartPole, max_episode_steps=500)

GYM_CARTPOLE = os.path.join(REPO, "configs", "ppo_gym_cartpole.yaml")
def ppo_agent(env_id: str, precision: str = "int8", activation: str = "tanh"):
    cfg = config_lib.load(overrides=[f"env={env_id}", f"ppo.policy_kwargs.activation_fn={activation}", "ppo.normalize=true"])
    env = envs.make(env_id)
    return cfg, agent_lib.make(cfg, env).agent, env


def calibrated_state(agent, cfg, obs):
    """Fresh PPO state with observation statistics and int8 ranges from ``obs [N, obs_dim]``."""
    from rlaccel import normalize

    state = agent.init(jax.random.PRNGKey(3))
    stats = normalize.update(state.obs_stats, jnp.asarray(obs))
    seen = normalize.normalize(stats, jnp.asarray(obs))
    calib = quant.update(state.calib, quant.dense_layers(state.params["policy"]), seen, cfg.ppo.policy_kwargs.activation)
    return state.replace(obs_stats=stats, calib=calib)


def numpy_policy(agent, cfg, state, precision):
    norm = cfg.ppo.normalization
    params = jax.device_get(agent.actor_params(state, precision))
    return host.NumpyPolicy(params, 0, cfg.ppo.policy_kwargs.activation, norm.norm_obs, norm.clip_obs)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_numpy_int8_forward_matches_quant_apply(activation):
    cfg, agent, _ = ppo_agent("Pendulum-v1", activation=activation)
    rng = np.random.default_rng(0)
    obs = (rng.standard_normal((2048, 3)) * [0.7, 0.7, 3.0]).astype(np.float32)
    state = calibrated_state(agent, cfg, obs)
    qp = agent.actor_params(state, "int8").policy
    x = np.asarray(jnp.clip((obs - state.obs_stats.mean) / jnp.sqrt(state.obs_stats.var + 1e-8), -10, 10))
    want = np.asarray(quant.apply(qp, jnp.asarray(x)))
    got = host.int8_forward(jax.device_get(qp), x)
    assert got.dtype == np.float32 and got.shape == want.shape == (2048, 1)
    # Same integer codes: outputs are equal except where XLA's and numpy's tanh differ by an
    # ulp right at a rounding boundary and one hidden code moves by 1.
    exact = np.mean(got == want)
    assert exact >= 0.99, exact
    assert np.max(np.abs(got - want)) <= 0.02 * np.max(np.abs(want))


def test_numpy_policy_heads_and_log_probs_match_the_agent():
    for env_id in ("CartPole-v1", "Pendulum-v1"):
        cfg, agent, env = ppo_agent(env_id)
        rng = np.random.default_rng(1)
        obs = rng.standard_normal((256, env.obs_dim)).astype(np.float32)
        state = calibrated_state(agent, cfg, obs)
        for precision in ("fp32", "int8"):
            pol = numpy_policy(agent, cfg, state, precision)
            params = agent.actor_params(state, precision)
            want_head = np.asarray(agent.head(params, jnp.asarray(obs)))
            np.testing.assert_allclose(pol.head(obs), want_head, rtol=1e-4, atol=1e-4 if precision == "fp32" else 2e-3)
            a_dim = env.action_dim if not env.is_discrete else env.num_actions
            noise = pol.noise(rng, 1, 256, a_dim)[0]
            action, logp = pol.act(obs, noise)
            want_logp = np.asarray(nets_lib.log_prob(jnp.asarray(pol.head(obs)), params.log_std, jnp.asarray(action)))
            np.testing.assert_allclose(logp, want_logp, rtol=1e-4, atol=1e-4)
            if env.is_discrete:
                assert action.shape == (256,) and set(np.unique(action)) <= {0, 1}
            else:
                assert action.shape == (256, 1)


def test_jax_policy_acts_like_the_numpy_one():
    """``actors.policy: jax`` (the compiled ``act`` on the actor device) samples the same
    actions from the same noise as the numpy policy."""
    cfg, agent, _ = ppo_agent("CartPole-v1")
    obs = np.random.default_rng(2).standard_normal((64, 4)).astype(np.float32)
    state = calibrated_state(agent, cfg, obs)
    params = agent.actor_params(state, "int8")
    pol = numpy_policy(agent, cfg, state, "int8")
    jpol = host.JaxPolicy(params, 0, jax.jit(agent.act), jax.devices()[0], discrete=True)
    noise = pol.noise(np.random.default_rng(3), 1, 64, 2)[0]
    (a_np, logp_np), (a_jax, logp_jax) = pol.act(obs, noise), jpol.act(obs, noise)
    assert np.mean(a_np == a_jax) >= 0.98
    same = a_np == a_jax
    np.testing.assert_allclose(logp_np[same], logp_jax[same], rtol=1e-3, atol=1e-3)


def test_gym_ids():
    env = envs.make("gym:HalfCheetah-v5")
    assert env.kind == "gym" and env.obs_dim == 17 and env.action_dim == 6 and env.max_episode_steps == 1000
    cart = envs.make("gym:CartPole-v1")
    assert cart.is_discrete and cart.num_actions == 2
    venv = cart.make_vector(3, seed=0)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (3, 4)
    venv.close()
    with pytest.raises(envs.UnknownEnvError, match="did you mean: gym:CartPole-v1"):
        envs.make("gym:CartPol-v1")


def test_misspelt_gym_id_exits_2(tmp_path, cartpole_yaml):
    rc, _, err = run_main(["--config", str(cartpole_yaml), "--set", "env=gym:CartPol-v1", "--run-dir", str(tmp_path / "run")])
    assert rc == 2 and err.count("\n") == 1 and "gym:CartPole-v1" in err
    assert not (tmp_path / "run").exists()
    rc, _, err = run_main(["--config", str(cartpole_yaml), *set_args(["env=gym:CartPole-v1", "actors.num_actors=3"]), "--run-dir", str(tmp_path / "run")])
    assert rc == 2 and "actors.num_actors" in err


def actor_threads():
    return [t for t in threading.enumerate() if t.name.startswith("actor-")]


def test_host_actors_learn_gym_cartpole(tmp_path):
    """The must-reach figure: >= 475 within 500k steps (here within the config's 150k)."""
    run_dir = tmp_path / "run"
    rc, _, err = run_main(["--config", GYM_CARTPOLE, "--run-dir", str(run_dir), "--no-progress"])
    assert rc == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["env_steps"] >= 149_000
    assert summary["final_return"] >= 475, summary["final_return"]
    assert 0 <= summary["actor/policy_lag"] <= 3
    for key in ("actor/decision_latency_us_p50", "actor/decision_latency_us_p99", "time/actor_sps", "time/learner_sps", "actor/queue_fill"):
        assert summary[key] is not None and summary[key] >= 0, key
    assert not actor_threads()


def test_failing_env_stops_cleanly_with_exit_1(tmp_path):
    run_dir = tmp_path / "run"
    start = time.perf_counter()
    rc, _, err = run_main(
        ["--config", GYM_CARTPOLE, *set_args([f"env=gym:{FAILING_ID}", "actors.num_actors=2", "ppo.n_steps=8", "ppo.batch_size=64", "total_timesteps=100000"]), "--run-dir", str(run_dir), "--no-progress"]
    )
    assert rc == 1
    line = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and f"gym:{FAILING_ID}" in line[0] and "actor " in line[0] and "simulator exploded" in line[0]
    # The learner got through a few updates (every env fails on its 40th step, 8 steps per
    # batch): its last good state is checkpointed.
    ckpt = checkpoint.latest(run_dir / "checkpoints")
    assert ckpt is not None and checkpoint.read_meta(ckpt)["update"] >= 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["exit_code"] == 1 and "simulator exploded" in summary["error"]
    assert not actor_threads()
    assert time.perf_counter() - start < 60


def test_sigint_exits_130_with_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "rlaccel", "train", "--config", GYM_CARTPOLE, "--set", "total_timesteps=5000000", "--run-dir", str(run_dir), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        deadline = time.time() + 60
        while not list(run_dir.glob("events.out.tfevents.*")) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # a few updates
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    ckpt = checkpoint.latest(run_dir / "checkpoints")
    assert ckpt is not None
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["stopped_by"] == "SIGINT"
    assert checkpoint.read_meta(ckpt)["update"] == summary["updates"] >= 1


def test_resume_continues_the_learner_state(tmp_path):
    """Host mode resumes without losing learner state: parameters, Adam's step count and the
    observation statistics carry on from the checkpoint. Not bitwise exact, by design: the
    actor threads race the learner (which batch arrives under which parameter version
    depends on thread timing) and gymnasium env states are not checkpointed, so the envs
    start fresh episodes."""
    from rlaccel import api

    overrides = ["actors.num_actors=2", "ppo.n_steps=8", "ppo.batch_size=64", "ppo.n_epochs=1", "ppo.normalize=true", "logging.log_interval=1", "logging.progress=false"]
    config = config_lib.load(GYM_CARTPOLE, overrides)
    run_dir = tmp_path / "run"
    first = api.train(config, run_dir=run_dir, stop_at=3).summary
    assert first["status"] == "stopped" and first["updates"] == 3
    template = jax.jit(host.HostRunner(config).init)(jax.random.PRNGKey(0))
    at_3, _ = checkpoint.restore(checkpoint.latest(run_dir / "checkpoints"), template)
    second = api.train(config, run_dir=run_dir, resume=True, stop_at=5).summary
    assert second["updates"] == 5
    at_5, _ = checkpoint.restore(checkpoint.latest(run_dir / "checkpoints"), template)
    samples = config.ppo.n_envs * config.ppo.n_steps
    # The observation statistics kept counting from update 3 (fresh ones would hold 2 updates).
    np.testing.assert_allclose(float(at_5.agent.obs_stats.count), float(at_3.agent.obs_stats.count) + 2 * samples, rtol=1e-6)
    assert float(at_3.agent.obs_stats.count) == pytest.approx(3 * samples, rel=1e-6)
    # Adam's step count (in the flattened optimiser state) kept counting too.
    counts = lambda s: [int(x) for x in jax.tree.leaves(s.agent.opt_state) if jnp.ndim(x) == 0 and jnp.issubdtype(x.dtype, jnp.integer)]  # noqa: E731
    steps_per_update = config.ppo.n_epochs * (samples // config.ppo.batch_size)
    assert counts(at_3) == [3 * steps_per_update] * len(counts(at_3))
    assert counts(at_5) == [5 * steps_per_update] * len(counts(at_5))
    assert not actor_threads()

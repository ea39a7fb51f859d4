"""Host actors (``rlaccel.sources.host``) for ``gym:`` envs, every registered algorithm.

* The numpy actor against the compiled JAX ``act`` (``actors.policy: jax``): same actions,
  same behaviour log-probabilities (the numpy maths itself: ``tests/test_reference.py``).
* ``gym:`` ids: spaces from gymnasium, a misspelt id exits 2 with a suggestion.
* End to end: PPO through host actor threads learns gymnasium's own CartPole-v1 (>= 475);
  an env that raises inside ``step`` stops the run with exit code 1, a message naming the
  env id and the actor, a checkpoint, and every thread joined; SIGINT exits 130 with a
  checkpoint. DQN through host actors: its greedy int8 policy learns gymnasium's CartPole.
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
from ray_envs import FailingCartPole  # one definition, also imported by Ray actor processes

from rlaccel import checkpoint, compile_cache, envs, placement
from rlaccel import config as config_lib
from rlaccel.sources.host import HostSource, JaxActor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAILING_ID = "rlaccel-test/FailingCartPole-v0"


gymnasium.register(FAILING_ID, entry_point=FailingCartPole, max_episode_steps=500)

GYM_CARTPOLE = os.path.join(REPO, "configs", "ppo_gym_cartpole.yaml")
DQN_GYM_CARTPOLE = os.path.join(REPO, "configs", "dqn_gym_cartpole.yaml")
@pytest.mark.slow
def test_jax_actor_acts_like_the_numpy_one():
    """``actors.policy: jax`` (the compiled ``act`` on the actor device) and the numpy int8
    actor pick the same actions with the same behaviour log-probabilities for the same noise
    (the numpy actor's int8 head is bit-exact: ``tests/test_reference.py``)."""
    cfg = config_lib.load(GYM_CARTPOLE, ["ppo.normalize=true"])
    source = HostSource(cfg, placement.resolve(cfg.placement))
    state = source.initial_state(jax.random.PRNGKey(3))
    obs = np.random.default_rng(2).standard_normal((64, 4)).astype(np.float32)
    state = state.replace(agent=source.agent.calibrate(state.agent, jnp.asarray(obs)))
    numpy_actor = source.make_actor(source.host_params(source._params(state.agent)), 0)
    jax_actor = JaxActor(source.agent.actor_params(state.agent, "int8"), 0, compile_cache.jit(source.agent.act), None, jax.devices()[0])
    noise = numpy_actor.noise(np.random.default_rng(3), 1, 64)[0]
    (a_np, x_np), (a_jax, x_jax) = numpy_actor.act(obs, noise), jax_actor.act(obs, noise)
    np.testing.assert_array_equal(a_np, a_jax)
    np.testing.assert_allclose(x_np.log_prob, x_jax.log_prob, rtol=1e-5, atol=1e-5)


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


class _ReplayActor:
    """A numpy actor whose actions come from a seeded generator (what EnvStepper needs of one)."""

    version = 0

    def __init__(self, space: gymnasium.Space, seed: int):
        self.space, self.rng = space, np.random.default_rng(seed)

    def noise(self, rng, num_steps, num_envs):
        return [None] * num_steps

    def act(self, obs, noise):
        b = obs.shape[0]
        if isinstance(self.space, gymnasium.spaces.Discrete):
            return self.rng.integers(self.space.n, size=b).astype(np.int32), ()
        return self.rng.normal(0, 1.5, (b, *self.space.shape)).astype(np.float32), ()  # beyond the bounds: clipped


@pytest.mark.parametrize("gym_id", ["CartPole-v1", "Pendulum-v1"])
def test_env_stepper_steps_as_gymnasiums_same_step_vector_env(gym_id):
    """The host actors' stepping (envs in turn, reset in the ending step) gives what gymnasium's
    ``SyncVectorEnv`` gives in ``SAME_STEP`` mode with the same seeds and actions: observations,
    true last observations, rewards, terminations and truncations, over episodes that end by
    termination (CartPole) and by the time limit (Pendulum, 200 steps)."""
    from rlaccel.sources.host.stepping import EnvStepper, gym_envs

    env, b, T = envs.make(f"gym:{gym_id}"), 3, 450
    stepper = EnvStepper(gym_envs(env.gym_id, env.kwargs, b), env.action_space, env.obs_dim, seed=7)
    got = stepper.collect(_ReplayActor(env.action_space, 1), np.random.default_rng(0), T)
    stepper.close()
    venv, actor = env.make_vector(b, seed=7), _ReplayActor(env.action_space, 1)
    obs, _ = venv.reset(seed=7)
    box = isinstance(env.action_space, gymnasium.spaces.Box)
    ep_ret, ep_len = np.zeros(b, np.float32), np.zeros(b, np.int32)
    for t in range(T):
        np.testing.assert_array_equal(got.obs[t], obs.astype(np.float32))
        a, _ = actor.act(obs.astype(np.float32), None)
        np.testing.assert_array_equal(got.action[t], a)
        obs, rew, term, trunc, info = venv.step(np.clip(a, env.action_space.low, env.action_space.high) if box else a)
        final = obs.copy()
        for i in np.flatnonzero(info.get("_final_obs", [])):
            final[i] = info["final_obs"][i]
        np.testing.assert_array_equal(got.next_obs[t], final.astype(np.float32))
        np.testing.assert_array_equal(got.reward[t], rew.astype(np.float32))
        np.testing.assert_array_equal(got.terminated[t], term)
        np.testing.assert_array_equal(got.truncated[t], trunc)
        ep_ret, ep_len = ep_ret + rew.astype(np.float32), ep_len + 1  # the running episode figures, step by step
        np.testing.assert_array_equal(got.episode_return[t], ep_ret)
        np.testing.assert_array_equal(got.episode_length[t], ep_len)
        ep_ret, ep_len = np.where(term | trunc, np.float32(0), ep_ret), np.where(term | trunc, 0, ep_len)
    venv.close()
    assert got.terminated.any() if gym_id == "CartPole-v1" else got.truncated.sum() == 2 * b


class _Stepwise:
    """A numpy actor seen through ``noise`` and ``act`` alone (no ``rollout`` of its own)."""

    def __init__(self, actor):
        self.version, self.noise, self.act = actor.version, actor.noise, actor.act


@pytest.mark.slow
@pytest.mark.parametrize("gym_id, policy", [("CartPole-v1", "c"), ("Pendulum-v1", "c"), ("Pendulum-v1", "numpy")])
def test_a_ppo_batch_is_step_by_step_acting_bit_for_bit(gym_id, policy):
    """PPO's rollout (heads and actions in the batch's buffers, log-probabilities once for the
    batch) collects what ``act`` called step by step collects: same observations, actions,
    behaviour log-probabilities and episode figures, to the bit; Gumbel-max and Gaussian."""
    from rlaccel.sources.host.stepping import EnvStepper, gym_envs

    cfg = config_lib.load(GYM_CARTPOLE, ["ppo.normalize=true", f"env=gym:{gym_id}", f"actors.policy={policy}", "ppo.policy_kwargs.log_std_init=0.5"])
    source = HostSource(cfg, placement.resolve(cfg.placement))
    state = source.initial_state(jax.random.PRNGKey(3))
    obs = np.random.default_rng(2).standard_normal((64, source.env.obs_dim)).astype(np.float32)
    state = state.replace(agent=source.agent.calibrate(state.agent, jnp.asarray(obs)))
    actor = source.make_actor(source.host_params(source._params(state.agent)), 0)
    got = []
    for a in (actor, _Stepwise(actor)):
        stepper = EnvStepper(gym_envs(source.env.gym_id, source.env.kwargs, 2), source.env.action_space, source.env.obs_dim, seed=5)
        got.append([stepper.collect(a, np.random.default_rng(1), 300) for _ in range(2)])  # episodes carry over between batches
        stepper.close()
    for batched, stepwise in zip(*got):
        for name in ("obs", "action", "reward", "terminated", "truncated", "next_obs", "episode_return", "episode_length"):
            np.testing.assert_array_equal(getattr(batched, name), getattr(stepwise, name), err_msg=name)
        np.testing.assert_array_equal(batched.extras.log_prob, stepwise.extras.log_prob)
        assert batched.extras.log_prob.shape == (300, 2) and np.isfinite(batched.extras.log_prob).all()


def test_misspelt_gym_id_exits_2(tmp_path, cartpole_yaml):
    rc, _, err = run_main(["--config", str(cartpole_yaml), "--set", "env=gym:CartPol-v1", "--run-dir", str(tmp_path / "run")])
    assert rc == 2 and err.count("\n") == 1 and "gym:CartPole-v1" in err
    assert not (tmp_path / "run").exists()
    rc, _, err = run_main(["--config", str(cartpole_yaml), *set_args(["env=gym:CartPole-v1", "actors.num_actors=3"]), "--run-dir", str(tmp_path / "run")])
    assert rc == 2 and "actors.num_actors" in err


def actor_threads():
    return [t for t in threading.enumerate() if t.name.startswith("actor-")]


@pytest.mark.slow
@pytest.mark.optimized  # learns: XLA's default effort, as users run
def test_host_actors_learn_gym_cartpole(tmp_path):
    """The must-reach figure: >= 475 within 500k steps (here within the config's 150k), judged
    on the deployed int8 policy's deterministic evaluation at the end (``eval_return``, 10
    episodes on separate envs, as the RL Zoo judges).

    The config caps the actor at one update ahead of the learner (``actors.max_policy_lag: 1``);
    uncapped it ran 0-3 ahead as the OS scheduled it, and this test failed in 2 of 13 runs
    (greedy evaluations of 352.7 and 411.8, the second in a full suite). The run is still not
    bit-reproducible (whether the actor is 0 or 1 update ahead depends on the schedule), so its
    training-time return (a stochastic policy, the last logged episodes) must be >= 400, not 500.
    """
    run_dir = tmp_path / "run"
    rc, _, err = run_main(["--config", GYM_CARTPOLE, "--run-dir", str(run_dir), "--no-progress"])
    assert rc == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["env_steps"] >= 149_000
    assert summary["eval_return"] >= 475, (summary["eval_return"], summary["final_return"])
    assert summary["final_return"] >= 400, summary["final_return"]
    assert 0 <= summary["actor/policy_lag"] <= 1
    for key in ("actor/decision_latency_us_p50", "actor/decision_latency_us_p99", "time/actor_sps", "time/learner_sps", "actor/queue_fill"):
        assert summary[key] is not None and summary[key] >= 0, key
    assert not actor_threads()


@pytest.mark.slow
def test_failing_env_stops_cleanly_with_exit_1(tmp_path):
    run_dir = tmp_path / "run"
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


@pytest.mark.slow
def test_sigint_exits_130_with_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    # A checkpoint after every update: the first one is the event that says training runs.
    overrides = set_args(["total_timesteps=5000000", "logging.log_interval=1", "logging.checkpoint_interval=1"])
    cmd = [sys.executable, "-m", "rlaccel", "train", "--config", GYM_CARTPOLE, *overrides, "--run-dir", str(run_dir), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        while checkpoint.latest(run_dir / "checkpoints") is None:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
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


@pytest.mark.slow
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
    template = HostSource(config, placement.resolve(config.placement)).initial_state(jax.random.PRNGKey(0))
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


@pytest.mark.slow
@pytest.mark.optimized  # learns: XLA's default effort, as users run
def test_dqn_on_host_actors_learns_gym_cartpole_greedy_int8(tmp_path):
    """The must-reach figure: DQN through host actors, its greedy int8 policy >= 475 on 100
    episodes of gymnasium's CartPole-v1 within 200k env steps (the config trains 50k).

    The policy judged is the one the run keeps to deploy: ``best/``, its best evaluation (every
    10k steps, 10 episodes; SB3's ``EvalCallback`` best model). DQN's final greedy policy on
    CartPole is a lottery: seeds 0-5 ended at 245, 500, 431, 484, 450 and 500 on these 100
    episodes (500, 500, 490, 500, 500, 170 with the PRNG streams before the rollout drew its
    keys in one split); ``best/`` of seeds 0, 2 and 4: 485, 500, 452.
    """
    import rlaccel
    from rlaccel.deploy import load_policy
    from rlaccel.deploy.evaluate import episode_returns
    from rlaccel.deploy.export import export

    run = rlaccel.train(DQN_GYM_CARTPOLE, run_dir=tmp_path / "run", progress=False)
    assert run.summary["status"] == "completed" and run.summary["env_steps"] <= 200_000
    assert run.summary["placement"].startswith("host actors") and run.summary["config"]["algo"] == "dqn"
    assert run.summary["actor/policy_lag"] == 0  # actors.max_policy_lag: 0, a reproducible run
    best = export(run.run_dir, tmp_path / "best.rlpolicy", checkpoint_path=run.summary["eval_best_checkpoint"])
    policy = load_policy(best, "numpy-int8")  # greedy: argmax of the int8 Q-values
    returns = episode_returns(policy, "CartPole-v1", 100, seed=1000)
    assert returns.mean() >= 475, (returns.mean(), returns.min())
    assert not actor_threads()

"""End-to-end learning: agents reach a return threshold, several seeds vmapped in one compile;
then the trained int8 policies on runtimes nobody here wrote.

Thresholds are the issue's: CartPole-v1 >= 475 within 500k steps and Pendulum-v1 >= -250
within the 400k steps its config sets, 3 of 3 seeds, with int8 actors (both profiles for
CartPole) and with fp32 actors. Each training is done once per module (``train_seeds``
caches it); seed 0 of the int8 runs is then exported and checked on gymnasium's own envs:

* TFLite Micro's interpreter on the ``.tflite``: heads bit-identical with the numpy reference
  (``numpy-int8``) on >= 10k observations of each policy's own greedy trajectories.
* LiteRT, per kernel set (they requantise differently by design): >= 99 % action agreement,
  returns within 2 %.
* onnxruntime and OpenVINO's CPU plugin (``INFERENCE_PRECISION_HINT=f32``) on the QDQ
  ``onnx-int8`` model: >= 99.5 % action agreement on those trajectories (continuous: actions
  within 1 % of the action range), mean return over 100 episodes within 2 % of numpy-int8's.
  QDQ requantises in float and rounds half to even, so this is agreement, not identity.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import gymnasium as gym
import jax
import numpy as np
import pytest
from rlaccel.agents.ppo import train as ppo_train

from rlaccel import checkpoint, envs, eval_episodes, rollout
from rlaccel import config as config_lib
from rlaccel.deploy import load_policy
from rlaccel.deploy.export import export
from rlaccel.sources.device import FusedSource, quant_metrics

SEEDS = 3
DQN_SEEDS = 6  # test_dqn_cartpole_eval_return judges a rate
_TRAINED: dict = {}  # (path, precision, profile) -> (config, states, final returns, runner)


def train_seeds(path: str, precision: str, profile: str = "tflite") -> tuple[object, np.ndarray, FusedSource]:
    """Train ``SEEDS`` agents in one compiled, vmapped program (once per module); returns final
    states and returns."""
    key = (path, precision, profile)
    if key not in _TRAINED:
        _TRAINED[key] = _train_seeds(path, precision, profile)
    _, states, final, runner = _TRAINED[key]
    return states, final, runner


def _train_seeds(path: str, precision: str, profile: str) -> tuple:
    config = config_lib.load(path, [f"placement.actor.precision={precision}", f"placement.actor.int8_profile={profile}"])
    cfg = config.ppo
    env = envs.make(config.env, auto_reset=True)
    n = ppo_train.num_updates(cfg, config.total_timesteps)
    agent = ppo_train.make_agent(cfg, env, n, calibrate=precision == "int8", profile=profile)
    runner = FusedSource(agent, env, cfg.n_envs, cfg.n_steps, precision=precision)
    keys = jax.random.split(jax.random.PRNGKey(config.seed), SEEDS)
    states, metrics = jax.jit(jax.vmap(functools.partial(runner.train, num_updates=n)))(keys)
    return config, states, np.asarray(metrics["rollout/ep_rew_mean"][:, -1]), runner


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
def test_ppo_pendulum_int8_actors_within_5_percent_of_fp32() -> None:
    """Same budget, same seeds: int8 actors (tflite profile) lose under 5 % of the fp32 actors'
    mean return (the runs above, cached). pow2 measured -1.9 % (not run here: 27 s)."""
    _, int8, _ = train_seeds("configs/ppo_pendulum.yaml", "int8")
    _, fp32, _ = train_seeds("configs/ppo_pendulum.yaml", "fp32")
    assert int8.mean() >= fp32.mean() - 0.05 * abs(fp32.mean()), (int8, fp32)


@pytest.mark.slow
def test_dqn_cartpole_eval_return() -> None:
    """DQN, PureJaxRL's configuration with a 50k buffer, 500k steps, ``DQN_SEEDS`` seeds
    vmapped, int8 actors, evaluated as ``rlaccel train`` evaluates it
    (``configs/dqn_cartpole.yaml``'s ``eval:``: every 20k env steps, 10 greedy episodes of the
    int8 policy and of its fp32 source, the program of ``rlaccel.eval_episodes`` vmapped over
    the seeds), judged like the RL Zoo's benchmark.

    DQN's greedy policy on CartPole swings between evaluations, and which seed lands where
    depends on the CPU's float rounding (AVX2 and AVX-512 sum the same matmuls in different
    orders, and the runs part ways). So the claim is over 6 seeds: the best int8 evaluation
    (what ``best/`` keeps) reaches 475 on 5, the last ones (``eval_return``) average 450 or
    more, and the last is within 10 % of the same network's fp32 return on 5. Measured on an
    AVX2 EPYC: with the 10k replay buffer PureJaxRL uses, last 394 / 294 / 500 / 284 / 500 /
    438 (mean 402); with the config's 50k, 457 / 500 / 500 / 500 / 464 / 440 (mean 477).
    The training-time ``rollout/ep_rew_mean`` includes 5 % random actions.
    """
    _, _, _, history = train_dqn()
    last, best = history[-1], np.max([h["int8"] for h in history], axis=0)
    evals = np.asarray([h["int8"] for h in history]).T  # [seeds, evaluations]
    print(f"DQN eval_return (int8) per seed {last['int8']}, fp32 {last['fp32']}, best {best}")
    assert np.sum(best >= 475) >= DQN_SEEDS - 1, evals
    assert last["int8"].mean() >= 450, (last, evals)
    assert np.sum(last["int8"] >= 0.9 * last["fp32"]) >= DQN_SEEDS - 1, last


def train_dqn() -> tuple:
    """DQN on CartPole, PureJaxRL's configuration, int8 actors, ``DQN_SEEDS`` seeds vmapped (once per
    module), in chunks of ``eval.freq`` env steps with the config's evaluation after each:
    ``(config, states, runner, history)``, ``history[i][precision]`` = mean eval return ``[DQN_SEEDS]``."""
    if "dqn" not in _TRAINED:
        from rlaccel.agents.dqn import train as dqn_train

        config = config_lib.load("configs/dqn_cartpole.yaml")
        cfg = config.dqn
        env = envs.make(config.env, auto_reset=True)
        n = dqn_train.num_updates(cfg, config.total_timesteps)
        agent = dqn_train.make_agent(cfg, env, config.total_timesteps, n, calibrate=True)
        runner = FusedSource(agent, env, cfg.n_envs, cfg.train_freq, precision="int8")
        chunk = config.eval.freq // runner.steps_per_update
        assert config.eval.freq > 0 and n % chunk == 0
        states = jax.jit(jax.vmap(runner.init))(jax.random.split(jax.random.PRNGKey(config.seed), DQN_SEEDS))
        train = jax.jit(jax.vmap(functools.partial(runner.train_chunk, num_updates=chunk)), donate_argnums=0)
        eval_env = envs.make(config.env)  # no auto-reset: one episode per eval env, to its time limit
        program = eval_episodes.make_program(agent, eval_env, episodes=config.eval.episodes, max_steps=eval_env.max_episode_steps, deterministic=config.eval.deterministic)
        program = jax.jit(jax.vmap(program, in_axes=(0, None)))
        history = []
        for update in range(chunk, n + 1, chunk):
            states, _ = train(states)
            results = program(states.agent, eval_episodes.eval_key(config.seed, update))
            history.append({p: np.asarray(r.returns).mean(axis=-1) for p, r in results.items()})
        _TRAINED["dqn"] = (config, states, runner, history)
    return _TRAINED["dqn"]


# --- the trained int8 policies on other runtimes ---------------------------------------------

ENV_IDS = {"cartpole": "CartPole-v1", "pendulum": "Pendulum-v1", "dqn": "CartPole-v1"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """Seed 0 of the int8 (tflite profile) runs above as run directories, exported as
    ``policy.rlpolicy``, ``policy_int8.onnx`` and ``policy_int8.tflite``."""
    runs = {"cartpole": "configs/ppo_cartpole.yaml", "pendulum": "configs/ppo_pendulum.yaml"}
    out = {}
    for name in ("cartpole", "pendulum", "dqn"):
        if name == "dqn":
            config, states, _, _ = train_dqn()
        else:
            train_seeds(runs[name], "int8")
            config, states, _, _ = _TRAINED[(runs[name], "int8", "tflite")]
        state = jax.tree.map(lambda x: x[0], states)
        run_dir = tmp_path_factory.mktemp("exported") / name
        checkpoint.save(run_dir / "checkpoints", int(state.update), state, {"config": config.to_dict()})
        (run_dir / "config.yaml").write_text(json.dumps(config.to_dict()))
        for fmt in ("rlpolicy", "onnx-int8", "tflite"):
            export(run_dir, fmt=fmt)
        out[name] = run_dir
    return out


def _trajectories(policy, env_id: str, min_obs: int, seed: int = 500) -> np.ndarray:
    """``[N >= min_obs, obs_dim]`` observations of ``policy``'s greedy episodes on gymnasium's env."""
    env, obs = gym.make(env_id), []
    while len(obs) < min_obs:
        o, _ = env.reset(seed=seed)
        seed, done = seed + 1, False
        while not done:
            obs.append(o)
            o, _, terminated, truncated, _ = env.step(policy.act(np.asarray(o, np.float32)))
            done = terminated or truncated
    return np.asarray(obs, np.float32)


def _returns(act, env_id: str, episodes: int = 100, seed: int = 10_000) -> np.ndarray:
    """Returns of ``episodes`` greedy episodes (seeds ``seed ..``), all envs stepped as one batch."""
    envs_ = [gym.make(env_id) for _ in range(episodes)]
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs_)]).astype(np.float32)
    alive, total = np.ones(episodes, bool), np.zeros(episodes)
    while alive.any():
        idx = np.flatnonzero(alive)
        actions = act(obs[idx])
        for k, i in enumerate(idx):
            o, r, terminated, truncated, _ = envs_[i].step(actions[k])
            total[i] += r
            obs[i] = o
            alive[i] = not (terminated or truncated)
    return total


def _agreement(got: np.ndarray, expected: np.ndarray, policy) -> float:
    """Equal actions (discrete), or actions within 1 % of the action range (continuous)."""
    if policy.discrete:
        return float(np.mean(got == expected))
    return float(np.mean(np.all(np.abs(got - expected) <= 0.01 * (policy._high - policy._low), axis=-1)))


class _Batch1:
    """A runtime's ``head`` of one observation, as a batch ``act`` (argmax or clipped mean)."""

    def __init__(self, head_one, policy):
        self.head_one, self.policy = head_one, policy

    def act(self, x: np.ndarray) -> np.ndarray:
        h = np.asarray([self.head_one(o) for o in x])
        return h.argmax(1) if self.policy.discrete else np.clip(h, self.policy._low, self.policy._high)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cartpole", "pendulum", "dqn"])
def test_tflite_micro_is_bit_identical_on_the_policys_own_trajectories(exported, name):
    from tflite_micro.python.tflite_micro import runtime as tflm

    ref = load_policy(exported[name] / "policy.rlpolicy", "numpy-int8")
    obs = _trajectories(ref, ENV_IDS[name], 10_000)
    interpreter = tflm.Interpreter.from_file(str(exported[name] / "policy_int8.tflite"))
    heads = []
    for o in obs:
        interpreter.set_input(o[None], 0)
        interpreter.invoke()
        heads.append(interpreter.get_output(0)[0].copy())
    np.testing.assert_array_equal(np.asarray(heads), ref.head(obs))


def x86_vnni() -> bool:
    """Whether this CPU has VNNI (``avx512_vnni`` or ``avx_vnni``, as the bench reads its flags).
    Without it, x86 int8 kernels multiply u8 x s8 with ``vpmaddubsw``, which adds each pair of
    products in 16 bits with saturation (OpenVINO's "Saturation (overflow) issue" page;
    onnxruntime's ``session.x64quantprecision``, which ``ort_options`` sets, avoids it)."""
    from rlaccel.bench.table import cpu_info

    return bool({"avx512_vnni", "avx_vnni"} & set(cpu_info()["cpu_flags"]))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cartpole", "pendulum"])
def test_onnxruntime_and_openvino_agree_and_return_as_the_reference(exported, name):
    """onnxruntime on any CPU; OpenVINO's CPU plugin where the CPU has VNNI (:func:`x86_vnni`):
    without it OpenVINO's int8 matmuls saturate (measured on an AVX2 EPYC: the CartPole heads
    exact on 28 % of states, as onnxruntime's without its precision option) and OpenVINO has no
    option to avoid it (its documented workaround is 7-bit weights)."""
    import openvino as ov

    env_id = ENV_IDS[name]
    ref = load_policy(exported[name] / "policy.rlpolicy", "numpy-int8")
    ort = load_policy(exported[name] / "policy_int8.onnx", "onnx-int8")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(exported[name] / "policy_int8.onnx")), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled.output("head")
    def ov_act(x: np.ndarray) -> np.ndarray:  # one call per batch (the model's batch dimension is dynamic)
        h = np.asarray(compiled([x])[out])
        return h.argmax(1) if ref.discrete else np.clip(h, ref._low, ref._high)

    obs = _trajectories(ref, env_id, 10_000)
    expected, ref_returns = ref.act(obs), _returns(ref.act, env_id)
    assert ref_returns.mean() >= (475 if name == "cartpole" else -250), ref_returns.mean()  # trained policies
    runtimes = {"onnxruntime": ort.act, "openvino": ov_act}
    if not x86_vnni():  # OpenVINO's int8 kernels saturate 16-bit pair sums there; no option selects others
        print(f"openvino {name} without VNNI (not judged): action agreement {_agreement(ov_act(obs), expected, ref):.4f}")
        del runtimes["openvino"]
    for runtime, act in runtimes.items():
        agreement = _agreement(act(obs), expected, ref)
        assert agreement >= 0.995, f"{runtime} {name}: action agreement {agreement:.4f}"
        returns = _returns(act, env_id)
        assert abs(returns.mean() - ref_returns.mean()) <= 0.02 * abs(ref_returns.mean()), f"{runtime} {name}: {returns.mean():.1f} vs numpy-int8 {ref_returns.mean():.1f}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cartpole", "pendulum"])
def test_litert_kernel_sets_agree_and_return_as_the_reference(exported, name):
    """LiteRT's kernel sets requantise differently from TFLite Micro by design (shared/REFERENCE.md):
    per kernel set, >= 99 % action agreement and mean return over 30 episodes within 2 % of numpy-int8's."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    env_id = ENV_IDS[name]
    ref = load_policy(exported[name] / "policy.rlpolicy", "numpy-int8")
    obs = _trajectories(ref, env_id, 5_000)
    expected, ref_returns = ref.act(obs), _returns(ref.act, env_id, episodes=30)
    for resolver in OpResolverType:
        interpreter = Interpreter(model_path=str(exported[name] / "policy_int8.tflite"), experimental_op_resolver_type=resolver, num_threads=1)
        interpreter.allocate_tensors()
        inp, outp = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]

        def head_one(o: np.ndarray, it=interpreter, i=inp, k=outp) -> np.ndarray:
            it.set_tensor(i, o[None])
            it.invoke()
            return it.get_tensor(k)[0].copy()

        act = _Batch1(head_one, ref).act
        agreement = _agreement(act(obs), expected, ref)
        assert agreement >= 0.99, f"LiteRT {resolver.name} {name}: action agreement {agreement:.4f}"
        returns = _returns(act, env_id, episodes=30)
        assert abs(returns.mean() - ref_returns.mean()) <= 0.02 * abs(ref_returns.mean()), f"LiteRT {resolver.name} {name}: {returns.mean():.1f} vs {ref_returns.mean():.1f}"

"""Trained agents shared by the learning tests (``tests/test_learning.py``,
``tests/test_learning_dqn.py``): each training runs once per test process, several seeds vmapped
in one compiled program, and seed 0 can be exported as a run directory. Plus the helpers that
run an exported policy on gymnasium's own envs.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import gymnasium as gym
import jax
import numpy as np
from rlaccel.agents.ppo import train as ppo_train

from rlaccel import checkpoint, envs
from rlaccel import config as config_lib
from rlaccel.bench import qat as qat_bench
from rlaccel.deploy.export import export
from rlaccel.sources.fused import FusedSource

SEEDS = 3
DQN_SEEDS = 6  # test_dqn_cartpole_eval_return judges a rate
RUNS = {"cartpole": "configs/ppo_cartpole.yaml", "pendulum": "configs/ppo_pendulum.yaml"}
ENV_IDS = {"cartpole": "CartPole-v1", "pendulum": "Pendulum-v1", "dqn": "CartPole-v1"}
_TRAINED: dict = {}  # (path, precision, profile) or "dqn" -> (config, states, ..., runner or history)


def train_seeds(path: str, precision: str, profile: str = "tflite") -> tuple[object, np.ndarray, FusedSource]:
    """PPO: ``SEEDS`` agents trained in one compiled, vmapped program (once per process):
    ``(states, final returns [SEEDS], runner)``."""
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


def train_dqn() -> tuple:
    """DQN on CartPole (``configs/dqn_cartpole.yaml``), int8 actors, ``DQN_SEEDS`` seeds vmapped
    (once per process), evaluated after every ``eval.freq`` env steps as ``rlaccel bench qat``
    does (``rlaccel.bench.qat.train_seeds``): ``(config, states, runner, history)``,
    ``history[i][precision]`` = mean eval return ``[DQN_SEEDS]``."""
    if "dqn" not in _TRAINED:
        config = config_lib.load("configs/dqn_cartpole.yaml")
        _TRAINED["dqn"] = (config, *qat_bench.train_seeds(config, DQN_SEEDS))
    return _TRAINED["dqn"]


def export_seed0(name: str, root: Path) -> Path:
    """Seed 0 of the int8 (tflite profile) run ``name`` ("cartpole", "pendulum" or "dqn") as a
    run directory under ``root``, exported as ``policy.rlpolicy``, ``policy_int8.onnx`` and
    ``policy_int8.tflite``."""
    if name == "dqn":
        config, states, _, _ = train_dqn()
    else:
        train_seeds(RUNS[name], "int8")
        config, states, _, _ = _TRAINED[(RUNS[name], "int8", "tflite")]
    state = jax.tree.map(lambda x: x[0], states)
    run_dir = root / name
    checkpoint.save(run_dir / "checkpoints", int(state.update), state, {"config": config.to_dict()})
    (run_dir / "config.yaml").write_text(json.dumps(config.to_dict()))
    for fmt in ("rlpolicy", "onnx-int8", "tflite"):
        export(run_dir, fmt=fmt)
    return run_dir


def trajectories(policy, env_id: str, min_obs: int, seed: int = 500) -> np.ndarray:
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


def tflite_micro_heads(tflite: Path, obs: np.ndarray) -> np.ndarray:
    """``[N, head]``: TFLite Micro's interpreter on ``tflite``, one observation at a time."""
    from tflite_micro.python.tflite_micro import runtime as tflm

    interpreter = tflm.Interpreter.from_file(str(tflite))
    heads = []
    for o in obs:
        interpreter.set_input(o[None], 0)
        interpreter.invoke()
        heads.append(interpreter.get_output(0)[0].copy())
    return np.asarray(heads)

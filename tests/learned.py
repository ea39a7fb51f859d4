"""Trained agents shared by the learning tests (``tests/test_learning.py``,
``tests/test_learning_dqn.py``): each training runs once per test process, several seeds vmapped
in one compiled program, and seed 0 can be exported as a run directory. Plus the helpers that
run an exported policy on gymnasium's own envs.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import gymnasium as gym
import jax
import numpy as np
from rlaccel.agents.ppo import train as ppo_train

from rlaccel import checkpoint, envs
from rlaccel import config as config_lib
from rlaccel.deploy.export import export
from rlaccel.sources.fused import FusedSource

SEEDS = 3
DQN_SEEDS = 6  # test_dqn_cartpole_eval_return judges a rate
RUNS = {"cartpole": "configs/ppo_cartpole.yaml", "pendulum": "configs/ppo_pendulum.yaml"}
ENV_IDS = {"cartpole": "CartPole-v1", "pendulum": "Pendulum-v1", "dqn": "CartPole-v1"}
REPO = Path(__file__).resolve().parents[1]
_TRAINED: dict = {}  # (path, precision, profile) -> (config, states, final returns, runner); "dqn" -> (run dir, history)


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


# DQN's training, in a process of its own (:func:`train_dqn`): what it writes for the test process.
_DQN_SCRIPT = """
import json, sys
from pathlib import Path
import numpy as np
from rlaccel import placement
from rlaccel import config as config_lib
from rlaccel.bench import qat as qat_bench
config_file, seeds, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
sys.path.insert(0, sys.argv[4])
from learned import save_seed0
config = config_lib.load(config_file)
notice = placement.start_backend(config.placement, config.env_kind)  # as `rlaccel train` starts it
assert notice is None, notice
states, _, history = qat_bench.train_seeds(config, seeds)
save_seed0(out, config, states)
(out / "history.json").write_text(json.dumps([{p: np.asarray(r).tolist() for p, r in h.items()} for h in history]))
"""


def train_dqn() -> tuple[Path, list[dict[str, np.ndarray]]]:
    """DQN on CartPole (``configs/dqn_cartpole.yaml``), int8 actors, ``DQN_SEEDS`` seeds vmapped
    (once per process), evaluated after every ``eval.freq`` env steps as ``rlaccel bench qat``
    does (``rlaccel.bench.qat.train_seeds``): ``(run directory of seed 0, history)``,
    ``history[i][precision]`` = mean eval return ``[DQN_SEEDS]``.

    Trained in a process of its own with one CPU device, which starts JAX as ``rlaccel train``
    does for this config (``placement.cpu_threads: 1``: one XLA CPU thread). The test processes
    have two forced CPU devices, and XLA's CPU pool never has fewer threads than devices. With
    two such processes running at once (the suite's two workers on two cores), an update of these
    6 seeds took 2.7-2.8 ms there against 1.9-2.4 ms with one device and one thread; alone, 3
    chunks of the training used 34-41 CPU seconds against 27-28. The arithmetic is the same.
    """
    if "dqn" not in _TRAINED:
        run_dir = Path(tempfile.mkdtemp(prefix="rlaccel-test-dqn-"))
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
        env = {**os.environ, "XLA_FLAGS": " ".join([*flags, "--xla_force_host_platform_device_count=1"])}
        args = [sys.executable, "-c", _DQN_SCRIPT, str(REPO / "configs" / "dqn_cartpole.yaml"), str(DQN_SEEDS), str(run_dir), str(REPO / "tests")]
        try:
            done = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
            assert done.returncode == 0, done.stderr[-3000:]
            history = json.loads((run_dir / "history.json").read_text())
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        atexit.register(shutil.rmtree, run_dir, True)
        _TRAINED["dqn"] = (run_dir, [{p: np.asarray(r) for p, r in h.items()} for h in history])
    return _TRAINED["dqn"]


def export_seed0(name: str, root: Path) -> Path:
    """Seed 0 of the int8 (tflite profile) run ``name`` ("cartpole", "pendulum" or "dqn") as a
    run directory under ``root``, exported as ``policy.rlpolicy``, ``policy_int8.onnx`` and
    ``policy_int8.tflite``."""
    run_dir = root / name
    if name == "dqn":
        shutil.copytree(train_dqn()[0], run_dir)  # written by save_seed0 in the training's own process
    else:
        train_seeds(RUNS[name], "int8")
        config, states, _, _ = _TRAINED[(RUNS[name], "int8", "tflite")]
        save_seed0(run_dir, config, states)
    for fmt in ("rlpolicy", "onnx-int8", "tflite"):
        export(run_dir, fmt=fmt)
    return run_dir


def save_seed0(run_dir: Path, config: config_lib.Config, states: object) -> None:
    """Seed 0 of ``states`` (leaves ``[seeds, ...]``) as a run directory ``rlaccel export``
    reads: its checkpoint and ``config.yaml``."""
    state = jax.tree.map(lambda x: x[0], states)
    checkpoint.save(run_dir / "checkpoints", int(state.update), state, {"config": config.to_dict()})
    (run_dir / "config.yaml").write_text(json.dumps(config.to_dict()))


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

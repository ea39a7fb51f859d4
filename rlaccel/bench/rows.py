"""The rows of ``rlaccel bench``: what each measures, and the worker that measures it.

Each row runs in a fresh interpreter (:func:`worker_main`, started by
``rlaccel.bench.table.run_row``), so its peak RSS is its own and the two-device rows can force
two CPU devices through ``XLA_FLAGS`` without touching the others. Workers import their
libraries (JAX, gymnax, torch, ...) inside the function.

Rows (configuration: ``configs/ppo_cartpole.yaml``, the one in ``shared/REFERENCE.md``):

* ``purejaxrl_1`` / ``purejaxrl_16``: PureJaxRL's ``ppo.py`` (re-implemented in
  ``benchmarks/baselines/purejaxrl_ppo.py``, on gymnax), 1 seed / 16 vmapped seeds.
  ``purejaxrl_1_t1`` / ``purejaxrl_dqn_t1``: PureJaxRL's PPO / DQN with XLA's CPU thread pool
  at one thread, as the CartPole configs ship rlaccel (``placement.cpu_threads: 1``): what
  PureJaxRL gains from the same setting (rows in turn; no ratio of their own).
* ``fused_fp32`` / ``fused_int8``: ``rlaccel.train`` (what ``rlaccel train`` runs: TensorBoard,
  checkpoints, probes) with fp32 or int8 actors on one device.
* ``fused_int8_to_500``: ``fused_int8`` evaluating every 10,000 env steps (10 greedy episodes
  of the int8 policy) and stopping at the first evaluation of 500 (``eval.stop_at_return``):
  the time to an agent that scores 500, not the same work as PureJaxRL's 500k steps.
* ``split_fp32`` / ``split_int8``: learner on ``cpu:0``, actors on ``cpu:1``, pipelined (the
  default for two devices: rollout k+1 while update k, one update of policy lag);
  ``split_serial_fp32`` / ``split_serial_int8``: the same with ``placement.pipeline=false``.
* ``vmap16_fp32`` / ``vmap16_int8``: 16 seeds vmapped in one compile
  (``rlaccel.sources.fused.make_train``).
* ``sweep16_fp32`` / ``sweep16_int8``: the same 16 seeds through ``rlaccel.sweep.run_grid``
  (what ``rlaccel sweep`` runs), the seed axis sharded over two CPU devices, i.e. both cores.
* ``purejaxrl_dqn``: PureJaxRL's ``dqn.py`` (``benchmarks/baselines/purejaxrl_dqn.py``,
  gymnax + flashbax); ``dqn_purejaxrl_fp32``: the same algorithm as an rlaccel configuration
  (``configs/dqn_cartpole_purejaxrl.yaml``: max of the target network, MSE, no gradient
  clipping, truncation as termination), fused, fp32 actors: the like-for-like ratio;
  ``dqn_purejaxrl_double_fp32``: that with ``dqn.double_q=true`` (double DQN's third forward
  pass); ``dqn_fused_fp32`` / ``dqn_fused_int8``: ``configs/dqn_cartpole.yaml``
  (same configuration, plus double-DQN targets) through ``rlaccel.train``.
* ``gym_cartpole_raw``: gymnasium's own vector env stepping ``CartPole-v1`` with random
  actions (no learning), the baseline of ``gym_cartpole_host``: PPO through host actor
  threads (``configs/ppo_gym_cartpole.yaml``); ``sb3_ppo_cartpole``: Stable-Baselines3's PPO
  with the same hyperparameters; ``sb3_ppo_cartpole_1env``: SB3 as ``shared/REFERENCE.md``
  measured it (1 env x 128 steps, 4 epochs of 4 minibatches).
* ``ray_gym_cartpole``: ``gym_cartpole_host`` with the actor in a Ray process
  (``configs/ppo_gym_cartpole_ray.yaml``, same 1 x 16 envs), against ``gym_cartpole_raw``;
  ``halfcheetah_ray``: ``halfcheetah_host`` with ``actors.backend=ray``, against it.
* Placement on a machine with an accelerator (``scripts/gpu_placement.sh``; ``auto`` is its
  first device, so ``fused_*`` rows run there): ``purejaxrl_1_cpu`` (PureJaxRL with
  ``JAX_PLATFORMS=cpu``), ``fused_int8_cpu`` (learner and actors on the host's CPU),
  ``split_int8_cpu_actors`` / ``split_serial_int8_cpu_actors`` (learner on the accelerator,
  int8 actors on the CPU, pipelined / in turn); ``*_wide``: the same at 1024 envs
  (PureJaxRL's configuration, minibatches of 32,768, 40 updates, XLA's default CPU pool).
* ``halfcheetah_host``: PPO on MuJoCo HalfCheetah-v5 through host actors, 1M steps
  (``configs/ppo_halfcheetah.yaml``); ``brax_inverted_pendulum``: PPO on brax's
  inverted_pendulum in the fused mode. Both are learning figures, not ratios.

``sps`` is env steps per second of training with compile time excluded (aggregate over seeds
for the vmapped rows). ``time_to_result_s`` is the row's process start to its finished agent
(``rlaccel.clock``: interpreter start-up, imports, compiles and training included; for
``rlaccel.train`` rows the ``summary.json`` field, for the others taken when training returns).
``RLACCEL_BENCH_TIMESTEPS`` (``rlaccel bench --timesteps N``) shortens the PPO / DQN CartPole
rows to ``N`` env steps per seed: a check that rows run, not a measurement.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rlaccel.clock import process_age_s
from rlaccel.fileio import write_json

# The checkout this package lives in (an editable install): configs/ and benchmarks/ are there.
ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
BASELINES = ROOT / "benchmarks" / "baselines"
CONFIG = CONFIGS / "ppo_cartpole.yaml"
DQN_CONFIG = CONFIGS / "dqn_cartpole.yaml"
TWO_DEVICES = "--xla_force_host_platform_device_count=2"
INT8 = {"precision": "int8", "actor": "learner"}  # int8 actors on the learner's device

# PureJaxRL's configuration at 1024 envs (minibatches of 32,768 samples) for 40 updates
WIDE_ENVS = 1024
WIDE_TIMESTEPS = 40 * WIDE_ENVS * 128
WIDE = [f"ppo.n_envs={WIDE_ENVS}", f"ppo.batch_size={WIDE_ENVS * 32}", "placement.cpu_threads=null", "logging.log_interval=8"]

ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    # name: (kind, options); ``xla_flags`` goes to the row's environment, the rest to its worker
    "purejaxrl_1": ("purejaxrl", {"seeds": 1}),
    "purejaxrl_1_t1": ("purejaxrl", {"seeds": 1, "cpu_threads": 1}),
    "fused_fp32": ("train", {"precision": "fp32", "actor": "learner"}),
    "fused_int8": ("train", {"precision": "int8", "actor": "learner"}),
    "fused_int8_to_500": ("train", {"precision": "int8", "actor": "learner", "overrides": ["eval.freq=10000", "eval.stop_at_return=500"]}),
    "split_fp32": ("train", {"precision": "fp32", "actor": "cpu:1", "xla_flags": TWO_DEVICES}),
    "split_int8": ("train", {"precision": "int8", "actor": "cpu:1", "xla_flags": TWO_DEVICES}),
    "split_serial_fp32": ("train", {"precision": "fp32", "actor": "cpu:1", "overrides": ["placement.pipeline=false"], "xla_flags": TWO_DEVICES}),
    "split_serial_int8": ("train", {"precision": "int8", "actor": "cpu:1", "overrides": ["placement.pipeline=false"], "xla_flags": TWO_DEVICES}),
    "purejaxrl_16": ("purejaxrl", {"seeds": 16}),
    "vmap16_fp32": ("vmap", {"seeds": 16, "precision": "fp32"}),
    "vmap16_int8": ("vmap", {"seeds": 16, "precision": "int8"}),
    "sweep16_fp32": ("sweep", {"seeds": 16, "precision": "fp32", "xla_flags": TWO_DEVICES}),
    "sweep16_int8": ("sweep", {"seeds": 16, "precision": "int8", "xla_flags": TWO_DEVICES}),
    "purejaxrl_dqn": ("purejaxrl_dqn", {}),
    "purejaxrl_dqn_t1": ("purejaxrl_dqn", {"cpu_threads": 1}),
    "dqn_purejaxrl_fp32": ("train", {"config": "dqn_cartpole_purejaxrl.yaml"}),
    "dqn_purejaxrl_double_fp32": ("train", {"config": "dqn_cartpole_purejaxrl.yaml", "overrides": ["dqn.double_q=true"]}),
    "dqn_fused_fp32": ("train", {"precision": "fp32", "actor": "learner", "config": "dqn_cartpole.yaml"}),
    "dqn_fused_int8": ("train", {"precision": "int8", "actor": "learner", "config": "dqn_cartpole.yaml"}),
    "gym_cartpole_raw": ("gym_raw", {}),
    "gym_cartpole_host": ("train", {"config": "ppo_gym_cartpole.yaml", **INT8}),
    "sb3_ppo_cartpole": ("sb3", {}),
    "sb3_ppo_cartpole_1env": ("sb3", {"total_timesteps": 8192, "n_envs": 1, "n_steps": 128, "n_epochs": 4, "batch_size": 32}),
    "halfcheetah_host": ("train", {"config": "ppo_halfcheetah.yaml", **INT8}),
    "ray_gym_cartpole": ("train", {"config": "ppo_gym_cartpole_ray.yaml", **INT8}),
    "halfcheetah_ray": ("train", {"config": "ppo_halfcheetah.yaml", "overrides": ["actors.backend=ray"], **INT8}),
    "brax_inverted_pendulum": ("train", {"config": "ppo_brax_inverted_pendulum.yaml", **INT8}),
    # placement on a machine with an accelerator (`auto`: its first device; on a CPU-only machine
    # these are CPU rows): the whole run on the host's CPU instead, the learner there with the
    # int8 actors on the CPU, and the wide configuration
    "purejaxrl_1_cpu": ("purejaxrl", {"seeds": 1, "platforms": "cpu"}),
    "fused_int8_cpu": ("train", {"precision": "int8", "actor": "learner", "overrides": ["placement.learner.device=cpu"]}),
    "split_int8_cpu_actors": ("train", {"precision": "int8", "actor": "cpu"}),
    "split_serial_int8_cpu_actors": ("train", {"precision": "int8", "actor": "cpu", "overrides": ["placement.pipeline=false"]}),
    "purejaxrl_wide": ("purejaxrl", {"seeds": 1, "num_envs": WIDE_ENVS, "timesteps": WIDE_TIMESTEPS}),
    "purejaxrl_wide_cpu": ("purejaxrl", {"seeds": 1, "num_envs": WIDE_ENVS, "timesteps": WIDE_TIMESTEPS, "platforms": "cpu"}),
    "fused_int8_wide": ("train", {"precision": "int8", "actor": "learner", "overrides": WIDE, "timesteps": WIDE_TIMESTEPS}),
    "fused_int8_wide_cpu": ("train", {"precision": "int8", "actor": "learner", "overrides": [*WIDE, "placement.learner.device=cpu"], "timesteps": WIDE_TIMESTEPS}),
    "split_int8_wide_cpu_actors": ("train", {"precision": "int8", "actor": "cpu", "overrides": WIDE, "timesteps": WIDE_TIMESTEPS}),
}

BASELINE_FOR = {
    **dict.fromkeys(["fused_fp32", "fused_int8", "fused_int8_to_500", "split_fp32", "split_int8", "split_serial_fp32", "split_serial_int8"], "purejaxrl_1"),
    **dict.fromkeys(["vmap16_fp32", "vmap16_int8", "sweep16_fp32", "sweep16_int8"], "purejaxrl_16"),
    **dict.fromkeys(["dqn_purejaxrl_fp32", "dqn_purejaxrl_double_fp32", "dqn_fused_fp32", "dqn_fused_int8"], "purejaxrl_dqn"),
    "gym_cartpole_host": "gym_cartpole_raw",
    "ray_gym_cartpole": "gym_cartpole_raw",
    "halfcheetah_ray": "halfcheetah_host",
    **dict.fromkeys(["fused_int8_cpu", "split_int8_cpu_actors", "split_serial_int8_cpu_actors"], "purejaxrl_1"),
    **dict.fromkeys(["fused_int8_wide", "fused_int8_wide_cpu", "split_int8_wide_cpu_actors"], "purejaxrl_wide"),
}


def finish(path: Path, payload: dict[str, Any], failed: list[str]) -> int:
    """Write a bench command's JSON to ``path`` and say so; 1 (named on stderr) if any row failed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, payload)
    print(f"wrote {path}")
    if failed:
        print(f"error: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def peak_rss_mib() -> float:
    """Peak resident memory of this process (VmHWM), MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _baseline(module: str) -> Any:
    """A module of ``benchmarks/baselines`` (PureJaxRL re-implemented on gymnax)."""
    import importlib

    sys.path.insert(0, str(BASELINES))
    return importlib.import_module(module)


# ---------------------------------------------------------------------------------------------
# Workers: one per kind of row; each returns the row's JSON.


def _timesteps(default: int = 500_000) -> int:
    """Env steps per seed of the CartPole rows: ``RLACCEL_BENCH_TIMESTEPS`` (a quick check) or ``default``."""
    return int(float(os.environ.get("RLACCEL_BENCH_TIMESTEPS") or default))


def _short() -> list[str]:
    """``total_timesteps`` overrides for ``RLACCEL_BENCH_TIMESTEPS``; none without it."""
    return [f"total_timesteps={_timesteps()}"] if os.environ.get("RLACCEL_BENCH_TIMESTEPS") else []


def work_purejaxrl(seeds: int, num_envs: int = 4, timesteps: int = 500_000) -> dict:
    out = _baseline("purejaxrl_ppo").run(num_seeds=seeds, total_timesteps=_timesteps(timesteps), num_envs=num_envs)
    time_to_result = process_age_s()
    return {"sps": out["sps"], "compile_s": out["compile_s"], "time_to_result_s": time_to_result, "final_return": out["final_return_mean"], "final_return_min": out["final_return_min"], "env_steps": out["env_steps"]}


def work_purejaxrl_dqn() -> dict:
    out = _baseline("purejaxrl_dqn").run(total_timesteps=_timesteps())
    time_to_result = process_age_s()
    return {"sps": out["sps"], "compile_s": out["compile_s"], "time_to_result_s": time_to_result, "final_return": out["final_return"], "env_steps": out["env_steps"]}


def work_train(config: str = "ppo_cartpole.yaml", precision: str | None = None, actor: str | None = None, overrides: list[str] = (), timesteps: int | None = None) -> dict:
    """``configs/<config>`` through ``rlaccel.train`` (the whole ``rlaccel train`` path), with
    the actors' precision and device overridden when given, and any other ``key=value``;
    ``timesteps``: the row's own budget (``RLACCEL_BENCH_TIMESTEPS`` still shortens it)."""
    import rlaccel

    # The rows PureJaxRL's are compared with: its programs do not evaluate, so neither do these
    # (the shipped configs' ``eval:`` would add 20-25 evaluations to time_to_result), unless
    # the row's own overrides, which come after, say otherwise.
    compared = config in ("ppo_cartpole.yaml", "dqn_cartpole.yaml", "dqn_cartpole_purejaxrl.yaml")
    overrides = [*([*_short(), "eval.freq=0"] if compared else []), *overrides]
    if timesteps is not None:
        overrides.append(f"total_timesteps={_timesteps(timesteps)}")
    if precision is not None:
        overrides.append(f"placement.actor.precision={precision}")
    if actor is not None:
        overrides.append(f"placement.actor.device={actor}")
    with tempfile.TemporaryDirectory(prefix="rlaccel_bench_") as tmp:
        run = rlaccel.train(str(CONFIGS / config), overrides=overrides, run_dir=Path(tmp) / "run", progress=False)
        s = dict(run.summary)
    return {
        "sps": s["sps"],
        "compile_s": s.get("compile_s"),
        "time_to_result_s": s.get("time_to_result_s"),
        "final_return": s.get("final_return"),
        "env_steps": s.get("env_steps"),
        "wall_s": s.get("wall_s"),
        "actor_sps": s.get("time/actor_sps"),
        "learner_sps": s.get("time/learner_sps"),
        "latency_us_p50": s.get("actor/decision_latency_us_p50"),
        "latency_us_p99": s.get("actor/decision_latency_us_p99"),
        "action_agreement": s.get("quant/action_agreement"),
        "placement": s.get("placement"),
        "policy_lag": s.get("actor/policy_lag"),
        "eval_return": s.get("eval_return"),
    }


def work_vmap(seeds: int, precision: str) -> dict:
    """``seeds`` PPO runs vmapped in one compiled program (``rlaccel.sources.fused.make_train``)."""
    import jax
    import numpy as np

    from rlaccel import config as config_lib
    from rlaccel.sources.fused import make_train

    config = config_lib.load(CONFIG, [f"placement.actor.precision={precision}", *_short()])
    keys = jax.random.split(jax.random.PRNGKey(42), seeds)
    start = time.perf_counter()
    compiled = jax.jit(jax.vmap(make_train(config))).lower(keys).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    _, metrics = jax.block_until_ready(compiled(keys))
    train_s = time.perf_counter() - start
    returns = np.asarray(metrics["rollout/ep_rew_mean"])  # [seeds, updates]
    final = returns[:, -1]
    steps = seeds * returns.shape[1] * config.agent.rollout_size
    time_to_result = process_age_s()
    return {"sps": steps / train_s, "compile_s": compile_s, "time_to_result_s": time_to_result, "final_return": float(final.mean()), "final_return_min": float(final.min()), "env_steps": steps}


def work_sweep(seeds: int, precision: str) -> dict:
    """The same seeds through ``rlaccel.sweep.run_grid`` (chunked, sharded over the devices)."""
    from rlaccel import config as config_lib
    from rlaccel.sweep.run import run_grid

    config = config_lib.load(CONFIG, [f"placement.actor.precision={precision}", *_short()])
    with tempfile.TemporaryDirectory(prefix="rlaccel_bench_") as tmp:
        report = run_grid(config, grid={}, seeds=[42 + i for i in range(seeds)], out_dir=Path(tmp) / "sweep", progress=False)
    rows = report.get("results") or [{}]
    return {
        "sps": report["aggregate_steps_per_s"],
        "compile_s": report["compile_s"],
        "time_to_result_s": process_age_s(),
        "final_return": rows[0].get("final_return_mean"),
        "final_return_min": rows[0].get("final_return_min"),
        "env_steps": round(report["aggregate_steps_per_s"] * report["train_s"]),
        "devices": report.get("devices"),
    }


def work_gym_raw(seconds: float = 10.0) -> dict:
    """gymnasium vector-env stepping alone (random actions, one thread), at the vector-env size
    of one actor of ``configs/ppo_gym_cartpole.yaml``: the ceiling host actors are measured against."""
    import gymnasium
    import numpy as np

    from rlaccel import config as config_lib

    config = config_lib.load(CONFIGS / "ppo_gym_cartpole.yaml")
    num_envs = config.agent.n_envs // config.actors.num_actors
    venv = gymnasium.make_vec(config.env.partition(":")[2], num_envs=num_envs, vectorization_mode="sync", vector_kwargs={"autoreset_mode": gymnasium.vector.AutoresetMode.SAME_STEP})
    venv.reset(seed=0)
    rng = np.random.default_rng(0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        venv.step(rng.integers(0, 2, num_envs))
        steps += num_envs
    return {"sps": steps / (time.perf_counter() - start), "compile_s": 0.0, "final_return": None, "env_steps": steps, "num_envs": num_envs}


def work_sb3(total_timesteps: int = 30_000, **shape: int) -> dict:
    """Stable-Baselines3's PPO on gymnasium CartPole-v1 with ``configs/ppo_gym_cartpole.yaml``'s
    hyperparameters (16 envs in a ``DummyVecEnv``, 32 steps, 10 epochs, minibatch 256, 64-64
    tanh): the peer ``gym_cartpole_host`` is compared with. ``shape`` overrides ``n_envs``,
    ``n_steps``, ``n_epochs``, ``batch_size`` (the ``_1env`` row: ``shared/REFERENCE.md``'s
    1 env x 128 steps). ``sps`` is steps over wall time of a shortened run (SB3's speed is
    flat after the first update)."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from rlaccel import config as config_lib

    config = config_lib.load(CONFIGS / "ppo_gym_cartpole.yaml")
    cfg = dataclasses.replace(config.agent, **shape)
    venv = make_vec_env(config.env.partition(":")[2], n_envs=cfg.n_envs, seed=0)
    model = PPO(
        "MlpPolicy", venv, n_steps=cfg.n_steps, batch_size=cfg.batch_size, n_epochs=cfg.n_epochs,
        learning_rate=lambda f: f * cfg.learning_rate, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda,
        clip_range=cfg.clip_range, ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm,
        policy_kwargs={"net_arch": {"pi": list(cfg.policy_kwargs.pi_arch), "vf": list(cfg.policy_kwargs.vf_arch)}, "activation_fn": torch.nn.Tanh}, device="cpu", seed=0,
    )  # fmt: skip
    start = time.perf_counter()
    model.learn(total_timesteps)
    elapsed = time.perf_counter() - start
    returns = [ep["r"] for ep in model.ep_info_buffer]
    return {
        "sps": model.num_timesteps / elapsed,
        "compile_s": 0.0,
        "final_return": float(sum(returns) / len(returns)) if returns else None,
        "env_steps": model.num_timesteps,
        "torch_threads": torch.get_num_threads(),
    }


WORKERS = {
    "purejaxrl": work_purejaxrl,
    "purejaxrl_dqn": work_purejaxrl_dqn,
    "train": work_train,
    "vmap": work_vmap,
    "sweep": work_sweep,
    "gym_raw": work_gym_raw,
    "sb3": work_sb3,
}


def worker(name: str) -> dict:
    """Measure row ``name`` in this process; its JSON, with this process's peak RSS."""
    kind, opts = ROWS[name]
    if "cpu_threads" in opts:  # before anything starts JAX
        from rlaccel import cpu_threads

        cpu_threads.start(opts["cpu_threads"])
    result = WORKERS[kind](**{k: v for k, v in opts.items() if k not in ("xla_flags", "cpu_threads", "platforms")})
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def worker_main(argv: list[str]) -> int:
    """``worker_main([row, result_path])``: the entry of a row's subprocess."""
    name, result_path = argv
    Path(result_path).write_text(json.dumps(worker(name)))
    return 0

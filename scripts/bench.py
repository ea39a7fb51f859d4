#!/usr/bin/env python3
"""Benchmarks: PPO and DQN on CartPole-v1 against PureJaxRL, and what each placement costs.

    python scripts/bench.py                 # every row, prints a table, writes benchmarks/*.json
    python scripts/bench.py --rows fused_fp32,fused_int8

Every row runs in its own subprocess, so peak memory (RSS) is per row and the two-device
rows can force two CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=2``)
without touching the others. Speeds are compared as ratios to the PureJaxRL baseline
measured in the same invocation: absolute figures drift on shared machines.

Rows (configuration: ``configs/ppo_cartpole.yaml``, the one in ``shared/REFERENCE.md``):

* ``purejaxrl_1`` / ``purejaxrl_16``: PureJaxRL's ``ppo.py`` (re-implemented in
  ``benchmarks/baselines/purejaxrl_ppo.py``, on gymnax), 1 seed / 16 vmapped seeds.
* ``fused_fp32`` / ``fused_int8``: ``scripts/train.py``'s own path (driver, TensorBoard,
  checkpoints, probes) with fp32 or int8 actors on one device.
* ``split_fp32`` / ``split_int8``: learner on ``cpu:0``, actors on ``cpu:1``.
* ``vmap16_int8`` / ``vmap16_fp32``: 16 seeds vmapped in one compile (``make_train``).
* ``sweep16_fp32`` / ``sweep16_int8``: the same 16 seeds through ``rlaccel.sweep`` (what
  ``scripts/sweep.py`` runs): chunks of ``log_interval`` updates, the seed axis sharded over
  two CPU devices (``--xla_force_host_platform_device_count=2``), i.e. both cores.
* ``purejaxrl_dqn``: PureJaxRL's ``dqn.py`` (``benchmarks/baselines/purejaxrl_dqn.py``,
  gymnax + flashbax); ``dqn_fused_fp32`` / ``dqn_fused_int8``: ``configs/dqn_cartpole.yaml``
  (same configuration, plus double-DQN targets) through ``scripts/train.py``'s path.
* ``gym_cartpole_raw``: gymnasium's own vector env stepping ``gym:CartPole-v1`` with random
  actions (no learning), the baseline of ``gym_cartpole_host``: PPO through host actor
  threads (``configs/ppo_gym_cartpole.yaml``, ``rlaccel.host``); ``sb3_ppo_cartpole``:
  Stable-Baselines3's PPO with the same hyperparameters; ``sb3_ppo_cartpole_1env``: SB3 as
  ``shared/REFERENCE.md`` measured it (1 env x 128 steps, 4 epochs of 4 minibatches; needs ``stable-baselines3``, which
  ``make bench`` installs with the CPU build of torch).
* ``halfcheetah_host``: PPO on MuJoCo HalfCheetah-v5 through host actors, 1M steps
  (``configs/ppo_halfcheetah.yaml``); ``brax_inverted_pendulum``: PPO on brax's
  inverted_pendulum in the fused mode, 2M steps. Both are learning figures, not ratios.

``sps`` is env steps per second of training with compile time excluded (aggregate over
seeds for the vmapped rows).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "ppo_cartpole.yaml"
DQN_CONFIG = ROOT / "configs" / "dqn_cartpole.yaml"
TWO_DEVICES = "--xla_force_host_platform_device_count=2"

ROWS = {
    # name: (kind, options)
    "purejaxrl_1": ("purejaxrl", {"seeds": 1}),
    "fused_fp32": ("driver", {"precision": "fp32", "actor": "learner"}),
    "fused_int8": ("driver", {"precision": "int8", "actor": "learner"}),
    "split_fp32": ("driver", {"precision": "fp32", "actor": "cpu:1", "xla_flags": TWO_DEVICES}),
    "split_int8": ("driver", {"precision": "int8", "actor": "cpu:1", "xla_flags": TWO_DEVICES}),
    "purejaxrl_16": ("purejaxrl", {"seeds": 16}),
    "vmap16_fp32": ("vmap", {"seeds": 16, "precision": "fp32"}),
    "vmap16_int8": ("vmap", {"seeds": 16, "precision": "int8"}),
    "sweep16_fp32": ("sweep", {"seeds": 16, "precision": "fp32", "xla_flags": TWO_DEVICES}),
    "sweep16_int8": ("sweep", {"seeds": 16, "precision": "int8", "xla_flags": TWO_DEVICES}),
    "purejaxrl_dqn": ("purejaxrl_dqn", {}),
    "dqn_fused_fp32": ("driver", {"precision": "fp32", "actor": "learner", "config": "dqn"}),
    "dqn_fused_int8": ("driver", {"precision": "int8", "actor": "learner", "config": "dqn"}),
    # Host actors and brax: gymnasium CartPole through host actor threads against raw
    # gymnasium vector-env stepping with random actions (same vector-env size, same run),
    # MuJoCo HalfCheetah-v5 learning through host actors, brax inverted_pendulum fused.
    "gym_cartpole_raw": ("gym_raw", {}),
    "gym_cartpole_host": ("host", {"config": "ppo_gym_cartpole.yaml"}),
    "sb3_ppo_cartpole": ("sb3", {}),
    "sb3_ppo_cartpole_1env": ("sb3", {"total_timesteps": 8192, "n_envs": 1, "n_steps": 128, "n_epochs": 4, "batch_size": 32}),
    "halfcheetah_host": ("host", {"config": "ppo_halfcheetah.yaml"}),
    "brax_inverted_pendulum": ("brax", {"config": "ppo_brax_inverted_pendulum.yaml"}),
}
BASELINE_FOR = {
    **dict.fromkeys(["fused_fp32", "fused_int8", "split_fp32", "split_int8"], "purejaxrl_1"),
    **dict.fromkeys(["vmap16_fp32", "vmap16_int8", "sweep16_fp32", "sweep16_int8"], "purejaxrl_16"),
    **dict.fromkeys(["dqn_fused_fp32", "dqn_fused_int8"], "purejaxrl_dqn"),
    "gym_cartpole_host": "gym_cartpole_raw",
}


def peak_rss_mib() -> float:
    """Peak resident memory of this process (VmHWM), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------
# Workers (run in a subprocess each).


def work_purejaxrl(seeds: int) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks" / "baselines"))
    import purejaxrl_ppo

    out = purejaxrl_ppo.run(num_seeds=seeds)
    return {"sps": out["sps"], "compile_s": out["compile_s"], "final_return": out["final_return_mean"], "final_return_min": out["final_return_min"], "env_steps": out["env_steps"]}


def work_purejaxrl_dqn() -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks" / "baselines"))
    import purejaxrl_dqn

    out = purejaxrl_dqn.run()
    return {"sps": out["sps"], "compile_s": out["compile_s"], "final_return": out["final_return"], "env_steps": out["env_steps"]}


def work_driver(precision: str, actor: str, config: str = "ppo", config_path: Path | None = None, **_: str) -> dict:
    from rlaccel import config as config_lib
    from rlaccel import driver

    overrides = [f"placement.actor.precision={precision}", f"placement.actor.device={actor}", "logging.progress=false"]
    config = config_lib.load(config_path or (DQN_CONFIG if config == "dqn" else CONFIG), overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        s = driver.train(config, run_dir)
    return {
        "sps": s["sps"],
        "compile_s": s["compile_s"],
        "final_return": s["final_return"],
        "env_steps": s["env_steps"],
        "wall_s": s["wall_s"],
        "actor_sps": s.get("time/actor_sps"),
        "learner_sps": s.get("time/learner_sps"),
        "latency_us_p50": s.get("actor/decision_latency_us_p50"),
        "latency_us_p99": s.get("actor/decision_latency_us_p99"),
        "action_agreement": s.get("quant/action_agreement"),
        "placement": s["placement"],
        "policy_lag": s.get("actor/policy_lag"),
    }


def work_gym_raw(seconds: float = 10.0) -> dict:
    """gymnasium vector-env stepping alone (random actions, one thread), at the vector-env size
    of one actor of ``configs/ppo_gym_cartpole.yaml``: the ceiling host actors are measured against."""
    import gymnasium
    import numpy as np

    from rlaccel import config as config_lib

    config = config_lib.load(ROOT / "configs" / "ppo_gym_cartpole.yaml")
    num_envs = config.ppo.n_envs // config.actors.num_actors
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

    config = config_lib.load(ROOT / "configs" / "ppo_gym_cartpole.yaml")
    cfg = dataclasses.replace(config.ppo, **shape)
    venv = make_vec_env(config.env.partition(":")[2], n_envs=cfg.n_envs, seed=0)
    model = PPO(
        "MlpPolicy", venv, n_steps=cfg.n_steps, batch_size=cfg.batch_size, n_epochs=cfg.n_epochs,
        learning_rate=lambda f: f * cfg.learning_rate, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda,
        clip_range=cfg.clip_range, ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm,
        policy_kwargs={"net_arch": list(cfg.policy_kwargs.net_arch), "activation_fn": torch.nn.Tanh}, device="cpu", seed=0,
    )  # fmt: skip
    start = time.perf_counter()
    model.learn(total_timesteps)
    elapsed = time.perf_counter() - start
    returns = [ep["r"] for ep in model.ep_info_buffer]
    return {"sps": model.num_timesteps / elapsed, "compile_s": 0.0, "final_return": float(sum(returns) / len(returns)) if returns else None, "env_steps": model.num_timesteps, "torch_threads": torch.get_num_threads()}


def work_host(config: str) -> dict:
    """``configs/<config>`` (a ``gym:`` env) through host actors, via the driver."""
    return work_driver(precision="int8", actor="learner", config_path=ROOT / "configs" / config)


def work_brax(config: str) -> dict:
    """``configs/<config>`` (a ``brax:`` env) through the fused runner, via the driver."""
    return work_driver(precision="int8", actor="learner", config_path=ROOT / "configs" / config)


def work_vmap(seeds: int, precision: str) -> dict:
    import jax
    import numpy as np
    from rlaccel.agents.ppo.train import make_train

    from rlaccel import config as config_lib

    config = config_lib.load(CONFIG, [f"placement.actor.precision={precision}"])
    keys = jax.random.split(jax.random.PRNGKey(42), seeds)
    start = time.perf_counter()
    compiled = jax.jit(jax.vmap(make_train(config))).lower(keys).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    _, metrics = jax.block_until_ready(compiled(keys))
    train_s = time.perf_counter() - start
    final = np.asarray(metrics["rollout/ep_rew_mean"][:, -1])
    steps = seeds * (config.total_timesteps // config.ppo.rollout_size) * config.ppo.rollout_size
    return {"sps": steps / train_s, "compile_s": compile_s, "final_return": float(final.mean()), "final_return_min": float(final.min()), "env_steps": steps}


def work_sweep(seeds: int, precision: str) -> dict:
    from rlaccel import config as config_lib
    from rlaccel import sweep

    config = config_lib.load(CONFIG, [f"placement.actor.precision={precision}"])
    result = sweep.run_group(sweep.make_settings(config, {}), (), [42 + i for i in range(seeds)])
    final = result.returns()[0, :, -1]
    return {"sps": result.env_steps / result.train_s, "compile_s": result.compile_s, "final_return": float(final.mean()), "final_return_min": float(final.min()), "env_steps": result.env_steps, "devices": result.devices}


def worker(name: str) -> dict:
    kind, opts = ROWS[name]
    opts = {k: v for k, v in opts.items() if k != "xla_flags"}
    result = {"purejaxrl": work_purejaxrl, "purejaxrl_dqn": work_purejaxrl_dqn, "driver": work_driver, "vmap": work_vmap, "sweep": work_sweep, "gym_raw": work_gym_raw, "sb3": work_sb3, "host": work_host, "brax": work_brax}[kind](**opts)
    result["peak_rss_mib"] = peak_rss_mib()
    return result


# ---------------------------------------------------------------------------------------------
# Orchestration.


def run_row(name: str) -> dict:
    """One row in a fresh interpreter; returns its JSON result."""
    env = dict(os.environ)
    flags = ROWS[name][1].get("xla_flags")
    if flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        proc = subprocess.run([sys.executable, __file__, "--worker", name, "--result", out.name], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            return {"error": " | ".join(tail)}
        return json.loads(Path(out.name).read_text())


def machine() -> dict:
    import jax

    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__, "backend": jax.default_backend()}


def fmt(value: object, spec: str = ",.0f") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def print_table(results: dict[str, dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="CartPole-v1, 500k env steps per seed: PPO (4 envs x 128 steps, 2x64 tanh) and DQN (10 envs, PureJaxRL's configuration)")
    for col in ("row", "env steps/s", "vs baseline", "compile s", "return", "actor sps", "learner sps", "latency p50 us", "p99 us", "peak RSS MiB"):
        table.add_column(col, justify="right" if col != "row" else "left")
    for name, r in results.items():
        if "error" in r:
            table.add_row(name, f"error: {r['error'][:60]}", *[""] * 8)
            continue
        base = results.get(BASELINE_FOR.get(name, ""), {})
        ratio = f"{r['sps'] / base['sps']:.2f}x" if base.get("sps") else "-"
        ret = fmt(r["final_return"], ".1f") + (f" (min {r['final_return_min']:.0f})" if "final_return_min" in r else "")
        table.add_row(
            name, fmt(r["sps"]), ratio, fmt(r["compile_s"], ".1f"), ret, fmt(r.get("actor_sps")), fmt(r.get("learner_sps")),
            fmt(r.get("latency_us_p50"), ".0f"), fmt(r.get("latency_us_p99"), ".0f"), fmt(r.get("peak_rss_mib"), ".0f"),
        )
    Console(width=max(Console().width, 170)).print(table)
    fp, q = results.get("fused_fp32", {}), results.get("fused_int8", {})
    if fp.get("sps") and q.get("sps"):
        print(f"fused int8 actors vs fused fp32 actors: {100 * (q['sps'] / fp['sps'] - 1):+.1f} % env steps/s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of: {', '.join(ROWS)}")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "cartpole_cpu.json"), help="JSON output path")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        Path(args.result).write_text(json.dumps(worker(args.worker)))
        return 0

    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        print(f"error: unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}", file=sys.stderr)
        return 2
    results = {}
    for name in names:
        start = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_row(name)
        print(f"  {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "cartpole_ppo_dqn", "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(), "config": str(CONFIG.relative_to(ROOT)), "rows": results}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

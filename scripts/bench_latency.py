#!/usr/bin/env python3
"""Decision latency of an exported policy on every runtime, in one run.

    python scripts/bench_latency.py                          # trains 2x64 CartPole, Pendulum, HalfCheetah policies first
    python scripts/bench_latency.py --policy runs/x/policy.rlpolicy [--policy ...]

For each policy and backend (numpy-int8, numpy-fp32, onnx-int8, onnx-fp32, and the same
network as a ``jax.jit`` call: ``jax`` = the actors' int8 ``rlaccel.quant`` code,
``jax-fp32``): ``policy.act`` timed one call at a time with ``time.perf_counter_ns``, at
batch 1 (``--calls`` calls, a different observation each time, drawn from gymnasium
episodes) and batch 64, after a warm-up; p50 / p99 in µs. The ratio column is against
numpy-fp32 measured in the same run (absolute figures drift on shared machines). Peak RSS
is the process's (``ru_maxrss``) after each backend, so it grows along the table (the jax
rows add JAX itself); training and export run in subprocesses.
Prints a table and writes ``benchmarks/deploy_latency.json``.

Single-threaded by design (one core of a robot's controller): BLAS and onnxruntime get one
thread each.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import datetime
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ["numpy-int8", "numpy-fp32", "onnx-int8", "onnx-fp32", "jax", "jax-fp32"]
TRAIN = {  # small runs: latency does not depend on how well the policy plays
    "CartPole-v1": (ROOT / "configs" / "ppo_cartpole.yaml", ["total_timesteps=98304"]),
    "Pendulum-v1": (ROOT / "configs" / "ppo_pendulum.yaml", ["total_timesteps=32768"]),
    # obs 17 -> 64 -> 64 -> 6: the network of shared/REFERENCE.md's latency table (host actors, MuJoCo)
    "HalfCheetah-v5": (ROOT / "configs" / "ppo_halfcheetah.yaml", ["total_timesteps=4096", "logging.log_interval=1"]),
}


def _observations(policy, n: int, seed: int = 0) -> np.ndarray:
    """``[n, obs_dim]`` float32 observations of gymnasium's env played by ``policy``."""
    import gymnasium as gym

    from rlaccel.deploy.evaluate import gym_id

    env = gym.make(gym_id(policy.meta["env"]))
    obs, rows = env.reset(seed=seed)[0], []
    while len(rows) < n:
        rows.append(np.asarray(obs, np.float32))
        obs, _, term, trunc, _ = env.step(policy.act(rows[-1]))
        if term or trunc:
            obs = env.reset()[0]
    return np.stack(rows)


def _time_calls(act, inputs: np.ndarray, warmup: int) -> np.ndarray:
    """Microseconds of each blocking ``act(x)`` for ``x`` in ``inputs``."""
    for x in inputs[:warmup]:
        act(x)
    out = np.empty(len(inputs))
    clock = time.perf_counter_ns
    for i, x in enumerate(inputs):
        t = clock()
        act(x)
        out[i] = clock() - t
    return out / 1e3


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--policy", action="append", default=[], help="a .rlpolicy file (repeatable); default: train and export two")
    p.add_argument("--calls", type=int, default=20000, help="batch-1 calls per backend")
    p.add_argument("--batch-calls", type=int, default=2000, help="batch-64 calls per backend")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "deploy_latency.json"))
    args = p.parse_args()
    backends = args.backends.split(",")

    from rlaccel.deploy import load_policy

    paths = [Path(x) for x in args.policy]
    if not paths:  # train and export in subprocesses, so this process's peak RSS is the runtimes' alone
        import subprocess

        tmp = Path(tempfile.mkdtemp(prefix="rlaccel_lat_"))
        for env_id, (cfg_path, overrides) in TRAIN.items():
            sets = [arg for o in overrides for arg in ("--set", o)]
            subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--config", str(cfg_path), *sets, "--run-dir", str(tmp / env_id), "--no-progress"], check=True)
            subprocess.run([sys.executable, str(ROOT / "scripts" / "export.py"), "--run", str(tmp / env_id)], check=True)
            paths.append(tmp / env_id / "policy.rlpolicy")
    load_start = os.getloadavg()
    rows = []
    for path in paths:
        ref = load_policy(path, "numpy-int8")
        net = f"{ref.obs_dim}-{'-'.join(map(str, ref.meta['policy']['hidden']))}-{ref.meta['policy']['out_dim']} {ref.meta['policy']['activation']}"
        obs = _observations(ref, args.calls)
        batches = obs[np.random.default_rng(0).integers(0, len(obs), (args.batch_calls, 64))]
        for backend in backends:
            policy = load_policy(path, backend)
            one = _time_calls(policy.act, obs, warmup=2000)
            many = _time_calls(policy.act, batches, warmup=200)
            rows.append(
                {
                    "env": ref.meta["env"],
                    "network": net,
                    "backend": backend,
                    "batch1_p50_us": float(np.percentile(one, 50)),
                    "batch1_p99_us": float(np.percentile(one, 99)),
                    "batch64_p50_us": float(np.percentile(many, 50)),
                    "batch64_p99_us": float(np.percentile(many, 99)),
                    "peak_rss_mib": _peak_rss_mib(),
                }
            )
    load_end = os.getloadavg()
    base = {r["env"]: r["batch1_p50_us"] for r in rows if r["backend"] == "numpy-fp32"}
    print("\n| env (network) | backend | batch-1 p50 / p99 µs | vs numpy-fp32 | batch-64 p50 / p99 µs | µs per obs at 64 | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ratio = r["batch1_p50_us"] / base[r["env"]] if r["env"] in base else float("nan")
        r["batch1_vs_numpy_fp32"] = ratio
        print(
            f"| {r['env']} ({r['network']}) | {r['backend']} | {r['batch1_p50_us']:.1f} / {r['batch1_p99_us']:.1f} | {ratio:.2f}x | "
            f"{r['batch64_p50_us']:.1f} / {r['batch64_p99_us']:.1f} | {r['batch64_p50_us'] / 64:.2f} | {r['peak_rss_mib']:.0f} |"
        )
    target = [r for r in rows if r["backend"] == "numpy-int8"]
    for r in target:
        verdict = "met" if r["batch1_p50_us"] <= 10.0 else "NOT met"
        print(f"must-reach numpy-int8 batch-1 p50 <= 10 µs ({r['env']}): {r['batch1_p50_us']:.2f} µs (p99 {r['batch1_p99_us']:.2f}) -> {verdict}")
    print(f"load average (1/5/15 min) at start {load_start}, at end {load_end}: figures on a shared machine are noisy")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__},
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "calls": {"batch1": args.calls, "batch64": args.batch_calls},
        "policies": [str(p) for p in paths],
    }
    out.write_text(json.dumps({**meta, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``rlaccel bench latency``: decision latency of an exported policy on every runtime, in one run.

    rlaccel bench latency                                  # trains CartPole, Pendulum, HalfCheetah policies first
    rlaccel bench latency --policy runs/x/policy.rlpolicy [--policy ...]

For each policy and backend (numpy-int8, c-int8 (the C export through ctypes), numpy-fp32,
onnx-int8, onnx-fp32, and the same
network as a ``jax.jit`` call: ``jax`` = the actors' int8 ``rlaccel.quant`` code,
``jax-fp32``): ``policy.act`` timed one call at a time with ``time.perf_counter_ns``, at
batch 1 (``--calls`` calls, a different observation each time, drawn from gymnasium
episodes) and batch 64, after a warm-up; p50 / p99 in µs. The ratio column is against
numpy-fp32 measured in the same run (absolute figures drift on shared machines). Peak RSS
is the measuring process's (``ru_maxrss``) after each backend, so it grows along the table
(the jax rows add JAX itself). Training (``rlaccel.train``), export and the measurement each
run in a subprocess of their own, so the measurement's peak RSS is the runtimes' alone.
Prints a table and writes ``benchmarks/deploy_latency.json``. Beside it, per policy: the bare C
call's ns per decision (a loop inside the C library, no Python) and the NPU placement's
decision latency as **Arm Vela's estimate** (the vendor compiler's performance model for
Ethos-U55-128 and U65-256 on the ``tflite-int8io`` model: not a measurement).

Single-threaded by design (one core of a robot's controller): BLAS and onnxruntime get one
thread each (``OPENBLAS_NUM_THREADS`` etc. are set to 1 for the subprocesses).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rlaccel.argtypes import positive_int
from rlaccel.bench.rows import CONFIGS, ROOT
from rlaccel.fileio import write_json

DESCRIPTION = "Decision latency of exported policies on every runtime (numpy, onnxruntime, jax; int8 and fp32), in one run."
BACKENDS = ["numpy-int8", "c-int8", "numpy-fp32", "onnx-int8", "onnx-fp32", "jax", "jax-fp32"]
DEFAULT_OUT = ROOT / "benchmarks" / "deploy_latency.json"
TRAIN = {  # small runs: latency does not depend on how well the policy plays
    "CartPole-v1": ("ppo_cartpole.yaml", ["total_timesteps=98304"]),
    "Pendulum-v1": ("ppo_pendulum.yaml", ["total_timesteps=32768"]),
    # obs 17 -> 64 -> 64 -> 6: the network of shared/REFERENCE.md's latency table (host actors, MuJoCo)
    "HalfCheetah-v5": ("ppo_halfcheetah.yaml", ["total_timesteps=4096", "logging.log_interval=1"]),
}
SINGLE_THREAD = dict.fromkeys(("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"), "1")
_TRAIN = "import sys; from rlaccel.bench.latency import train_and_export; train_and_export(*sys.argv[1:])"
_MEASURE = "import sys; from rlaccel.bench.latency import measure_main; sys.exit(measure_main(sys.argv[1]))"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", action="append", default=[], help="a .rlpolicy file (repeatable); default: train and export three")
    p.add_argument("--calls", type=positive_int, default=20000, help="batch-1 calls per backend")
    p.add_argument("--batch-calls", type=positive_int, default=2000, help="batch-64 calls per backend")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of: %(default)s")
    p.add_argument("--out", dest="latency_out", metavar="OUT", help=f"JSON output path (default {DEFAULT_OUT.relative_to(ROOT)})")


def run(args: argparse.Namespace) -> int:
    """Train and export the policies (unless ``--policy``), then measure; the exit code."""
    from rlaccel.bench.table import pick

    try:
        backends = pick(args.backends, BACKENDS, noun="backend")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    missing = [p for p in args.policy if not Path(p).is_file()]
    if missing:
        print(f"error: --policy {missing[0]}: no such file", file=sys.stderr)
        return 2
    env = {**os.environ, **SINGLE_THREAD}
    failed = []
    with tempfile.TemporaryDirectory(prefix="rlaccel_lat_") as tmp:
        paths, sources = [str(Path(p).resolve()) for p in args.policy], list(args.policy)
        if not paths:
            for env_id, (config, overrides) in TRAIN.items():
                print(f"training and exporting {env_id} ({config} {' '.join(overrides)}) ...", file=sys.stderr, flush=True)
                run_dir = Path(tmp) / env_id
                proc = subprocess.run([sys.executable, "-c", _TRAIN, env_id, str(run_dir)], check=False, env=env)
                if proc.returncode != 0:
                    print(f"error: training or exporting the {env_id} policy failed (exit code {proc.returncode}); measuring the others", file=sys.stderr)
                    failed.append(env_id)
                    continue
                paths.append(str(run_dir / "policy.rlpolicy"))
                sources.append(f"configs/{config} {' '.join(overrides)}")
        if paths:
            params = {"paths": paths, "sources": sources, "backends": backends, "calls": args.calls, "batch_calls": args.batch_calls, "out": str(args.latency_out or DEFAULT_OUT)}
            proc = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(params)], check=False, env=env)
            if proc.returncode != 0:
                print(f"error: the latency measurement failed (exit code {proc.returncode})", file=sys.stderr)
                failed.append("measurement")
    if failed:
        print(f"error: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def train_and_export(env_id: str, run_dir: str) -> None:
    """Train ``TRAIN[env_id]`` into ``run_dir`` and export ``run_dir/policy.rlpolicy``."""
    import rlaccel
    from rlaccel.deploy.export import export

    config, overrides = TRAIN[env_id]
    rlaccel.train(str(CONFIGS / config), overrides=list(overrides), run_dir=run_dir, progress=False)
    export(run_dir)


# ---------------------------------------------------------------------------------------------
# The measurement (in its own process).


def _observations(policy: Any, n: int, seed: int = 0) -> Any:
    """``[n, obs_dim]`` float32 observations of gymnasium's env played by ``policy``."""
    import gymnasium as gym
    import numpy as np

    from rlaccel.deploy.evaluate import gym_id

    env = gym.make(gym_id(policy.meta["env"]))
    obs, rows = env.reset(seed=seed)[0], []
    while len(rows) < n:
        rows.append(np.asarray(obs, np.float32))
        obs, _, term, trunc, _ = env.step(policy.act(rows[-1]))
        if term or trunc:
            obs = env.reset()[0]
    return np.stack(rows)


def _time_calls(act: Any, inputs: Any, warmup: int) -> Any:
    """Microseconds of each blocking ``act(x)`` for ``x`` in ``inputs``."""
    import numpy as np

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


def measure(paths: list[str], backends: list[str], calls: int, batch_calls: int) -> list[dict]:
    """One row per policy and backend: batch-1 and batch-64 p50 / p99 µs and peak RSS."""
    import numpy as np

    from rlaccel.deploy import load_policy

    rows = []
    for path in paths:
        ref = load_policy(path, "numpy-int8")
        net = f"{ref.obs_dim}-{'-'.join(map(str, ref.meta['policy']['hidden']))}-{ref.meta['policy']['out_dim']} {ref.meta['policy']['activation']}"
        obs = _observations(ref, calls)
        batches = obs[np.random.default_rng(0).integers(0, len(obs), (batch_calls, 64))]
        for backend in backends:
            policy = load_policy(path, backend)
            one = _time_calls(policy.act, obs, warmup=min(2000, calls))
            many = _time_calls(policy.act, batches, warmup=min(200, batch_calls))
            rows.append(
                {
                    "env": ref.meta["env"],
                    "network": net,
                    "backend": backend,
                    "batch1_p50_us": float(np.percentile(one, 50)),
                    "batch1_p95_us": float(np.percentile(one, 95)),
                    "batch1_p99_us": float(np.percentile(one, 99)),
                    "batch64_p50_us": float(np.percentile(many, 50)),
                    "batch64_p99_us": float(np.percentile(many, 99)),
                    "peak_rss_mib": _peak_rss_mib(),
                }
            )
    return rows


def npu_rows(paths: list[str]) -> list[dict]:
    """Per policy: the bare C call (ns per decision) and Vela's estimate for two Ethos-U NPUs."""
    from rlaccel.deploy import load_policy
    from rlaccel.deploy.artifact import int8_tables
    from rlaccel.deploy.tflite_model import tflite_bytes
    from rlaccel.deploy.vela import vela_estimate

    rows = []
    for path in paths:
        c = load_policy(path, "c-int8")
        policy = c.meta["policy"]
        row: dict[str, Any] = {"env": c.meta["env"], "c_bare_ns_per_decision": c.c.bench_bare_ns()}
        if policy["int8_profile"] == "tflite":
            model = tflite_bytes(int8_tables(c.artifact).model, "tflite", policy["activation"], int8_io=True)
            for npu in ("ethos-u55-128", "ethos-u65-256"):
                est = vela_estimate(model, npu)
                row[npu] = {"inference_time_us": est["inference_time_s"] * 1e6, "cycles": est["cycles_per_inference"], "clock_mhz": est["clock_hz"] / 1e6}
        rows.append(row)
    return rows


def print_npu_rows(rows: list[dict]) -> None:
    print("\n| env | bare C call, ns per decision | Ethos-U55-128 (Vela's estimate) | Ethos-U65-256 (Vela's estimate) |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        cells = [f"{r[n]['inference_time_us']:.1f} µs, {r[n]['cycles']:,.0f} cycles at {r[n]['clock_mhz']:.0f} MHz" if n in r else "-" for n in ("ethos-u55-128", "ethos-u65-256")]
        print(f"| {r['env']} | {r['c_bare_ns_per_decision']:.0f} | {cells[0]} | {cells[1]} |")
    print("NPU figures are Arm Vela's performance estimate for the int8-in / int8-out model (the vendor compiler's model), not measurements.")


def print_rows(rows: list[dict]) -> None:
    """The markdown table (ratios against numpy-fp32 of the same run, added to ``rows``) and the
    numpy-int8 batch-1 target."""
    base = {r["env"]: r["batch1_p50_us"] for r in rows if r["backend"] == "numpy-fp32"}
    print("\n| env (network) | backend | batch-1 p50 / p95 / p99 µs | vs numpy-fp32 | batch-64 p50 / p99 µs | µs per obs at 64 | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ratio = r["batch1_p50_us"] / base[r["env"]] if r["env"] in base else float("nan")
        r["batch1_vs_numpy_fp32"] = ratio
        print(
            f"| {r['env']} ({r['network']}) | {r['backend']} | {r['batch1_p50_us']:.1f} / {r['batch1_p95_us']:.1f} / {r['batch1_p99_us']:.1f} | {ratio:.2f}x | "
            f"{r['batch64_p50_us']:.1f} / {r['batch64_p99_us']:.1f} | {r['batch64_p50_us'] / 64:.2f} | {r['peak_rss_mib']:.0f} |"
        )
    for r in rows:
        # issue 13's targets: numpy-int8 on every policy, c-int8 on the CartPole 2x64 one
        limit = {"numpy-int8": 10.0, "c-int8": 2.0 if r["env"] == "CartPole-v1" else None}.get(r["backend"])
        if limit is not None:
            verdict = "met" if r["batch1_p50_us"] <= limit else "NOT met"
            print(f"must-reach {r['backend']} batch-1 p50 <= {limit:g} µs ({r['env']}): {r['batch1_p50_us']:.2f} µs (p99 {r['batch1_p99_us']:.2f}) -> {verdict}")


def measure_main(params_json: str) -> int:
    """Entry of the measuring subprocess: measure, print, write the JSON."""
    import numpy as np

    from rlaccel.bench.table import cpu_info, describe_cpu

    params = json.loads(params_json)
    load_start = os.getloadavg()
    rows = measure(params["paths"], params["backends"], params["calls"], params["batch_calls"])
    npu = npu_rows(params["paths"])
    load_end = os.getloadavg()
    print_rows(rows)
    print_npu_rows(npu)
    info = {**cpu_info(), "python": platform.python_version(), "numpy": np.__version__}
    print(f"machine: {describe_cpu(info)}; Python {info['python']}, numpy {info['numpy']}")
    print(f"load average (1/5/15 min) at start {load_start}, at end {load_end}: figures on a shared machine are noisy")
    out = Path(params["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": info,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "calls": {"batch1": params["calls"], "batch64": params["batch_calls"]},
        "policies": params["sources"],
    }
    write_json(out, {**meta, "rows": rows, "c_and_npu": npu})
    print(f"wrote {out}")
    return 0

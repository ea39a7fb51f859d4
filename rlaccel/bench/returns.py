"""``rlaccel bench returns``: returns of the exported int8 policy against the fp32 one.

    rlaccel bench returns                                   # trains CartPole (500k) and Pendulum (400k)
    rlaccel bench returns --run runs/a --run runs/b --episodes 100

Each run is trained with ``rlaccel.train`` from the shipped config (unless ``--run``
names existing runs), exported with ``rlaccel.deploy.export``, and both the numpy-int8 and
numpy-fp32 runtimes play the same ``--episodes`` episodes of gymnasium's own environment
(episode ``i`` seeded ``1000 + i``). Prints a table and writes ``benchmarks/deploy_returns.json``.
Must-reach: int8 mean return within 2 % of fp32's.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

from rlaccel.fileio import write_json

from rlaccel.argtypes import positive_int
from rlaccel.bench.rows import ROOT

DESCRIPTION = "Returns of the exported int8 policy against the fp32 one, on gymnasium's own envs."
CONFIGS = {"CartPole-v1": ROOT / "configs" / "ppo_cartpole.yaml", "Pendulum-v1": ROOT / "configs" / "ppo_pendulum.yaml"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``rlaccel bench returns``."""
    p.add_argument("--run", action="append", default=[], help="existing run directory (repeatable); default: train the shipped configs")
    p.add_argument("--episodes", type=positive_int, default=100)
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "deploy_returns.json"))


def run(args: argparse.Namespace) -> int:
    """Train (or take ``--run``), export, play both runtimes; 0 when int8 is within 2 % of fp32."""

    from rlaccel import config as config_lib
    import rlaccel
    from rlaccel.deploy import load_policy
    from rlaccel.deploy.evaluate import episode_returns
    from rlaccel.deploy.export import export

    runs = [Path(r) for r in args.run]
    tmp = None
    if not runs:
        tmp = tempfile.mkdtemp(prefix="rlaccel_eval_")
        for env_id, cfg_path in CONFIGS.items():
            cfg = config_lib.load(cfg_path, [f"seed={args.seed}", "logging.progress=false", "logging.tensorboard=false"])
            run_dir = Path(tmp) / env_id
            start = time.perf_counter()
            summary = rlaccel.train(cfg, run_dir=run_dir, progress=False).summary
            print(f"trained {env_id}: {summary['env_steps']:,} steps, training-time return {summary['final_return']:.1f}, {time.perf_counter() - start:.0f} s", flush=True)
            runs.append(run_dir)
    rows = []
    for run_dir in runs:
        path = export(run_dir)
        results = {}
        for backend in ("numpy-int8", "numpy-fp32"):
            policy = load_policy(path, backend)
            r = episode_returns(policy, policy.meta["env"], args.episodes, seed=1000)
            results[backend] = {"mean": float(r.mean()), "std": float(r.std()), "min": float(r.min()), "max": float(r.max())}
        i8, f32 = results["numpy-int8"]["mean"], results["numpy-fp32"]["mean"]
        rel = abs(i8 - f32) / abs(f32)
        rows.append({"env": policy.meta["env"], "run": str(run_dir), "env_steps": policy.meta["source"]["env_steps"], "episodes": args.episodes, **results, "rel_diff": rel, "within_2pct": rel <= 0.02})
    print("\n| env | env steps | int8 mean return (std) | fp32 mean return (std) | |int8 - fp32| / |fp32| | within 2 % |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        a, b = r["numpy-int8"], r["numpy-fp32"]
        print(f"| {r['env']} | {r['env_steps']:,} | {a['mean']:.1f} ({a['std']:.1f}) | {b['mean']:.1f} ({b['std']:.1f}) | {100 * r['rel_diff']:.2f} % | {'yes' if r['within_2pct'] else 'NO'} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"date": datetime.datetime.now().isoformat(timespec="seconds"), "seed": args.seed, "rows": rows})
    print(f"\nwrote {out}")
    return 0 if all(r["within_2pct"] for r in rows) else 1


"""``rlaccel bench parallel``: one run on 1 device, on 2 devices, and on 2 processes x 1 device.

    rlaccel bench parallel                                   # every row, the configs' budgets
    rlaccel bench parallel --timesteps 65536                 # a quick check that rows run
    rlaccel bench parallel --rows brax_pendulum_1dev,brax_pendulum_2dev

Each row is ``rlaccel train`` (the whole path: TensorBoard, checkpoints, probes) in fresh
processes with ``XLA_FLAGS=--xla_force_host_platform_device_count=<devices per process>``:

* ``<config>_1dev``: one process, one CPU device (the fused program);
* ``<config>_2dev``: one process, ``placement.learner.devices=2`` (``rlaccel.sources.parallel``);
* ``<config>_2proc``: two processes on 127.0.0.1 with one CPU device each (``--coordinator``,
  gloo), the speed process 0 reports.

Configs: ``brax_pendulum`` = ``configs/ppo_brax_inverted_pendulum.yaml`` (256 envs);
``cartpole64`` = ``configs/ppo_cartpole.yaml`` with ``ppo.n_envs=64``. ``sps`` is env steps
per second of training, compile excluded (``summary.json``); ratios are to the ``_1dev`` row
of the same config, measured in the same invocation. Targets (issue 17, a quiet 2-core CPU):
brax_pendulum 2dev >= 1.6x, 2proc >= 1.4x. Prints a table and writes
``benchmarks/parallel_cpu.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rlaccel.argtypes import positive_int
from rlaccel.bench.rows import CONFIGS, ROOT
from rlaccel.fileio import write_json

DESCRIPTION = "Data parallelism: the same run on 1 CPU device, 2 devices and 2 processes x 1 device (env steps/s, ratios)."
DEFAULT_OUT = ROOT / "benchmarks" / "parallel_cpu.json"
CONFIGS_USED = {
    "brax_pendulum": ("ppo_brax_inverted_pendulum.yaml", []),
    "cartpole64": ("ppo_cartpole.yaml", ["ppo.n_envs=64"]),
}
LAYOUTS = {"1dev": (1, 1), "2dev": (1, 2), "2proc": (2, 1)}  # (processes, devices per process)
ROWS = [f"{c}_{layout}" for c in CONFIGS_USED for layout in LAYOUTS]
TARGETS = {"brax_pendulum_2dev": 1.6, "brax_pendulum_2proc": 1.4}
TIMEOUT_S = 3600


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", dest="parallel_rows", default=",".join(ROWS), help=f"comma-separated subset of: {', '.join(ROWS)}")
    p.add_argument("--timesteps", dest="parallel_timesteps", type=positive_int, help="env steps per row instead of the config's: a check that rows run, not a measurement")
    p.add_argument("--out", dest="parallel_out", metavar="OUT", help=f"JSON output path (default {DEFAULT_OUT.relative_to(ROOT)})")


def run(args: argparse.Namespace) -> int:
    """Every row in its own process(es); the table and the JSON. Exit code 1 if a row failed, 2 for unknown rows."""
    from rlaccel.bench.table import cpu_info, describe_cpu, pick

    try:
        names = pick(args.parallel_rows, ROWS)
    except ValueError as e:
        print(f"error: --rows: {e}", file=sys.stderr)
        return 2
    rows = {}
    for name in names:
        start = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows[name] = run_row(name, args.parallel_timesteps)
        print(f"  {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    for name, row in rows.items():
        base = rows.get(name.rsplit("_", 1)[0] + "_1dev", {})
        if row.get("sps") and base.get("sps"):
            row["vs_1dev"] = row["sps"] / base["sps"]
    info = cpu_info()
    print_rows(rows, describe_cpu(info))
    path = Path(args.parallel_out or DEFAULT_OUT)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "parallel", "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": info, "timesteps": args.parallel_timesteps, "targets": TARGETS, "rows": rows}
    write_json(path, report)
    print(f"wrote {path}")
    failed = [n for n, r in rows.items() if "error" in r]
    if failed:
        print(f"error: {len(failed)} row(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def print_rows(rows: dict[str, dict], machine: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Data parallelism: the same run on 1 device, 2 devices, 2 processes x 1 device", caption=machine)
    for col in ("row", "env steps/s", "vs 1 device", "target", "compile s", "return", "env steps"):
        table.add_column(col, justify="left" if col == "row" else "right")
    for name, r in rows.items():
        if "error" in r:
            table.add_row(name, f"error: {r['error'][:80]}", "", "", "", "", "")
            continue
        ratio = f"{r['vs_1dev']:.2f}x" if "vs_1dev" in r else "-"
        target = f">= {TARGETS[name]}x" if name in TARGETS else ""
        table.add_row(name, f"{r['sps']:,.0f}", ratio, target, f"{r['compile_s']:.1f}", f"{r['final_return']:.1f}", f"{r['env_steps']:,}")
    Console(width=max(Console().width, 120)).print(table)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_row(name: str, timesteps: int | None) -> dict:
    """One row: ``rlaccel train`` in one or two fresh processes; the JSON of process 0's summary."""
    config, layout = name.rsplit("_", 1)
    path, overrides = CONFIGS_USED[config]
    processes, devices = LAYOUTS[layout]
    sets = [*overrides, "logging.checkpoint_interval=0", "eval.freq=0", *([f"placement.learner.devices={devices}"] if devices > 1 else [])]
    if timesteps:
        sets.append(f"total_timesteps={timesteps}")
    from rlaccel.compile_cache import bench_env

    env = bench_env({**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"})
    with tempfile.TemporaryDirectory(prefix="rlaccel_bench_") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "rlaccel", "train", "--config", str(CONFIGS / path), "--run-dir", str(run_dir), "--no-progress"]
        cmd += [arg for item in sets for arg in ("--set", item)]
        if processes > 1:
            coordinator = f"127.0.0.1:{_free_port()}"
            cmds = [[*cmd, "--coordinator", coordinator, "--num-processes", str(processes), "--process-id", str(i)] for i in range(processes)]
        else:
            cmds = [cmd]
        procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
        outputs = []
        try:
            for p in procs:
                outputs.append(p.communicate(timeout=TIMEOUT_S))
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {TIMEOUT_S} s"}
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        codes = [p.returncode for p in procs]
        if any(codes) or not (run_dir / "summary.json").is_file():
            from rlaccel.bench.table import error_line

            first = next((i for i, c in enumerate(codes) if c), 0)
            print(f"  {name} failed (exit codes {codes}):\n" + "\n".join("    " + line for line in outputs[first][1].splitlines()[-30:]), file=sys.stderr)
            return {"error": error_line(outputs[first][1] or outputs[first][0] or f"exit codes {codes}")}
        s = json.loads((run_dir / "summary.json").read_text())
    return {
        "sps": s["sps"],
        "compile_s": s["compile_s"],
        "final_return": s["final_return"],
        "env_steps": s["env_steps"],
        "processes": processes,
        "devices_per_process": devices,
        "placement": s["placement"],
        "process_sps": s.get("process_sps"),
        "actor_sps": s.get("time/actor_sps"),
        "learner_sps": s.get("time/learner_sps"),
    }

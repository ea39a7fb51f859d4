"""The main ``rlaccel bench`` table: run rows in subprocesses, print, write JSON.

Speeds are compared as ratios to the baseline row measured in the same invocation
(``rows.BASELINE_FOR``): absolute figures drift on shared machines. ``to result s`` is each
row's ``time_to_result_s`` (process start to finished agent, compile included), compared the
same way (``baseline / row``: above 1 is sooner). Rows run without JAX's persistent compilation
cache (``rlaccel.compile_cache.bench_env``), so every compile is counted: cold starts; with
``--warm-cache`` each row runs once first to fill a fresh cache, and the figures are warm starts. A row that fails is shown
as ``error`` in the table and the JSON, and makes the command exit 1 after both are written.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from rlaccel.bench.rows import BASELINE_FOR, CONFIG, ROOT, ROWS
from rlaccel.fileio import atomic_write, write_json

EXIT_ROWS_FAILED = 1
EXIT_USAGE = 2
DEFAULT_OUT = ROOT / "benchmarks" / "cartpole_cpu.json"
TITLE = "CartPole-v1, 500k env steps per seed: PPO (4 envs x 128 steps, 2x64 tanh) and DQN (10 envs, PureJaxRL's configuration)"
# CPU features that decide JAX/XLA's CPU kernels and int8 speed (shown when present)
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile", "asimd", "sve")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Fault)\b")
_WORKER = "import sys; from rlaccel.bench.rows import worker_main; sys.exit(worker_main(sys.argv[1:]))"


def run_row(name: str, timesteps: int | None = None, compile_cache: str | None = None, timeout_s: float | None = None) -> dict:
    """One row in a fresh interpreter; its JSON, or ``{"error": ...}`` (the last line of its
    stderr; the last 30 are echoed to this process's stderr; or the timeout, after which the
    row's process is killed). Without ``compile_cache`` the row compiles everything (a cold
    start, part of time_to_result_s). The row's temporary files (its run directory) are made
    in this call's own (``TMPDIR``), removed when it returns, a killed row's too."""
    from rlaccel.compile_cache import bench_env

    env = bench_env(os.environ, compile_cache)
    if timesteps:
        env["RLACCEL_BENCH_TIMESTEPS"] = str(timesteps)
    opts = ROWS[name][1]
    if opts.get("xla_flags"):
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + opts["xla_flags"]).strip()
    if opts.get("platforms"):  # JAX sees only these (a baseline pinned to the host's CPU)
        env["JAX_PLATFORMS"] = opts["platforms"]
    with tempfile.TemporaryDirectory(prefix="rlaccel_bench_") as tmp:
        result = Path(tmp) / "result.json"
        env["TMPDIR"] = tmp  # the row's own temporary files (its run directory) go here, removed below even after a kill
        try:
            proc = subprocess.run([sys.executable, "-c", _WORKER, name, str(result)], check=False, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            print(f"  {name} timed out after {timeout_s:.0f} s", file=sys.stderr)
            return {"error": f"timed out after {timeout_s:.0f} s (--row-timeout)"}
        if proc.returncode == 0 and result.is_file():
            return json.loads(result.read_text())
    output = (proc.stderr or proc.stdout or f"exit code {proc.returncode}").strip()
    print(f"  {name} failed (exit code {proc.returncode}):\n" + "\n".join("    " + line for line in output.splitlines()[-30:]), file=sys.stderr)
    return {"error": error_line(output)}


def error_line(output: str) -> str:
    """The exception line of a traceback in ``output`` (the last one; JAX adds lines after
    it), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if _EXCEPTION.match(line):
            return line
    return lines[-1] if lines else "no output"


def cpu_info() -> dict:
    """CPU model and the features in ``CPU_FLAGS`` it has (from ``/proc/cpuinfo``)."""
    model, flags = None, None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key in ("flags", "Features") and flags is None:
                    flags = [x for x in CPU_FLAGS if x in set(value.split())]
    except OSError:
        pass
    return {"cpu": model or platform.processor() or platform.machine(), "cpu_flags": flags or [], "cores": os.cpu_count()}


def machine() -> dict:
    """:func:`cpu_info`, Python, JAX, its default backend and, beside the CPU, its accelerator
    (``"NVIDIA H200 x1"``: device kind and count; ``None`` on a CPU-only machine)."""
    import jax

    devices = jax.devices()
    accelerator = None if devices[0].platform == "cpu" else f"{devices[0].device_kind} x{len(devices)}"
    return {**cpu_info(), "python": platform.python_version(), "jax": jax.__version__, "backend": jax.default_backend(), "accelerator": accelerator}


def describe_cpu(m: dict) -> str:
    """CPU model, cores and features, in one line."""
    return f"{m['cpu']}, {m['cores']} cores, flags: {' '.join(m['cpu_flags']) or '-'}"


def describe(m: dict) -> str:
    """One line: CPU model, cores, features, the accelerator if any, Python and JAX."""
    accelerator = f"; accelerator: {m['accelerator']}" if m.get("accelerator") else ""
    return f"{describe_cpu(m)}{accelerator}; Python {m['python']}, JAX {m['jax']} ({m['backend']})"


def fmt(value: object, spec: str = ",.0f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


COLUMNS = ("row", "env steps/s", "peak RSS MiB", "vs baseline", "compile s", "to result s", "sooner", "return", "actor sps", "learner sps", "latency p50 us", "p99 us")


def table_rows(results: dict[str, dict]) -> list[list[str]]:
    """One list of cells (:data:`COLUMNS`) per row: ratios against the baseline of the same run."""
    out = []
    for name, r in results.items():
        if "error" in r:
            out.append([name, f"error: {r['error'][:80]}", *[""] * (len(COLUMNS) - 2)])
            continue
        base = results.get(BASELINE_FOR.get(name, ""), {})
        ratio = f"{r['sps'] / base['sps']:.2f}x" if base.get("sps") else "-"
        sooner = f"{base['time_to_result_s'] / r['time_to_result_s']:.2f}x" if base.get("time_to_result_s") and r.get("time_to_result_s") else "-"
        ret = fmt(r.get("final_return"), ".1f") + (f" (min {r['final_return_min']:.0f})" if r.get("final_return_min") is not None else "")
        out.append([
            name, fmt(r["sps"]), fmt(r.get("peak_rss_mib"), ".0f"), ratio, fmt(r.get("compile_s"), ".1f"), fmt(r.get("time_to_result_s"), ".1f"), sooner, ret, fmt(r.get("actor_sps")),
            fmt(r.get("learner_sps")), fmt(r.get("latency_us_p50"), ".0f"), fmt(r.get("latency_us_p99"), ".0f"),
        ])  # fmt: skip
    return out


def notes(results: dict[str, dict]) -> list[str]:
    """The lines printed under the table: int8 against fp32 acting, what pipelining could reach."""
    out = []
    fp, q = results.get("fused_fp32", {}), results.get("fused_int8", {})
    if fp.get("sps") and q.get("sps"):
        out.append(f"fused int8 actors vs fused fp32 actors: {100 * (q['sps'] / fp['sps'] - 1):+.1f} % env steps/s")
    solve = results.get("fused_int8_to_500", {})
    if solve.get("env_steps") and solve.get("time_to_result_s"):
        out.append(f"fused_int8_to_500: the int8 policy's greedy evaluation reached {fmt(solve.get('eval_return'), '.1f')} after {fmt(solve['env_steps'])} env steps, {solve['time_to_result_s']:.1f} s from process start (stops there: not PureJaxRL's work)")
    for name, r in results.items():
        if r.get("policy_lag") and "one program" in (r.get("placement") or ""):  # the probe's learner speed is the step's
            out.append(f"{name}: {fmt(r['sps'])} env steps/s pipelined as one program over both devices; acting alone {fmt(r.get('actor_sps'))} (probe: the program acting only)")
        elif r.get("policy_lag") and r.get("actor_sps") and r.get("learner_sps"):  # pipelined: both devices busy at once
            bound, serial = min(r["actor_sps"], r["learner_sps"]), 1 / (1 / r["actor_sps"] + 1 / r["learner_sps"])
            out.append(f"{name}: {fmt(r['sps'])} env steps/s pipelined; min(actor, learner) = {fmt(bound)} if acting and learning overlap fully, {fmt(serial)} if in turn (probe speeds, blocking)")
    return out


def print_table(results: dict[str, dict], machine_info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=TITLE, caption=describe(machine_info))
    for col in COLUMNS:
        table.add_column(col, justify="left" if col == "row" else "right")
    for cells in table_rows(results):
        table.add_row(*cells)
    Console(width=max(Console().width, 170)).print(table)
    for line in notes(results):
        print(line)


def markdown(results: dict[str, dict], machine_info: dict, date: str, repeat: int = 1, warm_cache: bool = False) -> str:
    """The table as markdown (written beside the JSON; docs/benchmarks.md quotes it)."""
    lines = [f"{TITLE}", "", f"{date}; {describe(machine_info)}" + (f"; each row the median of {repeat} runs, rows in turn" if repeat > 1 else "") + ("; warm starts (compilation cache filled by an unmeasured run of each row)" if warm_cache else ""), "", "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(results)]
    return "\n".join([*lines, "", *notes(results), ""])


def pick(text: str, choices: Iterable[str], noun: str = "row") -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``, each one of ``choices``; raises ``ValueError`` naming the
    unknown ones (every bench subcommand's ``--rows``-like option)."""
    choices = list(choices)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in choices]
    if unknown or not names:
        raise ValueError(f"unknown {noun}(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(choices)}")
    return names


def parse_rows(text: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``; raises ``ValueError`` naming unknown rows."""
    return pick(text, ROWS)


def median_run(runs: list[dict]) -> dict:
    """One row's figures from its repeats: the run with the median env steps/s (the lower
    middle of an even count), its ``time_to_result_s`` replaced by the median of the runs', and
    ``repeats`` (every run's ``sps`` and ``time_to_result_s``, in the order they ran). Any
    failed run makes the row an error."""
    failed = [r for r in runs if "error" in r]
    if failed or len(runs) == 1:
        return failed[0] if failed else runs[0]
    by_sps = sorted(runs, key=lambda r: r["sps"])
    ttrs = sorted(r["time_to_result_s"] for r in runs if r.get("time_to_result_s") is not None)
    out = dict(by_sps[(len(runs) - 1) // 2])
    if ttrs:
        out["time_to_result_s"] = ttrs[(len(ttrs) - 1) // 2]
    out["repeats"] = [{"sps": r["sps"], "time_to_result_s": r.get("time_to_result_s")} for r in runs]
    return out


def run(rows: str, out: str | Path | None = None, timesteps: int | None = None, repeat: int = 1, warm_cache: bool = False, row_timeout: float | None = None) -> int:
    """Run ``rows`` (comma-separated names) ``repeat`` times in turn (round robin, so a drift of
    the machine's speed reaches every row alike), keep each row's median run
    (:func:`median_run`), print the table, write the JSON; 0, or 1 if a row failed (after
    printing and writing), or 2 for unknown rows or ``repeat < 1``. ``timesteps`` shortens the
    CartPole rows (``rows.RLACCEL_BENCH_TIMESTEPS``): a check that they run. ``warm_cache``:
    every row (baselines too) first runs once, unmeasured, to fill a fresh compilation cache
    that its measured runs then use (warm starts; default cold, no cache). ``row_timeout``:
    seconds after which a row's process is killed and the row is an error. After each row the
    JSON holds every finished row's latest run (``"partial": true``), so a bench that is
    stopped keeps what it measured."""
    try:
        names = parse_rows(rows)
        if repeat < 1:
            raise ValueError(f"--repeat: must be >= 1, got {repeat}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    runs: dict[str, list[dict]] = {name: [] for name in names}
    path = Path(out) if out else DEFAULT_OUT
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"benchmark": "cartpole_ppo_dqn", "config": str(CONFIG.relative_to(ROOT)), "timesteps": timesteps or 500_000, "repeat": repeat, "compile_cache": "warm" if warm_cache else "cold"}
    with tempfile.TemporaryDirectory(prefix="rlaccel_bench_cache_") as tmp:
        cache = tmp if warm_cache else None
        for name in names if warm_cache else []:
            print(f"running {name} to fill the compilation cache (not measured) ...", file=sys.stderr, flush=True)
            run_row(name, timesteps, cache, row_timeout)
        for round_ in range(repeat):
            for name in names:
                start = time.perf_counter()
                print(f"running {name}" + (f" (round {round_ + 1} of {repeat})" if repeat > 1 else "") + " ...", file=sys.stderr, flush=True)
                runs[name].append(run_row(name, timesteps, cache, row_timeout))
                print(f"  {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
                done = {n: r[-1] for n, r in runs.items() if r}
                write_json(path, {**header, "partial": True, "machine": cpu_info(), "rows": done})
    results = {name: median_run(r) for name, r in runs.items()}
    info = machine()
    print_table(results, info)
    if timesteps:
        print(f"note: --timesteps {timesteps}: CartPole rows shortened to {timesteps:,} env steps per seed, a check that they run, not a measurement")
    date = datetime.datetime.now().isoformat(timespec="seconds")
    report = {**header, "date": date, "machine": info, "rows": results}
    write_json(path, report)
    atomic_write(path.with_suffix(".md"), markdown(results, info, date, repeat, warm_cache))
    print(f"wrote {path} and {path.with_suffix('.md').name}")
    failed = [n for n, r in results.items() if "error" in r]
    if failed:
        print(f"error: {len(failed)} row(s) failed: {', '.join(failed)}", file=sys.stderr)
        return EXIT_ROWS_FAILED
    return 0

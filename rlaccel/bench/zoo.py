"""``rlaccel bench zoo``: the RL Zoo's own hyperparameter blocks at the zoo's budgets, against
the returns the zoo publishes.

    rlaccel bench zoo                                        # 11 rows x 3 seeds + 2 SB3 rows: hours of CPU
    rlaccel bench zoo --rows ppo_pendulum,sb3_ppo_pendulum   # a subset (names: ROWS)
    rlaccel bench zoo --budget-scale 0.02 --seeds 1          # a check that rows run, not a measurement

Each row is one block of the zoo's ``hyperparams/ppo.yml`` or ``dqn.yml``, read verbatim from
``tests/data/zoo/`` (the same files ``tests/test_zoo.py`` checks, copied from the zoo at commit
:data:`ZOO_COMMIT`), built as ``rlaccel train --zoo FILE --env ID`` builds it
(``rlaccel.zoo.block_from_file``) and trained with ``rlaccel.train`` at the block's
``n_timesteps`` (times ``--budget-scale``), int8 actors, once per seed (0, 1, ...), one seed
after the other (``--jobs``: several at once), each in a fresh interpreter
(``rlaccel.bench.zoo_work``; its peak RSS is its own, and JAX's persistent compilation cache
is off, so compiles count). Evaluation as the zoo's
``train.py`` does it: every 25,000 env steps (``--eval-freq``) and after the last update,
5 deterministic episodes (``--eval-episodes``), of the int8 policy and of its fp32 source.

Per row: the seeds' final int8 evaluation, mean +- std over seeds (population std), the mean
of each seed's best evaluation, the fp32 policy's final evaluation, wall time per seed
(``summary.json``'s ``wall_s``: compile and evaluation included), env steps/s (``sps``: neither
included), the largest peak RSS, and the zoo's figure. **pass**: the seeds' mean final int8
evaluation >= the zoo's mean - 1 std (only judged at ``--budget-scale 1``).

The zoo's figures (:data:`ROWS`) are its ``benchmark.md`` (:data:`BENCHMARK_MD`): one trained
agent per row, evaluated deterministically for ~150k env steps, so its std is over evaluation
episodes of one run, not over seeds. Its MuJoCo rows are ``-v3`` envs, its blocks ``-v4``;
here they run on gymnasium's ``-v5`` (``rlaccel.zoo.resolve_env``).

``sb3_*`` rows: Stable-Baselines3's PPO or DQN on the same block (``--sb3-seeds`` seeds, default
one), built as the zoo's ``ExperimentManager`` builds it, with the zoo's ``EvalCallback``.
``sb3_ppo_pendulum`` / ``sb3_ppo_halfcheetah`` (100k and 200k env steps): the wall-clock ratio
against the rlaccel row measured in the same invocation (env steps per wall second, compile and
evaluation included on both sides). The others run at the zoo's budget on the blocks whose
published agent rlaccel's seeds miss, and are judged as rlaccel rows are (does SB3 itself,
over seeds, reach the figure of the one agent the zoo published?); they do not count in the
rows that must pass.
torch runs on one thread (``--sb3-threads``): on a busy 2-core machine SB3's HalfCheetah block
took 16x longer on two threads than on one (46 s against 2.9 s for 1,024 env steps).

``--jobs N`` runs up to N seeds (of any rows, SB3's included) at once, each its own process:
for a machine with a core for each (a GPU host has 16; on 2 cores runs side by side slow
each other, and an SB3 ratio assumes each side had its own core). The report records N.

Writes ``benchmarks/zoo_cpu.json`` (CPU model and flags as ``rlaccel bench``), a Markdown copy
of the table beside it (``.md``) and the eval curves (``.png``, ``rlaccel.bench.zoo_report``).
Exit code 1 when a run failed (after everything is written), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rlaccel.argtypes import positive_int
from rlaccel.bench.rows import ROOT
from rlaccel.bench.zoo_rows import (  # noqa: F401 - re-exported: the rows are part of this command's interface
    BENCHMARK_MD,
    HALFCHEETAH_FLOOR,
    MUST_PASS,
    ROWS,
    SB3_RATIO_FLOOR,
    ZOO_COMMIT,
    ZOO_DIR,
    Published,
    SB3Row,
    ZooRow,
    block_row,
)
from rlaccel.fileio import atomic_write, write_json
from rlaccel.zoo import EVAL_EPISODES, EVAL_FREQ  # rl_zoo3/train.py's --eval-freq / --eval-episodes defaults

DESCRIPTION = "RL Zoo blocks verbatim at the zoo's budgets, 3 seeds, int8 actors: deterministic eval against the zoo's benchmark.md, and SB3's wall clock."
DEFAULT_OUT = ROOT / "benchmarks" / "zoo_cpu.json"
EXIT_FAILED = 1
EXIT_USAGE = 2
_WORKER = "import sys; from rlaccel.bench.zoo_work import worker_main; sys.exit(worker_main(sys.argv[1:]))"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``rlaccel bench zoo`` (their ``dest`` names start with ``zoo_``: the
    parent ``rlaccel bench`` parser has a ``--rows`` and an ``--out`` of its own)."""
    p.add_argument("--rows", dest="zoo_rows", default=",".join(ROWS), metavar="ROWS", help=f"comma-separated subset of: {', '.join(ROWS)}")
    p.add_argument("--seeds", dest="zoo_seeds", type=positive_int, default=3, metavar="N", help="seeds per rlaccel row, 0..N-1 (default %(default)s)")
    p.add_argument("--budget-scale", dest="zoo_budget_scale", type=float, default=1.0, metavar="X", help="multiply every budget (n_timesteps, SB3's) by X: below 1 a check that rows run, not a measurement")
    p.add_argument("--eval-freq", dest="zoo_eval_freq", type=positive_int, default=EVAL_FREQ, metavar="STEPS", help="env steps between evaluations (default %(default)s, the zoo's)")
    p.add_argument("--eval-episodes", dest="zoo_eval_episodes", type=positive_int, default=EVAL_EPISODES, metavar="K", help="deterministic episodes per evaluation (default %(default)s, the zoo's)")
    p.add_argument("--sb3-seeds", dest="zoo_sb3_seeds", type=positive_int, default=1, metavar="N", help="seeds per SB3 row, 0..N-1 (default %(default)s)")
    p.add_argument("--sb3-threads", dest="zoo_sb3_threads", type=int, default=1, metavar="N", help="torch threads of the SB3 rows (default %(default)s; 0: torch's default, one per core)")
    p.add_argument("--set", dest="zoo_set", action="append", default=[], metavar="KEY=VALUE", help="an override for every rlaccel run (repeatable), e.g. logging.log_interval=32")
    p.add_argument("--jobs", dest="zoo_jobs", type=positive_int, default=1, metavar="N", help="runs (seeds of rows, SB3's included) at once, each its own process (default %(default)s: one after the other); for a machine with a core per run to spare, e.g. a GPU host")
    p.add_argument("--warm-cache", dest="zoo_warm_cache", action="store_true", help="warm starts: each rlaccel row runs its seed 0 once, unmeasured, to fill a fresh compilation cache that every measured run then uses (default: cold, no cache)")
    p.add_argument("--runs-dir", dest="zoo_runs_dir", metavar="DIR", help="keep each run's directory (TensorBoard, checkpoints) under DIR/<row>_s<seed>; default: deleted")
    p.add_argument("--merge", dest="zoo_merge", nargs="+", metavar="JSON", help="run nothing: combine the rows of earlier runs' JSON files (a later file wins a row; each row keeps its source) into --out, with table, curves and verdict")
    p.add_argument("--out", dest="zoo_out", metavar="OUT", help=f"JSON output path (default {DEFAULT_OUT.relative_to(ROOT)}); the table .md and curves .png go beside it")


def parse_rows(text: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``; raises ``ValueError`` naming unknown rows."""
    from rlaccel.bench.table import pick

    try:
        return pick(text, ROWS)
    except ValueError as e:
        raise ValueError(f"--rows: {e}") from None


def check_args(args: argparse.Namespace) -> list[str]:
    """The rows to run; raises ``ValueError`` (one line naming the option) for bad arguments."""
    names = parse_rows(args.zoo_rows)
    if not (math.isfinite(args.zoo_budget_scale) and args.zoo_budget_scale > 0):
        raise ValueError(f"--budget-scale: must be > 0, got {args.zoo_budget_scale}")
    if args.zoo_sb3_threads < 0:
        raise ValueError(f"--sb3-threads: must be >= 0, got {args.zoo_sb3_threads}")
    bad = [s for s in args.zoo_set if "=" not in s]
    if bad:
        raise ValueError(f"--set: expected KEY=VALUE, got {bad[0]!r}")
    if args.zoo_runs_dir and Path(args.zoo_runs_dir).exists() and any(Path(args.zoo_runs_dir).iterdir()):
        raise ValueError(f"--runs-dir: {args.zoo_runs_dir} exists and is not empty")
    return names


def run_one(params: dict[str, Any]) -> dict[str, Any]:
    """One seed of one row in a fresh interpreter (``rlaccel.bench.zoo_work``); its JSON, or
    ``{"error": ...}`` (the exception line; the last 30 lines of its output go to stderr)."""
    from rlaccel.bench.table import error_line

    from rlaccel.compile_cache import bench_env

    env = bench_env(os.environ, params.get("compile_cache"))  # compile time is part of wall_s (cold: no cache)
    with tempfile.TemporaryDirectory(prefix="rlaccel_zoo_") as tmp:
        result = Path(tmp) / "result.json"
        run_dir = params.get("run_dir") or str(Path(tmp) / "run")
        proc = subprocess.run([sys.executable, "-c", _WORKER, json.dumps({**params, "run_dir": run_dir}), str(result)], check=False, env=env, capture_output=True, text=True)
        if proc.returncode == 0 and result.is_file():
            return json.loads(result.read_text())
    output = (proc.stderr or proc.stdout or f"exit code {proc.returncode}").strip()
    print("\n".join("    " + line for line in output.splitlines()[-30:]), file=sys.stderr)
    return {"error": error_line(output)}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    return (statistics.fmean(values), statistics.pstdev(values)) if values else (None, None)


def aggregate(name: str, seeds: list[dict[str, Any]], budget_scale: float) -> dict[str, Any]:
    """A row's figures from its seeds' results (``zoo_work`` JSON, or ``{"error": ...}``).

    Returns:
      ``eval_mean`` / ``eval_std`` (the seeds' final int8 evaluations: mean, population std),
      ``eval_best_mean``, ``eval_fp32_mean``, ``wall_s`` (mean per seed), ``sps`` (mean),
      ``steps_per_wall_s`` (env steps / wall_s, mean), ``peak_rss_mib`` (max), ``zoo`` (the
      published figure), ``threshold`` (zoo mean - std) and ``passed`` (``None`` unless every
      seed ran at ``budget_scale`` 1), ``errors``, and ``seeds`` as given.
    """
    row, zoo_row = ROWS[name], block_row(name)
    ok = [s for s in seeds if "error" not in s]
    finals = [s["eval_return"] for s in ok if s.get("eval_return") is not None]
    mean, std = _mean_std(finals)
    out: dict[str, Any] = {
        "label": zoo_row.label if isinstance(row, ZooRow) else f"SB3 {zoo_row.label}",
        "kind": "sb3" if isinstance(row, SB3Row) else "rlaccel",
        "of": row.of if isinstance(row, SB3Row) else None,
        "algo": zoo_row.algo,
        "zoo_block": f"{zoo_row.algo}.yml: {zoo_row.block}",
        "env": ok[0].get("env") if ok else None,
        "env_note": ok[0].get("env_note") if ok else None,
        "env_steps": ok[0].get("env_steps") if ok else None,
        "seeds_run": len(ok),
        "eval_mean": mean,
        "eval_std": std,
        "eval_best_mean": _mean_std([s["eval_best_return"] for s in ok if s.get("eval_best_return") is not None])[0],
        "eval_fp32_mean": _mean_std([s["eval_return_fp32"] for s in ok if s.get("eval_return_fp32") is not None])[0],
        "wall_s": _mean_std([s["wall_s"] for s in ok if s.get("wall_s")])[0],
        "sps": _mean_std([s["sps"] for s in ok if s.get("sps")])[0],
        "steps_per_wall_s": _mean_std([s["env_steps"] / s["wall_s"] for s in ok if s.get("wall_s") and s.get("env_steps")])[0],
        "peak_rss_mib": max((s["peak_rss_mib"] for s in ok if s.get("peak_rss_mib")), default=None),
        "zoo": dataclasses.asdict(zoo_row.zoo),
        "threshold": zoo_row.zoo.mean - zoo_row.zoo.std,
        "passed": None,
        "errors": [s["error"] for s in seeds if "error" in s],
        "seeds": seeds,
    }
    if budget_scale == 1.0 and mean is not None and len(finals) == len(seeds) and (isinstance(row, ZooRow) or row.judged):
        out["passed"] = mean >= out["threshold"]  # SB3 at the zoo's budget: does the block itself reach it?
    return out


def sb3_ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For each SB3 row measured with its rlaccel row: rlaccel's env steps per wall second
    (compile and evaluation included) over SB3's, ``x`` (above 1: rlaccel is faster)."""
    out = {}
    for name, r in results.items():
        row = ROWS[name]
        if not isinstance(row, SB3Row) or row.of not in results or results[row.of].get("source") != r.get("source"):
            continue  # a ratio only between rows of the same run
        ours, theirs = results[row.of].get("steps_per_wall_s"), r.get("steps_per_wall_s")
        out[row.of] = {"sb3_row": name, "rlaccel_steps_per_wall_s": ours, "sb3_steps_per_wall_s": theirs, "x": ours / theirs if ours and theirs else None}
    return out


def verdict(results: dict[str, dict[str, Any]], ratios: dict[str, dict[str, Any]], budget_scale: float) -> list[str]:
    """Lines saying what the run shows against issue 14's must-reach figures."""
    if budget_scale != 1.0:
        return [f"budget scale {budget_scale:g}: a check that the rows run; returns are not compared with the zoo's"]
    judged = {n: r["passed"] for n, r in results.items() if r["kind"] == "rlaccel"}
    lines = [f"{sum(1 for p in judged.values() if p)} of {len(judged)} rows reach the zoo's mean - 1 std (must reach: {MUST_PASS} of 11)"] if judged else []
    hc = results.get("ppo_halfcheetah", {})
    if hc.get("eval_mean") is not None:
        lines.append(f"PPO HalfCheetah at {hc['env_steps']:,} env steps: {hc['eval_mean']:,.0f} (must reach {HALFCHEETAH_FLOOR:,.0f})")
    for of, r in ratios.items():
        if r["x"] is not None:
            target = "" if ROWS[r["sb3_row"]].judged else f" (must reach {SB3_RATIO_FLOOR:g}x)"
            lines.append(f"{results[of]['label']}: rlaccel {r['x']:.1f}x SB3's env steps per wall second{target}")
    for r in results.values():
        if r["kind"] == "sb3" and r["passed"] is not None:
            said = "reaches" if r["passed"] else "misses"
            lines.append(f"SB3 itself on {r['zoo_block']}: {r['eval_mean']:,.1f} +- {r['eval_std']:,.1f} over {r['seeds_run']} seeds, {said} the zoo's mean - 1 std ({r['threshold']:,.1f})")
    return lines


def _budget(name: str, scale: float) -> int | None:
    """An SB3 row's env steps (rlaccel rows take the block's ``n_timesteps`` times ``scale`` in the worker)."""
    from rlaccel import config as config_lib

    row = ROWS[name]
    if not isinstance(row, SB3Row):
        return None
    of = block_row(name)
    steps = row.timesteps or int(config_lib.load_data(ZOO_DIR / f"{of.algo}.yml")[of.block]["n_timesteps"])
    return max(1, round(steps * scale))


def merge(paths: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any], float]:
    """The rows of earlier reports (``--out`` JSON files) in :data:`ROWS` order, a later file
    winning a row, each row with its ``source`` (file, date, machine, ``--set`` overrides); the first report; the
    reports' ``total_s`` summed.
    Raises ``ValueError`` (one line naming the file) for a file that cannot be read, is not a
    zoo report, has an unknown row, or evaluated or budgeted differently from the first."""
    rows: dict[str, dict[str, Any]] = {}
    first: dict[str, Any] | None = None
    total_s = 0.0
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
            ok = report.get("benchmark") == "rl_zoo" and isinstance(report.get("rows"), dict) and {"freq", "episodes"} <= set(report.get("eval") or {})
            ok = ok and all(k in report for k in ("budget_scale", "seeds", "date", "machine", "machine_line"))
        except (OSError, ValueError, AttributeError) as e:
            raise ValueError(f"--merge: {path}: {type(e).__name__}: {e}") from None
        if not ok:
            raise ValueError(f"--merge: {path}: not an 'rlaccel bench zoo' report")
        first, total_s = first or report, total_s + report.get("total_s", 0.0)
        if (report.get("eval"), report.get("budget_scale"), report.get("compile_cache", "cold")) != (first.get("eval"), first.get("budget_scale"), first.get("compile_cache", "cold")):
            raise ValueError(f"--merge: {path}: evaluation, budget scale or compilation cache (cold / warm) differs from {paths[0]}'s")
        for name, row in report["rows"].items():
            if name not in ROWS:
                raise ValueError(f"--merge: {path}: unknown row {name!r}")
            source = {"file": Path(path).name, "date": report.get("date"), "machine": report.get("machine_line"), "overrides": report.get("overrides") or []}
            rows[name] = {**row, "source": row.get("source") or source}
    assert first is not None  # argparse's nargs="+"
    return {name: rows[name] for name in ROWS if name in rows}, first, total_s


def _params(args: argparse.Namespace, name: str, seed: int, cache: str | None) -> dict[str, Any]:
    """What ``zoo_work`` needs to run seed ``seed`` of row ``name`` (``cache``: the compilation cache's directory, or cold)."""
    row, block = ROWS[name], block_row(name)
    scale = args.zoo_budget_scale
    return {
        "row": name, "kind": "sb3" if isinstance(row, SB3Row) else "rlaccel", "algo": block.algo, "zoo_file": str(ZOO_DIR / f"{block.algo}.yml"),
        "block": block.block, "seed": seed, "budget_scale": scale, "timesteps": _budget(name, scale),
        "eval_freq": args.zoo_eval_freq, "eval_episodes": args.zoo_eval_episodes, "overrides": list(args.zoo_set),
        "run_dir": str(Path(args.zoo_runs_dir) / f"{name}_s{seed}") if args.zoo_runs_dir else None, "threads": args.zoo_sb3_threads, "compile_cache": cache,
    }  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the rows' seeds (one after the other, or ``--jobs`` at once; or ``--merge`` earlier
    reports), print the table, write JSON, Markdown and PNG; 0, 1 if a run failed (after
    writing), 2 for bad arguments (nothing run or written)."""
    try:
        if args.zoo_merge:
            results, first, total_s = merge(args.zoo_merge)
        else:
            names = check_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.zoo_merge:  # the report describes the runs merged, not this command line
        args.zoo_eval_freq, args.zoo_eval_episodes = first["eval"]["freq"], first["eval"]["episodes"]
        args.zoo_budget_scale, args.zoo_seeds, args.zoo_sb3_seeds = first["budget_scale"], first["seeds"], first.get("sb3_seeds", 1)
        args.zoo_set, args.zoo_sb3_threads = first.get("overrides", []), first.get("sb3_torch_threads", 1)
        args.zoo_warm_cache, args.zoo_jobs = first.get("compile_cache") == "warm", first.get("jobs", 1)
        return write_report(results, args, total_s, machine_info=first["machine"])
    scale, started = args.zoo_budget_scale, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rlaccel_zoo_cache_") as tmp:
        cache = tmp if args.zoo_warm_cache else None
        if cache is not None:  # seed 0 of each rlaccel row once, unmeasured: every seed's programs
            for name in (n for n in names if isinstance(ROWS[n], ZooRow)):
                print(f"running {name} seed 0 to fill the compilation cache (not measured) ...", file=sys.stderr, flush=True)
                run_one({**_params(args, name, 0, cache), "run_dir": None})
        jobs = [(name, seed) for name in names for seed in range(args.zoo_sb3_seeds if isinstance(ROWS[name], SB3Row) else args.zoo_seeds)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.zoo_jobs) as pool:  # each job is a process
            done = dict(zip(jobs, pool.map(lambda job: _run_logged(args, *job, cache), jobs)))
    results = {name: aggregate(name, [r for (n, _), r in done.items() if n == name], scale) for name in names}
    return write_report(results, args, time.perf_counter() - started)


def _run_logged(args: argparse.Namespace, name: str, seed: int, cache: str | None) -> dict[str, Any]:
    """:func:`run_one` with a line to stderr when it starts and when it ends."""
    start = time.perf_counter()
    print(f"running {name} seed {seed} ...", file=sys.stderr, flush=True)
    r = run_one(_params(args, name, seed, cache))
    said = f"error: {r['error']}" if "error" in r else f"{r.get('env_steps', 0):,} env steps, eval {r.get('eval_return')}"
    print(f"  {name} seed {seed}: {time.perf_counter() - start:.0f} s, {said}", file=sys.stderr, flush=True)
    return r


def write_report(results: dict[str, dict[str, Any]], args: argparse.Namespace, total_s: float, machine_info: dict[str, Any] | None = None) -> int:
    """Print the table and write ``--out`` (JSON), its ``.md`` and ``.png``; the exit code.
    ``machine_info``: the machine the rows ran on (default: this one, ``rlaccel.bench.table.machine``)."""
    from rlaccel.bench.table import describe, machine
    from rlaccel.bench.zoo_report import markdown, plot, print_table

    info = machine_info or machine()
    ratios = sb3_ratios(results)
    scale = args.zoo_budget_scale
    report = {
        "benchmark": "rl_zoo",
        "title": f"RL Zoo blocks verbatim, int8 actors, deterministic eval ({args.zoo_eval_episodes} episodes every {args.zoo_eval_freq:,} env steps and at the end)"
        + (f", budget scale {scale:g}" if scale != 1.0 else ", the zoo's budgets")
        + (", warm starts (compilation cache filled by an unmeasured run)" if getattr(args, "zoo_warm_cache", False) else ""),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": info,
        "machine_line": describe(info),
        "zoo_commit": ZOO_COMMIT,
        "zoo_figures": BENCHMARK_MD,
        "zoo_files": str(ZOO_DIR.relative_to(ROOT)),
        "budget_scale": scale,
        "seeds": args.zoo_seeds,
        "sb3_seeds": args.zoo_sb3_seeds,
        "eval": {"freq": args.zoo_eval_freq, "episodes": args.zoo_eval_episodes, "deterministic": True},
        "overrides": list(args.zoo_set),
        "sb3_torch_threads": args.zoo_sb3_threads,
        "jobs": getattr(args, "zoo_jobs", 1),
        "compile_cache": "warm" if getattr(args, "zoo_warm_cache", False) else "cold",
        "total_s": total_s,
        "sb3_ratio": ratios,
        "verdict": verdict(results, ratios, scale),
        "merged_from": [Path(p).name for p in args.zoo_merge or []],
        "rows": results,
    }
    print_table(report)
    path = Path(args.zoo_out) if args.zoo_out else DEFAULT_OUT
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report)
    atomic_write(path.with_suffix(".md"), markdown(report))
    print(f"wrote {path} and {path.with_suffix('.md').name}")
    try:
        print(f"wrote {plot(report, path.with_suffix('.png'))}")
    except Exception as e:  # noqa: BLE001 - the table and JSON are written; a plot failure is reported, not fatal
        print(f"error: the eval-curve plot failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    failed = [n for n, r in results.items() if r["errors"]]
    if failed:
        print(f"error: runs failed in {len(failed)} row(s): {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return 0

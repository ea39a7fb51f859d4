"""``rlaccel bench pipeline``: do the actor and learner devices really work at the same time?

    rlaccel bench pipeline                               # CartPole PPO, int8 and fp32 actors
    rlaccel bench pipeline --updates 8 --reps 3          # a quick check
    rlaccel bench pipeline --xla-flags=--xla_cpu_multi_thread_eigen=false

On two CPU devices (``--xla_force_host_platform_device_count=2``: ``cpu:0`` learns, ``cpu:1``
acts) it times, per update, over chunks of ``--updates`` updates (host clock around
dispatching a chunk and blocking once at its end; the best of ``--reps``, the least disturbed
on a shared machine, with the medians in the JSON):

* ``act``: the rollout piece alone, back to back on the actor device;
* ``learn``: the learner update alone, back to back on the learner device (same batch);
* ``serial``: ``rlaccel.sources.split.SplitSource`` with ``pipeline=False`` (quantise ->
  rollout -> update, in turn);
* ``pipelined``: the same source pipelined (rollout k+1 while update k), each piece
  dispatched from the host (``one_program=False``: what a GPU learner with CPU actors runs);
* ``one program``: the pipelined chunk as one program over both devices, what ``make_source``
  builds for two CPU devices (``rlaccel.sources.pipelined``).

If the CPU client runs the two devices' programs concurrently, a pipelined chunk approaches
``max(act, learn)``; if it serialises them, ``act + learn``. ``overlap`` says where the one
program lands: ``(act + learn - one program) / min(act, learn)``, 1 = fully concurrent, 0 = in
turn.

Wall clocks need idle cores. Independent of other load, a ``jax.profiler`` trace of one serial
and one pipelined chunk (``--no-trace`` skips it) says what the runtime did: ``devices at
once`` is the share of the actor device's execution time during which the learner device was
executing too (XLA's ``ThunkExecutor::Execute (wait for completion)`` spans), and ``threads
busy`` the mean number of XLA's intra-op threads (``XLAEigen``, where both devices' kernels
run) executing a kernel, over the chunk (tracing slows both a little).

Each setting (actor precision x ``--xla-flags`` variant) runs in its own subprocess (XLA reads
its flags once). Prints a table and writes ``benchmarks/pipeline_cpu.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rlaccel.argtypes import positive_int
from rlaccel.bench.rows import CONFIGS, ROOT, TWO_DEVICES, finish, peak_rss_mib

DESCRIPTION = "Pipelined actor-learner on two CPU devices: acting alone, learning alone, in turn and pipelined, per update."
DEFAULT_OUT = ROOT / "benchmarks" / "pipeline_cpu.json"
CHUNKS = ("serial", "pipelined", "one_program")
_WORKER = "import sys; from rlaccel.bench.pipeline import worker_main; sys.exit(worker_main(sys.argv[1]))"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="ppo_cartpole.yaml", help="a config in configs/ (default %(default)s)")
    p.add_argument("--precisions", default="int8,fp32", help="actor precisions (default %(default)s)")
    p.add_argument("--updates", type=positive_int, default=32, help="updates per timed chunk (default %(default)s)")
    p.add_argument("--reps", type=positive_int, default=7, help="timed chunks per measurement, median reported (default %(default)s)")
    p.add_argument("--xla-flags", action="append", default=[], help="an XLA_FLAGS variant to compare with the default (repeatable)")
    p.add_argument("--no-trace", dest="trace", action="store_false", help="skip the profiler trace of one serial and one pipelined chunk")
    p.add_argument("--out", dest="pipeline_out", metavar="OUT", help=f"JSON output path (default {DEFAULT_OUT.relative_to(ROOT)})")


def run(args: argparse.Namespace) -> int:
    """Every setting in its own subprocess; the table and the JSON. Exit code 1 if one failed."""
    from rlaccel.bench.table import cpu_info, describe_cpu
    from rlaccel.compile_cache import bench_env

    settings = [(p.strip(), flags) for flags in ["", *args.xla_flags] for p in args.precisions.split(",") if p.strip()]
    rows, failed = [], []
    for precision, flags in settings:
        params = {"config": args.config, "precision": precision, "updates": args.updates, "reps": args.reps, "trace": args.trace}
        env = bench_env({**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {TWO_DEVICES} {flags}".strip()})
        print(f"measuring {precision} actors, XLA_FLAGS+={flags or '(none)'} ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="rlaccel_pipe_") as tmp:
            out = Path(tmp) / "row.json"
            proc = subprocess.run([sys.executable, "-c", _WORKER, json.dumps({**params, "out": str(out)})], check=False, env=env)
            if proc.returncode != 0 or not out.is_file():
                failed.append(f"{precision} {flags}".strip())
                continue
            rows.append({**json.loads(out.read_text()), "xla_flags": flags or "default"})
    info = cpu_info()
    print_rows(rows)
    print(f"machine: {describe_cpu(info)}; load average {os.getloadavg()}")
    path = Path(args.pipeline_out or DEFAULT_OUT)
    return finish(path, {"benchmark": "pipeline", "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": info, "config": args.config, "rows": rows}, failed)


def print_rows(rows: list[dict]) -> None:
    print("\n| actors | XLA flags | act ms | learn ms | serial ms | pipelined ms (host-dispatched) | one program ms | max(act, learn) | overlap | one program env steps/s | vs serial | devices at once (serial / pipelined / one program) | threads busy (serial / pipelined / one program) | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    pct = lambda r, k: f"{100 * r[k]:.0f} %" if r.get(k) is not None else "-"  # noqa: E731
    num = lambda r, k: f"{r[k]:.2f}" if r.get(k) is not None else "-"  # noqa: E731
    for r in rows:
        print(
            f"| {r['precision']} | {r['xla_flags']} | {r['act_ms']:.2f} | {r['learn_ms']:.2f} | {r['serial_ms']:.2f} | {r['pipelined_ms']:.2f} | {r['one_program_ms']:.2f} | "
            f"{max(r['act_ms'], r['learn_ms']):.2f} | {r['overlap']:.2f} | {r['one_program_sps']:,.0f} | {r['serial_ms'] / r['one_program_ms']:.2f}x | "
            + " / ".join(pct(r, f"{c}_devices_at_once") for c in CHUNKS) + " | " + " / ".join(num(r, f"{c}_threads_busy") for c in CHUNKS) + f" | {r['peak_rss_mib']:.0f} |"
        )


def _per_update_ms(fn, updates: int, reps: int) -> tuple[float, float]:
    """(best, median) over ``reps`` of (host seconds to dispatch ``fn()`` and block on it) / ``updates``, ms."""
    import jax

    jax.block_until_ready(fn())  # warm
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return 1e3 * min(times) / updates, 1e3 * statistics.median(times) / updates


def _union(spans: list[tuple[float, float]]) -> list[list[float]]:
    out: list[list[float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _overlap(a: list[list[float]], b: list[list[float]]) -> float:
    """Total length of the intersection of two sorted disjoint interval lists."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def trace_stats(fn) -> dict:
    """Run ``fn()`` under ``jax.profiler`` and read the trace: the share of device 1's execution
    time during which device 0 executed too, and the mean number of busy ``XLAEigen`` threads."""
    import glob
    import gzip

    import jax

    with tempfile.TemporaryDirectory(prefix="rlaccel_trace_") as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            jax.block_until_ready(fn())
        events = json.load(gzip.open(glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True)[0]))["traceEvents"]
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    devices: dict[str, list] = {"0": [], "1": []}
    threads: dict[tuple, list] = {}
    for e in events:
        if e.get("ph") != "X":
            continue
        span = (e["ts"], e["ts"] + e["dur"])
        if e["name"].startswith("ThunkExecutor::Execute (wait") and e["args"].get("device_ordinal") in devices:
            devices[e["args"]["device_ordinal"]].append(span)
        elif e["name"] == "ThunkExecutor::Execute" and names.get((e["pid"], e["tid"]), "").startswith("tf_XLAEigen"):
            threads.setdefault((e["pid"], e["tid"]), []).append(span)
    learner, actor = _union(devices["0"]), _union(devices["1"])
    busy = [_union(v) for v in threads.values()]
    spans = [s for u in (learner, actor) for s in u]
    wall = max(b for _, b in spans) - min(a for a, _ in spans) if spans else float("nan")
    actor_time = sum(b - a for a, b in actor)
    return {
        "devices_at_once": _overlap(learner, actor) / actor_time if actor_time else None,
        "threads_busy": sum(b - a for u in busy for a, b in u) / wall if busy else None,
    }


def measure(config_name: str, precision: str, updates: int, reps: int, trace: bool = True) -> dict:
    """The four timings of one setting (this process's XLA flags)."""
    import jax

    from rlaccel import agent as agent_lib
    from rlaccel import config as config_lib
    from rlaccel import envs, placement
    from rlaccel.sources import make_source
    from rlaccel.sources.split import SplitSource

    config = config_lib.load(CONFIGS / config_name, [f"placement.actor.precision={precision}", "placement.actor.device=cpu:1", "placement.learner.device=cpu:0"])
    env = envs.make(config.env, auto_reset=True, **config.env_kwargs)
    source = make_source(agent_lib.make(config, env), env, placement.resolve(config.placement))
    host = SplitSource(source.agent, env, source.num_envs, source.num_steps, precision, source.learner_device, source.actor_device, one_program=False)
    state = source.place(source.initial_state(jax.random.PRNGKey(config.seed)))
    pieces = host.pieces(state)
    learner, actor = source.learner_device, source.actor_device
    params = jax.device_put(pieces["actor_params"](state.agent), actor)
    key = jax.device_put(state.key, actor)
    _, transitions, episodes = pieces["rollout"](params, state.rollout, key)
    batch = jax.device_put((transitions, episodes), learner)
    behaviour = pieces["actor_params"](state.agent)

    def act_alone():
        rollout, out = state.rollout, None
        for _ in range(updates):
            rollout, *out = pieces["rollout"](params, rollout, key)
        return rollout, out

    def learn_alone():
        s, metrics = state.replace(rollout=None), None
        for _ in range(updates):
            s, metrics = pieces["learn"](s, behaviour, *batch, state.key)
        return s, metrics

    def chunk(split: Any, pipelined: bool):
        def go():
            split.pipeline = pipelined
            return split.run_chunk(state, updates)

        return go

    chunks = {"serial": chunk(host, False), "pipelined": chunk(host, True), "one_program": chunk(source, True)}
    out = {"config": config_name, "precision": precision, "updates": updates, "reps": reps, "steps_per_update": source.steps_per_update}
    for name, fn in (("act", act_alone), ("learn", learn_alone), *chunks.items()):
        out[f"{name}_ms"], out[f"{name}_median_ms"] = _per_update_ms(fn, updates, reps)
    out["load_average"] = os.getloadavg()
    out["overlap"] = (out["act_ms"] + out["learn_ms"] - out["one_program_ms"]) / min(out["act_ms"], out["learn_ms"])
    if trace:
        for name, fn in chunks.items():
            out.update({f"{name}_{k}": v for k, v in trace_stats(fn).items()})
    for name in chunks:
        out[f"{name}_sps"] = source.steps_per_update / (out[f"{name}_ms"] / 1e3)
    out["peak_rss_mib"] = peak_rss_mib()
    out["xla_flags_env"] = os.environ.get("XLA_FLAGS", "")
    return out


def worker_main(params_json: str) -> int:
    """Entry of a setting's subprocess: measure and write its JSON row."""
    p = json.loads(params_json)
    Path(p["out"]).write_text(json.dumps(measure(p["config"], p["precision"], p["updates"], p["reps"], p.get("trace", True))))
    return 0

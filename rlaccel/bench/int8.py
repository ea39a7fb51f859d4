"""``rlaccel bench int8``: where is int8 faster than fp32 on this CPU?

    rlaccel bench int8                                   # widths 64 (the CartPole policy) and 512
    rlaccel bench int8 --widths 64 --batches 1,64 --reps 50   # a quick check

Three comparisons, int8 against fp32, at batch 1, 64 and 1024, on MLPs ``obs 4 -> w -> w -> 2``
(``w = 64`` is ``configs/ppo_cartpole.yaml``'s policy; a wider one shows where matmuls start
to dominate):

* **XLA ``dot_general``**: the three matmuls chained, int8 x int8 -> int32
  (``preferred_element_type=int32``, then a shift and a clamp back to int8) against fp32
  (a scale and a clamp), ``--reps`` times inside one compiled ``fori_loop`` (no dispatch
  in the figure); ns per chain. Two XLA settings, each in its own process: ``ynnpack`` (this
  jaxlib's default: dots go to YNNPACK, ``__ynn_fusion``) and ``xla``
  (``--xla_cpu_experimental_ynn_fusion_type=``: XLA's own dot emitter, a plain loop for int8).
* **XLA policy head**: the policy as the actors run it, ``rlaccel.quant.apply`` (the int8
  integers bit for bit: QUANTIZE, int32 requantisation, TANH table) against the fp32 MLP, the
  same way.
* **onnxruntime and OpenVINO**: the exported QDQ ``onnx-int8`` model against ``onnx-fp32``
  (``rlaccel.deploy.onnx_model``), one thread each (``intra_op_num_threads=1``,
  ``INFERENCE_NUM_THREADS=1``; OpenVINO with ``INFERENCE_PRECISION_HINT=f32`` so fp32 stays
  fp32), median µs of a blocking call (OpenVINO through ``set_input_tensor`` / ``infer()``, its
  cheapest Python path).

* **The fused update** (``rlaccel.bench.int8_fused``): ``configs/ppo_cartpole.yaml``'s and
  ``configs/dqn_cartpole.yaml``'s whole update (re-quantise, roll out, learn) with fp32 and with
  int8 actors, ``--fused-rounds`` samples of each alternated in one process; µs per update.
  The main table's ``fused_int8`` / ``fused_fp32`` ratio, without its run-to-run noise.

The policies are trained for a few updates first (``rlaccel.train`` + ``export``: shapes, not
skill, decide speed). Each part runs in its own process; peak RSS is that process's. Prints the
CPU model and flags, a table and the cases where int8 is >= 10 % faster, and writes
``benchmarks/int8_cpu.json``.
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

from rlaccel.argtypes import positive_int, positive_ints
from rlaccel.bench.rows import CONFIGS, ROOT, finish, peak_rss_mib

DESCRIPTION = "int8 vs fp32 on this CPU: XLA dot_general and policy heads, onnxruntime and OpenVINO, at batch 1, 64, 1024; the fused update alternated."
DEFAULT_OUT = ROOT / "benchmarks" / "int8_cpu.json"
FUSED_CONFIGS = ("ppo_cartpole.yaml", "dqn_cartpole.yaml")
XLA_SETTINGS = {"ynnpack": "", "xla": "--xla_cpu_experimental_ynn_fusion_type="}
FASTER = 1.10  # int8 counts as faster from 10 % up
_WORKER = "import sys, json; from rlaccel.bench.int8 import worker_main; sys.exit(worker_main(sys.argv[1]))"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--widths", type=positive_ints, default="64,512", help="hidden widths w of the 4 -> w -> w -> 2 MLPs (default %(default)s)")
    p.add_argument("--batches", type=positive_ints, default="1,64,1024", help="batch sizes (default %(default)s)")
    p.add_argument("--reps", type=positive_int, default=200, help="matmul chains per compiled loop / runtime calls per batch (default %(default)s)")
    p.add_argument("--fused-rounds", type=positive_int, default=20, help="alternated fp32 / int8 samples of the fused update, per config (default %(default)s)")
    p.add_argument("--out", dest="int8_out", metavar="OUT", help=f"JSON output path (default {DEFAULT_OUT.relative_to(ROOT)})")


def _subprocess(job: dict, xla_flags: str = "") -> dict | None:
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip(), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="rlaccel_int8_") as tmp:
        out = Path(tmp) / "out.json"
        proc = subprocess.run([sys.executable, "-c", _WORKER, json.dumps({**job, "out": str(out)})], check=False, env=env)
        return json.loads(out.read_text()) if proc.returncode == 0 and out.is_file() else None


def run(args: argparse.Namespace) -> int:
    """Train and export the policies, measure each part in its own process, print, write JSON."""
    from rlaccel.bench.table import cpu_info, describe_cpu

    widths, batches = args.widths, args.batches
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="rlaccel_int8_") as tmp:
        policies = {}
        for w in widths:
            print(f"training and exporting a 4-{w}-{w}-2 CartPole policy ...", file=sys.stderr, flush=True)
            res = _subprocess({"job": "export", "width": w, "dir": str(Path(tmp) / f"w{w}")})
            if res is None:
                failed.append(f"export w={w}")
            else:
                policies[w] = res["path"]
        for setting, flags in XLA_SETTINGS.items():
            print(f"measuring XLA ({setting}) ...", file=sys.stderr, flush=True)
            res = _subprocess({"job": "xla", "setting": setting, "policies": policies, "widths": widths, "batches": batches, "reps": args.reps}, flags)
            rows += res["rows"] if res else []
            failed += [] if res else [f"xla {setting}"]
        print("measuring onnxruntime and OpenVINO ...", file=sys.stderr, flush=True)
        res = _subprocess({"job": "runtimes", "policies": policies, "batches": batches, "reps": args.reps})
        rows += res["rows"] if res else []
        failed += [] if res else ["runtimes"]
    print("measuring the fused update, fp32 and int8 actors alternated ...", file=sys.stderr, flush=True)
    res = _subprocess({"job": "fused", "configs": list(FUSED_CONFIGS), "rounds": args.fused_rounds})
    rows += res["rows"] if res else []
    failed += [] if res else ["fused"]
    info = cpu_info()
    print_rows(rows)
    print(f"machine: {describe_cpu(info)}; load average {os.getloadavg()}")
    path = Path(args.int8_out or DEFAULT_OUT)
    return finish(path, {"benchmark": "int8", "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": info, "rows": rows}, failed)


def print_rows(rows: list[dict]) -> None:
    """The table (int8 speed-up = fp32 time / int8 time) and where int8 is faster."""
    print("\n| what | runtime | network | batch | fp32 µs | int8 µs | int8 speed-up | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        r["speedup"] = r["fp32_us"] / r["int8_us"]
        print(f"| {r['what']} | {r['runtime']} | {r['network']} | {r['batch']} | {r['fp32_us']:.2f} | {r['int8_us']:.2f} | {r['speedup']:.2f}x | {r['peak_rss_mib']:.0f} |")
    faster = [r for r in rows if r["speedup"] >= FASTER]
    print(f"\nint8 >= {100 * (FASTER - 1):.0f} % faster than fp32 here: " + ("; ".join(f"{r['what']} on {r['runtime']}, {r['network']}, batch {r['batch']} ({r['speedup']:.2f}x)" for r in faster) or "nowhere"))


# ---------------------------------------------------------------------------------------------
# The workers (each in its own process).


def export_policy(width: int, run_dir: str) -> str:
    """A few PPO updates of a ``4-w-w-2`` tanh CartPole policy with int8 actors, exported."""
    import rlaccel
    from rlaccel.deploy.export import export

    overrides = ["total_timesteps=2048", "ppo.n_steps=128", "ppo.n_epochs=1", f"ppo.policy_kwargs.net_arch=[{width}, {width}]", "logging.log_interval=4"]
    rlaccel.train(str(CONFIGS / "ppo_cartpole.yaml"), overrides=overrides, run_dir=run_dir, progress=False)
    return str(export(run_dir))


def _looped(fn: Any, x: Any, reps: int) -> float:
    """µs per ``fn(x)``: ``reps`` calls inside one compiled ``fori_loop``, each depending on the
    last (so none is hoisted or dropped), best of 5 runs."""
    import jax
    import jax.numpy as jnp

    never = jnp.float32(3.0e38)  # a runtime value the output never reaches: a dependency XLA cannot fold

    def body(_: int, x: Any) -> Any:
        return jnp.where(jnp.sum(fn(x).astype(jnp.float32)) == never, x + 1, x)

    loop = jax.jit(lambda x, never: jax.lax.fori_loop(0, reps, body, x))
    jax.block_until_ready(loop(x, never))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(loop(x, never))
        best = min(best, time.perf_counter() - start)
    return 1e6 * best / reps


def xla_rows(setting: str, policies: dict, widths: list[int], batches: list[int], reps: int) -> list[dict]:
    """``dot_general`` chains and policy heads, int8 vs fp32, under this process's XLA flags."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rlaccel import quant
    from rlaccel.deploy.artifact import int8_tables, read

    rows = []
    rng = np.random.default_rng(0)
    dims_of = lambda w: [4, w, w, 2]  # noqa: E731
    for w in widths:
        dims = dims_of(w)
        w8 = [jnp.asarray(rng.integers(-127, 128, (a, b)), jnp.int8) for a, b in zip(dims[:-1], dims[1:])]
        w32 = [x.astype(jnp.float32) for x in w8]

        def int8_chain(x: Any) -> Any:
            for wq in w8:
                acc = jax.lax.dot_general(x, wq, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
                x = jnp.clip(acc >> 10, -127, 127).astype(jnp.int8)
            return x

        def fp32_chain(x: Any) -> Any:
            for wf in w32:
                x = jnp.clip((x @ wf) * (1 / 1024), -127, 127)
            return x

        art = read(policies[w]) if w in policies else None
        for b in batches:
            x8 = jnp.asarray(rng.integers(-127, 128, (b, dims[0])), jnp.int8)
            base = {"runtime": f"XLA ({setting})", "network": f"4-{w}-{w}-2", "batch": b}
            rows.append({**base, "what": "dot_general chain", "int8_us": _looped(int8_chain, x8, reps), "fp32_us": _looped(fp32_chain, x8.astype(jnp.float32), reps)})
            if art is not None:
                qp = quant.QuantParams(model=jax.tree.map(jnp.asarray, int8_tables(art).model), activation=art.meta["policy"]["activation"], profile=art.meta["policy"]["int8_profile"])
                layers = [(jnp.asarray(art.arrays[f"fp32.w{i}"]), jnp.asarray(art.arrays[f"fp32.b{i}"])) for i in range(art.num_layers)]

                def fp32_head(x: Any, layers: Any = layers) -> Any:
                    for wf, bf in layers[:-1]:
                        x = jnp.tanh(x @ wf + bf)
                    return x @ layers[-1][0] + layers[-1][1]

                obs = jnp.asarray(rng.normal(size=(b, dims[0])), jnp.float32)
                rows.append({**base, "what": "policy head", "int8_us": _looped(lambda x, qp=qp: quant.apply(qp, x), obs, reps), "fp32_us": _looped(fp32_head, obs, reps)})
    for r in rows:
        r["peak_rss_mib"] = peak_rss_mib()
    return rows


def _call_us(call: Any, x: Any, reps: int) -> float:
    """Median µs of a blocking ``call(x)`` after a warm-up."""
    for _ in range(min(20, reps)):
        call(x)
    times = []
    for _ in range(reps):
        start = time.perf_counter_ns()
        call(x)
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e3


def import_openvino() -> Any:
    """``import openvino``, without its telemetry.

    Importing openvino imports ``openvino.tools.ovc``, which starts ``openvino_telemetry``:
    unless the user has opted out (OpenVINO's ``opt_in_out --opt_out``, or ``CI=true``), it
    sends a Google Analytics event from a ``multiprocessing`` child forked from the importing
    process, and waits for it. Here that process runs JAX, whose threads make a fork unsafe
    (JAX warns "this will likely lead to a deadlock"), and a benchmark has no business on the
    network. OpenVINO falls back to its own no-op stub when the telemetry package cannot be
    imported; ``None`` in ``sys.modules`` makes it so for this process (only if openvino was
    not imported yet: then it already ran)."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


def runtime_rows(policies: dict, batches: list[int], reps: int) -> list[dict]:
    """onnxruntime and OpenVINO (CPU plugin), the QDQ int8 model against the fp32 one."""
    import numpy as np
    import onnxruntime as ort

    from rlaccel.deploy.artifact import read
    from rlaccel.deploy.onnx_model import build_model
    from rlaccel.deploy.runtime import ort_options

    ov = import_openvino()
    core, rows = ov.Core(), []
    rng = np.random.default_rng(0)
    for w, path in policies.items():
        art = read(path)
        models = {p: build_model(art, p).SerializeToString() for p in ("int8", "fp32")}
        calls: dict[str, dict[str, Any]] = {"onnxruntime": {}, "OpenVINO": {}}
        for precision, raw in models.items():
            session = ort.InferenceSession(raw, ort_options(threads=1), providers=["CPUExecutionProvider"])
            calls["onnxruntime"][precision] = lambda x, s=session: s.run(["head"], {"obs": x})
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "m.onnx").write_bytes(raw)
                compiled = core.compile_model(core.read_model(str(Path(tmp) / "m.onnx")), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
            request = compiled.create_infer_request()

            def ov_call(x: Any, r: Any = request) -> Any:  # OpenVINO's lowest-overhead Python path
                r.set_input_tensor(ov.Tensor(x, shared_memory=True))
                r.infer()
                return r.get_tensor("head").data

            calls["OpenVINO"][precision] = ov_call
        for b in batches:
            obs = rng.normal(size=(b, art.obs_dim)).astype(np.float32)
            for runtime, by_precision in calls.items():
                times = {p: _call_us(fn, obs, reps) for p, fn in by_precision.items()}
                rows.append({"what": "policy (QDQ ONNX)", "runtime": runtime, "network": f"4-{w}-{w}-2", "batch": b, "int8_us": times["int8"], "fp32_us": times["fp32"], "peak_rss_mib": peak_rss_mib()})
    return rows


def worker_main(params_json: str) -> int:
    """Entry of a worker process: one job (``export``, ``xla``, ``runtimes`` or ``fused``), its JSON."""
    p = json.loads(params_json)
    policies = {int(k): v for k, v in p.get("policies", {}).items()}
    if p["job"] == "export":
        out: dict = {"path": export_policy(p["width"], p["dir"])}
    elif p["job"] == "fused":
        from rlaccel.bench.int8_fused import fused_rows

        out = {"rows": [row for name in p["configs"] for row in fused_rows(CONFIGS / name, p["rounds"])]}
    elif p["job"] == "xla":
        out = {"rows": xla_rows(p["setting"], policies, p["widths"], p["batches"], p["reps"])}
    else:
        out = {"rows": runtime_rows(policies, p["batches"], p["reps"])}
    Path(p["out"]).write_text(json.dumps(out))
    return 0

"""``rlaccel export`` (a run's policy as one file) and ``rlaccel eval`` (a saved policy on
gymnasium's own env for N episodes).

    rlaccel export --run RUN_DIR [--out PATH] [--format rlpolicy|onnx-int8|onnx-fp32|tflite|tflite-int8io|c] [--checkpoint DIR]
    rlaccel eval --run RUN_DIR | --policy FILE [--backend numpy-int8] [--episodes 100] [--seed 0]

Bad input is one line on stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rlaccel.argtypes import positive_int
from rlaccel.deploy.export import FORMATS  # numpy only at import: JAX is imported by an export itself

EXIT_USAGE = 2


def add_export_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="export a trained policy", description="Export a trained rlaccel policy.")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory (config.yaml + checkpoints/)")
    p.add_argument("--out", help="output file (default RUN_DIR/policy.rlpolicy or RUN_DIR/policy_<precision>.onnx)")
    p.add_argument("--format", default="rlpolicy", choices=FORMATS, help="what to write")
    p.add_argument("--checkpoint", metavar="DIR", help="a checkpoint (checkpoints/checkpoint_<update>) instead of the run's newest")
    p.set_defaults(func=export)
    return p


def export(args: argparse.Namespace) -> int:
    """``rlaccel export``; returns the exit code."""
    from rlaccel.deploy import PolicyError, read
    from rlaccel.deploy.export import export as export_run

    try:
        path = export_run(args.run, args.out, args.format, args.checkpoint)
    except PolicyError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.format == "rlpolicy":
        art = read(path)
        what = f"{art.meta['algo']} {art.meta['env']}, update {art.meta['source']['update']}"
    else:
        what = args.format
    size = sum(f.stat().st_size for f in path.iterdir()) if path.is_dir() else path.stat().st_size
    print(f"wrote {path} ({what}, {size:,} bytes)")
    return 0


def add_eval_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="run a saved policy on gymnasium's env", description="Evaluate a saved policy on gymnasium's own env (deterministic actions).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="RUN_DIR", help="a run directory (its policy is exported first if needed)")
    src.add_argument("--policy", metavar="FILE", help="an exported .rlpolicy or .onnx file")
    p.add_argument("--backend", default="numpy-int8", help="numpy-int8 (default), numpy-fp32, c-int8 (the C export, compiled on load), onnx-int8, onnx-fp32, jax-int8, jax-fp32")
    p.add_argument("--episodes", type=positive_int, default=100, help="episodes (default 100)")
    p.add_argument("--seed", type=int, default=0, help="episode i is reset with seed + i (default 0)")
    p.add_argument("--json", dest="json_out", metavar="FILE", help="also write the returns as JSON")
    p.set_defaults(func=evaluate)
    return p


def evaluate(args: argparse.Namespace) -> int:
    """``rlaccel eval``: mean, std, min and max return over ``--episodes`` episodes."""
    import numpy as np

    from rlaccel.deploy import PolicyError, load_policy
    from rlaccel.deploy.evaluate import episode_returns

    if args.json_out and not Path(args.json_out).parent.is_dir():
        print(f"error: --json {args.json_out}: directory {Path(args.json_out).parent} does not exist", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.run:
            from rlaccel.api import Run

            run_dir = Path(args.run)
            if not (run_dir / "summary.json").is_file():
                raise PolicyError(f"--run {run_dir}: no summary.json there (not a finished run directory)")
            policy = Run.load(run_dir).policy(args.backend)
        else:
            policy = load_policy(args.policy, args.backend)
        returns = episode_returns(policy, policy.meta["env"], args.episodes, seed=args.seed)
    except PolicyError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    stats = {"env": policy.meta["env"], "backend": args.backend, "episodes": args.episodes, "mean": float(np.mean(returns)), "std": float(np.std(returns)), "min": float(np.min(returns)), "max": float(np.max(returns))}
    print(f"{stats['env']} {args.backend}: mean return {stats['mean']:.1f} +- {stats['std']:.1f} (min {stats['min']:.1f}, max {stats['max']:.1f}) over {args.episodes} episodes")
    if args.json_out:
        from rlaccel.fileio import write_json

        write_json(args.json_out, {**stats, "returns": [float(r) for r in returns]})
    return 0

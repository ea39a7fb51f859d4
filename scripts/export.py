"""``python scripts/export.py --run RUN_DIR [--out FILE] [--format rlpolicy|onnx-int8|onnx-fp32]``.

Writes the run's policy (newest checkpoint, or ``--checkpoint``) as one file: the
``.rlpolicy`` artifact (default ``RUN_DIR/policy.rlpolicy``; format in
``rlaccel/deploy/artifact.py``) or an ONNX model (QDQ int8 or fp32) that passes
``onnx.checker``. Bad input is one line on stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="export.py", description="Export a trained rlaccel policy.")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory (config.yaml + checkpoints/)")
    p.add_argument("--out", help="output file (default RUN_DIR/policy.rlpolicy or RUN_DIR/policy_<precision>.onnx)")
    p.add_argument("--format", default="rlpolicy", choices=["rlpolicy", "onnx-int8", "onnx-fp32"], help="what to write")
    p.add_argument("--checkpoint", help="a checkpoint file instead of the run's newest")
    args = p.parse_args(argv)

    from rlaccel.deploy import PolicyError, read
    from rlaccel.deploy.export import (
        export,  # JAX is imported only once the run directory checks out
    )

    try:
        path = export(args.run, args.out, args.format, args.checkpoint)
    except PolicyError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.format == "rlpolicy":
        art = read(path)
        what = f"{art.meta['algo']} {art.meta['env']}, update {art.meta['source']['update']}"
    else:
        what = args.format
    print(f"wrote {path} ({what}, {path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

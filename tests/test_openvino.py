"""OpenVINO imported without its telemetry (``rlaccel.bench.int8.import_openvino``).

A plain ``import openvino`` starts ``openvino_telemetry``, which writes ``~/intel/`` and, on
Python 3.11, forks the importing process (a JAX process here) to send an event (on 3.12 it
wrote ``~/intel/`` without forking). Both cases run in a fresh process with JAX started, a
home directory of their own and ``CI`` unset (the telemetry's own opt-outs absent); the plain
import is the control that shows the telemetry would run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import atexit, os, sys
import jax
jax.numpy.zeros(1).block_until_ready()  # JAX's threads run, as in a benchmark or a test worker
forks = []
os.register_at_fork(before=lambda: forks.append(1))
atexit.register(lambda: print("forks", len(forks), flush=True))  # after the telemetry's own exit wait
from rlaccel.bench.int8 import import_openvino
ov = import_openvino() if sys.argv[1] == "rlaccel" else __import__("openvino")
ov.Core()
"""


@pytest.mark.parametrize("how", ["rlaccel", "plain"])
def test_openvino_is_imported_without_its_telemetry(tmp_path: Path, how: str) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "CI": "", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", PROBE, how], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    forks = int(out.stdout.splitlines()[-1].removeprefix("forks "))
    assert forks == 0 or how == "plain", out.stdout
    assert (tmp_path / "intel").exists() == (how == "plain")

"""Arm Vela's compile of a ``.tflite`` for an Ethos-U NPU: operator placement and its performance estimate.

``rlaccel bench latency`` shows :func:`vela_estimate`'s ``inference_time_s`` as the NPU
placement's decision latency, labelled as the vendor compiler's estimate: Vela's static model
of the NPU and its memories (cycles, bandwidth at the system configuration's clock), not a
measurement on silicon. Vela (``ethos-u-vela``, a dev extra) runs in a subprocess in a
temporary directory that is removed afterwards.

System configurations (Vela's ``Arm/vela.ini``): Ethos-U55 as ``Ethos_U55_High_End_Embedded``
with ``Shared_Sram`` (weights in off-chip flash, 500 MHz), Ethos-U65 as ``Ethos_U65_High_End``
with ``Dedicated_Sram`` (weights in DRAM, 1 GHz); other accelerators get Vela's defaults.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["SYSTEM_CONFIGS", "vela_estimate"]

SYSTEM_CONFIGS = {"ethos-u55": ("Ethos_U55_High_End_Embedded", "Shared_Sram"), "ethos-u65": ("Ethos_U65_High_End", "Dedicated_Sram")}


def vela_estimate(tflite: bytes, accelerator: str = "ethos-u55-128", system_config: str | None = None, memory_mode: str | None = None) -> dict[str, Any]:
    """Compile ``tflite`` with Vela for ``accelerator`` (e.g. ``ethos-u55-128``, ``ethos-u65-256``).

    Args:
      tflite: the model (``rlaccel.deploy.tflite_model.tflite_bytes``), batch 1.
      accelerator: Vela's ``--accelerator-config``.
      system_config, memory_mode: override the defaults of :data:`SYSTEM_CONFIGS`.

    Returns:
      ``inference_time_s`` (Vela's estimate per inference), ``cycles_per_inference`` (total,
      memory-bound included), ``cycles_npu``, ``clock_hz``, ``macs``, ``accelerator``,
      ``system_config``, ``memory_mode``, and ``ops``: Vela's per-layer table, one
      ``{"op", "target", "name"}`` per operator it schedules (``op``: the TFLite operator it
      comes from, one may be split into several; ``target`` ``NPU`` or ``CPU``; ``name``: the
      output tensor). The estimate covers the NPU's work: operators left on the CPU (float
      pre/post-processing) are not in it.

    Raises:
      RuntimeError: Vela is not installed or fails; its message is included.
    """
    family = accelerator.rsplit("-", 1)[0]
    default_system, default_memory = SYSTEM_CONFIGS.get(family, (None, None))
    system_config, memory_mode = system_config or default_system, memory_mode or default_memory
    with tempfile.TemporaryDirectory(prefix="rlaccel-vela-") as tmp:
        model = Path(tmp) / "policy.tflite"
        model.write_bytes(tflite)
        cmd = [sys.executable, "-m", "ethosu.vela", str(model), "--accelerator-config", accelerator, "--config", "Arm/vela.ini"]
        cmd += ["--output-dir", str(Path(tmp) / "out"), "--verbose-performance"]
        cmd += ["--system-config", system_config] if system_config else []
        cmd += ["--memory-mode", memory_mode] if memory_mode else []
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            hint = " (pip install ethos-u-vela)" if "No module named" in proc.stderr else ""
            raise RuntimeError(f"vela failed{hint}: {(proc.stderr or proc.stdout).strip()[-2000:]}")
        out = Path(tmp) / "out"
        with open(next(out.glob("*_summary_*.csv")), newline="") as f:
            summary = next(csv.DictReader(f))
        with open(next(out.glob("*_per-layer.csv")), newline="") as f:
            ops = [{"op": row["Original Operator"], "target": row["Target"], "name": row["Name"]} for row in csv.DictReader(f)]
    return {
        "inference_time_s": float(summary["inference_time"]),
        "cycles_per_inference": int(float(summary["cycles_total"])),
        "cycles_npu": int(float(summary["cycles_npu"])),
        "clock_hz": float(summary["core_clock"]),
        "macs": int(float(summary["nn_macs"])),
        "accelerator": accelerator,
        "system_config": summary["system_config"],
        "memory_mode": summary["memory_mode"],
        "ops": ops,
    }

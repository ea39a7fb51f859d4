"""What one decision of the actors' MLP costs: MACs, parameter bytes, and a modelled energy.

The seed's argument (TOPS vs TFLOPS) per run: ``actor/macs_per_decision``,
``actor/param_bytes_int8`` / ``_fp32``, ``actor/int8_ops_per_s`` (2 ops per MAC at the measured
acting rate) and ``actor/est_energy_nj_per_decision_int8`` / ``_fp32``.

The energy is a **model estimate, not a measurement**: per-operation energies at 45 nm from
Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014: 8-bit integer
multiply 0.2 pJ, 32-bit integer add 0.1 pJ (the int8 MAC's int32 accumulation), 32-bit float
multiply 3.7 pJ and add 0.9 pJ, and 5 pJ per 32-bit word read from a small on-chip SRAM (an
int8 word holds four weights). Activations, control and DRAM traffic are left out; modern nodes
scale every term down, the int8 / fp32 ratio far less.
"""

from __future__ import annotations

from typing import Any, Sequence

PJ_INT8_MUL, PJ_INT32_ADD = 0.2, 0.1
PJ_FP32_MUL, PJ_FP32_ADD = 3.7, 0.9
PJ_SRAM_READ_32BIT = 5.0


def layer_dims(params: Any) -> list[tuple[int, int]]:
    """``[(in, out), ...]`` of a flax MLP's ``Dense_i`` params (``[]`` when ``params`` is not one)."""
    if not isinstance(params, dict) or "Dense_0" not in params:
        return []
    return [tuple(params[f"Dense_{i}"]["kernel"].shape[-2:]) for i in range(len(params))]


def decision_costs(dims: Sequence[tuple[int, int]]) -> dict[str, float]:
    """The per-decision figures of an MLP with layers ``dims`` (one observation, one head)."""
    macs = sum(i * o for i, o in dims)
    outs = sum(o for _, o in dims)
    int8_pj = macs * (PJ_INT8_MUL + PJ_INT32_ADD) + macs / 4 * PJ_SRAM_READ_32BIT
    fp32_pj = macs * (PJ_FP32_MUL + PJ_FP32_ADD) + macs * PJ_SRAM_READ_32BIT
    return {
        "actor/macs_per_decision": float(macs),
        # int8 weights, int32 bias, int32 multiplier and shift per output channel
        "actor/param_bytes_int8": float(macs + 12 * outs),
        "actor/param_bytes_fp32": float(4 * (macs + outs)),
        "actor/est_energy_nj_per_decision_int8": int8_pj / 1000.0,
        "actor/est_energy_nj_per_decision_fp32": fp32_pj / 1000.0,
    }


def ops_per_s(costs: dict[str, float], decisions_per_s: float) -> dict[str, float]:
    """``actor/int8_ops_per_s``: 2 integer ops per MAC at ``decisions_per_s`` (env steps/s)."""
    return {"actor/int8_ops_per_s": 2.0 * costs["actor/macs_per_decision"] * decisions_per_s}

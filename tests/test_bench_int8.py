"""``rlaccel bench int8``'s fused rows (``rlaccel/bench/int8_fused.py``): the config's whole
fused update with fp32 and int8 actors, alternated in one process. Speed itself is the
benchmark's (docs/benchmarks.md), not a test's."""

from __future__ import annotations

import statistics

import pytest

from rlaccel.bench import int8, int8_fused
from rlaccel.bench.rows import CONFIGS


@pytest.mark.slow
def test_fused_rows_alternate_fp32_and_int8_and_print_as_the_other_int8_rows(monkeypatch, capsys):
    monkeypatch.setattr(int8_fused, "SAMPLE_S", 0.0)  # one chunk per sample
    (row,) = int8_fused.fused_rows(CONFIGS / "ppo_cartpole.yaml", rounds=3, updates=2)
    assert row["network"] == "4-64-64-2" and row["batch"] == 4 and row["updates_per_sample"] == 2
    assert [len(row["rounds_us"][p]) for p in ("fp32", "int8")] == [3, 3]
    assert row["fp32_us"] == pytest.approx(statistics.median(row["rounds_us"]["fp32"]), abs=0.1)
    assert row["round_ratios"] == pytest.approx([f / i for f, i in zip(row["rounds_us"]["fp32"], row["rounds_us"]["int8"])], abs=2e-3)
    int8.print_rows([row])
    assert f"| {row['what']} | XLA | 4-64-64-2 | 4 |" in capsys.readouterr().out


def test_dqn_is_timed_once_it_learns():
    """Before ``learning_starts`` a DQN update only acts: the untimed chunks reach past it."""
    assert int8_fused.untimed_chunks(9999, 10, 64) == 17  # configs/dqn_cartpole.yaml: 999 updates act only (16 chunks), + 1
    assert int8_fused.untimed_chunks(9999, 10, 999) == 2
    assert int8_fused.untimed_chunks(10000, 10, 999) == 3  # 1,000 act only (the 1,001st learns): 2 chunks, + 1
    assert int8_fused.untimed_chunks(0, 512, 64) == 1  # PPO: every update learns


@pytest.mark.slow
def test_runtime_rows_time_onnxruntime_and_openvino_on_an_exported_policy(tmp_path):
    """The runtimes' part on a policy exported after a few updates (its OpenVINO call once
    named a module it no longer imported: every ``rlaccel bench int8`` lost those rows)."""
    path = int8.export_policy(16, str(tmp_path / "w16"))
    rows = int8.runtime_rows({16: path}, batches=[1, 8], reps=3)
    assert [(r["runtime"], r["batch"]) for r in rows] == [("onnxruntime", 1), ("OpenVINO", 1), ("onnxruntime", 8), ("OpenVINO", 8)]
    assert all(r["network"] == "4-16-16-2" and r["int8_us"] > 0 and r["fp32_us"] > 0 for r in rows)

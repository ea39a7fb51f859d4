"""``rlaccel bench zoo`` (``rlaccel/bench/zoo*.py``), unit level (and, at the end, the main table's markdown): its rows are the zoo's blocks at
the zoo's budgets, SB3 gets each block as the zoo's ``ExperimentManager`` would, the figures
and the pass rule, the eval curves read back from TensorBoard events, the Markdown and PNG, and
bad arguments. No training here: ``rlaccel bench zoo --budget-scale 0.02 --seeds 1`` is the
end-to-end check (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pytest
import yaml
from cli_helpers import run_main

from rlaccel.bench import table, zoo, zoo_report, zoo_work
from rlaccel.logging import MetricLogger

DATA = Path(__file__).resolve().parent / "data" / "zoo"
ISSUE_ROWS = {  # issue 14's rows: (algo, the zoo block's env id)
    ("ppo", "CartPole-v1"), ("ppo", "Acrobot-v1"), ("ppo", "MountainCar-v0"), ("ppo", "MountainCarContinuous-v0"), ("ppo", "Pendulum-v1"),
    ("ppo", "HalfCheetah-v4"), ("ppo", "Hopper-v4"), ("ppo", "Walker2d-v4"), ("dqn", "CartPole-v1"), ("dqn", "Acrobot-v1"), ("dqn", "MountainCar-v0"),
}  # fmt: skip
ZOO_ROWS = {n: r for n, r in zoo.ROWS.items() if isinstance(r, zoo.ZooRow)}


def block(algo: str, env: str) -> dict:
    return yaml.safe_load((DATA / f"{algo}.yml").read_text())[env]


def test_rows_are_the_issues_zoo_blocks_read_from_the_test_data_at_the_zoos_budgets():
    assert zoo.ZOO_DIR.resolve() == DATA  # the bench and tests/test_zoo.py read the same files
    assert {(r.algo, r.block) for r in ZOO_ROWS.values()} == ISSUE_ROWS
    for name, row in ZOO_ROWS.items():
        assert row.zoo.n_timesteps == block(row.algo, row.block)["n_timesteps"], name  # benchmark.md's budget is the block's
        assert row.zoo.env.rsplit("-v", 1)[0] == row.block.rsplit("-v", 1)[0], name
        assert row.zoo.std >= 0 and row.zoo.eval_episodes > 0
    for algo in ("ppo", "dqn"):  # the figures and the blocks come from the same zoo commit
        assert zoo.ZOO_COMMIT in (DATA / f"{algo}.yml").read_text().split("\n\n")[0]
    assert zoo.ZOO_COMMIT in zoo.BENCHMARK_MD
    sb3 = {n: r for n, r in zoo.ROWS.items() if isinstance(r, zoo.SB3Row)}
    assert {r.of for r in sb3.values() if not r.judged} == {"ppo_pendulum", "ppo_halfcheetah"}  # the wall-clock rows
    assert all(r.timesteps is None for r in sb3.values() if r.judged)  # the others at the zoo's budget
    assert sb3["sb3_ppo_pendulum"].timesteps == block("ppo", "Pendulum-v1")["n_timesteps"] and sb3["sb3_ppo_halfcheetah"].timesteps == 200_000


def test_sb3_gets_each_block_as_the_zoos_experiment_manager_builds_it():
    raw = block("ppo", "CartPole-v1")
    n_envs, normalize, kw = zoo_work.sb3_hyperparams(raw)
    assert (n_envs, normalize) == (raw["n_envs"], None)
    assert "n_timesteps" not in kw and "n_envs" not in kw and kw["policy"] == "MlpPolicy"
    lr0, clip0 = float(raw["learning_rate"].removeprefix("lin_")), float(raw["clip_range"].removeprefix("lin_"))
    assert kw["learning_rate"](1.0) == pytest.approx(lr0) and kw["learning_rate"](0.25) == pytest.approx(0.25 * lr0)
    assert kw["clip_range"](0.5) == pytest.approx(0.5 * clip0)
    assert {k: v for k, v in kw.items() if k not in ("learning_rate", "clip_range")} == {k: v for k, v in raw.items() if k not in ("learning_rate", "clip_range", "n_envs", "n_timesteps")}

    raw = block("ppo", "HalfCheetah-v4")
    n_envs, normalize, kw = zoo_work.sb3_hyperparams(raw)
    assert n_envs == 1 and normalize == {"gamma": raw["gamma"]}  # normalize: true, VecNormalize with the block's gamma
    pk = kw["policy_kwargs"]
    assert pk["net_arch"] == {"pi": [256, 256], "vf": [256, 256]} and pk["log_std_init"] == -2 and pk["ortho_init"] is False
    assert pk["activation_fn"] == "nn.ReLU"  # torch.nn.ReLU once in the worker (zoo_work.torch_kwargs)
    assert kw["learning_rate"] == raw["learning_rate"] and "normalize" not in kw


def seed_result(ret: float | None, best: float, steps: int = 1000, wall: float = 10.0, curve=None) -> dict:
    return {"env": "CartPole-v1", "env_steps": steps, "eval_return": ret, "eval_best_return": best, "eval_return_fp32": ret, "wall_s": wall, "sps": steps / wall, "peak_rss_mib": 900.0, "curve": curve or []}


def test_aggregate_mean_std_over_seeds_and_the_pass_rule():
    row = zoo.ROWS["ppo_acrobot"]
    threshold = row.zoo.mean - row.zoo.std
    finals = [threshold + 5, threshold - 1, threshold + 2]
    r = zoo.aggregate("ppo_acrobot", [seed_result(x, x + 1) for x in finals], 1.0)
    assert r["eval_mean"] == pytest.approx(statistics.fmean(finals)) and r["eval_std"] == pytest.approx(statistics.pstdev(finals))
    assert r["eval_best_mean"] == pytest.approx(statistics.fmean(finals) + 1) and r["threshold"] == pytest.approx(threshold)
    assert r["passed"] is True and r["seeds_run"] == 3 and r["errors"] == []
    assert zoo.aggregate("ppo_acrobot", [seed_result(threshold - 0.5, 0.0)], 1.0)["passed"] is False
    assert zoo.aggregate("ppo_acrobot", [seed_result(x, x) for x in finals], 0.02)["passed"] is None  # not judged on a scaled budget
    broken = zoo.aggregate("ppo_acrobot", [seed_result(threshold + 5, 0.0), {"error": "RuntimeError: boom"}], 1.0)
    assert broken["passed"] is None and broken["seeds_run"] == 1 and broken["errors"] == ["RuntimeError: boom"]


def test_sb3_ratio_is_env_steps_per_wall_second_of_the_same_run():
    results = {
        "ppo_pendulum": zoo.aggregate("ppo_pendulum", [seed_result(-200.0, -150.0, steps=100_000, wall=20.0)] * 2, 1.0),
        "sb3_ppo_pendulum": zoo.aggregate("sb3_ppo_pendulum", [seed_result(-300.0, -250.0, steps=100_000, wall=150.0)], 1.0),
    }
    ratios = zoo.sb3_ratios(results)
    assert ratios["ppo_pendulum"]["x"] == pytest.approx(150.0 / 20.0) and ratios["ppo_pendulum"]["sb3_row"] == "sb3_ppo_pendulum"
    assert results["sb3_ppo_pendulum"]["passed"] is None  # a timing row
    assert any("7.5x" in line and "must reach" in line for line in zoo.verdict(results, ratios, 1.0))
    row = zoo.ROWS["dqn_cartpole"]
    judged = zoo.aggregate("sb3_dqn_cartpole", [seed_result(row.zoo.mean - row.zoo.std - 1, 0.0)] * 3, 1.0)
    assert judged["passed"] is False and judged["kind"] == "sb3"  # SB3 at the zoo's budget, judged on returns
    assert any(line.startswith("SB3 itself on dqn.yml: CartPole-v1") and "misses" in line for line in zoo.verdict({"sb3_dqn_cartpole": judged}, {}, 1.0))


def test_eval_curve_reads_the_runs_tensorboard_events(tmp_path):
    logger = MetricLogger(tmp_path)  # the writer a run uses
    for step, (i8, fp) in [(512, (20.0, 21.0)), (1024, (150.0, 149.0))]:
        logger.log(step, {"eval/mean_reward": i8, "eval/std_reward": 3.0, "eval/mean_reward_fp32": fp, "rollout/ep_rew_mean": 9.0})
    logger.close()
    assert zoo_work.eval_curve(tmp_path) == [[512, 20.0, 3.0, 21.0], [1024, 150.0, 3.0, 149.0]]
    empty = tmp_path / "no_eval"
    logger = MetricLogger(empty)
    logger.log(512, {"rollout/ep_rew_mean": 9.0})
    logger.close()
    assert zoo_work.eval_curve(empty) == []


def test_markdown_and_png_from_a_report(tmp_path):
    curve = [[25_000, 100.0, 5.0, 101.0], [50_000, 400.0, 0.0, 400.0]]
    results = {
        "ppo_cartpole": zoo.aggregate("ppo_cartpole", [seed_result(500.0, 500.0, 100_000, curve=curve), seed_result(500.0, 500.0, 100_000, curve=curve)], 1.0),
        "ppo_acrobot": zoo.aggregate("ppo_acrobot", [seed_result(-300.0, -90.0, 1_000_000, curve=curve), seed_result(-100.0, -95.0, 1_000_000)], 1.0),
        "dqn_cartpole": zoo.aggregate("dqn_cartpole", [{"error": "ValueError: x"}], 1.0),
    }
    report = {"title": "t", "machine_line": "cpu", "date": "d", "budget_scale": 1.0, "zoo_figures": zoo.BENCHMARK_MD, "rows": results, "sb3_ratio": {}, "verdict": zoo.verdict(results, {}, 1.0)}
    text = zoo_report.markdown(report)
    assert "| ppo_cartpole |" in text and "500.0 +- 0.0" in text and "-200.0 +- 100.0" in text and "error: ValueError: x" in text and zoo.BENCHMARK_MD in text
    assert "1 of 3 rows reach" in text  # CartPole passes; Acrobot is below the zoo's mean - std; DQN did not run
    assert "--set" not in text and "Every rlaccel run with `--set dqn.qat=true`." in zoo_report.markdown({**report, "overrides": ["dqn.qat=true"]})
    path = zoo_report.plot(report, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args, key",
    [
        (["--rows", "ppo_cartpole,nope"], "--rows"), (["--seeds", "0"], "--seeds"), (["--budget-scale", "0"], "--budget-scale"), (["--set", "seed"], "--set"),
        (["--jobs", "0"], "--jobs"),
    ],  # fmt: skip
)
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(tmp_path, args, key):
    rc, out, err = run_main(["bench", "zoo", *args, "--out", str(tmp_path / "zoo.json")])
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: {key}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("jobs", [1, 3])
def test_jobs_run_seeds_side_by_side_and_keep_each_rows_seeds_in_order(tmp_path, monkeypatch, jobs):
    """``--jobs N``: up to N runs at once (each fake run takes 0.2 s; the most running at one
    time is counted: 1, or all 3); every row gets its seeds in order; the report records N."""
    import threading
    import time

    running, peak, lock = [0], [0], threading.Lock()

    def fake_run_one(params):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return {"env_steps": 1000, "wall_s": 1.0, "sps": 1000.0, "eval_return": float(params["seed"]), "curve": []}

    monkeypatch.setattr(zoo, "run_one", fake_run_one)
    monkeypatch.setattr(zoo_report, "plot", lambda report, path: path)
    out = tmp_path / "zoo.json"
    rc, _, _ = run_main(["bench", "zoo", "--rows", "ppo_cartpole,sb3_ppo_pendulum", "--seeds", "2", "--jobs", str(jobs), "--budget-scale", "0.01", "--out", str(out)])
    report = json.loads(out.read_text())
    assert rc == 0 and report["jobs"] == jobs and peak[0] == min(jobs, 3)
    assert [s["eval_return"] for s in report["rows"]["ppo_cartpole"]["seeds"]] == [0.0, 1.0]
    assert [s["eval_return"] for s in report["rows"]["sb3_ppo_pendulum"]["seeds"]] == [0.0]


def test_main_table_markdown_has_each_row_and_its_same_run_ratio():
    """``rlaccel bench`` writes its table as markdown beside the JSON (what docs/benchmarks.md
    quotes): one line per row, ratios against the baseline row of the same results."""
    from rlaccel.bench import table

    results = {
        "purejaxrl_1": {"sps": 200.0, "time_to_result_s": 12.0, "final_return": 500.0, "final_return_min": 500.0},
        "fused_int8": {"sps": 150.0, "time_to_result_s": 4.0, "final_return": 498.5},
        "split_fp32": {"error": "RuntimeError: boom"},
    }
    info = {"cpu": "Test CPU", "cores": 2, "cpu_flags": ["avx2"], "python": "3", "jax": "0", "backend": "cpu"}
    text = table.markdown(results, info, "2026-12-02T00:00:00")
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0].split(" | ")[:4] == ["| row", "env steps/s", "peak RSS MiB", "vs baseline"]
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines[2:]}  # after the header and its rule
    assert list(rows) == list(results)
    assert rows["fused_int8"][3] == "0.75x" and rows["fused_int8"][6] == "3.00x"  # sps ratio, time to result sooner
    assert rows["split_fp32"][1] == "error: RuntimeError: boom"
    assert "Test CPU, 2 cores, flags: avx2" in text


def test_merge_combines_runs_a_later_file_winning_and_ratios_only_within_one_run(tmp_path):
    from rlaccel.bench.table import machine as this_machine

    machine = this_machine()

    def report(rows: dict, date: str, cpu: str = "cpu x") -> dict:
        return {"benchmark": "rl_zoo", "date": date, "machine": machine, "machine_line": f"{cpu}, 2 cores, flags: avx2", "eval": {"freq": 25_000, "episodes": 5, "deterministic": True}, "budget_scale": 1.0, "seeds": 3, "total_s": 10.0, "rows": rows}

    pend = zoo.aggregate("ppo_pendulum", [seed_result(-200.0, -150.0, steps=100_000, wall=20.0)], 1.0)
    sb3 = zoo.aggregate("sb3_ppo_pendulum", [seed_result(-300.0, -250.0, steps=100_000, wall=150.0)], 1.0)
    newer = zoo.aggregate("ppo_pendulum", [seed_result(-180.0, -150.0, steps=100_000, wall=30.0)], 1.0)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(report({"sb3_ppo_pendulum": sb3, "ppo_pendulum": pend}, "d1")))
    b.write_text(json.dumps({**report({"ppo_pendulum": newer}, "d2", cpu="cpu y"), "overrides": ["ppo.n_epochs=5"]}))
    rows, first, total_s = zoo.merge([str(a), str(b)])
    assert list(rows) == ["ppo_pendulum", "sb3_ppo_pendulum"] and total_s == 20.0 and first["date"] == "d1"  # ROWS order; the first report
    assert rows["ppo_pendulum"]["eval_mean"] == -180.0 and rows["ppo_pendulum"]["source"] == {"file": "b.json", "date": "d2", "machine": "cpu y, 2 cores, flags: avx2", "overrides": ["ppo.n_epochs=5"]}
    assert zoo.sb3_ratios(rows) == {}  # the SB3 row ran beside the older rlaccel row, not this one
    assert zoo.sb3_ratios(zoo.merge([str(a)])[0])["ppo_pendulum"]["x"] == pytest.approx(150.0 / 20.0)

    out = tmp_path / "merged.json"
    parser = argparse.ArgumentParser()
    zoo.add_arguments(parser)
    assert zoo.run(parser.parse_args(["--merge", str(a), str(b), "--out", str(out)])) == 0
    merged = json.loads(out.read_text())
    assert merged["rows"]["ppo_pendulum"]["eval_mean"] == -180.0 and merged["merged_from"] == ["a.json", "b.json"]
    md = out.with_suffix(".md").read_text()  # rows of two machines: each run's named, none for the whole table
    assert "`b.json` (d2, cpu y, 2 cores, `--set ppo.n_epochs=5`): ppo_pendulum" in md and "`a.json` (d1, cpu x, 2 cores): sb3_ppo_pendulum" in md
    assert "Rows from runs on 2 machines" in md.splitlines()[2]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"benchmark": "other"}))
    assert zoo.run(parser.parse_args(["--merge", str(a), str(bad), "--out", str(tmp_path / "no.json")])) == 2
    warm = tmp_path / "warm.json"  # warm starts (--warm-cache) do not merge with cold ones
    warm.write_text(json.dumps({**report({"ppo_pendulum": newer}, "d3"), "compile_cache": "warm"}))
    with pytest.raises(ValueError, match="compilation cache"):
        zoo.merge([str(a), str(warm)])
    assert zoo.merge([str(warm)])[1]["compile_cache"] == "warm"
    assert zoo.run(parser.parse_args(["--merge", str(a), str(warm), "--out", str(tmp_path / "no.json")])) == 2
    assert not (tmp_path / "no.json").exists()


def test_repeats_keep_each_rows_median_run_and_bad_repeat_is_refused(tmp_path):
    runs = [{"sps": s, "time_to_result_s": t, "final_return": s / 1000} for s, t in ((150.0, 9.0), (210.0, 11.0), (180.0, 14.0))]
    row = table.median_run(runs)
    assert row["sps"] == 180.0 and row["final_return"] == 0.18  # the median run's figures
    assert row["time_to_result_s"] == 11.0  # the median of the runs' times to result
    assert [r["sps"] for r in row["repeats"]] == [150.0, 210.0, 180.0]
    assert table.median_run(runs[:2])["sps"] == 150.0  # an even count: the lower middle
    assert table.median_run([runs[0], {"error": "RuntimeError: x"}]) == {"error": "RuntimeError: x"}
    assert table.median_run(runs[:1]) == runs[0]
    out = tmp_path / "b.json"
    assert table.run("purejaxrl_1", out, repeat=0) == 2 and not out.exists()


def test_warm_cache_fills_one_cache_first_and_cold_rows_use_none(tmp_path, monkeypatch):
    calls = []

    def fake_row(name, timesteps=None, compile_cache=None, timeout_s=None):
        calls.append((name, compile_cache))
        return {"sps": 100.0, "time_to_result_s": 5.0, "final_return": 500.0}

    monkeypatch.setattr(table, "run_row", fake_row)
    monkeypatch.setattr(table, "print_table", lambda *a, **k: None)
    assert table.run("purejaxrl_1,fused_fp32", tmp_path / "warm.json", warm_cache=True) == 0
    assert [n for n, _ in calls] == ["purejaxrl_1", "fused_fp32"] * 2  # fill, then measure
    assert len({c for _, c in calls}) == 1 and calls[0][1] is not None
    assert json.loads((tmp_path / "warm.json").read_text())["compile_cache"] == "warm"
    assert "warm starts" in (tmp_path / "warm.md").read_text()
    calls.clear()
    assert table.run("purejaxrl_1", tmp_path / "cold.json") == 0
    assert calls == [("purejaxrl_1", None)] and json.loads((tmp_path / "cold.json").read_text())["compile_cache"] == "cold"


def test_each_finished_row_is_in_the_json_before_the_next_runs_and_a_slow_row_times_out(tmp_path, monkeypatch):
    out = tmp_path / "b.json"
    seen = []

    def fake_row(name, timesteps=None, compile_cache=None, timeout_s=None):
        if out.exists():  # what a run stopped here would have kept
            partial = json.loads(out.read_text())
            seen.append((name, partial["partial"], sorted(partial["rows"])))
        return {"sps": 100.0, "time_to_result_s": 5.0} if name != "fused_fp32" else {"error": f"timed out after {timeout_s} s"}

    monkeypatch.setattr(table, "run_row", fake_row)
    monkeypatch.setattr(table, "print_table", lambda *a, **k: None)
    assert table.run("purejaxrl_1,fused_fp32,fused_int8", out, row_timeout=7) == 1  # a row failed
    assert seen == [("fused_fp32", True, ["purejaxrl_1"]), ("fused_int8", True, ["fused_fp32", "purejaxrl_1"])]
    final = json.loads(out.read_text())
    assert "partial" not in final and final["rows"]["fused_fp32"] == {"error": "timed out after 7 s"}
    monkeypatch.undo()  # a real row's process, killed at its timeout
    assert table.run_row("fused_fp32", timeout_s=1) == {"error": "timed out after 1 s (--row-timeout)"}


def test_a_killed_rows_temporary_files_are_removed(tmp_path, monkeypatch):
    """A row's process makes its temporary files (its run directory) under ``TMPDIR``, which
    ``run_row`` points into its own temporary directory: a row killed at its timeout leaves
    nothing in the system's (the real row of the test above left an empty ``rlaccel_bench_*``
    directory in /tmp at every run: its process made it, then was killed)."""
    import subprocess
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = []

    def fake_run(cmd, env, timeout, **kwargs):  # a row that made its run directory, then hung
        made.append(Path(tempfile.mkdtemp(prefix="rlaccel_bench_", dir=env["TMPDIR"])))
        raise subprocess.TimeoutExpired(cmd, timeout)

    monkeypatch.setattr(table.subprocess, "run", fake_run)
    assert table.run_row("fused_fp32", timeout_s=1) == {"error": "timed out after 1 s (--row-timeout)"}
    assert made and not made[0].exists() and list(tmp_path.iterdir()) == []

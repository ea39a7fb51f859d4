"""Tests for the ``rlaccel`` command (``rlaccel.cli.main``), in process, and the Python API.

Bad input: exit code 2, one line on stderr starting with ``error:`` that names the key, and
nothing written. A tiny run: ``summary.json``, ``config.yaml``, checkpoints and TensorBoard
events (read back with TensorBoard's own reader); ``--resume`` continues it.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import run_main, set_args, tree
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlaccel import checkpoint, cli
from rlaccel import config as config_lib

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# Bad input: exit 2, one line, nothing written.


def bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("env: CartPole-v1\nppo:\n  n_envs: [4, 8\n")
    return ["--config", str(path)], ["malformed YAML", "bad.yaml", "line"]


BAD_INPUT = {
    "malformed_yaml": bad_yaml,
    "unknown_key": lambda cfg: (["--config", cfg, "--set", "ppo.n_env=8"], ["unknown key 'ppo.n_env'", "did you mean 'ppo.n_envs'?"]),
    "wrong_type": lambda cfg: (["--config", cfg, "--set", "ppo.n_steps=many"], ["ppo.n_steps:", "expected an integer"]),
    "out_of_range": lambda cfg: (["--config", cfg, "--set", "ppo.gamma=1.5"], ["ppo.gamma:", "must be in [0, 1]"]),
    "batch_size": lambda cfg: (["--config", cfg, "--set", "ppo.batch_size=100"], ["ppo.batch_size:", "must divide"]),
    "too_few_steps": lambda cfg: (["--config", cfg, "--set", "total_timesteps=10"], ["total_timesteps:", "at least one update"]),
    "unknown_env": lambda cfg: (["--config", cfg, "--set", "env=CartPol-v1"], ["env:", "'CartPol-v1'", "did you mean: CartPole-v1"]),
    "missing_config_file": lambda cfg: (["--config", "nope.yaml"], ["nope.yaml", "cannot read"]),
    "no_config": lambda cfg: ([], ["--config"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, cartpole_yaml, tiny_overrides, case):
    monkeypatch.chdir(tmp_path)  # a default run directory would appear here
    workdir = tmp_path / "work"
    workdir.mkdir()
    make = BAD_INPUT[case]
    args, words = make(workdir) if case == "malformed_yaml" else make(str(cartpole_yaml))
    before = tree(tmp_path)
    run_dir = tmp_path / "run"
    # The bad value comes last: a later --set wins.
    rc, out, err = run_main([*set_args(tiny_overrides), *args, "--run-dir", str(run_dir), "--no-progress"])
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert out == ""
    assert not run_dir.exists()
    assert tree(tmp_path) == before  # no runs/, no run dir, nothing else


def test_existing_run_dir_needs_resume_or_overwrite(tmp_path, cartpole_yaml, tiny_overrides):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("an earlier run")
    before = tree(tmp_path)
    rc, out, err = run_main(["--config", str(cartpole_yaml), *set_args(tiny_overrides), "--run-dir", str(run_dir), "--no-progress"])
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: run directory ") and str(run_dir) in lines[0]
    assert "--resume" in lines[0] and "--overwrite" in lines[0]
    assert tree(tmp_path) == before


def test_run_dir_that_is_a_file(tmp_path, cartpole_yaml, tiny_overrides):
    taken = tmp_path / "results.csv"
    taken.write_text("a,b\n")
    before = tree(tmp_path)
    try:
        rc, out, err = run_main(["--config", str(cartpole_yaml), *set_args(tiny_overrides), "--run-dir", str(taken), "--no-progress"])
    except OSError as e:
        pytest.fail(f"main() raised {type(e).__name__}: {e}")
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(taken) in lines[0], err
    assert tree(tmp_path) == before


def test_resume_needs_a_run_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_ckpt").mkdir()
    (tmp_path / "no_ckpt" / "config.yaml").write_text("env: CartPole-v1\n")
    before = tree(tmp_path)
    for name, words in (("empty", "no config.yaml"), ("no_ckpt", "no checkpoint")):
        rc, out, err = run_main(["--resume", str(tmp_path / name), "--no-progress"])
        assert rc == 2 and out == ""
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: --resume {tmp_path / name}") and words in lines[0], err
    assert tree(tmp_path) == before


@pytest.mark.parametrize("override", ["placement.learner.device=gpu", "placement.actor.device=cpu:7"])
def test_missing_device_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, cartpole_yaml, tiny_overrides, override):
    monkeypatch.chdir(tmp_path)
    # No GPU on the test machine (JAX_PLATFORMS=cpu), two CPUs: both devices are missing.
    before = tree(tmp_path)
    run_dir = tmp_path / "run"
    rc, out, err = run_main(["--config", str(cartpole_yaml), *set_args(tiny_overrides), "--set", override, "--run-dir", str(run_dir), "--no-progress"])
    assert rc == 2 and out == ""
    lines = err.splitlines()
    key = override.split("=")[0]
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}: "), err
    assert not run_dir.exists() and tree(tmp_path) == before


@pytest.mark.parametrize(
    "argv, key",
    [
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
        (["export", "runs/x"], "--run"),
        (["bench", "--repeat", "x"], "--repeat"),
        (["bench", "--timesteps", "0"], "--timesteps"),
        (["bench", "int8", "--widths", "64,x"], "--widths"),
        (["bench", "int8", "--batches", "0"], "--batches"),
        (["bench", "int8", "--reps", "-3"], "--reps"),
        (["bench", "int8", "--fused-rounds", "0"], "--fused-rounds"),
        (["bench", "latency", "--calls", "0"], "--calls"),
        (["bench", "pipeline", "--updates", "0"], "--updates"),
        (["bench", "parallel", "--timesteps", "-1"], "--timesteps"),
        (["bench", "returns", "--episodes", "0"], "--episodes"),
        (["bench", "--repeat", "0"], "--repeat"),
        (["bench", "zoo", "--seeds", "0"], "--seeds"),
        (["bench", "zoo", "--eval-episodes", "-1"], "--eval-episodes"),
        (["eval", "--run", "runs/x", "--episodes", "0"], "--episodes"),
        (["sweep", "--config", "configs/ppo_cartpole.yaml", "--seeds", "-2"], "--seeds"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(capsys, argv, key):
    """argparse's own errors (a bad value, a missing or unknown option) and bad counts: one
    line naming the option, exit 2, nothing under benchmarks/ (``bench int8 --batches 0`` once
    measured batches of nothing and wrote ``benchmarks/int8_cpu.json``)."""
    before = tree(REPO / "benchmarks")
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and key in err, err
    assert tree(REPO / "benchmarks") == before


# --------------------------------------------------------------------------------------------
# A tiny run, end to end.

SCALARS = [
    "rollout/ep_rew_mean",
    "rollout/ep_len_mean",
    "time/fps",
    "train/policy_gradient_loss",
    "train/value_loss",
    "train/entropy_loss",
    "train/approx_kl",
    "train/clip_fraction",
    "train/explained_variance",
    "train/learning_rate",
    "time/compile_s",
    "time/actor_sps",
    "time/learner_sps",
    "actor/decision_latency_us_p50",
    "actor/decision_latency_us_p95",
    "actor/decision_latency_us_p99",
    "actor/decision_latency_us_per_env",
    "quant/weight_rel_error",
    "quant/logit_mae",
    "quant/action_agreement",
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cartpole_yaml, tiny_overrides):
    """One tiny run (4 updates x 256 env steps, int8 actors) into a directory that held an
    older run, replaced with ``--overwrite``."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    run_dir.mkdir()
    (run_dir / "stale.txt").write_text("from an older run")
    rc, out, err = run_main(["--config", str(cartpole_yaml), *set_args(tiny_overrides), "--run-dir", str(run_dir), "--overwrite", "--no-progress"])
    return {"rc": rc, "out": out, "err": err, "dir": run_dir, "summary": json.loads((run_dir / "summary.json").read_text())}


def scalars(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tiny_run_summary(finished_run, cartpole_yaml, tiny_overrides):
    assert finished_run["rc"] == 0, finished_run["err"]
    assert finished_run["out"].startswith("done: 1,024 env steps")
    assert "placement: learner cpu:0 fp32, actors cpu:0 int8 (fused)" in finished_run["err"]
    summary = finished_run["summary"]
    assert summary["env_steps"] == 1024 and summary["updates"] == 4
    for key in ("wall_s", "compile_s", "sps", "final_return"):
        assert isinstance(summary[key], float) and math.isfinite(summary[key]) and summary[key] > 0, key
    assert summary["wall_s"] > summary["compile_s"]
    # CartPole pays 1 per step and no episode is shorter than 8 steps.
    assert summary["final_return"] >= 8 and summary["final_return"] == pytest.approx(summary["final_ep_len"])
    assert summary["episodes"] > 0
    expected = config_lib.load(cartpole_yaml, [*tiny_overrides, "logging.progress=false"])
    assert config_lib.build(summary["config"]) == expected
    assert not (finished_run["dir"] / "stale.txt").exists()  # --overwrite replaced the old run


def test_tiny_run_config_yaml(finished_run, cartpole_yaml, tiny_overrides):
    saved = yaml.safe_load((finished_run["dir"] / "config.yaml").read_text())
    assert saved == finished_run["summary"]["config"]
    assert config_lib.load(finished_run["dir"] / "config.yaml") == config_lib.load(cartpole_yaml, [*tiny_overrides, "logging.progress=false"])


def test_tiny_run_checkpoints(finished_run):
    # checkpoint_interval 2, keep 2: one after update 2, one at the end (update 4).
    names = [p.name for p in checkpoint.list_checkpoints(finished_run["dir"] / "checkpoints")]
    assert names == ["checkpoint_000000002", "checkpoint_000000004"]
    meta = checkpoint.read_meta(finished_run["dir"] / "checkpoints" / names[-1])
    assert meta["update"] == 4 and meta["steps_per_update"] == 256


def test_tiny_run_tensorboard_events(finished_run):
    tags = scalars(finished_run["dir"])
    missing = [t for t in SCALARS if t not in tags]
    assert not missing, f"missing {missing}; logged: {sorted(tags)}"
    # Per-update metrics at every update, on SB3's x axis (env steps).
    for tag in ("train/value_loss", "train/learning_rate", "rollout/ep_rew_mean"):
        assert [step for step, _ in tags[tag]] == [256, 512, 768, 1024], tag
    # Probes (latency, speeds, int8 vs fp32) between chunks: probe_seconds 0 -> after each chunk.
    for tag in ("actor/decision_latency_us_p50", "time/actor_sps", "quant/action_agreement"):
        assert [step for step, _ in tags[tag]] == [512, 1024], tag
    # lin_2.5e-4 over 4 updates x 4 minibatches: 2.5e-4 at the first update, then linearly less.
    lrs = [value for _, value in tags["train/learning_rate"]]
    assert lrs == pytest.approx([2.5e-4, 1.875e-4, 1.25e-4, 0.625e-4], rel=1e-5)
    # time/fps once per chunk (2 updates each).
    assert [step for step, _ in tags["time/fps"]] == [512, 1024]
    assert [step for step, _ in tags["time/compile_s"]] == [0] and tags["time/compile_s"][0][1] > 0
    # CartPole: return == length; the summary's return is the last logged one.
    assert [v for _, v in tags["rollout/ep_rew_mean"]] == pytest.approx([v for _, v in tags["rollout/ep_len_mean"]])
    assert tags["rollout/ep_rew_mean"][-1] == (1024, pytest.approx(finished_run["summary"]["final_return"]))
    last = {tag: values[-1][1] for tag, values in tags.items()}
    assert last["actor/decision_latency_us_p50"] <= last["actor/decision_latency_us_p95"] <= last["actor/decision_latency_us_p99"]
    assert last["actor/decision_latency_us_per_env"] == pytest.approx(last["actor/decision_latency_us_p50"] / 4, rel=1e-5)
    assert 0.5 <= last["quant/action_agreement"] <= 1.0
    assert 0.0 < last["quant/weight_rel_error"] < 0.05
    assert 0.0 <= last["train/clip_fraction"] <= 1.0 and last["train/entropy_loss"] < 0


def test_the_tensorboard_writer_does_not_import_torch(tmp_path):
    """tensorboardX imports torch when it is installed (2-6 s, ~300 MiB a run); rlaccel's
    writer does not, and torch stays importable afterwards."""
    pytest.importorskip("torch")
    code = (
        "import sys; from rlaccel.logging import MetricLogger; "
        f"log = MetricLogger({str(tmp_path)!r}); log.log(1, {{'a/b': 2.0}}); log.close(); "
        "assert 'torch' not in sys.modules, 'torch imported'; import torch; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    assert scalars(tmp_path)["a/b"] == [(1, 2.0)]


def test_the_tensorboard_writer_checksums_records_in_c():
    """tensorboardX falls back to a pure-Python CRC32C per record (176 us a 1 KB row here,
    0.3 us in C) unless the ``crc32c`` package is installed: a dependency of rlaccel's."""
    import tensorboardX.crc32c

    assert tensorboardX.crc32c.crc32c is tensorboardX.crc32c._crc32c_native is not None
    assert tensorboardX.crc32c.crc32c(b"123456789") == 0xE3069283  # CRC-32C's check value (RFC 3720)


@pytest.mark.slow
def test_resume_continues_a_finished_run(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run["dir"], run_dir)
    before = finished_run["summary"]
    rc, out, err = run_main(["--resume", str(run_dir), "--set", "total_timesteps=2048", "--no-progress"])
    assert rc == 0, err
    assert "resumed from" in err and "update 4" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 2048 > before["env_steps"] and summary["updates"] == 8
    assert summary["episodes"] > before["episodes"]
    assert summary["config"]["total_timesteps"] == 2048
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["total_timesteps"] == 2048
    # keep_checkpoints 2: the ones after updates 6 and 8 remain.
    names = [p.name for p in checkpoint.list_checkpoints(run_dir / "checkpoints")]
    assert names == ["checkpoint_000000006", "checkpoint_000000008"]
    # The new events continue the x axis where the first run stopped.
    steps = [step for step, _ in scalars(run_dir)["train/value_loss"]]
    assert steps[-4:] == [1280, 1536, 1792, 2048]


def test_resume_with_another_net_arch_is_refused(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run["dir"], run_dir)
    ckpts = tree(run_dir / "checkpoints")
    rc, out, err = run_main(["--resume", str(run_dir), "--set", "ppo.policy_kwargs.net_arch=[32, 32]", "--no-progress"])
    assert rc == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "/agent/params/policy/Dense_0/" in lines[0], err
    assert tree(run_dir / "checkpoints") == ckpts


def test_refused_resume_leaves_the_run_untouched(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run["dir"], run_dir)
    before = tree(run_dir)
    rc, _, err = run_main(["--resume", str(run_dir), "--set", "ppo.policy_kwargs.net_arch=[32, 32]", "--no-progress"])
    assert rc == 2
    after = tree(run_dir)
    changed = sorted(str(p) for p in set(before) | set(after) if before.get(p, 0) != after.get(p, 0))
    assert not changed, f"changed by a refused --resume: {changed}"
    # Like every other input error, one line and nothing before it (now: a "placement:" line).
    assert err.count("\n") == 1 and err.startswith("error: "), err


# --------------------------------------------------------------------------------------------
# One command: --check, eval, the Python API.


def test_check_validates_prints_the_resolved_config_and_writes_nothing(tmp_path, monkeypatch, cartpole_yaml, tiny_overrides):
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    rc, out, err = run_main(["train", "--config", str(cartpole_yaml), *set_args([*tiny_overrides, "ppo.gamma=0.9"]), "--check"])
    assert rc == 0, err
    assert out.startswith("# resolved config: valid; the run would write to runs/ppo_CartPole-v1_s0_")
    resolved = yaml.safe_load(out)
    assert resolved["ppo"]["gamma"] == 0.9 and resolved["total_timesteps"] == 1024 and "agent" not in resolved
    assert config_lib.build(resolved) == config_lib.load(cartpole_yaml, [*tiny_overrides, "ppo.gamma=0.9"])
    rc, out, err = run_main(["train", "--config", str(cartpole_yaml), "--set", "ppo.gama=0.9", "--check"])
    assert rc == 2 and err.count("\n") == 1 and "did you mean 'ppo.gamma'?" in err and out == ""
    assert tree(tmp_path) == before


def test_eval_runs_the_saved_int8_policy_on_gymnasium(finished_run, tmp_path):
    out_json = tmp_path / "eval.json"
    rc, out, err = run_main(["eval", "--run", str(finished_run["dir"]), "--episodes", "3", "--json", str(out_json)])
    assert rc == 0, err
    assert out.startswith("CartPole-v1 numpy-int8: mean return") and "over 3 episodes" in out
    report = json.loads(out_json.read_text())
    assert len(report["returns"]) == 3 and report["mean"] == pytest.approx(sum(report["returns"]) / 3)
    rc, _, err = run_main(["eval", "--run", str(tmp_path / "nope")])
    assert rc == 2 and err.count("\n") == 1 and "not a finished run directory" in err


def test_python_api_run_and_policy(finished_run):
    import numpy as np

    import rlaccel

    run = rlaccel.Run.load(finished_run["dir"])
    assert run.summary == finished_run["summary"]
    policy = run.policy("numpy-int8")
    assert policy.act(np.zeros(4, np.float32)) in (0, 1)
    assert (finished_run["dir"] / "policy.rlpolicy").is_file()


def test_rlaccel_command_lists_its_subcommands():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "rlaccel", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for command in ("train", "sweep", "export", "eval", "bench"):
        assert command in res.stdout

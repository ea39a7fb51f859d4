"""Data parallelism over devices and processes (``rlaccel.sources.parallel``, ``rlaccel.distributed``).

* Bad input: ``placement.learner.devices`` and the multi-process flags, one line, exit code 2.
* Two forced CPU devices (``tests/conftest.py``) against one: the first update sees the same
  data and ends with the same parameters (float tolerance). One device learning is
  ``tests/test_learning.py``'s; two devices learn CartPole-v1 in the two-process test below.
* Two real processes on 127.0.0.1 with one CPU device each (gloo): they learn CartPole-v1 and
  end with the parameters of one process on two devices (slow); one of them SIGKILLed makes
  the other stop within a bound, with one line, exit code 1 and a usable last checkpoint;
  ``rlaccel sweep`` over them gives the member returns of one process on two devices (slow).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from cli_helpers import run_main

import rlaccel
from rlaccel import api, checkpoint, loop, sources
from rlaccel import config as config_lib
from rlaccel.sources.fused import FusedSource
from rlaccel.sources.parallel import ParallelSource

LOST_WITHIN_S = 60  # what docs/multi-host.md promises for a process that dies (measured: ~1 s)
# The learning runs: configs/ppo_cartpole.yaml in 200k steps at lr 1e-3 (annealed): 390 updates
# of 16 minibatches, 2.5x fewer gradient averages than 500k steps (each one a network round
# trip between the processes); a return of 500 with PRNGKey(0..3).
# The final training returns are compared: no evaluation, no probes (tests/test_cli.py's).
LEARN = ("total_timesteps=200000", "ppo.learning_rate=lin_1e-3", "eval.freq=0", "logging.probe_seconds=null")


def load(path, *overrides):
    return config_lib.load(path, list(overrides))


# --------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["placement.learner.devices=3"], ["placement.learner.devices: 3 requested", "2 cpu device(s)"]),
        (["placement.learner.devices=2", "ppo.n_envs=3", "ppo.batch_size=128", "ppo.n_steps=128"], ["ppo.n_envs: 3 is not divisible by the 2 learner devices"]),
        (["placement.learner.devices=2", "ppo.batch_size=1"], ["ppo.batch_size: 1 is not divisible"]),
        (["placement.learner.devices=all", "placement.learner.device=cpu:1"], ["placement.learner.device: 'cpu:1' names one device"]),
        (["placement.learner.devices=2", "placement.actor.device=cpu:1"], ["placement.actor.device:", "use learner"]),
        (["placement.learner.devices=2", "env=gym:CartPole-v1"], ["placement.learner.devices: data parallelism steps JAX and brax envs"]),
        (["placement.learner.devices=0"], ["placement.learner.devices: must be >= 1 or all"]),
        (["placement.learner.devices=two"], ["placement.learner.devices: expected int | 'all'"]),
    ],
)
def test_devices_refused_in_one_line(cartpole_yaml, overrides, words):
    with pytest.raises(config_lib.ConfigError) as info:
        api.validate(load(cartpole_yaml, *overrides))
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message, (w, message)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--coordinator", "127.0.0.1:1234"], ["--coordinator HOST:PORT, --num-processes N and --process-id I go together"]),
        (["--coordinator", "127.0.0.1", "--num-processes", "2", "--process-id", "0"], ["--coordinator: expected HOST:PORT"]),
        (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"], ["--process-id: must be in 0 .. 1"]),
    ],
)
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_multi_process_flags_refused_in_one_line(tmp_path, cartpole_yaml, flags, words, command):
    where = ["--run-dir", str(tmp_path / "run")] if command == "train" else ["--out", str(tmp_path / "run")]
    rc, _, err = run_main([command, "--config", str(cartpole_yaml), *where, *flags])
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------
# One process, two devices.


def first_update(config) -> tuple[object, object, dict, object]:
    """``(source, state after one update, metrics, the rollout's observations)``."""
    source = sources.make(config)
    state = source.place(source.initial_state(jax.random.PRNGKey(config.seed)))
    source.initial_params = jax.device_get(state.agent.params)
    state, metrics = source.run_chunk(state, 1)
    return source, state, jax.device_get(metrics), np.asarray(jax.device_get(state.rollout.obs))


@pytest.mark.optimized  # bit for bit across shardings: holds under XLA's default effort
def test_first_update_is_the_same_on_one_and_two_devices(cartpole_yaml):
    one, state_1, metrics_1, obs_1 = first_update(load(cartpole_yaml))
    two, state_2, metrics_2, obs_2 = first_update(load(cartpole_yaml, "placement.learner.devices=2"))
    assert isinstance(one, FusedSource) and isinstance(two, ParallelSource)
    assert two.describe() == "learner 2 x cpu (cpu:0, cpu:1) fp32, actors on each int8 (data parallel)"
    # Each device holds its half of the envs and a whole copy of the parameters.
    envs = {shard.device: shard.data.shape[0] for shard in state_2.rollout.obs.addressable_shards}
    assert envs == {d: two.num_envs // 2 for d in jax.devices()[:2]}
    kernel = jax.tree.leaves(state_2.agent.params)[0]
    assert kernel.sharding.is_fully_replicated and len(kernel.addressable_shards) == 2
    # The same data: the envs' observations after the rollout, and the episode statistics.
    np.testing.assert_array_equal(obs_1, obs_2)
    assert metrics_1["rollout/ep_rew_mean"] == metrics_2["rollout/ep_rew_mean"]
    # The same parameters, up to the rounding of a gradient summed in two halves.
    params_1, params_2 = jax.device_get(state_1.agent.params), jax.device_get(state_2.agent.params)
    for a, b in zip(jax.tree.leaves(params_1), jax.tree.leaves(params_2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params_2), jax.tree.leaves(two.initial_params)))  # it learned
    for name in ("train/loss", "train/grad_norm", "train/approx_kl", "train/value_loss"):
        np.testing.assert_allclose(metrics_1[name], metrics_2[name], rtol=1e-4, err_msg=name)


# --------------------------------------------------------------------------------------------
# Two processes on 127.0.0.1, one CPU device each.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(run_dir: Path, overrides: list[str], cartpole_yaml: Path) -> list[subprocess.Popen]:
    """``rlaccel train --coordinator 127.0.0.1:PORT --num-processes 2 --process-id I`` for I = 0, 1."""
    sets = [arg for item in overrides for arg in ("--set", item)]
    return launch_command(["train", "--config", str(cartpole_yaml), *sets, "--run-dir", str(run_dir), "--no-progress"])


def launch_command(args: list[str]) -> list[subprocess.Popen]:
    """``rlaccel ARGS --coordinator 127.0.0.1:PORT --num-processes 2 --process-id I`` for I = 0, 1,
    one CPU device each."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    port = free_port()
    base = [sys.executable, "-m", "rlaccel", *args]
    return [
        subprocess.Popen([*base, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]


def finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    """Wait for every process (killing all of them past ``timeout``); ``(code, stdout, stderr)`` each."""
    deadline = time.monotonic() + timeout
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` is still in the process table (and not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.slow
@pytest.mark.optimized  # learns: XLA's default effort, as users run
def test_two_processes_learn_and_match_one_process_on_two_devices(cartpole_yaml, tmp_path):
    run_dir = tmp_path / "two_processes"
    results = finish(launch(run_dir, list(LEARN), cartpole_yaml), timeout=600)
    for i, (code, _, stderr) in enumerate(results):
        assert code == 0, (i, stderr[-3000:])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_return"] >= 475, summary["final_return"]
    assert summary["placement"] == "learner 2 x cpu on 2 processes fp32, actors on each int8 (data parallel)"
    assert summary["processes"] == 2 and len(summary["process_sps"]) == 2 and all(s > 0 for s in summary["process_sps"])
    # One process on two devices ran the same program: it learns, to the same final parameters.
    two_devices = rlaccel.train(cartpole_yaml, overrides=[*LEARN, "placement.learner.devices=2"], run_dir=tmp_path / "two_devices", progress=False)
    assert two_devices.summary["status"] == "completed" and two_devices.summary["devices"] == 2
    assert two_devices.summary["final_return"] >= 475, two_devices.summary["final_return"]
    mine = checkpoint.read_arrays(checkpoint.latest(run_dir / "checkpoints"))
    theirs = checkpoint.read_arrays(checkpoint.latest(two_devices.run_dir / "checkpoints"))
    assert sorted(mine) == sorted(theirs)
    params = [k for k in mine if k.startswith("/agent/params/")]
    assert params
    for k in params:
        np.testing.assert_allclose(mine[k], theirs[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_a_killed_process_stops_the_other_with_one_line(cartpole_yaml, tmp_path):
    run_dir = tmp_path / "killed"
    # The learning runs' program (compile cache); a checkpoint at the end of the first chunk (6 updates).
    overrides = [*LEARN, "logging.checkpoint_interval=6"]
    procs = launch(run_dir, overrides, cartpole_yaml)
    try:
        deadline = time.monotonic() + 300
        while checkpoint.latest(run_dir / "checkpoints") is None:  # a committed checkpoint
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no checkpoint appeared"
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        (code, _, stderr), _ = finish(procs, timeout=LOST_WITHIN_S)
        stopped_after = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert stopped_after < LOST_WITHIN_S
    assert code == 1
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "process 0 of 2: another process of the run is gone" in lines[0], stderr[-3000:]
    assert "Check failure" not in stderr  # not JAX's abort with a stack trace
    assert not any(alive(p.pid) for p in procs)
    latest = checkpoint.latest(run_dir / "checkpoints")
    assert str(latest) in lines[0]
    if (run_dir / "summary.json").exists():  # a collective failed in process 0's main thread
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "failed" and summary["exit_code"] == 1 and summary["checkpoint"] == str(latest)
    else:  # process 0 waited on a checkpoint barrier: its lifeline to process 1 broke (rlaccel.lifeline)
        assert "process 1: its connection closed" in lines[0]
    # The last checkpoint restores (here: one process on two devices, the same global state).
    template = sources.make(load(cartpole_yaml, *overrides, "placement.learner.devices=2")).initial_state(jax.random.PRNGKey(0))
    state, path = loop.restore_latest(run_dir / "checkpoints", template)
    assert path == latest and int(state.update) == checkpoint.read_meta(latest)["update"] >= 2


@pytest.mark.slow
def test_two_processes_sweep_like_one_process_on_two_devices(cartpole_yaml, tmp_path, capsys):
    """``rlaccel sweep`` over two processes: the members (2 settings x 2 seeds) sharded over
    both processes' devices, process 0 writes the outputs, the same member returns as one
    process on two devices (the grid of tests/test_sweep.py's CLI test: its compiled program)."""
    from rlaccel import cli

    sets = ["total_timesteps=1024", "ppo.n_steps=32", "ppo.batch_size=32", "ppo.n_epochs=1", "logging.log_interval=2", "placement.actor.precision=fp32"]
    args = ["sweep", "--config", str(cartpole_yaml), *[a for o in sets for a in ("--set", o)], "--no-progress", "--seeds", "2", "--grid", "ppo.learning_rate=3e-3,1e-5"]
    procs = launch_command([*args, "--out", str(tmp_path / "two")])
    assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0, capsys.readouterr().err
    results = finish(procs, timeout=300)
    for i, (code, _, stderr) in enumerate(results):
        assert code == 0, (i, stderr[-3000:])
    assert "process 0 wrote the results" in results[1][1] and "process 0 wrote" not in results[0][1]
    two, one = (json.loads((tmp_path / d / "results.json").read_text())["results"] for d in ("two", "one"))
    assert [r["setting"] for r in two] == [r["setting"] for r in one]
    for a, b in zip(two, one):
        assert len(a["final_returns"]) == 2 and np.all(np.isfinite(a["final_returns"]))
        np.testing.assert_allclose(a["final_returns"], b["final_returns"], rtol=1e-6, err_msg=a["setting"])
    assert (tmp_path / "two" / "results.csv").is_file() and (tmp_path / "two" / "best_config.yaml").is_file()

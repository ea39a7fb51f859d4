"""The loop's look-ahead (``rlaccel.loop``): the next chunk is dispatched before the last one's
metrics are read, so the host's logging overlaps the device. It must change no number, and a
signal or a NaN that arrives with a chunk in flight must lose nothing and not crash.

These runs have no probes and no checkpoints between chunks (each would read the state, so
the loop would not look ahead); ``test_reliability.py``'s runs, which probe after every chunk
and checkpoint every 2 updates, cover the loop without it.
"""

from __future__ import annotations

import json
import os
import signal

import jax
import pytest
from cli_helpers import run_main, set_args
from test_reliability import PPO, PPO_YAML, QUIET, NaNRewardCartPole, compilation_cache, payload, scalars, update_of  # noqa: F401 - the module's cache fixture

from rlaccel import api, checkpoint, envs, guards, sources
from rlaccel import config as config_lib
from rlaccel.sources.device import DeviceSource

# 6 updates in chunks of 2; nothing reads the state between chunks but the end's checkpoint.
AHEAD = (*(o for o in PPO if not o.startswith(("logging.probe_seconds", "logging.checkpoint_interval"))), "logging.probe_seconds=null", "logging.checkpoint_interval=0")


def spy_on_chunks(monkeypatch) -> list[str]:
    """Record the order of chunk dispatches (``run``) and the loop's metric reads (``get``)."""
    events: list[str] = []
    make, device_get = sources.make, jax.device_get

    def spied_make(*args, **kwargs):
        source = make(*args, **kwargs)
        run_chunk = source.run_chunk

        def spied(state, n):
            events.append("run")
            return run_chunk(state, n)

        source.run_chunk = spied
        return source

    def spied_get(x):
        events.append("get")
        return device_get(x)

    monkeypatch.setattr(sources, "make", spied_make)
    monkeypatch.setattr(jax, "device_get", spied_get)
    return events


@pytest.mark.slow
def test_looking_ahead_changes_no_number(tmp_path, monkeypatch):
    config = config_lib.load(PPO_YAML, list(AHEAD))
    runs = {}
    for ahead in (True, False):
        with monkeypatch.context() as m:
            if not ahead:
                m.setattr(DeviceSource, "dispatches_ahead", False)
            events = spy_on_chunks(m)
            runs[ahead] = (api.train(config, run_dir=tmp_path / str(ahead), console=QUIET).summary, events)
    (on, on_events), (off, off_events) = runs[True], runs[False]
    assert on["status"] == off["status"] == "completed" and on["updates"] == off["updates"] == 6
    # Chunk 2 is dispatched before chunk 1's metrics are read (and chunk 3 before chunk 2's);
    # without look-ahead each dispatch waits for the read before it.
    assert on_events[:3] == ["run", "run", "get"] and on_events.count("run") == 3
    assert off_events[:3] == ["run", "get", "run"]
    a, b = (payload(checkpoint.latest(tmp_path / str(x) / "checkpoints")) for x in (True, False))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert scalars(tmp_path / "True") == scalars(tmp_path / "False")
    assert on["final_return"] == off["final_return"]


@pytest.mark.slow
def test_a_signal_with_a_chunk_in_flight_finishes_it_and_resumes_exactly(tmp_path, monkeypatch):
    # The signal arrives while chunk 1's metrics are checked, when chunk 2 is already in flight:
    # the run finishes chunk 2, logs it, checkpoints update 4 and stops; --resume then ends
    # where a straight run ends, bit for bit.
    real = guards.first_nonfinite
    sent = []

    def signal_once(metrics, *args, **kwargs):
        if not sent:
            sent.append(signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(metrics, *args, **kwargs)

    straight = tmp_path / "straight"
    rc, _, err = run_main(["--config", str(PPO_YAML), *set_args(AHEAD), "--run-dir", str(straight)])
    assert rc == 0, err
    monkeypatch.setattr(guards, "first_nonfinite", signal_once)
    run_dir = tmp_path / "run"
    rc, out, err = run_main(["--config", str(PPO_YAML), *set_args(AHEAD), "--run-dir", str(run_dir)])
    assert rc == 130, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["updates"] == 4
    assert update_of(checkpoint.latest(run_dir / "checkpoints")) == 4
    assert max(s for s, _ in scalars(run_dir)["train/value_loss"]) == 4 * 256  # chunk 2 was logged
    monkeypatch.setattr(guards, "first_nonfinite", real)
    rc, _, err = run_main(["--resume", str(run_dir)])
    assert rc == 0 and "(update 4)" in err, err
    a, b = (payload(checkpoint.latest(d / "checkpoints")) for d in (straight, run_dir))
    assert all((a[k] == b[k]).all() for k in a)


@pytest.mark.slow
def test_a_nan_with_a_chunk_in_flight_stops_the_run(tmp_path, monkeypatch):
    # Seed 1's first NaN reward is at update 7 (test_reliability.py): chunk 5 is in flight when
    # chunk 4's metrics show it. The run ends diverged, naming update 7, and logs nothing after it.
    monkeypatch.setitem(envs.REGISTRY, NaNRewardCartPole.id, NaNRewardCartPole)
    run_dir = tmp_path / "run"
    args = [*set_args(AHEAD), "--set", f"env={NaNRewardCartPole.id}", "--set", "total_timesteps=5120", "--set", "seed=1"]
    rc, out, err = run_main(["--config", str(PPO_YAML), *args, "--run-dir", str(run_dir)])
    assert rc == 1 and "at update 7" in err, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["updates"] == 6
    assert max(s for s, _ in scalars(run_dir)["train/value_loss"]) <= 7 * 256

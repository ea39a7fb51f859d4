"""Tests for ``rlaccel.checkpoint`` (orbax): exact round trips (sharded too), retention,
asynchronous saves, a real ``kill -9`` mid-save, and one-line errors for damaged, old-format
or incompatible checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlaccel import agent as agent_lib, checkpoint, compile_cache, envs
from rlaccel import config as config_lib
from rlaccel.checkpoint import CheckpointError, DamagedCheckpointError
from rlaccel.sources.fused import FusedSource

REPO = Path(__file__).resolve().parents[1]


def make_init(cartpole_yaml, overrides):
    """``key -> TrainState`` (params, Adam state, envs, key, counters), compiled."""
    config = config_lib.load(cartpole_yaml, overrides)
    env = envs.make(config.env, auto_reset=True)
    spec = agent_lib.make(config, env)
    runner = FusedSource(spec.agent, env, spec.num_envs, spec.num_steps, precision="int8")
    return compile_cache.jit(runner.init)


def make_state(cartpole_yaml, overrides, seed):
    return make_init(cartpole_yaml, overrides)(jax.random.PRNGKey(seed))


@pytest.fixture(scope="module")
def states(cartpole_yaml, tiny_overrides):
    """Two states of the same config (seeds 0 and 1) and one with another ``net_arch``."""
    init = make_init(cartpole_yaml, tiny_overrides)
    return {
        "a": init(jax.random.PRNGKey(0)),
        "b": init(jax.random.PRNGKey(1)),
        "narrow": make_state(cartpole_yaml, [*tiny_overrides, "ppo.policy_kwargs.net_arch=[32, 32]"], 0),
    }


@pytest.fixture(scope="module")
def saved(states, tmp_path_factory):
    """State ``a`` saved once (tests that only read it share it; damage tests copy it)."""
    return checkpoint.save(tmp_path_factory.mktemp("saved"), 7, states["a"], {"update": 7, "config": {"env": "CartPole-v1"}})


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def assert_bitwise(tree, expected):
    assert jax.tree.structure(tree) == jax.tree.structure(expected)
    for x, y in zip(leaves(tree), leaves(expected)):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()  # bitwise, NaNs and signed zeros included


def assert_one_line_error(info, *words):
    msg = str(info.value)
    assert msg and "\n" not in msg, repr(msg)
    for w in words:
        assert w in msg, (w, msg)


def test_round_trip_is_bitwise(saved, states):
    a, b = states["a"], states["b"]
    # The target must differ from what is restored, or the test could not fail.
    assert any(not np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))
    assert saved.name == "checkpoint_000000007" and saved.is_dir()
    meta = {"update": 7, "config": {"env": "CartPole-v1"}}
    restored, got_meta = checkpoint.restore(saved, b)
    assert got_meta == meta and checkpoint.read_meta(saved) == meta
    assert_bitwise(restored, a)
    # An abstract template (jax.eval_shape, as export uses) gives numpy arrays, the same bytes.
    restored, _ = checkpoint.restore(saved, jax.eval_shape(lambda: b))
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(restored))
    assert_bitwise(restored, a)
    arrays = checkpoint.read_arrays(saved)  # no template: flat paths
    assert arrays["/agent/params/policy/Dense_0/kernel"].tobytes() == np.asarray(a.agent.params["policy"]["Dense_0"]["kernel"]).tobytes()


def test_sharded_state_round_trips_onto_the_templates_sharding(tmp_path, saved, states):
    """Arrays split over the two CPU devices: saved from, and restored onto, their sharding."""
    mesh = Mesh(np.array(jax.devices()[:2]), ("d",))

    def spread(x):
        spec = PartitionSpec("d") if x.ndim and x.shape[0] % 2 == 0 else PartitionSpec()
        return jax.device_put(x, NamedSharding(mesh, spec))

    sharded_b = jax.tree.map(spread, states["b"])
    assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(sharded_b))
    restored, _ = checkpoint.restore(saved, sharded_b)
    assert [x.sharding for x in jax.tree.leaves(restored)] == [x.sharding for x in jax.tree.leaves(sharded_b)]
    assert_bitwise(restored, states["a"])
    # ...and a checkpoint of a sharded state restores onto one device.
    path = checkpoint.save(tmp_path, 1, jax.tree.map(spread, states["a"]), {})
    restored, _ = checkpoint.restore(path, states["b"])
    assert_bitwise(restored, states["a"])


def test_keep_last_k_while_saving_asynchronously(tmp_path, states):
    """The saver copies the state before it returns (changing the caller's buffers afterwards,
    as a donated or reused state would, does not reach the checkpoint written in the
    background) and keeps the newest ``keep``, ordered by update."""
    original = jax.tree.map(np.array, jax.device_get(states["a"]))
    host = jax.tree.map(np.copy, original)
    with checkpoint.Saver(tmp_path, keep=3) as saver:
        for update in (1, 2, 3, 10, 11):  # 10 > 3: ordered by number, not by name
            path = saver.save(update, host, {"update": update})
            for x in jax.tree.leaves(host):
                x[...] = 0  # what the next chunk could do to a reused buffer
            host = jax.tree.map(np.copy, original)
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["checkpoint_000000003", "checkpoint_000000010", "checkpoint_000000011"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # nothing else left behind
    assert checkpoint.latest(tmp_path) == path == tmp_path / "checkpoint_000000011"
    restored, meta = checkpoint.restore(path, states["b"])
    assert meta == {"update": 11} and checkpoint.read_meta(path) == meta
    assert_bitwise(restored, original)
    checkpoint.save(tmp_path, 12, states["a"], {}, keep=1)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_000000012"]


def test_empty_or_missing_directory_has_no_latest(tmp_path):
    assert checkpoint.latest(tmp_path / "missing") is None
    assert checkpoint.list_checkpoints(tmp_path) == []


KILLED_SAVE = """
import sys, numpy as np
from rlaccel import checkpoint
state = {"w": np.arange(4096, dtype=np.float32), "key": np.array([1, 2], np.uint32)}
checkpoint.save(sys.argv[1], 1, state, {"update": 1}, keep=1)
with checkpoint.Saver(sys.argv[1], keep=1) as saver:
    saver.save(2, {"w": -state["w"], "key": state["key"]}, {"update": 2})
"""


def test_kill_9_during_a_save_leaves_the_previous_checkpoint(tmp_path):
    """A real process, killed (SIGKILL) after writing the new checkpoint but before orbax's
    commit: the previous one (keep=1!) is intact and the newest; the next save cleans up."""
    env = {**os.environ, checkpoint.PAUSE_ENV: "2"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(tmp_path)], env=env, cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not (paused := list(tmp_path.glob("checkpoint_000000002.*/paused"))):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the save never paused"
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    half_written = paused[0].parent
    assert any(p.is_file() for p in (half_written / "state").rglob("*"))  # the arrays were written
    assert checkpoint.list_checkpoints(tmp_path) == [tmp_path / "checkpoint_000000001"]
    arrays = checkpoint.read_arrays(checkpoint.latest(tmp_path))
    assert arrays["/w"][5] == 5.0 and checkpoint.read_meta(checkpoint.latest(tmp_path)) == {"update": 1}
    checkpoint.save(tmp_path, 2, {"w": np.zeros(3, np.float32)}, {}, keep=1)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_000000002"]  # the temp directory is gone


def _copy(saved, tmp_path):
    import shutil

    return Path(shutil.copytree(saved, tmp_path / saved.name))


def _largest_file(path):
    return max((p for p in (path / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _data_files(path):
    """Every file of orbax's ``d/`` folders under ``state/`` (array chunks and OCDBT's nodes)."""
    return [p for p in (path / "state").rglob("*") if p.is_file() and p.parent.name == "d"]


def _flip_middle_byte(target):
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    target.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage",
    ["flip_data", "truncate_data", "flip_header", "truncate_header", "no_header", "no_state", "flip_state_metadata", "edit_header_meta"],
)
def test_damaged_checkpoint_is_one_line_naming_it(tmp_path, saved, states, damage):
    path = _copy(saved, tmp_path)
    header = path / "meta" / "metadata"
    kind, what = damage.split("_", 1)
    target = {"data": _largest_file(path), "header": header, "state_metadata": path / "state" / "_METADATA"}.get(what)
    if damage == "flip_data":
        # One byte in the middle of every data file: the largest file's alone once read back
        # unchanged in a full suite (orbax need not read every byte of an OCDBT file; not
        # reproduced in 80 saves here), so the test could fail with nothing wrong.
        for data_file in _data_files(path):
            _flip_middle_byte(data_file)
    elif kind == "flip":
        _flip_middle_byte(target)
    elif kind == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "no_header":
        header.unlink()
    elif damage == "no_state":
        import shutil

        shutil.rmtree(path / "state")
    else:  # valid JSON, another update: only the header's checksum can tell
        text = header.read_text()
        assert '"update": 7' in text
        header.write_text(text.replace('"update": 7', '"update": 8'))
    with pytest.raises(DamagedCheckpointError) as info:
        checkpoint.restore(path, states["b"])
    assert_one_line_error(info, f"{path}: checkpoint is damaged")
    if what in ("data", "state_metadata") or damage == "no_state":
        # a flipped data byte reads back silently in orbax: the sha256 names the array
        assert "fails its checksum" in str(info.value) or "state/" in str(info.value)
    else:
        assert "meta/metadata" in str(info.value)
        with pytest.raises(DamagedCheckpointError):
            checkpoint.read_meta(path)


def test_not_a_checkpoint_old_format_and_other_format(tmp_path, saved, states):
    junk = tmp_path / "checkpoint_000000001.ckpt"
    junk.write_bytes(os.urandom(256).replace(b"\n", b" "))
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(junk, states["b"])
    assert_one_line_error(info, str(junk), "not an rlaccel checkpoint")

    # Format 1: a msgpack file with a JSON header line (rlaccel before orbax): listed, and
    # refused in one line saying what changed.
    old = tmp_path / "old" / "checkpoint_000000004.ckpt"
    old.parent.mkdir()
    old.write_bytes(json.dumps({"format": 1, "sha256": "0" * 64, "meta": {"update": 4}}).encode() + b"\n\x80")
    assert checkpoint.latest(old.parent) == old
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(old, states["b"])
    assert_one_line_error(info, str(old), "format 1", "before orbax")
    assert not isinstance(info.value, DamagedCheckpointError)  # not a damaged file: nothing older would help

    path = _copy(saved, tmp_path)
    header = json.loads((path / "meta" / "metadata").read_text())
    (path / "meta" / "metadata").write_text(json.dumps({**header, "format": 3}))
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(path, states["b"])
    assert_one_line_error(info, str(path), "format 3")

    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(tmp_path / "missing", states["b"])
    assert_one_line_error(info, "missing")


def test_other_net_arch_names_the_mismatching_array(tmp_path, saved, states):
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(saved, states["narrow"])
    # [64, 64] saved, [32, 32] expected: the first policy layer is the first array that differs.
    assert_one_line_error(info, str(saved), "/agent/params/policy/Dense_0/", "(64,", "(32,")
    # ...and the other way round.
    path = checkpoint.save(tmp_path / "narrow", 1, states["narrow"], {})
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(path, states["a"])
    assert_one_line_error(info, "/agent/params/policy/Dense_0/", "(32,", "(64,")


def test_other_depth_names_the_missing_layer(saved, states, cartpole_yaml, tiny_overrides):
    deep = make_state(cartpole_yaml, [*tiny_overrides, "ppo.policy_kwargs.net_arch=[64, 64, 64]"], 0)
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(saved, deep)
    assert_one_line_error(info, str(saved), "/agent/params/policy", "Dense_3")


def test_listing_and_meta_need_neither_jax_nor_orbax(saved):
    code = (
        "import sys\nfrom rlaccel import checkpoint\n"
        f"assert checkpoint.latest({str(saved.parent)!r}).name == 'checkpoint_000000007'\n"
        f"assert checkpoint.read_meta({str(saved)!r})['update'] == 7\n"
        "heavy = sorted(m for m in ('jax', 'orbax', 'orbax.checkpoint', 'flax') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


class _Suspend:
    def __await__(self):
        yield


def _abandoned(name: str):
    """A started coroutine called ``name`` that, closed by the garbage collector, raises from
    its ``GeneratorExit`` as orbax's abandoned shard reads do (an "Exception ignored" report)."""

    async def body():
        try:
            await _Suspend()
        except GeneratorExit as e:
            raise RuntimeError("read abandoned") from e

    body.__code__ = body.__code__.replace(co_name=name)
    coro = body()
    coro.send(None)
    return coro


def test_abandoned_orbax_reads_are_not_reported_later_and_other_reports_are(monkeypatch):
    """After a damaged checkpoint's restore, orbax's abandoned reads may be collected much
    later, in the caller's process: their reports are dropped, anything else still reported."""
    import gc

    from rlaccel import checkpoint_orbax

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.object.cr_code.co_name))
    checkpoint_orbax.quiet_abandoned_reads()
    checkpoint_orbax.quiet_abandoned_reads()  # once: not wrapped twice
    coros = [_abandoned(checkpoint_orbax.ABANDONED_READ), _abandoned("someone_elses_read")]
    del coros
    gc.collect()
    assert seen == ["someone_elses_read"]

"""Tests for ``rlaccel.checkpoint``: exact round trips, retention, atomic writes, and one-line
errors for damaged or incompatible files."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from rlaccel import agent as agent_lib, checkpoint, envs
from rlaccel import config as config_lib
from rlaccel.checkpoint import CheckpointError
from rlaccel.sources.device import FusedSource


def make_init(cartpole_yaml, overrides):
    """``key -> TrainState`` (params, Adam state, envs, key, counters), compiled."""
    config = config_lib.load(cartpole_yaml, overrides)
    env = envs.make(config.env, auto_reset=True)
    spec = agent_lib.make(config, env)
    runner = FusedSource(spec.agent, env, spec.num_envs, spec.num_steps, precision="int8")
    return jax.jit(runner.init)


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


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def assert_one_line_error(info, *words):
    msg = str(info.value)
    assert msg and "\n" not in msg, repr(msg)
    for w in words:
        assert w in msg, (w, msg)


def test_round_trip_is_bitwise(tmp_path, states):
    a, b = states["a"], states["b"]
    # The target must differ from what is restored, or the test could not fail.
    assert any(not np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))
    meta = {"update": 7, "config": {"env": "CartPole-v1"}}
    path = checkpoint.save(tmp_path, 7, a, meta)
    assert path == tmp_path / "checkpoint_000000007.ckpt" and path.is_file()
    restored, got_meta = checkpoint.restore(path, b)
    assert got_meta == meta and checkpoint.read_meta(path) == meta
    assert jax.tree.structure(restored) == jax.tree.structure(a)
    for x, y in zip(leaves(restored), leaves(a)):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()  # bitwise, NaNs and signed zeros included


def test_keep_last_k(tmp_path, states):
    for update in (1, 2, 3, 10, 11):  # 10 > 3: ordered by number, not by name
        checkpoint.save(tmp_path, update, states["a"], {"update": update}, keep=3)
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["checkpoint_000000003.ckpt", "checkpoint_000000010.ckpt", "checkpoint_000000011.ckpt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # nothing else left behind
    assert checkpoint.latest(tmp_path) == tmp_path / "checkpoint_000000011.ckpt"
    assert checkpoint.read_meta(checkpoint.latest(tmp_path)) == {"update": 11}
    checkpoint.save(tmp_path, 12, states["a"], {}, keep=1)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_000000012.ckpt"]


def test_empty_or_missing_directory_has_no_latest(tmp_path):
    assert checkpoint.latest(tmp_path / "missing") is None
    assert checkpoint.list_checkpoints(tmp_path) == []


def test_atomic_write_leaves_no_temp_files_and_survives_a_crash(tmp_path, states, monkeypatch):
    first = checkpoint.save(tmp_path, 1, states["a"], {"update": 1})
    assert [p.name for p in tmp_path.iterdir()] == [first.name]

    # Crash between writing the temp file and renaming it into place.
    def crash(src, dst):
        raise OSError("simulated crash")

    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        checkpoint.save(tmp_path, 2, states["b"], {"update": 2})
    monkeypatch.undo()
    # The half-written checkpoint is invisible; the previous one is intact and still the latest.
    assert checkpoint.list_checkpoints(tmp_path) == [first]
    assert checkpoint.latest(tmp_path) == first
    restored, meta = checkpoint.restore(first, states["b"])
    assert meta == {"update": 1}
    assert all(x.tobytes() == y.tobytes() for x, y in zip(leaves(restored), leaves(states["a"])))


@pytest.mark.parametrize("keep_bytes", [0, 10, "header", "half"])
def test_truncated_file(tmp_path, states, keep_bytes):
    path = checkpoint.save(tmp_path, 1, states["a"], {"update": 1})
    raw = path.read_bytes()
    header_len = raw.index(b"\n") + 1
    n = {"header": header_len, "half": header_len + (len(raw) - header_len) // 2}.get(keep_bytes, keep_bytes)
    path.write_bytes(raw[:n])
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(path, states["b"])
    assert_one_line_error(info, str(path))


@pytest.mark.parametrize("where", ["payload_start", "payload_middle", "payload_end", "header_hash", "header_brace"])
def test_flipped_byte(tmp_path, states, where):
    path = checkpoint.save(tmp_path, 1, states["a"], {"update": 1})
    raw = bytearray(path.read_bytes())
    header_len = raw.index(b"\n") + 1
    header = json.loads(raw[:header_len])
    index = {
        "payload_start": header_len,
        "payload_middle": (header_len + len(raw)) // 2,
        "payload_end": len(raw) - 1,
        "header_hash": raw.index(header["sha256"].encode()) + 5,
        "header_brace": 0,
    }[where]
    raw[index] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(path, states["b"])
    assert_one_line_error(info, str(path))
    if where.startswith("payload"):
        assert "checksum" in str(info.value)


def test_not_a_checkpoint_and_wrong_format(tmp_path, states):
    junk = tmp_path / "checkpoint_000000001.ckpt"
    junk.write_bytes(os.urandom(256).replace(b"\n", b" "))
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(junk, states["b"])
    assert_one_line_error(info, str(junk), "not an rlaccel checkpoint")

    path = checkpoint.save(tmp_path / "v2", 1, states["a"], {})
    raw = path.read_bytes()
    header_len = raw.index(b"\n")
    header = json.loads(raw[:header_len])
    header["format"] = 2
    path.write_bytes(json.dumps(header).encode() + raw[header_len:])
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(path, states["b"])
    assert_one_line_error(info, str(path), "format 2")

    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(tmp_path / "missing.ckpt", states["b"])
    assert_one_line_error(info, "missing.ckpt")


def test_other_net_arch_names_the_mismatching_array(tmp_path, states):
    path = checkpoint.save(tmp_path, 1, states["a"], {})
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(path, states["narrow"])
    # [64, 64] saved, [32, 32] expected: the first policy layer is the first array that differs.
    assert_one_line_error(info, str(path), "/agent/params/policy/Dense_0/", "(64,", "(32,")
    # ...and the other way round.
    path = checkpoint.save(tmp_path / "narrow", 1, states["narrow"], {})
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(path, states["a"])
    assert_one_line_error(info, "/agent/params/policy/Dense_0/", "(32,", "(64,")


def test_other_depth_names_the_missing_layer(tmp_path, states, cartpole_yaml, tiny_overrides):
    deep = make_state(cartpole_yaml, [*tiny_overrides, "ppo.policy_kwargs.net_arch=[64, 64, 64]"], 0)
    path = checkpoint.save(tmp_path, 1, states["a"], {})
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(path, deep)
    assert_one_line_error(info, str(path), "/agent/params/policy", "Dense_3")

"""Tests for ``rlaccel.placement`` and the split runner, on the two CPU devices that
``tests/conftest.py`` asks XLA for (``cpu:0`` learns, ``cpu:1`` acts)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlaccel import agent as agent_lib, compile_cache, envs, placement, quant
from rlaccel import config as config_lib
from rlaccel.config import ConfigError, PlacementConfig
from rlaccel.placement import PlacementError
from rlaccel.sources import make_source
from rlaccel.sources.fused import FusedSource
from rlaccel.sources.split import SplitSource


@pytest.fixture(scope="module")
def cpus():
    devices = jax.devices("cpu")
    assert len(devices) >= 2, "tests/conftest.py sets XLA_FLAGS=--xla_force_host_platform_device_count=2 before JAX starts"
    return devices[0], devices[1]


def placement_config(learner="auto", actor="learner", precision="int8"):
    return config_lib.from_dict(PlacementConfig, {"learner": {"device": learner}, "actor": {"device": actor, "precision": precision}})


# --------------------------------------------------------------------------------------------
# resolve()


def test_available_lists_both_cpus():
    assert placement.available()[:2] == ["cpu:0", "cpu:1"]


@pytest.mark.parametrize(
    "learner, actor, want_learner, want_actor",
    [
        ("auto", "learner", 0, 0),  # no GPU here: auto is the first CPU
        ("cpu", "learner", 0, 0),
        ("auto", "auto", 0, 0),
        ("cpu:0", "cpu:1", 0, 1),
        ("auto", "cpu:1", 0, 1),
        ("cpu:1", "learner", 1, 1),
        ("cpu:1", "cpu:0", 1, 0),
        (" CPU:1 ", " Learner ", 1, 1),  # case and spaces do not matter
    ],
)
def test_resolve(cpus, learner, actor, want_learner, want_actor):
    where = placement.resolve(placement_config(learner, actor))
    assert where.learner == cpus[want_learner] and where.actor == cpus[want_actor]
    assert where.fused == (want_learner == want_actor)
    assert where.precision == "int8"


def test_describe():
    assert placement.resolve(placement_config("cpu", "cpu:1", "fp32")).describe() == "learner cpu:0 fp32, actors cpu:1 fp32 (split)"
    assert placement.resolve(placement_config()).describe() == "learner cpu:0 fp32, actors cpu:0 int8 (fused)"


@pytest.mark.parametrize(
    "learner, actor, key, words",
    [
        ("gpu", "learner", "placement.learner.device", "JAX sees no GPU"),
        ("cuda", "learner", "placement.learner.device", "JAX sees no GPU"),
        ("gpu:0", "learner", "placement.learner.device", "JAX sees no GPU"),
        ("auto", "gpu", "placement.actor.device", "JAX sees no GPU"),
        ("cpu:7", "learner", "placement.learner.device", "no device 'cpu:7'"),
        ("auto", "cpu:2", "placement.actor.device", "no device 'cpu:2'"),
        ("cpu:x", "learner", "placement.learner.device", "no device 'cpu:x'"),
        ("npu", "learner", "placement.learner.device", "unknown device 'npu'"),
        ("auto", "", "placement.actor.device", "unknown device"),
    ],
)
def test_missing_devices_raise_a_one_line_config_error(learner, actor, key, words):
    with pytest.raises(PlacementError) as info:
        placement.resolve(placement_config(learner, actor))
    assert isinstance(info.value, ConfigError)  # the CLI's exit-2 family
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{key}: ") and words in msg, msg
    if "no device" in words or "no GPU" in words:
        assert "cpu:0, cpu:1" in msg  # says what exists


@pytest.mark.parametrize(
    "learner, actor, devices, cores, named",
    [
        ("auto", "learner", 1, 2, 1),
        ("cpu:0", "cpu:1", 1, 2, 2),
        ("auto", " CPU:3 ", 1, 8, 4),
        ("cpu:1", "learner", 1, 8, 2),
        ("auto", "cpu:7", 1, 2, 2),  # at most one per core: resolve then names what exists
        ("auto", "learner", 2, 4, 2),  # data parallel on a CPU (or auto)
        ("cpu", "learner", 3, 2, 2),
        ("gpu", "learner", 2, 4, 1),  # a GPU's devices are not the CPU's
        ("auto", "learner", "all", 4, 4),
    ],
)
def test_cpu_devices_named(monkeypatch, learner, actor, devices, cores, named):
    monkeypatch.setattr(placement, "cpu_cores", lambda: cores)
    config = config_lib.from_dict(PlacementConfig, {"learner": {"device": learner, "devices": devices}, "actor": {"device": actor}})
    assert placement.cpu_devices_named(config) == named


def test_actors_on_cpu_1_without_xla_flags(cartpole_yaml, tmp_path):
    """A fresh ``rlaccel train`` that names ``cpu:1`` gets it on a machine of two cores or more
    (JAX's CPU is one device unless asked: ``placement.start``), and on one core the error
    names the cores and ``XLA_FLAGS``."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    tiny = ["total_timesteps=512", "ppo.n_steps=64", "ppo.batch_size=64", "ppo.n_epochs=1", "eval.freq=0", "placement.actor.device=cpu:1"]
    cmd = [sys.executable, "-m", "rlaccel", "train", "--config", str(cartpole_yaml), *[a for o in tiny for a in ("--set", o)], "--run-dir", str(tmp_path / "run"), "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    if len(os.sched_getaffinity(0)) >= 2:
        assert done.returncode == 0, done.stderr[-2000:]
        assert "learner cpu:0 fp32, actors cpu:1 int8 (split, pipelined" in done.stderr, done.stderr
    else:
        assert done.returncode == 2 and "no device 'cpu:1'" in done.stderr and "XLA_FLAGS" in done.stderr, done.stderr


# --------------------------------------------------------------------------------------------
# Runners on two devices.

# The serial split runner (no policy lag): the same maths as the fused one. The pipelined
# runner is tested in tests/test_pipeline.py.
TINY = ("total_timesteps=512", "ppo.n_steps=64", "ppo.batch_size=64", "ppo.n_epochs=1", "placement.pipeline=false")


def run_two_updates(cartpole_yaml, precision, actor):
    """Build the source the loop would, init, place and run one chunk of 2 updates."""
    config = config_lib.load(cartpole_yaml, [*TINY, f"placement.actor.precision={precision}", f"placement.actor.device={actor}"])
    env = envs.make(config.env, auto_reset=True)
    spec = agent_lib.make(config, env)
    where = placement.resolve(config.placement)
    runner = make_source(spec, env, where)
    state = runner.place(runner.initial_state(jax.random.PRNGKey(config.seed)))
    initial_params = jax.device_get(state.agent.params)  # the fused chunk donates its input
    runner.compile(state, 2)
    final, metrics = runner.run_chunk(state, 2)
    return runner, jax.block_until_ready(final), metrics, initial_params


@pytest.fixture(scope="module")
def runs(cartpole_yaml):
    with compile_cache.effort("default"):  # XLA's defaults: split and fused are compared bit for bit
        return {
            ("split", "fp32"): run_two_updates(cartpole_yaml, "fp32", "cpu:1"),
            ("split", "int8"): run_two_updates(cartpole_yaml, "int8", "cpu:1"),
            ("fused", "int8"): run_two_updates(cartpole_yaml, "int8", "learner"),
        }


def devices_of(tree):
    return {d for leaf in jax.tree.leaves(tree) for d in leaf.devices()}


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_split_runner_keeps_learner_and_actor_state_apart(runs, cpus, precision):
    learner, actor = cpus
    runner, state, metrics, _ = runs["split", precision]
    assert isinstance(runner, SplitSource)
    assert runner.learner_device == learner and runner.actor_device == actor
    assert int(state.update) == 2
    assert devices_of(state.agent.params) == {learner}
    assert devices_of(state.agent) == {learner}  # optimiser state, normaliser, calibration too
    assert devices_of(state.rollout.env_state) == {actor}
    assert state.rollout.obs.devices() == {actor}
    assert devices_of(metrics) == {learner}
    assert metrics["train/value_loss"].shape == (2,)

    pieces = runner.pieces(state)
    # The compiled pieces take their inputs where they run: the rollout on the actor...
    assert {s.device_set.pop() for s in jax.tree.leaves(pieces["rollout"].input_shardings)} == {actor}
    assert {s.device_set.pop() for s in jax.tree.leaves(pieces["act"].input_shardings)} == {actor}
    # ...the update on the learner.
    assert {s.device_set.pop() for s in jax.tree.leaves(pieces["learn"].input_shardings)} == {learner}

    # Actor parameters are made on the learner, then moved; the rollout's outputs stay on the actor.
    actor_params = pieces["actor_params"](state.agent)
    assert devices_of(actor_params) == {learner}
    on_actor = jax.device_put(actor_params, actor)
    rollout, transitions, episodes = pieces["rollout"](on_actor, state.rollout, jax.device_put(state.key, actor))
    assert devices_of((rollout, transitions, episodes)) == {actor}
    assert transitions.obs.shape == (64, 4, 4)  # [T, B, obs_dim]

    policy = on_actor.policy
    if precision == "int8":
        assert isinstance(policy, quant.QuantParams)
        assert [w.dtype for w in policy.model.w_q] == [jnp.int8] * 3
        assert [b.dtype for b in policy.model.b_q] == [jnp.int32] * 3
        assert devices_of(policy) == {actor}
    else:
        assert not isinstance(policy, quant.QuantParams)
        assert {x.dtype for x in jax.tree.leaves(policy)} == {jnp.dtype(jnp.float32)}
        # fp32 actors act with exactly the learner's policy weights.
        for x, y in zip(jax.tree.leaves(policy), jax.tree.leaves(state.agent.params["policy"])):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_same_device_gives_the_fused_runner(runs, cpus):
    runner, state, _, _ = runs["fused", "int8"]
    assert isinstance(runner, FusedSource)
    assert devices_of(state) == {cpus[0]}


@pytest.mark.slow
def test_split_and_fused_runners_compute_the_same_run(runs):
    """Same seed, same maths, two devices vs one program: the same episodes and parameters."""
    _, split, split_metrics, initial_params = runs["split", "int8"]
    _, fused, fused_metrics, _ = runs["fused", "int8"]
    assert int(split.episodes) == int(fused.episodes) > 0
    np.testing.assert_array_equal(np.asarray(split.recent_returns), np.asarray(fused.recent_returns))
    np.testing.assert_array_equal(np.asarray(split.rollout.obs), np.asarray(fused.rollout.obs))
    for x, y in zip(jax.tree.leaves(split.agent), jax.tree.leaves(fused.agent)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    assert set(split_metrics) == set(fused_metrics)
    for name in split_metrics:
        np.testing.assert_allclose(np.asarray(split_metrics[name]), np.asarray(fused_metrics[name]), rtol=1e-4, atol=1e-6, err_msg=name)
    # Not vacuous: both did two updates, and the updates moved the parameters.
    assert int(split.agent.step) == int(fused.agent.step) == 2
    moved = [np.max(np.abs(np.asarray(x) - y)) for x, y in zip(jax.tree.leaves(split.agent.params), jax.tree.leaves(initial_params))]
    assert min(moved) > 1e-6


@pytest.mark.slow
def test_fused_probe_never_reports_an_impossible_learner_speed(runs):
    runner, state, _, _ = runs["fused", "int8"]
    # The last chunk took less time per update than one rollout alone takes in the probe.
    _, out = runner.probe(state, seconds_per_update=0.0, num_calls=2)
    speed = out["time/learner_sps"]
    assert not (np.isfinite(speed) and speed > 1e9), f"time/learner_sps = {speed:.3g} samples/s"


def host_leaves(tree):
    """``tree``'s leaves as numpy arrays, in order."""
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def fused_source(cartpole_yaml, precision="int8"):
    config = config_lib.load(cartpole_yaml, [*TINY, f"placement.actor.precision={precision}"])
    env = envs.make(config.env, auto_reset=True)
    runner = make_source(agent_lib.make(config, env), env, placement.resolve(config.placement))
    return runner, runner.place(runner.initial_state(jax.random.PRNGKey(config.seed)))


@pytest.mark.slow
def test_fused_probe_times_acting_with_the_chunk_and_changes_nothing(cartpole_yaml):
    # The probe runs the chunk's program acting only: no rollout piece of its own, and the
    # state it gives back (the chunk donates the one it gets) is the one it got, so a run
    # probed between chunks is bit for bit a run that was not.
    runner, state = fused_source(cartpole_yaml)
    probed, _ = runner.run_chunk(state, 2)
    before = host_leaves(probed)
    probed, out = runner.probe(probed, seconds_per_update=1.0, num_calls=2)
    assert "rollout" not in runner.pieces(probed) and out["time/actor_sps"] > 0
    assert 0.5 <= out["quant/action_agreement"] <= 1.0  # on the observations of the probe's rollout
    for got, want in zip(host_leaves(probed), before, strict=True):
        np.testing.assert_array_equal(got, want)
    probed, _ = runner.run_chunk(probed, 2)

    plain, state = fused_source(cartpole_yaml)
    straight, _ = plain.run_chunk(state, 2)
    straight, _ = plain.run_chunk(straight, 2)
    for got, want in zip(host_leaves(probed), host_leaves(straight), strict=True):
        np.testing.assert_array_equal(got, want)
    assert int(straight.agent.step) == 4 and plain.close() == runner.close() == []


@pytest.mark.slow
def test_fused_chunk_is_bit_for_bit_the_scan_of_update_steps(cartpole_yaml):
    # train_upto (the loop's program: a traced count, learning as a loop of 0 or 1 trips for
    # the probe's acting-only mode) against train_chunk (the lax.scan sweeps and make_train run).
    # At XLA's default effort (the fast one, the suite's, fuses the two differently: last bits).
    runner, state = fused_source(cartpole_yaml)
    with compile_cache.effort("default"):
        want = host_leaves(compile_cache.jit(runner.train_chunk, static_argnums=1)(state, 3))
        got = host_leaves(runner.run_chunk(state, 3))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_fused_probe_pieces_compile_beside_the_chunk_from_shapes(cartpole_yaml, monkeypatch):
    runner, state = fused_source(cartpole_yaml)
    runner.compile(state, 2)  # and, in a thread, the probe's pieces from the state's shapes...
    final, _ = runner.run_chunk(state, 2)  # ...which may still run while this chunk donates that state
    assert state.agent.step.is_deleted()
    _, out = runner.probe(jax.block_until_ready(final), seconds_per_update=1.0, num_calls=2)  # waits for them
    assert out["time/actor_sps"] > 0 and 0.5 <= out["quant/action_agreement"] <= 1.0
    assert runner.pieces_compile_s > 0 and runner.close() == []

    # A compile that fails in the thread fails the probe that waits for it.
    runner, state = fused_source(cartpole_yaml, "fp32")
    monkeypatch.setattr(runner, "_compile_pieces", lambda spec: (_ for _ in ()).throw(RuntimeError("no pieces")))
    runner.compile_pieces_beside(state)
    with pytest.raises(RuntimeError, match="no pieces"):
        runner.probe(state, seconds_per_update=1.0, num_calls=2)


@pytest.mark.slow
def test_fused_chunk_compiled_ahead_from_shapes_is_the_one_run(cartpole_yaml, monkeypatch):
    config = config_lib.load(cartpole_yaml, [*TINY, "placement.actor.precision=fp32"])
    env = envs.make(config.env, auto_reset=True)
    key = jax.random.PRNGKey(config.seed)
    ahead = make_source(agent_lib.make(config, env), env, placement.resolve(config.placement))
    ahead.compile_ahead(key, 2)  # from init's shapes, in a thread...
    state = ahead.place(ahead.initial_state(key))  # ...while init compiles and runs here
    executable = ahead.compile(state, 2)
    assert ahead.compile(state, 2) is executable and list(ahead._chunks) == [2]  # nothing compiled twice
    final, metrics = ahead.run_chunk(state, 2)

    plain, plain_state = fused_source(cartpole_yaml, "fp32")  # compiled after init, from the state itself
    plain_final, plain_metrics = plain.run_chunk(plain_state, 2)
    for x, y in zip(jax.tree.leaves(final), jax.tree.leaves(plain_final)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert int(final.agent.step) == 2 and set(metrics) == set(plain_metrics)

    # Compiled ahead for other types than the real state's (weak types flipped): compiled again.
    other = make_source(agent_lib.make(config, env), env, placement.resolve(config.placement))
    wrong = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding, weak_type=not x.weak_type), other.abstract_state(key))
    monkeypatch.setattr(other, "abstract_state", lambda key: wrong)
    other.compile_ahead(key, 2)
    other.join_ahead()
    first = other._chunks[2]
    state = other.place(other.initial_state(key))
    assert other.compile(state, 2) is not first
    np.testing.assert_array_equal(np.asarray(other.run_chunk(state, 2)[0].rollout.obs), np.asarray(final.rollout.obs))

    # A compile that fails in the thread fails the loop's compile that waits for it.
    monkeypatch.setattr(other, "abstract_state", lambda key: jax.tree.map(lambda x: jax.ShapeDtypeStruct((*x.shape, 1), x.dtype), wrong))
    other.compile_ahead(key, 4)
    with pytest.raises(TypeError, match="invalid PRNG key data"):  # the key with an extra axis
        other.compile(state, 4)


def test_seconds_per_step_never_asks_for_more_steps_than_most():
    """A step too short to resolve: the calls grow fourfold up to ``most`` and stop there (a
    pipelined program compiles again for a call longer than its chunk)."""
    from rlaccel.sources.device import seconds_per_step

    asked: list[int] = []
    seconds, first = seconds_per_step(lambda steps: asked.append(steps) or steps, many=9, most=100, resolve_s=10.0)
    assert max(asked) == 100 and sorted(set(asked)) == [1, 9, 36, 100] and first == 1 and seconds >= 0

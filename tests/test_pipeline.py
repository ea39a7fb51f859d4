"""The pipelined split runner (``rlaccel.sources.split``) on the two CPU devices that
``tests/conftest.py`` asks XLA for: ``cpu:0`` learns while ``cpu:1`` acts.

* ``placement.pipeline`` resolves as documented (auto: on for two devices; true on one: an error).
* A pipelined chunk, one program over both devices or dispatched from the host, is the
  one-update-lagged run, computed again here step by step from the compiled pieces (rollout
  k+1 acts with the parameters of update k-1), bit for bit; chunks of one update are the
  serial run.
* A chunk dispatches everything and returns: no implicit host transfer, nothing waited for.
* Stopped between chunks and resumed, a pipelined run is the straight run, bit for bit.
* It learns: CartPole-v1 >= 475 (3 of 3 seeds, one compile shared by the seeds) and
  Pendulum-v1 >= -250, pipelined, with int8 actors.
* ``Wire`` moves a mixed-dtype tree bit for bit; ``time_to_result_s`` counts from the process start.
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from rich.console import Console

from rlaccel import agent as agent_lib
from rlaccel import api, checkpoint, envs, loop, placement
from rlaccel import config as config_lib
from rlaccel.clock import process_age_s
from rlaccel.config import ConfigError
from rlaccel.placement import PlacementError
from rlaccel.sources import make_source
from rlaccel.sources.pipelined import applies as one_program_applies
from rlaccel.sources.fused import FusedSource
from rlaccel.sources.split import SplitSource, Wire

NO_EVAL = ("eval.freq=0",)  # the learning tests judge the training return; evaluation is tested elsewhere
# 6 updates of 4 x 64 steps, 40 minibatch steps each (enough learner work to see a chunk in flight)
TINY = ("total_timesteps=1536", "ppo.n_steps=64", "ppo.batch_size=64", "ppo.n_epochs=10", "placement.actor.device=cpu:1")


def build(path, *overrides):
    """The source ``rlaccel.sources.make`` would build, and its placed initial state."""
    config = config_lib.load(path, list(overrides))
    env = envs.make(config.env, auto_reset=True)
    source = make_source(agent_lib.make(config, env), env, placement.resolve(config.placement))
    return config, source, source.place(source.initial_state(jax.random.PRNGKey(config.seed)))


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


# --------------------------------------------------------------------------------------------
# The switch.


@pytest.mark.parametrize(
    "actor, pipeline, want",
    [
        ("cpu:1", None, "pipelined"),  # auto: on for two devices
        ("cpu:1", "auto", "pipelined"),
        ("cpu:1", "true", "pipelined"),
        ("cpu:1", "false", "serial"),
        ("learner", None, "fused"),  # auto: off for one device
        ("learner", "false", "fused"),
    ],
)
def test_pipeline_switch(cartpole_yaml, actor, pipeline, want):
    overrides = [f"placement.actor.device={actor}"] + ([f"placement.pipeline={pipeline}"] if pipeline else [])
    config = config_lib.load(cartpole_yaml, overrides)
    where = placement.resolve(config.placement)
    assert where.pipeline == (want == "pipelined")
    env = envs.make(config.env, auto_reset=True)
    source = make_source(agent_lib.make(config, env), env, where)
    assert isinstance(source, FusedSource if want == "fused" else SplitSource)
    if want != "fused":
        assert source.pipeline == (want == "pipelined")
        assert source.describe().endswith("(split, pipelined, one program)" if want == "pipelined" else "(split)")


def test_one_program_only_for_two_cpu_devices_of_this_process():
    cpu0, cpu1 = jax.devices()[:2]
    assert one_program_applies(cpu0, cpu1) and not one_program_applies(cpu0, cpu0)
    gpu = SimpleNamespace(platform="gpu", process_index=0)  # a GPU learner with CPU actors: host-dispatched
    assert not one_program_applies(gpu, cpu1) and not one_program_applies(cpu0, gpu)
    elsewhere = SimpleNamespace(platform="cpu", process_index=1)  # another process's device
    assert not one_program_applies(cpu0, elsewhere)


def test_pipeline_true_on_one_device_and_bad_values_are_config_errors(cartpole_yaml):
    config = config_lib.load(cartpole_yaml, ["placement.pipeline=true"])
    with pytest.raises(PlacementError) as info:
        placement.resolve(config.placement)
    assert isinstance(info.value, ConfigError) and str(info.value).startswith("placement.pipeline: ") and "\n" not in str(info.value)
    for bad in ("sometimes", "1", "[true]"):
        with pytest.raises(ConfigError, match=r"^placement\.pipeline: expected 'auto' \| bool"):
            config_lib.load(cartpole_yaml, [f"placement.pipeline={bad}"])


# --------------------------------------------------------------------------------------------
# What a pipelined chunk computes.


def lagged_reference(source, state, num_updates):
    """The pipelined chunk written out serially: rollout k acts with θ(k-1) (θ0 for k = 0, the
    chunk's first), from the same compiled pieces and the serial runner's key chain."""
    pieces = source.pieces(state)
    to_actor = lambda x: jax.device_put(x, source.actor_device)  # noqa: E731
    thetas = [pieces["actor_params"](state.agent)]  # thetas[k]: actor params after k updates
    learner, env_state, key, rows = state.replace(rollout=None), state.rollout, state.key, []
    for k in range(num_updates):
        key, key_rollout, key_update = jax.random.split(key, 3)
        behaviour = thetas[max(k - 1, 0)]
        env_state, transitions, episodes = pieces["rollout"](to_actor(behaviour), env_state, to_actor(key_rollout))
        transitions, episodes = jax.device_put((transitions, episodes), source.learner_device)
        learner, metrics = pieces["learn"](learner.replace(key=key), behaviour, transitions, episodes, key_update)
        thetas.append(pieces["actor_params"](learner.agent))
        rows.append(metrics)
    return learner.replace(rollout=env_state), rows


@pytest.fixture(scope="module")
def sources(cartpole_yaml):
    """Two pipelined sources (int8 actors on cpu:1) and their initial state: the one
    ``make_source`` builds for two CPU devices (a chunk is one program over both,
    ``rlaccel.sources.pipelined``) and one whose chunks are dispatched from the host (what a GPU
    learner with CPU actors gets), whose pieces the reference runs on; each compiles once."""
    _, source, state = build(cartpole_yaml, *TINY)
    host = SplitSource(source.agent, source.env, source.num_envs, source.num_steps, source.precision, source.learner_device, source.actor_device, one_program=False)
    assert source.acting_overlaps and not source.learns_in_pieces and host.learns_in_pieces
    assert host.describe().endswith("(split, pipelined)")
    return {"one program": source, "host-dispatched": host}, state


@pytest.fixture(params=["one program", "host-dispatched"])
def pipelined(sources, request):
    """``(source, host-dispatched source, state)``."""
    by_kind, state = sources
    return by_kind[request.param], by_kind["host-dispatched"], state


@pytest.mark.slow
@pytest.mark.optimized  # bit for bit: compiled at XLA's defaults, as users run
def test_a_pipelined_chunk_is_the_one_update_lagged_run(pipelined):
    source, host, state = pipelined
    assert source.pipeline and source.precision == "int8"
    final, metrics = source.run_chunk(state, 3)
    want, rows = lagged_reference(host, state, 3)
    for got, ref in zip(leaves(final), leaves(want)):
        np.testing.assert_array_equal(got, ref)
    for name in rows[0]:
        np.testing.assert_array_equal(np.asarray(metrics[name]), np.stack([np.asarray(r[name]) for r in rows]), err_msg=name)
    np.testing.assert_array_equal(np.asarray(metrics["actor/policy_lag"]), [0.0, 1.0, 1.0])
    # Where everything lives: the learner's state and the metrics on cpu:0, the envs on cpu:1.
    learner, actor = source.learner_device, source.actor_device
    assert {d for x in jax.tree.leaves(final.agent) for d in x.devices()} == {learner}
    assert {d for x in jax.tree.leaves(final.rollout) for d in x.devices()} == {actor}
    assert {d for x in jax.tree.leaves(metrics) for d in x.devices()} == {learner}

    # Not vacuous: the serial runner (no lag) makes the same first update and a different second.
    host.pipeline = False  # the serial runner, on the same compiled pieces
    serial_final, serial_metrics = host.run_chunk(state, 3)
    host.pipeline = True
    np.testing.assert_array_equal(np.asarray(serial_metrics["train/value_loss"])[0], np.asarray(metrics["train/value_loss"])[0])
    assert not np.array_equal(np.asarray(serial_metrics["train/value_loss"])[1:], np.asarray(metrics["train/value_loss"])[1:])
    assert "actor/policy_lag" not in serial_metrics
    # A chunk starts with the newest parameters: chunks of one update are the serial run.
    one = state
    for _ in range(3):
        one, one_metrics = source.run_chunk(one, 1)
        assert float(one_metrics["actor/policy_lag"][0]) == 0.0
    for got, ref in zip(leaves(one), leaves(serial_final)):
        np.testing.assert_array_equal(got, ref)


@pytest.mark.slow
def test_a_chunk_only_dispatches(pipelined):
    """The host queues the whole chunk and returns: no implicit device <-> host transfer inside
    it (the transfer guard would raise), and its last update is still running when it returns
    (a chunk of 4 updates of 40 minibatch steps each, queued in a few milliseconds)."""
    source, _, state = pipelined
    jax.block_until_ready(source.run_chunk(state, 4))  # caches warm
    with jax.transfer_guard("disallow"):
        final, metrics = source.run_chunk(state, 4)
    pending = not metrics["train/value_loss"].is_ready()
    jax.block_until_ready((final, metrics))
    assert pending, "run_chunk returned after its last update had finished: something waited inside the chunk"


@pytest.mark.slow
def test_the_probe_times_acting_with_the_one_program_and_changes_nothing(pipelined):
    # One program: no rollout piece, the program itself acting only (the state leaves as it
    # entered); host-dispatched: the rollout piece its chunks run anyway.
    source, _, state = pipelined
    before = leaves(state)
    program = source._program
    if program is not None:  # chunks of 3 compiled, as a run compiles before its first probe
        compiled = program.compile(state, 3)
    after, out = source.probe(state, seconds_per_update=1.0, num_calls=2)
    for got, want in zip(leaves(after), before, strict=True):
        np.testing.assert_array_equal(got, want)
    if program is not None:  # it timed calls of at most the compiled length: nothing compiled again
        assert program.compile(state, program.length) is compiled and program.length >= 3
    assert ("rollout" in source.pieces(state)) == (source._program is None)
    assert out["time/actor_sps"] > 0 and 0.5 <= out["quant/action_agreement"] <= 1.0


@pytest.mark.slow
def test_dqn_runs_pipelined(cartpole_yaml):
    config = config_lib.load("configs/dqn_cartpole.yaml", ["total_timesteps=1000", "dqn.learning_starts=500", "logging.log_interval=50", "placement.actor.device=cpu:1", *NO_EVAL])
    env = envs.make(config.env, auto_reset=True)
    source = make_source(agent_lib.make(config, env), env, placement.resolve(config.placement))
    summary = loop.run(config, source, None, progress=False)
    assert summary["status"] == "completed" and summary["env_steps"] == 1000
    assert summary["placement"].endswith("(split, pipelined, one program)")
    assert summary["actor/policy_lag"] == pytest.approx(49 / 50)  # chunks of 50 updates, the first of each lag 0
    assert np.isfinite(summary["final_return"])
    # Time to result counts from this process's start: at least the run's own wall time, at
    # most the process's age now.
    assert summary["wall_s"] <= summary["time_to_result_s"] <= process_age_s()


@pytest.mark.slow
def test_a_pipelined_run_stopped_between_chunks_resumes_bit_for_bit(cartpole_yaml, tmp_path):
    """Each chunk starts with the newest parameters and leaves nothing in flight, so a run
    stopped at a chunk's end and resumed from its checkpoint ends where the straight run
    does: every array of the last checkpoint equal, bytes for bytes."""
    config = config_lib.load(cartpole_yaml, [*TINY, *NO_EVAL, "logging.log_interval=2", "logging.checkpoint_interval=2", "logging.progress=false"])
    quiet = Console(stderr=True, quiet=True)
    straight = api.train(config, run_dir=tmp_path / "straight", console=quiet).summary
    stopped = api.train(config, run_dir=tmp_path / "resumed", console=quiet, stop_at=4).summary
    at_stop = checkpoint.read_arrays(checkpoint.latest(tmp_path / "resumed" / "checkpoints"))
    resumed = api.train(config, run_dir=tmp_path / "resumed", resume=True, console=quiet).summary
    assert stopped["updates"] == 4 and straight["updates"] == resumed["updates"] == 6
    assert resumed["placement"].endswith("(split, pipelined, one program)") and resumed["actor/policy_lag"] == 0.5
    a, b = (checkpoint.read_arrays(checkpoint.latest(tmp_path / run / "checkpoints")) for run in ("straight", "resumed"))
    assert a.keys() == b.keys() and [k for k in a if a[k].tobytes() != b[k].tobytes()] == []
    assert any(at_stop[k].tobytes() != b[k].tobytes() for k in b)  # the resumed run did train on


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/stat is Linux's")
def test_process_age_counts_from_the_process_start_not_the_import():
    code = "import time; time.sleep(0.6); from rlaccel.clock import process_age_s, process_start_source; print(process_age_s(), process_start_source())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert float(out[0]) >= 0.6 and out[1] == "/proc/self/stat"


# --------------------------------------------------------------------------------------------
# It learns.


@pytest.mark.slow
@pytest.mark.optimized  # learns: XLA's default effort, as users run
def test_pipelined_ppo_cartpole_learns_3_of_3_seeds(cartpole_yaml):
    """The shipped config (500k steps, int8 actors) on cpu:1 while cpu:0 learns; the three
    seeds share one source, so its pieces compile once."""
    config, source, _ = build(cartpole_yaml, "placement.actor.device=cpu:1", *NO_EVAL)
    assert source.pipeline
    finals = [loop.run(config, source, None, key=jax.random.PRNGKey(seed), progress=False)["final_return"] for seed in range(3)]
    assert min(finals) >= 475, finals
    assert source.summary_extra()["actor/policy_lag"] > 0.8  # 7 of every 8 updates lagged


@pytest.mark.slow
@pytest.mark.optimized  # learns: XLA's default effort, as users run
def test_pipelined_ppo_pendulum_learns():
    config, source, _ = build("configs/ppo_pendulum.yaml", "placement.actor.device=cpu:1", *NO_EVAL)
    summary = loop.run(config, source, None, progress=False)
    assert summary["final_return"] >= -250, summary["final_return"]


def test_wire_moves_a_mixed_pytree_bit_for_bit():
    """``Wire`` packs a tree into one buffer per dtype, moves it and unpacks it on the device."""
    learner, actor = jax.devices("cpu")[:2]
    rng = np.random.default_rng(0)
    tree = {
        "w": jax.device_put(rng.integers(-127, 128, (4, 64)).astype(np.int8), learner),
        "b": jax.device_put(rng.integers(-(2**30), 2**30, (64,)).astype(np.int32), learner),
        "scale": jax.device_put(np.float32(rng.normal()), learner),
        "table": jax.device_put(rng.normal(size=(3, 5)).astype(np.float32), learner),
        "done": jax.device_put(rng.random(7) < 0.5, learner),
        "key": jax.device_put(jax.random.PRNGKey(3), learner),
        "empty": jax.device_put(np.zeros((0, 2), np.float32), learner),
    }
    wire = Wire(tree, actor)
    assert len(wire.pack(tree)) == 5  # int8, int32, float32, bool, uint32
    moved = wire(tree)
    assert jax.tree.structure(moved) == jax.tree.structure(tree)
    for got, want in zip(jax.tree.leaves(moved), jax.tree.leaves(tree)):
        assert got.devices() == {actor} and got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

"""Shared test setup.

The environment variables below must be set before JAX is imported anywhere (JAX reads
them once, at backend initialisation), which is why they are the first thing this file
does. Every test process then sees two CPU devices: ``cpu:0`` plays the learner and
``cpu:1`` the actor in the placement tests.
"""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# JAX's persistent compilation cache, shared by both xdist workers and the runs tests start in
# subprocesses: many tests compile the same programs (the shipped configs); a cache hit gives
# the same executable, so it changes no result, only the suite's time.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"rlaccel-tests-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

from pathlib import Path

import pytest

from rlaccel import compile_cache

REPO = Path(__file__).resolve().parents[1]
CARTPOLE_YAML = REPO / "configs" / "ppo_cartpole.yaml"

# Four updates of 4 envs x 64 steps, one epoch of four minibatches, two updates per compiled
# chunk, a probe at every chunk, a checkpoint every two updates, two checkpoints kept.
TINY_OVERRIDES = (
    "total_timesteps=1024",
    "ppo.n_steps=64",
    "ppo.batch_size=64",
    "ppo.n_epochs=1",
    "logging.log_interval=2",
    "logging.probe_seconds=0",
    "logging.checkpoint_interval=2",
    "logging.keep_checkpoints=2",
    "eval.freq=0",  # no evaluation program to compile per tiny run; tests/test_eval.py sets its own after these
)


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    """``key=value`` strings (what ``--set`` takes, and ``rlaccel.config.load(overrides=...)``)
    that shrink ``configs/ppo_cartpole.yaml`` to a run of a few seconds: 4 updates, 1,024
    env steps. For the CLI, pass each as ``--set ITEM``."""
    return list(TINY_OVERRIDES)


@pytest.fixture(scope="session")
def cartpole_yaml() -> Path:
    """The shipped default config, ``configs/ppo_cartpole.yaml``."""
    return CARTPOLE_YAML


# The longest modules first (measured: CPU seconds per module in a full run), so the two
# workers of `make test` do not end with one of them alone on a long module.
LONGEST_FIRST = (
    "test_learning", "test_learning_dqn", "test_pipeline", "test_distributed", "test_host_actors", "test_ray", "test_deploy", "test_placement",
    "test_reference", "test_reliability", "test_quant", "test_gsde", "test_envs", "test_sweep", "test_eval", "test_qat", "test_brax", "test_cli",
)  # fmt: skip


# Compile effort per test (rlaccel.compile_cache): most tests check behaviour and spend their
# time compiling, which RLACCEL_XLA_EFFORT=fast halves (the programs then run about twice as
# slow); the tests marked `optimized` (learning to a return threshold, bit-for-bit float
# equality) compile at XLA's defaults, as users run. Set before the test's fixtures, so a
# module fixture compiles at its first test's effort (unless it chooses with
# compile_cache.effort); processes a test starts inherit it. A test's own top-level programs
# follow it through compile_cache.jit (a plain jax.jit compiles at XLA's defaults: brax's short
# PPO run took 12.7-13.1 s so against 6.7-7.3 s). RLACCEL_XLA_EFFORT set when
# pytest starts holds for every test (RLACCEL_XLA_EFFORT=default: the whole suite at XLA's defaults).
_EFFORT_GIVEN = compile_cache.EFFORT_ENV in os.environ


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if not _EFFORT_GIVEN:
        os.environ[compile_cache.EFFORT_ENV] = "default" if item.get_closest_marker("optimized") else "fast"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """The longest modules first, each module's tests together and in order: ``make test``
    runs with pytest-xdist's ``--dist loadscope --no-loadscope-reorder`` (the Makefile), one
    module per worker at a time, so a module fixture (a trained run, resumed runs) is built
    once, not once per worker."""
    module = lambda item: item.module.__name__.rpartition(".")[2]  # noqa: E731
    first = {}
    for i, item in enumerate(items):
        first.setdefault(module(item), i)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: (rank.get(module(item), len(rank)), first[module(item)]))

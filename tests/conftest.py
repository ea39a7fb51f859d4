"""Shared test setup.

The environment variables below must be set before JAX is imported anywhere (JAX reads
them once, at backend initialisation), which is why they are the first thing this file
does. Every test process then sees two CPU devices: ``cpu:0`` plays the learner and
``cpu:1`` the actor in the placement tests.

One persistent XLA compilation cache serves the whole run (the pytest-xdist workers inherit
the directory from the process that starts them): many tests compile the same tiny CartPole
program, and a cache hit skips seconds of compiling without changing what runs.
"""

import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="rlaccel-test-xla-cache-")
    os.environ["RLACCEL_TEST_OWNS_XLA_CACHE"] = "1"
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

from pathlib import Path

import pytest

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


def pytest_sessionfinish(session, exitstatus):
    """The process that made the compilation cache (not an xdist worker) removes it."""
    if not hasattr(session.config, "workerinput") and os.environ.get("RLACCEL_TEST_OWNS_XLA_CACHE"):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Modules with slow (learning) tests first, so the parallel run does not end on one long
    module. A module's tests stay together and in order: ``make test`` runs with pytest-xdist's
    ``--dist loadscope``, one module per worker at a time, so a module fixture (a trained run,
    resumed runs) is built once, not once per worker."""
    has_slow: dict[str, bool] = {}
    for item in items:
        name = item.module.__name__.rpartition(".")[2]
        has_slow[name] = has_slow.get(name, False) or item.get_closest_marker("slow") is not None
    first = {name: i for i, name in reversed(list(enumerate(item.module.__name__.rpartition(".")[2] for item in items)))}
    items.sort(key=lambda item: (not has_slow[(m := item.module.__name__.rpartition(".")[2])], first[m]))

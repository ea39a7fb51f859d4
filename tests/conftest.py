"""Shared test setup.

The environment variables below must be set before JAX is imported anywhere (JAX reads
them once, at backend initialisation), which is why they are the first thing this file
does. Every test process then sees two CPU devices: ``cpu:0`` plays the learner and
``cpu:1`` the actor in the placement tests.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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

"""``placement.cpu_threads``: XLA's CPU thread pool sized when rlaccel starts JAX (``rlaccel.cpu_threads``).

The pool is read back from the process itself: XLA names its pool threads ``tf_XLAEigen``, and
every thread's affinity mask is in ``/proc``. A fresh interpreter per case, as the pool is
sized once per process (this one's started with ``tests/conftest.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rlaccel import config as config_lib
from rlaccel import placement
from rlaccel.config import ConfigError, PlacementConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
needs_two_cpus = pytest.mark.skipif(CPUS < 2 or not sys.platform.startswith("linux"), reason="needs Linux and at least 2 CPUs to size the pool below them")

PROBE = """
import collections, json, os, sys
import jax, jax.numpy as jnp
from rlaccel import api, placement
if sys.argv[1] == "jax-first":
    jax.devices()  # JAX started before rlaccel: the pool keeps XLA's size
seen = []
if sys.argv[1] == "other-backend":  # registered as a GPU plugin is: it records the mask it starts under
    from jax._src import xla_bridge
    def factory():
        seen.append(sorted(os.sched_getaffinity(0)))
        raise RuntimeError("no such device")
    xla_bridge.register_backend_factory("probe", factory, priority=-100, fail_quietly=True)
config = api.load_config("configs/ppo_cartpole.yaml", sys.argv[2:])
notice = placement.start_backend(config.placement, config.env_kind)
total = float(jax.jit(lambda x: (x @ x).sum())(jnp.ones((64, 64))))
tasks = os.listdir("/proc/self/task")
names = collections.Counter(open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks)
masks = {repr(sorted(os.sched_getaffinity(int(t)))) for t in tasks}
print(json.dumps({"notice": notice, "pool": names["tf_XLAEigen"], "masks": sorted(masks), "total": total, "other_backend_mask": seen}))
"""


def probe(*overrides: str, jax_first: bool = False, other_backend: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device: the pool may be 1
    mode = "jax-first" if jax_first else "other-backend" if other_backend else "rlaccel-first"
    if other_backend:  # every registered backend starts, not only JAX_PLATFORMS's
        env.pop("JAX_PLATFORMS", None)
    out = subprocess.run([sys.executable, "-c", PROBE, mode, *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_two_cpus
def test_cpu_threads_sizes_xlas_pool_and_leaves_every_thread_on_all_cpus():
    one, default = probe(), probe("placement.cpu_threads=null")  # configs/ppo_cartpole.yaml asks for 1
    assert one["notice"] is None and one["pool"] == 1 and default["pool"] == CPUS
    everything = repr(sorted(os.sched_getaffinity(0)))
    assert one["masks"] == [everything]  # the pool's thread and the rest run on any CPU again
    assert one["total"] == default["total"] == 64.0**3


@needs_two_cpus
def test_only_the_cpu_backend_starts_under_the_mask():
    # A GPU client sizes its compile and launch threads from the mask too: under one CPU an
    # H200 compiled the CartPole chunk in 52 s instead of 4.7 (benchmarks/placement_nvidia-h200*.md).
    run = probe(other_backend=True)
    assert run["pool"] == 1 and run["other_backend_mask"] == [sorted(os.sched_getaffinity(0))]


@needs_two_cpus
def test_auto_is_one_thread_for_jax_native_and_gym_envs_and_xlas_pool_for_brax():
    assert probe("placement.cpu_threads=auto")["pool"] == 1  # CartPole-v1, JAX-native
    assert probe("placement.cpu_threads=auto", "env=gym:CartPole-v1")["pool"] == 1
    assert probe("placement.cpu_threads=auto", "env=brax:inverted_pendulum")["pool"] == CPUS
    assert PlacementConfig().cpu_threads == "auto"


@needs_two_cpus
def test_cpu_threads_once_jax_runs_is_a_one_line_notice():
    late = probe(jax_first=True)
    assert late["notice"].startswith("placement.cpu_threads=1: ") and "\n" not in late["notice"]
    assert late["pool"] == CPUS  # XLA's size, as the notice says
    assert placement.start_backend(PlacementConfig()) is None  # nothing asked, nothing said


@pytest.mark.parametrize("bad", ["0", "-2"])
def test_bad_cpu_threads_is_a_one_line_config_error(bad):
    with pytest.raises(ConfigError) as info:
        config_lib.from_dict(PlacementConfig, {"cpu_threads": int(bad)})
    assert str(info.value).startswith("placement.cpu_threads: must be >= 1, auto or null") and "\n" not in str(info.value)

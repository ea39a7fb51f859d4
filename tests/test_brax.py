"""The brax adapter (``envs.brax``): ``brax:<name>`` envs behind the functional ``Env`` API.

Against brax itself (the oracle): our reset / step return brax's observations and rewards,
with brax's ``done`` as ``terminated`` and the time limit as ``truncated``. Then a short
fused PPO run (the compiled rollout + update) on ``brax:inverted_pendulum``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlaccel import agent as agent_lib, compile_cache, config, envs
from rlaccel.sources.fused import FusedSource


@pytest.fixture(scope="module")
def pendulum():
    return envs.make("brax:inverted_pendulum", backend="spring", max_episode_steps=5)


@pytest.mark.slow
def test_reset_and_step_match_brax(pendulum):
    assert pendulum.kind == "brax" and pendulum.obs_dim == 4 and pendulum.action_dim == 1
    assert not pendulum.is_discrete and float(pendulum.action_space.low[0]) == -1.0
    action = jnp.array([0.5])

    @compile_cache.jit
    def both(key):
        """Five steps of ours and of brax's own env side by side (one compile)."""
        state, obs = pendulum.reset(key)
        ref = pendulum.brax_env.reset(key)

        def body(carry, _):
            state, ref = carry
            state, obs, reward, terminated, truncated, info = pendulum.step(key, state, action)
            ref = pendulum.brax_env.step(ref, action)
            return (state, ref), (obs, reward, terminated, truncated, state.time, ref.obs, ref.reward, ref.done, len(info))

        return obs, ref.obs, jax.lax.scan(body, (state, ref), None, length=5)[1]

    obs0, ref_obs0, (obs, reward, terminated, truncated, time, ref_obs, ref_reward, ref_done, n_info) = both(jax.random.PRNGKey(0))
    assert obs0.shape == (4,) and obs0.dtype == jnp.float32
    np.testing.assert_array_equal(obs0, ref_obs0)
    np.testing.assert_array_equal(obs, ref_obs)
    np.testing.assert_array_equal(reward, ref_reward)
    np.testing.assert_array_equal(terminated, ref_done > 0.5)
    np.testing.assert_array_equal(truncated, [False, False, False, False, True])
    np.testing.assert_array_equal(time, [1, 2, 3, 4, 5])
    assert int(n_info[0]) == 0


def test_unknown_name_and_backend():
    with pytest.raises(envs.UnknownEnvError, match="did you mean: brax:inverted_pendulum"):
        envs.make("brax:inverted_pendulm")
    with pytest.raises(envs.UnknownEnvError, match="backend"):
        envs.make("brax:ant", backend="warp")


@pytest.mark.slow
def test_short_fused_ppo_run():
    cfg = config.load(
        "configs/ppo_brax_inverted_pendulum.yaml",
        ["total_timesteps=512", "ppo.n_envs=8", "ppo.n_steps=16", "ppo.batch_size=64", "brax.episode_length=50"],
    )
    env = envs.make(cfg.env, auto_reset=True, **cfg.env_kwargs)
    spec = agent_lib.make(cfg, env)
    runner = FusedSource(spec.agent, env, spec.num_envs, spec.num_steps, precision="int8")
    state, metrics = compile_cache.jit(runner.train, static_argnums=1)(jax.random.PRNGKey(0), spec.num_updates)
    assert spec.num_updates == 4 and metrics["train/loss"].shape == (4,)
    assert all(bool(jnp.all(jnp.isfinite(v))) for k, v in metrics.items() if k.startswith("train/"))
    # A random policy drops the pole within a few dozen steps: episodes end and are counted.
    assert int(state.episodes) > 0 and 1 <= float(metrics["rollout/ep_len_mean"][-1]) <= 50
    assert state.rollout.obs.shape == (8, 4)


def test_brax_imports_without_mjxs_warp_notice():
    """Without NVIDIA's ``warp`` package, importing ``mujoco.mjx`` prints two "Failed to import
    warp" lines to stdout (shown here by reloading the module afterwards); brax imported as
    ``BraxEnv`` imports it holds them back (a fresh process: the notice comes at the first import)."""
    code = (
        "from rlaccel.envs import brax\n"
        "brax._import_quietly('brax.envs')  # what BraxEnv and use_local_device import through\n"
        "print('--- imported')\n"
        "import importlib, mujoco.mjx.warp as w\n"
        "importlib.reload(w)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout
    imported, reloaded = out.split("--- imported\n")
    assert "Failed to import" not in imported, out
    if importlib.util.find_spec("warp") is None:
        assert "Failed to import warp:" in reloaded, out  # the notice held back is MJX's own

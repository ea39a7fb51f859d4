"""The host actors' C kernel (``actors.policy: c``, ``rlaccel.deploy.c_kernel``) against the
int8 specification, compiled by the system's C compiler (gcc here).

* Bit for bit ``rlaccel.int8model.head``, the specification the numpy reference and every export
  reproduce (``tests/test_reference.py``): both profiles, tanh and ReLU, with and without an
  observation normaliser, at batch 1 and 257, for NaN, infinite and out-of-range inputs; gSDE's
  latent features too.
* A host-actor PPO run with ``actors.policy: c`` is the numpy actors' run to the bit (no policy
  lag: acting and learning take turns, so only the int8 arithmetic could differ).
* Without a C compiler, ``actors.policy: c`` stops with one line naming the key, exit code 2;
  ``auto`` (the default) acts with the numpy reference.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_helpers import run_main, set_args

from rlaccel import compile_cache, int8model, intmath, placement, quant
from rlaccel import config as config_lib
from rlaccel.deploy.c_kernel import CInt8Network, network
from rlaccel.reference import Normalizer

NEEDS_CC = pytest.mark.skipif(not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")), reason="no C compiler (cc, gcc or $CC)")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GYM_PENDULUM = ["--config", os.path.join(REPO, "configs", "ppo_gym_cartpole.yaml")]


def _model(dims: list[int], activation: str, profile: str, seed: int) -> quant.QuantParams:
    """A calibrated int8 model of random layers, as the learner quantises its policy."""
    rng = np.random.default_rng(seed)
    layers = [(jnp.asarray(rng.normal(0, 1 / np.sqrt(a), (a, b)), jnp.float32), jnp.asarray(rng.normal(0, 0.1, b), jnp.float32)) for a, b in zip(dims, dims[1:])]

    def make(layers: list, x: jax.Array) -> quant.QuantParams:
        return quant.quantize(layers, quant.update(quant.init(dims[0], len(layers)), layers, x, activation), activation, profile)

    return compile_cache.jit(make)(layers, jnp.asarray(rng.normal(0, 1, (256, dims[0])), jnp.float32))


def _spec(model: int8model.Int8Model, obs: np.ndarray, normalizer: Normalizer | None, profile: str, activation: str) -> tuple[np.ndarray, np.ndarray]:
    """``(latent, head)`` by the specification, op by op: the last hidden layer's int8 output
    dequantised (gSDE's features) and ``int8model.head``."""
    mean, inv_std, clip = (None, None, None) if normalizer is None else (normalizer.mean, normalizer.inv_std, 5.0)
    u = int8model.preprocess(obs, model.gain, mean, inv_std, clip)
    x = intmath.quantize(u, float(model.in_scale), int(model.in_zero))
    L = len(model.w_q)
    for i in range(L - 1):
        x = int8model.int8_hidden(x, model, i, profile, activation)
    scale = np.float32(intmath.TANH_OUT_SCALE if activation == "tanh" else model.out_scale[-2])
    latent = (x - int8model.hidden_input_zero(model, L - 1, activation)).astype(np.float32) * scale
    return latent, int8model.head(model, u, profile, activation)


@NEEDS_CC
@pytest.mark.parametrize("profile", ["tflite", "pow2"])
@pytest.mark.parametrize("activation, dims", [("tanh", [4, 64, 64, 2]), ("relu", [17, 256, 256, 6]), ("relu", [3, 16, 1])])
def test_the_c_kernel_is_the_int8_specification_bit_for_bit(profile, activation, dims):
    model = jax.device_get(_model(dims, activation, profile, seed=len(dims) + dims[1]).model)
    rng = np.random.default_rng(1)
    obs = np.asarray(rng.normal(0, 3, (257, dims[0])), np.float32)
    obs[0, 0], obs[1, -1], obs[2, 0], obs[3] = np.nan, np.inf, -np.inf, 1e30
    norm = Normalizer(rng.normal(0, 0.3, dims[0]).astype(np.float32), rng.uniform(0.5, 2, dims[0]).astype(np.float32))
    for normalizer in (None, norm):
        c = network(int8model.Int8Payload(model, activation, profile), activation, normalizer, 5.0)
        assert isinstance(c, CInt8Network)
        latent, head = _spec(model, obs, normalizer, profile, activation)
        np.testing.assert_array_equal(c.forward(obs), head)
        np.testing.assert_array_equal(c.forward(obs[5:6]), head[5:6])
        latent_c, head_c = c.features(obs)
        np.testing.assert_array_equal(head_c, head)
        np.testing.assert_array_equal(latent_c, latent)


@NEEDS_CC
@pytest.mark.slow
def test_a_run_with_the_c_kernel_is_the_numpy_actors_run(tmp_path):
    """gymnasium's Pendulum-v1, PPO, int8 host actors, no policy lag: the same learner updates,
    evaluations and training returns to the last bit with either runtime."""
    base = [
        "env=gym:Pendulum-v1", "total_timesteps=2048", "ppo.n_envs=2", "ppo.n_steps=128", "ppo.batch_size=64", "ppo.n_epochs=2", "ppo.normalize=true",
        "actors.num_actors=1", "actors.max_policy_lag=0", "eval.freq=1024", "eval.episodes=2", "logging.progress=false",
    ]  # fmt: skip
    summaries = {}
    for policy in ("numpy", "c"):
        run_dir = tmp_path / policy
        rc, _, err = run_main([*GYM_PENDULUM, *set_args([*base, f"actors.policy={policy}"]), "--run-dir", str(run_dir), "--no-progress"])
        assert rc == 0, err
        summaries[policy] = json.loads((run_dir / "summary.json").read_text())
    assert "int8 C kernel policy" in summaries["c"]["placement"]
    for key in ("final_return", "eval_return", "eval_return_fp32", "episodes"):
        assert summaries["c"][key] == summaries["numpy"][key], key


def test_without_a_c_compiler_the_c_policy_is_one_line_exit_2(tmp_path, monkeypatch):
    from rlaccel.deploy import c_kernel

    monkeypatch.setattr(c_kernel, "_LIBRARIES", {})
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("RLACCEL_CACHE", str(tmp_path / "cache"))  # nothing compiled there yet
    rc, _, err = run_main([*GYM_PENDULUM, *set_args(["env=gym:Pendulum-v1", "actors.policy=c"]), "--run-dir", str(tmp_path / "run")])
    assert rc == 2 and err.count("\n") == 1 and "actors.policy: c" in err and "/nonexistent/cc" in err
    assert not (tmp_path / "run").exists()
    auto = config_lib.load(GYM_PENDULUM[1], ["env=gym:Pendulum-v1"])  # actors.policy: auto
    assert placement.actor_runtime(auto) == "numpy"  # no compiler: the numpy reference, quietly

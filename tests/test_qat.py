"""Quantisation-aware training (``rlaccel.qat``, DQN's ``qat``): the learner's kernels are the
int8 actors' kernels, with straight-through gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rlaccel.agents.dqn import train as dqn_train

from rlaccel import compile_cache, qat, quant

PROFILES = ("tflite", "pow2")


def _layers_and_calib(seed: int = 0, dims: tuple[int, ...] = (4, 32, 32, 3)):
    rng = np.random.default_rng(seed)
    layers = [(jnp.asarray(rng.normal(0, 0.3, (a, b)), jnp.float32), jnp.asarray(rng.normal(0, 0.1, b), jnp.float32)) for a, b in zip(dims[:-1], dims[1:])]
    obs = jnp.asarray(rng.normal(0, [0.5, 2.0, 0.1, 3.0], (256, dims[0])), jnp.float32)
    calib = quant.update(quant.init(dims[0], len(layers)), layers, obs, "relu")
    return layers, calib


@pytest.mark.parametrize("profile", PROFILES)
def test_fake_quant_kernels_are_the_int8_models_kernels(profile: str) -> None:
    layers, calib = _layers_and_calib()
    fq = qat.fake_quant(layers, calib, profile)
    model = quant.quantize(layers, calib, "relu", profile).model
    for i, ((w, b), (w_fq, b_fq)) in enumerate(zip(layers, fq)):
        deq = np.asarray(model.w_q[i], np.float64) * np.asarray(model.w_scale[i], np.float64)
        if i == 0:  # quantised in the input's equalised units: x @ w = (x * gain) @ (w / gain)
            deq = deq * np.asarray(model.gain, np.float64)[:, None]
        np.testing.assert_allclose(np.asarray(w_fq), deq, rtol=1e-6, atol=1e-9)
        assert not np.allclose(np.asarray(w_fq), np.asarray(w))  # rounded: not the fp32 kernel
        np.testing.assert_array_equal(np.asarray(b_fq), np.asarray(b))


def test_fake_quant_gradient_is_straight_through() -> None:
    layers, calib = _layers_and_calib(1)
    weights = [jnp.asarray(np.random.default_rng(2).normal(size=w.shape), jnp.float32) for w, _ in layers]

    def f(ls):
        return sum(jnp.sum(c * w) for c, (w, _) in zip(weights, qat.fake_quant(ls, calib)))

    grads = jax.grad(f)(layers)
    for c, (g, gb) in zip(weights, grads):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(c))
        np.testing.assert_array_equal(np.asarray(gb), 0.0)


def test_dqn_learner_acts_as_its_int8_actors_round() -> None:
    """The quantisation-aware Q-network is the int8 actors' kernels (the head centred over
    actions, as theirs) plus the fp32 head's mean column, so its gaps between actions are the
    actors' and its Q-values differ from the fp32 ones by rounding only; the loss's gradients
    reach every parameter."""
    layers, calib = _layers_and_calib(3)
    params = {f"Dense_{i}": {"kernel": w, "bias": b} for i, (w, b) in enumerate(layers)}
    seen = dqn_train.as_int8_actors_see(params, calib, "tflite")
    model = quant.quantize(quant.dense_layers(dqn_train.centered(params)), calib, "relu", "tflite").model
    mean_column = np.mean(np.asarray(params["Dense_2"]["kernel"]), axis=-1, keepdims=True)
    head = np.asarray(seen["Dense_2"]["kernel"]) - mean_column  # what the actors' head computes with
    np.testing.assert_allclose(head, np.asarray(model.w_q[2], np.float64) * np.asarray(model.w_scale[2], np.float64), rtol=1e-6, atol=1e-6)

    x = jnp.asarray(np.random.default_rng(4).normal(0, [0.5, 2.0, 0.1, 3.0], (64, 4)), jnp.float32)  # the calibration's ranges

    def forward(p):
        h = x
        for i in range(3):
            h = h @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"]
            h = jax.nn.relu(h) if i < 2 else h
        return h

    q, q_seen = np.asarray(forward(params)), np.asarray(forward(seen))
    assert 0 < np.max(np.abs(q_seen - q)) < 0.05 * np.max(np.abs(q))
    grads = jax.grad(lambda p: jnp.sum(forward(dqn_train.as_int8_actors_see(p, calib, "tflite")) ** 2))(params)
    for leaf in jax.tree.leaves(grads):
        assert np.all(np.isfinite(leaf)) and np.any(np.asarray(leaf) != 0)


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_dqn_update_learns_through_the_int8_kernels_only_with_int8_actors(precision: str) -> None:
    """One fused update (rollout, then two gradient steps) from the same state with ``qat`` on
    and off: with int8 actors the learned parameters differ (the loss saw the rounded kernels),
    the rollout does not (the actors acted before learning); with fp32 actors nothing changes."""
    from rlaccel import envs
    from rlaccel.agents.dqn.config import DQNConfig, QNetKwargs
    from rlaccel.sources.fused import FusedSource

    env = envs.make("CartPole-v1", auto_reset=True)
    out = {}
    for on in (False, True):
        cfg = DQNConfig(n_envs=2, train_freq=4, gradient_steps=2, buffer_size=64, learning_starts=0, batch_size=8, qat=on, policy_kwargs=QNetKwargs(net_arch=(16, 16)))
        agent = dqn_train.make_agent(cfg, env, total_timesteps=64, num_updates=8, calibrate=precision == "int8")
        source = FusedSource(agent, env, cfg.n_envs, cfg.train_freq, precision=precision)
        out[on] = compile_cache.jit(source.update_step)(source.init(jax.random.PRNGKey(0)))[0]  # the test's effort
    np.testing.assert_array_equal(np.asarray(out[False].rollout.obs), np.asarray(out[True].rollout.obs))
    same = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(out[False].agent.params), jax.tree.leaves(out[True].agent.params))]
    assert all(same) if precision == "fp32" else not any(same)


def test_bench_qat_summarizes_each_arm_and_refuses_a_config_it_cannot_run(tmp_path) -> None:
    from cli_helpers import run_main

    from rlaccel.bench import qat as qat_bench

    history = [{"int8": np.array([100.0, 480.0]), "fp32": np.array([120.0, 500.0])}, {"int8": np.array([300.0, 200.0]), "fp32": np.array([320.0, 400.0])}]
    s = qat_bench.summarize(history, target=475.0)
    assert s["seeds_reaching_target"] == 1 and s["best_int8"] == [300.0, 480.0] and s["last_int8"] == [300.0, 200.0]
    assert s["late_int8"] == pytest.approx(270.0) and s["late_fp32"] == pytest.approx(335.0)  # the last 5 (here: all 2) evaluations
    for config, key in (("ppo_cartpole.yaml", "--config"), ("dqn_cartpole_purejaxrl.yaml", "--config"), ("nope.yaml", "")):
        rc, out, err = run_main(["bench", "qat", "--config", config, "--out", str(tmp_path / "qat.json")])
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and err.startswith(f"error: {key}")
    assert list(tmp_path.iterdir()) == []


def test_qat_with_fp32_actors_is_a_config_error_naming_the_key(tmp_path) -> None:
    from cli_helpers import run_main

    rc, out, err = run_main(["--config", "configs/dqn_cartpole.yaml", "--set", "dqn.qat=true", "--set", "placement.actor.precision=fp32", "--run-dir", str(tmp_path / "run")])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: dqn.qat:")
    assert not (tmp_path / "run").exists()

"""Tests for ``rlaccel.deploy``: export, the numpy / onnxruntime / jax runtimes, bad artifacts.

One small CartPole policy is trained once per session with ``rlaccel.api.train`` (the
shipped config, shortened); a Pendulum PPO policy (observation normalisation, Gaussian
mean) and a DQN policy (ReLU) are exported from freshly initialised, calibrated states, which
is enough for arithmetic checks. Oracles nobody here wrote: JAX's own compiled int8 actor
(``agent.head``), onnxruntime, gymnasium's environments.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest

from rlaccel import api, checkpoint, compile_cache, lookup, normalize, reference, sources
from rlaccel import config as config_lib
from rlaccel.deploy import PolicyError, load_policy
from rlaccel.deploy import artifact as artifact_lib
from rlaccel.deploy import runtime
from rlaccel.deploy.evaluate import episode_returns, gym_id
from rlaccel.deploy.export import export
from rlaccel.deploy.onnx_model import save_model

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ["numpy-int8", "numpy-fp32", "onnx-int8", "onnx-fp32", "jax", "jax-fp32"]


def _restore(run_dir: Path):
    """``(agent, source, state)`` of a run, restored as ``rlaccel.loop`` does (any step source)."""
    config = config_lib.load(run_dir / "config.yaml")
    source = sources.make(config)
    state, _ = checkpoint.restore(checkpoint.latest(run_dir / "checkpoints"), jax.eval_shape(source.init, jax.random.PRNGKey(config.seed)))
    return source.agent, source, state


@pytest.fixture(scope="session")
def cartpole_run(tmp_path_factory) -> Path:
    """PPO CartPole-v1 (shipped config, int8 actors) trained for 295k steps, exported."""
    run_dir = tmp_path_factory.mktemp("deploy") / "ppo_cartpole"
    cfg = config_lib.load(
        REPO / "configs" / "ppo_cartpole.yaml",
        ["total_timesteps=294912", "logging.progress=false", "logging.tensorboard=false", "logging.log_interval=96", "eval.freq=0", "logging.probe_seconds=null"],  # evaluation: tests/test_eval.py; probes: tests/test_cli.py
    )
    with compile_cache.effort("default"):  # 295k steps: running, not compiling, is most of it
        api.train(cfg, run_dir=run_dir, progress=False)
    export(run_dir)
    export(run_dir, fmt="onnx-int8")  # RUN_DIR/policy_int8.onnx
    return run_dir


def _fake_run(root: Path, config_file: str, overrides: list[str], calibrate: bool = True) -> Path:
    """A run directory whose checkpoint is a freshly initialised state with non-trivial
    observation statistics and int8 calibration (``agent.calibrate``; no training: arithmetic
    checks only). ``calibrate=False`` leaves the calibration at ``quant.init``, as a run with
    fp32 actors does."""
    run_dir = root / (Path(config_file).stem + ("" if calibrate else "_uncalibrated"))
    config = config_lib.load(REPO / "configs" / config_file, overrides)
    source = sources.make(config)
    state = compile_cache.jit(source.init)(jax.random.PRNGKey(3))
    rng = np.random.default_rng(0)
    obs_dim = source.env.observation_space.shape[0]
    raw = jnp.asarray(rng.standard_normal((512, obs_dim)) * 2.0 + 0.5, jnp.float32)
    agent_state = state.agent
    if config.algo == "ppo":
        stats = normalize.RunningStats(mean=jnp.asarray(rng.standard_normal(obs_dim), jnp.float32), var=jnp.asarray(rng.random(obs_dim) * 3 + 0.1, jnp.float32), count=jnp.float32(512))
        agent_state = agent_state.replace(obs_stats=stats)
    if calibrate:
        agent_state = compile_cache.jit(source.agent.calibrate)(agent_state, raw)
    state = state.replace(agent=agent_state)
    checkpoint.save(run_dir / "checkpoints", 1, state, {"config": config.to_dict()})
    (run_dir / "config.yaml").write_text(json.dumps(config.to_dict()))
    export(run_dir)
    return run_dir


@pytest.fixture(scope="session")
def other_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("deploy_init")
    return {
        "pendulum": _fake_run(root, "ppo_pendulum.yaml", []),
        "dqn": _fake_run(root, "dqn_cartpole.yaml", []),
        "uncalibrated": _fake_run(root, "ppo_cartpole.yaml", ["placement.actor.precision=fp32"], calibrate=False),
    }


@pytest.mark.slow
def test_run_trained_with_fp32_actors_is_calibrated_at_export(other_runs):
    art = artifact_lib.read(other_runs["uncalibrated"] / "policy.rlpolicy")
    assert art.meta["source"]["calibrated_rollouts"] == 8
    guess = np.float32(0.1)  # quant.init's input range (+-10) would give this equalisation gain
    assert not np.allclose(art.arrays["int8.gain"], guess)
    int8 = load_policy(other_runs["uncalibrated"] / "policy.rlpolicy", "numpy-int8")
    fp32 = load_policy(other_runs["uncalibrated"] / "policy.rlpolicy", "numpy-fp32")
    obs = _episode_observations(fp32)
    np.testing.assert_array_equal(int8.head(obs), load_policy(other_runs["uncalibrated"] / "policy.rlpolicy", "jax").head(obs))
    # A barely trained policy: many states have logit gaps below the int8 head's resolution
    # (measured 94.8 % with the tflite profile; a trained CartPole policy agrees >= 99 % on rollouts).
    assert np.mean(int8.act(obs) == fp32.act(obs)) >= 0.90


def _episode_observations(policy, n: int = 2000, seed: int = 12345) -> np.ndarray:
    """``[n, obs_dim]`` observations of gymnasium's env driven by ``policy`` (seeds unused in training)."""
    import gymnasium as gym

    env = gym.make(gym_id(policy.meta["env"]))
    obs, rows = env.reset(seed=seed)[0], []
    for _ in range(n):
        rows.append(np.asarray(obs, np.float32))
        obs, _, term, trunc, _ = env.step(policy.act(rows[-1]))
        if term or trunc:
            obs = env.reset()[0]
    return np.stack(rows)


def _observations(policy, n_random: int = 20000) -> np.ndarray:
    """Episode observations plus wide random ones (3x the episodes' spread, many clipped)."""
    seen = _episode_observations(policy)
    rng = np.random.default_rng(1)
    wide = seen.mean(0) + rng.standard_normal((n_random, seen.shape[1])) * (3 * seen.std(0) + 1.0)
    return np.concatenate([seen, wide.astype(np.float32)])


def _check_bit_exact(run_dir: Path) -> None:
    agent, _, state = _restore(run_dir)
    int8 = compile_cache.jit(agent.actor_params, static_argnums=1)(state.agent, "int8")
    policy = load_policy(run_dir / "policy.rlpolicy", "numpy-int8")
    obs = _observations(policy)
    expected = np.asarray(compile_cache.jit(agent.head)(int8, obs))  # the training actors' compiled int8 path
    np.testing.assert_array_equal(policy.head(obs), expected)
    np.testing.assert_array_equal(policy.head(obs[:7]), expected[:7])  # another batch size, other buffers
    single = np.stack([policy.act(o) for o in obs[:3000]])  # the batch-1 path
    if policy.discrete:
        np.testing.assert_array_equal(single, expected[:3000].argmax(-1))
    else:
        low, high = agent_bounds(policy)
        np.testing.assert_array_equal(single, np.clip(expected[:3000], low, high))
    np.testing.assert_array_equal(load_policy(run_dir / "policy.rlpolicy", "jax").head(obs), expected)


def agent_bounds(policy) -> tuple[np.ndarray, np.ndarray]:
    space = policy.meta["action_space"]
    return np.asarray(space["low"], np.float32), np.asarray(space["high"], np.float32)


@pytest.mark.slow
def test_numpy_int8_is_bit_exact_with_the_training_actor_cartpole(cartpole_run):
    _check_bit_exact(cartpole_run)


@pytest.mark.slow
def test_host_actor_mujoco_run_exports_bit_exact(tmp_path_factory):
    """HalfCheetah-v5 through host actors (gymnasium MuJoCo): 17-64-64-6 tanh, normalised obs."""
    run_dir = tmp_path_factory.mktemp("deploy_gym") / "halfcheetah"
    cfg = config_lib.load(
        REPO / "configs" / "ppo_halfcheetah.yaml",
        ["total_timesteps=4096", "logging.log_interval=1", "logging.progress=false", "logging.tensorboard=false", "eval.freq=0", "logging.probe_seconds=null"],
    )
    api.train(cfg, run_dir=run_dir, progress=False)
    export(run_dir)
    assert artifact_lib.read(run_dir / "policy.rlpolicy").meta["env"] == "gym:HalfCheetah-v5"
    _check_bit_exact(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pendulum", "dqn"])
def test_numpy_int8_is_bit_exact_normalised_gaussian_and_relu(other_runs, name):
    """Pendulum: observation normaliser folded in, continuous mean; DQN: ReLU, 120-84 widths."""
    _check_bit_exact(other_runs[name])


@pytest.mark.slow
def test_artifact_normaliser_is_the_actors(other_runs):
    """``obs.mean`` / ``obs.inv_std`` are the actor parameters' own values (compiled at the
    export's effort); ``obs.var`` (for older readers) is the variance they came from, to
    float32 rounding."""
    agent, _, state = _restore(other_runs["pendulum"])
    norm = compile_cache.jit(agent.actor_params, static_argnums=1)(state.agent, "int8").obs_norm
    art = artifact_lib.read(other_runs["pendulum"] / "policy.rlpolicy")
    np.testing.assert_array_equal(art.arrays["obs.mean"], np.asarray(norm.mean))
    np.testing.assert_array_equal(art.arrays["obs.inv_std"], np.asarray(norm.inv_std))
    np.testing.assert_allclose(art.arrays["obs.var"], np.asarray(state.agent.obs_stats.var), rtol=1e-5)
    assert art.meta["normalization"] == {"norm_obs": True, "clip_obs": 10.0, "eps": 1e-8}
    assert art.meta["policy"]["head"] == "gaussian_mean" and art.arrays["log_std"].shape == (1,)
    assert artifact_lib.read(other_runs["dqn"] / "policy.rlpolicy").meta["policy"]["head"] == "q_centered"


@pytest.mark.slow
def test_activation_table_equals_the_integer_kernels_on_every_accumulator(other_runs):
    """The tabulated output stage against ``int8model`` (requantise, TANH) on every integer of
    a channel's transition window (not just sampled points), hidden and head layers."""
    from rlaccel import intmath, int8model

    art = artifact_lib.read(other_runs["pendulum"] / "policy.rlpolicy")
    model = artifact_lib.int8_tables(art).model
    profile = art.meta["policy"]["int8_profile"]
    for i in (1, 2):
        thr = art.arrays[f"int8.thresholds{i}"].astype(np.int64)
        for j in (0, thr.shape[0] // 2, thr.shape[0] - 1):
            acc = np.arange(thr[j, 0] - 50, thr[j, -1] + 50, dtype=np.int64)
            cols = np.zeros((acc.shape[0], thr.shape[0]), np.int64)
            cols[:, j] = acc
            q = int8model.requantize(cols, model, i, profile)[:, j]
            if i < 2:
                q = intmath.TANH_TABLES[intmath.tanh_index(model.out_scale[i])].astype(np.int64)[q + 128]
            table = np.searchsorted(thr[j], acc, side="right") - 128
            np.testing.assert_array_equal(table, q)


@pytest.mark.slow
def test_import_rlaccel_and_numpy_backends_do_not_import_jax(cartpole_run):
    code = (
        "import sys, numpy as np, rlaccel\n"
        f"path = {str(cartpole_run / 'policy.rlpolicy')!r}\n"
        "for backend in ('numpy-int8', 'numpy-fp32'):\n"
        "    p = rlaccel.load_policy(path, backend=backend)\n"
        "    print(p.act(np.zeros(4, np.float32)), p.act(np.zeros((3, 4))).shape)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax', 'onnxruntime')]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 2 and all(line.endswith(" (3,)") for line in out.stdout.splitlines())


@pytest.mark.slow
def test_every_backend_acts_on_one_and_on_a_batch(cartpole_run, other_runs):
    for run_dir in (cartpole_run, other_runs["pendulum"]):
        for backend in BACKENDS:
            p = load_policy(run_dir / "policy.rlpolicy", backend)
            obs = np.random.default_rng(0).standard_normal((5, p.obs_dim)).astype(np.float32)
            one, batch = p.act(obs[0]), p.act(obs)
            if p.discrete:
                assert isinstance(one, int) and batch.shape == (5,)
            else:
                low, high = agent_bounds(p)
                assert one.shape == low.shape and batch.shape == (5, *low.shape)
                assert np.all(batch >= low) and np.all(batch <= high)
            assert np.array_equal(np.asarray(p.act(list(map(float, obs[0])))), np.asarray(one))  # a list works too


@pytest.mark.slow
def test_gaussian_mean_is_clipped_to_the_action_bounds(other_runs):
    p = load_policy(other_runs["pendulum"] / "policy.rlpolicy", "numpy-int8")
    tables = artifact_lib.int8_tables(p.artifact)
    model = tables.model._replace(out_scale=(*tables.model.out_scale[:-1], tables.model.out_scale[-1] * 1e6))  # the mean far outside [-2, 2]; the clip must hold
    p.net = reference.Int8Network(tables._replace(model=model), "tanh", *runtime.normalizer(p.artifact))
    p._act_single = p._make_single()
    obs = np.random.default_rng(0).standard_normal((200, 3)).astype(np.float32)
    acts = p.act(obs)
    assert np.all(np.abs(acts) <= 2.0) and np.mean(np.abs(acts) == 2.0) > 0.5  # (q == zero point gives 0)
    assert np.array_equal(np.stack([p.act(o) for o in obs]), acts)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cartpole", "pendulum", "dqn"])
def test_onnx_models_pass_the_checker_and_agree_with_numpy_int8(cartpole_run, other_runs, name, tmp_path):
    run_dir = cartpole_run if name == "cartpole" else other_runs[name]
    ref = load_policy(run_dir / "policy.rlpolicy", "numpy-int8")
    held_out = _episode_observations(ref, seed=54321)  # gymnasium's env, seeds never used in training
    expected = ref.act(held_out)
    art = artifact_lib.read(run_dir / "policy.rlpolicy")
    for precision in ("int8", "fp32"):
        if name == "cartpole" and precision == "int8":
            path = run_dir / "policy_int8.onnx"  # written by export(run_dir, fmt="onnx-int8")
        else:
            path = save_model(art, precision, tmp_path / f"p_{precision}.onnx")
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        ort_policy = load_policy(path, f"onnx-{precision}")
        got = ort_policy.act(held_out)
        if ref.discrete:
            agree = np.mean(got == expected)
        else:
            low, high = agent_bounds(ref)
            agree = np.mean(np.all(np.abs(got - expected) <= 0.01 * (high - low), axis=-1))
        if precision == "int8":
            assert agree >= 0.99, agree
            model = onnx.load(str(path))
            ops = {n.op_type for n in model.graph.node}
            assert {"QuantizeLinear", "DequantizeLinear"} <= ops
            w_scale = next(i for i in model.graph.initializer if i.name == "w0_scale")
            assert list(w_scale.dims) == [ref.meta["policy"]["hidden"][0]]  # one scale per output channel
        else:
            np.testing.assert_allclose(ort_policy.head(held_out), load_policy(run_dir / "policy.rlpolicy", "numpy-fp32").head(held_out), atol=1e-5)


def _corrupt(src: Path, dst: Path, how: str) -> Path:
    raw = src.read_bytes()
    if how == "truncated":
        raw = raw[: len(raw) - 1000]
    elif how == "edited":
        i = len(raw) // 2
        raw = raw[:i] + bytes([raw[i] ^ 1]) + raw[i + 1 :]
    elif how == "future":
        line, _, payload = raw.partition(b"\n")
        header = json.loads(line)
        header["format_version"] = artifact_lib.FORMAT_VERSION + 1
        raw = json.dumps(header).encode() + b"\n" + payload
    elif how == "not_a_policy":
        raw = b"PK\x03\x04 something else entirely"
    dst.write_bytes(raw)
    return dst


@pytest.mark.parametrize(
    "how, message",
    [("truncated", "truncated"), ("edited", "sha256"), ("future", "newer than this rlaccel"), ("not_a_policy", "not an rlaccel policy")],
)
@pytest.mark.slow
def test_bad_artifacts_give_one_clear_error(cartpole_run, tmp_path, how, message):
    bad = _corrupt(cartpole_run / "policy.rlpolicy", tmp_path / "bad.rlpolicy", how)
    for backend in ("numpy-int8", "onnx-int8"):
        with pytest.raises(PolicyError, match=message) as info:
            load_policy(bad, backend)
        assert str(bad) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
def test_observation_that_does_not_match_the_space_is_refused(cartpole_run):
    import gymnasium as gym

    for backend in ("numpy-int8", "numpy-fp32", "onnx-int8"):
        p = load_policy(cartpole_run / "policy.rlpolicy", backend)
        for obs in (np.zeros(3, np.float32), np.zeros((2, 5), np.float32), np.zeros((1, 1, 4)), "abc"):
            with pytest.raises(PolicyError, match="observation"):
                p.act(obs)
        with pytest.raises(PolicyError, match="action space"):
            p.check_spaces(gym.make("CartPole-v1").observation_space, gym.spaces.Discrete(3))
        with pytest.raises(PolicyError, match="observation space"):
            p.check_spaces(gym.make("Pendulum-v1").observation_space, gym.spaces.Discrete(2))
        for obs in (np.array([0, np.nan, 0, 0], np.float32), np.array([[0, 0, np.inf, 0]] * 2)):
            with pytest.raises(PolicyError, match="NaN or infinity"):
                p.act(obs)
    with pytest.raises(PolicyError, match="unknown backend"):
        load_policy(cartpole_run / "policy.rlpolicy", "tflite-micro")


@pytest.mark.slow
def test_search_fallback_computes_the_same_integers_as_the_lookup(cartpole_run, monkeypatch):
    """The binary-search path (used when a table would be too large or one accumulator value
    jumps two levels) against the branch-free lookup, on the same observations."""
    path = cartpole_run / "policy.rlpolicy"
    lut = load_policy(path)
    monkeypatch.setattr(lookup.LayerLookup, "MAX_CELLS", 0)
    search = load_policy(path)
    # (a coarse TANH table can jump two levels at one accumulator value: that layer searches anyway)
    assert "lut" in [h.mode for h in lut.net._layers] and [h.mode for h in search.net._layers] == ["search"] * 3
    obs = _observations(lut, n_random=5000)
    np.testing.assert_array_equal(search.head(obs), lut.head(obs))
    assert [search.act(o) for o in obs[:500]] == [lut.act(o) for o in obs[:500]]


@pytest.mark.slow
def test_export_cli_bad_input_is_one_line_exit_2_and_writes_nothing(cartpole_run, tmp_path):
    command = [sys.executable, "-m", "rlaccel", "export"]
    damaged = Path(shutil.copytree(checkpoint.latest(cartpole_run / "checkpoints"), tmp_path / "damaged_checkpoint"))
    data = max((p for p in (damaged / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    _corrupt(data, data, "edited")  # a flipped byte in the arrays
    cases = [
        ["--run", str(tmp_path / "nope")],  # not a run directory
        ["--run", str(cartpole_run), "--checkpoint", str(damaged)],
    ]
    empty = tmp_path / "empty_run"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "config.yaml").write_text((cartpole_run / "config.yaml").read_text())
    with pytest.raises(PolicyError, match="no checkpoint"):
        export(empty, tmp_path / "never.rlpolicy")
    assert not (tmp_path / "never.rlpolicy").exists()
    for args in cases:
        out = tmp_path / "out.rlpolicy"
        res = subprocess.run([*command, *args, "--out", str(out)], check=False, capture_output=True, text=True, timeout=120, cwd=REPO)
        assert res.returncode == 2, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("error: ")
        assert not out.exists()


@pytest.mark.slow
def test_export_cli_writes_the_integer_formats(cartpole_run, tmp_path):
    """``rlaccel export --format tflite | tflite-int8io | c``: the files, and the C compiles and runs.
    The first names the run relative to the working directory (orbax reads absolute paths only)."""
    for fmt, out in (("tflite", tmp_path / "p.tflite"), ("tflite-int8io", tmp_path / "q.tflite"), ("c", tmp_path / "c")):
        run, cwd = (cartpole_run.name, cartpole_run.parent) if fmt == "tflite" else (str(cartpole_run), REPO)
        res = subprocess.run([sys.executable, "-m", "rlaccel", "export", "--run", run, "--format", fmt, "--out", str(out)], check=False, capture_output=True, text=True, timeout=300, cwd=cwd)
        assert res.returncode == 0, res.stderr
        assert out.exists() and f"wrote {out}" in res.stdout
    assert (tmp_path / "p.tflite").read_bytes()[4:8] == b"TFL3" and sorted(p.name for p in (tmp_path / "c").iterdir()) == ["main.c", "policy.c", "policy.h"]
    exe = tmp_path / "policy"
    subprocess.run(["cc", "-O2", "-std=c99", "-Wall", "-Werror", "policy.c", "main.c", "-o", str(exe)], check=True, cwd=tmp_path / "c")
    obs = np.array([0.01, -0.02, 0.03, 0.04], np.float32)
    printed = subprocess.run([str(exe), *map(str, obs)], check=True, capture_output=True, text=True).stdout.split()
    np.testing.assert_allclose(np.asarray(printed, np.float32), load_policy(cartpole_run / "policy.rlpolicy", "numpy-int8").head(obs[None])[0], rtol=1e-6)


@pytest.mark.slow
def test_exported_int8_returns_match_fp32_on_100_cartpole_episodes(cartpole_run):
    """Must-reach: int8 within 2 % of fp32 over 100 evaluation episodes (gymnasium's CartPole)."""
    path = cartpole_run / "policy.rlpolicy"
    int8 = episode_returns(load_policy(path, "numpy-int8"), "CartPole-v1", 100, seed=1000)
    fp32 = episode_returns(load_policy(path, "numpy-fp32"), "CartPole-v1", 100, seed=1000)
    print(f"CartPole 100 episodes: int8 {int8.mean():.1f}, fp32 {fp32.mean():.1f}")
    assert fp32.mean() >= 300, fp32.mean()  # the policy learned something, so the comparison means something
    assert abs(int8.mean() - fp32.mean()) <= 0.02 * abs(fp32.mean())


@pytest.mark.slow
def test_artifact_round_trip_and_contents(cartpole_run):
    art = artifact_lib.read(cartpole_run / "policy.rlpolicy")
    meta = art.meta
    assert meta["algo"] == "ppo" and meta["env"] == "CartPole-v1"
    assert meta["action_space"] == {"type": "Discrete", "n": 2}
    assert meta["observation_space"]["shape"] == [4]
    assert meta["config"]["ppo"]["n_envs"] == 4 and meta["source"]["update"] == 576
    assert art.arrays["int8.w0"].dtype == np.int8 and art.arrays["int8.b0"].dtype == np.int32
    again = artifact_lib.from_bytes(artifact_lib.to_bytes(art))
    assert again.meta == meta and all(np.array_equal(again.arrays[k], v) for k, v in art.arrays.items())

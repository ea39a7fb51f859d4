"""Tests for `rlaccel.envs`, with gymnasium's own classic-control envs as the oracle.

The parity tests put a gymnasium env (``gymnasium.make(id)``, so its `TimeLimit` is
included) and ours in the same physical state, feed both the same actions and compare
every transition of whole episodes:

* ``test_episodes_match_gymnasium`` never re-syncs: under ``jax.enable_x64`` with a
  float64 state our env follows gymnasium's float64 numpy code for whole episodes.
* ``test_transitions_match_gymnasium`` copies our state into gymnasium before every step,
  so it checks one-step transitions along whole episodes, in float32 (the default
  precision, which drifts from float64 over long chaotic episodes) and float64.

Two things keep the non-re-synced comparison honest rather than flaky. XLA on CPU fuses
``a * b + c`` into FMA instructions, so float64 results differ from numpy's in the last
bit now and then; CartPole under a balancing controller is open-loop unstable (growth
about e^4 per second), which turns that last bit into O(1) differences within its 500
steps, so that run lives in the re-synced test. And gymnasium's MountainCarContinuous
stores its state as float32 after every step, so it is compared with our float32 env.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnasium.envs.classic_control import acrobot as gym_acrobot
from gymnasium.envs.classic_control import pendulum as gym_pendulum
from hypothesis import given, settings
from hypothesis import strategies as st
from rlaccel.envs.classic_control import _angle_normalize, _wrap_pi

from rlaccel import envs

ENV_IDS = [
    "CartPole-v1",
    "Acrobot-v1",
    "Pendulum-v1",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
]
ATOL = 1e-5

# One raw env and one jitted step per id for the whole module: compiling is most of the
# cost of these tests (jit retraces by itself for float32 vs float64 inputs).
_ENVS = {env_id: envs.make(env_id) for env_id in ENV_IDS}
_STEP = {env_id: jax.jit(env.step) for env_id, env in _ENVS.items()}
_KEY = jax.random.key(0)  # the classic-control steps are deterministic


@pytest.fixture(autouse=True)
def _quiet_gymnasium():
    # gymnasium's passive checker warns about out-of-bounds actions and observations,
    # which some policies below produce on purpose (clipping is part of the dynamics).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ----------------------------------------------------------------------------------------
# Policies: (rng, gymnasium obs of the previous step or None) -> gymnasium action.
# ----------------------------------------------------------------------------------------

Policy = Callable[[np.random.Generator, Any], Any]


def random_discrete(n: int) -> Policy:
    def random_actions(rng, obs):
        return int(rng.integers(n))

    return random_actions


def random_box(low: float, high: float) -> Policy:
    def random_actions(rng, obs):
        # Wider than the action space, to exercise the clipping inside the env; float32
        # like a policy network's output.
        return rng.uniform(low, high, size=(1,)).astype(np.float32)

    return random_actions


def cartpole_balance(rng, obs):
    """Linear state feedback that keeps the pole up for the whole 500 steps."""
    if obs is None:
        return 0
    x, x_dot, theta, theta_dot = obs
    return int(0.05 * x + 0.2 * x_dot + 3.0 * theta + 0.7 * theta_dot > 0)


def acrobot_pump(rng, obs):
    """Torque along the second joint's velocity: pumps energy, reaches the goal."""
    return 0 if obs is None else (2 if obs[5] > 0 else 0)


def mountain_car_pump(rng, obs):
    """Accelerate along the velocity: reaches the flag well within 200 steps."""
    return 0 if obs is None else (2 if obs[1] > 0 else 0)


def mountain_car_continuous_pump(rng, obs):
    # Magnitude 1.2 > max_action: the dynamics clip it, the reward penalises 1.2**2.
    return np.array([-1.2 if obs is None or obs[1] <= 0 else 1.2], np.float32)


@dataclasses.dataclass(frozen=True)
class Case:
    env_id: str
    policy: Policy
    seeds: tuple[int, ...]
    ends_by: str  # how every episode of this case must end: "terminated" / "truncated"
    dtype: Any = jnp.float64

    def __str__(self) -> str:
        return f"{self.env_id}-{self.policy.__name__}"


CASES = [
    Case("CartPole-v1", random_discrete(2), (0, 1, 2, 3, 4), "terminated"),
    Case("Acrobot-v1", random_discrete(3), (0, 1), "truncated"),
    Case("Acrobot-v1", acrobot_pump, (0, 1, 2), "terminated"),
    Case("Pendulum-v1", random_box(-3.0, 3.0), (0, 1), "truncated"),
    Case("MountainCar-v0", random_discrete(3), (0, 1), "truncated"),
    Case("MountainCar-v0", mountain_car_pump, (0, 1, 2), "terminated"),
    Case("MountainCarContinuous-v0", random_box(-1.5, 1.5), (0,), "truncated", jnp.float32),
    Case("MountainCarContinuous-v0", mountain_car_continuous_pump, (0, 1), "terminated",
         jnp.float32),
]
RESYNC_CASES = [
    Case("CartPole-v1", random_discrete(2), (0, 1, 2), "terminated"),
    Case("CartPole-v1", cartpole_balance, (0, 1), "truncated"),
    Case("Acrobot-v1", random_discrete(3), (0,), "truncated"),
    Case("Acrobot-v1", acrobot_pump, (0,), "terminated"),
    Case("Pendulum-v1", random_box(-3.0, 3.0), (0,), "truncated"),
    Case("MountainCar-v0", random_discrete(3), (0,), "truncated"),
    Case("MountainCar-v0", mountain_car_pump, (0,), "terminated"),
    Case("MountainCarContinuous-v0", random_box(-1.5, 1.5), (0,), "truncated"),
    Case("MountainCarContinuous-v0", mountain_car_continuous_pump, (0,), "terminated"),
]


# ----------------------------------------------------------------------------------------
# Moving states between gymnasium and us. Our state dataclasses list the physical fields
# in gymnasium's `state` order, followed by `time`.
# ----------------------------------------------------------------------------------------


def physical_fields(state: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(state) if f.name != "time"]


def from_gym(env: envs.Env, gym_state: Any, dtype: Any, time: int = 0) -> Any:
    template, _ = env.reset(_KEY)
    values = np.asarray(gym_state, np.float64)
    fields = {n: jnp.asarray(v, dtype) for n, v in zip(physical_fields(template), values)}
    return type(template)(**fields, time=jnp.int32(time))


def to_gym(state: Any) -> np.ndarray:
    return np.array([np.float64(getattr(state, n)) for n in physical_fields(state)])


def to_jax_action(env: envs.Env, action: Any, dtype: Any) -> jax.Array:
    if env.is_discrete:
        return jnp.int32(action)
    return jnp.asarray(action, dtype)


def to_gym_action(env: envs.Env, action: Any, dtype: Any) -> Any:
    if env.is_discrete:
        return action
    # float64 actions keep gymnasium's arithmetic in float64 (a float32 action makes
    # numpy compute e.g. Pendulum's ``3.0 * u`` in float32).
    return np.asarray(action, np.float64 if dtype == jnp.float64 else np.float32)


def assert_step_matches(where: str, ours: tuple, theirs: tuple) -> None:
    _, obs, reward, terminated, truncated, info = ours
    gym_obs, gym_reward, gym_terminated, gym_truncated, _ = theirs
    assert obs.dtype == jnp.float32 and reward.dtype == jnp.float32, where
    assert obs.shape == gym_obs.shape, where
    np.testing.assert_allclose(np.asarray(obs), gym_obs, rtol=0, atol=ATOL, err_msg=where)
    np.testing.assert_allclose(float(reward), gym_reward, rtol=0, atol=ATOL, err_msg=where)
    assert (bool(terminated), bool(truncated)) == (gym_terminated, gym_truncated), where
    assert info == {}, where


def run_case(case: Case, seed: int, resync: bool, dtype: Any) -> tuple[str, int]:
    """Plays one episode side by side; returns how it ended and its length."""
    env, step = _ENVS[case.env_id], _STEP[case.env_id]
    gym_env = gymnasium.make(case.env_id)
    gym_env.reset(seed=seed)
    state = from_gym(env, gym_env.unwrapped.state, dtype)
    rng = np.random.default_rng(seed)
    gym_obs = None
    for t in range(1, env.max_episode_steps + 1):
        if resync:
            gym_env.unwrapped.state = to_gym(state)
        action = case.policy(rng, gym_obs)
        theirs = gym_env.step(to_gym_action(env, action, dtype))
        ours = step(_KEY, state, to_jax_action(env, action, dtype))
        where = f"{case} seed={seed} t={t}"
        assert_step_matches(where, ours, theirs)
        state, gym_obs = ours[0], theirs[0]
        assert state.time == t and all(
            getattr(state, n).dtype == dtype for n in physical_fields(state)
        ), where
        if theirs[2] or theirs[3]:
            return ("terminated" if theirs[2] else "truncated"), t
    raise AssertionError(f"{case} seed={seed}: gymnasium's TimeLimit never fired")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_episodes_match_gymnasium(case: Case):
    with jax.enable_x64(True):
        for seed in case.seeds:
            ended_by, length = run_case(case, seed, resync=False, dtype=case.dtype)
            assert ended_by == case.ends_by, f"{case} seed={seed} length={length}"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", RESYNC_CASES, ids=str)
def test_transitions_match_gymnasium(case: Case, dtype: Any):
    with jax.enable_x64(dtype == jnp.float64):
        for seed in case.seeds:
            ended_by, length = run_case(case, seed, resync=True, dtype=dtype)
            assert ended_by == case.ends_by, f"{case} seed={seed} length={length}"


# ----------------------------------------------------------------------------------------
# Static description
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_spaces_and_time_limit_match_gymnasium(env_id: str):
    env, gym_env = _ENVS[env_id], gymnasium.make(env_id)
    for ours, theirs in [
        (env.observation_space, gym_env.observation_space),
        (env.action_space, gym_env.action_space),
    ]:
        assert type(ours) is type(theirs)
        assert ours == theirs
        assert ours.dtype == theirs.dtype
        if isinstance(ours, gymnasium.spaces.Box):
            np.testing.assert_array_equal(ours.low, theirs.low)
            np.testing.assert_array_equal(ours.high, theirs.high)
    assert env.observation_space.dtype == np.float32
    assert env.max_episode_steps == gym_env.spec.max_episode_steps
    assert env.id == env_id and env.kind == "jax"


def test_action_helpers():
    cartpole, pendulum = _ENVS["CartPole-v1"], _ENVS["Pendulum-v1"]
    assert cartpole.is_discrete and cartpole.num_actions == 2 and cartpole.obs_dim == 4
    assert not pendulum.is_discrete and pendulum.action_dim == 1 and pendulum.obs_dim == 3
    with pytest.raises(TypeError):
        cartpole.action_dim
    with pytest.raises(TypeError):
        pendulum.num_actions


# ----------------------------------------------------------------------------------------
# Functional API: jit, vmap, reset distribution, AutoReset
# ----------------------------------------------------------------------------------------


def random_actions(env: envs.Env, key: jax.Array, batch: int) -> jax.Array:
    if env.is_discrete:
        return jax.random.randint(key, (batch,), 0, env.num_actions)
    space = env.action_space
    return jax.random.uniform(key, (batch, *space.shape), jnp.float32, space.low, space.high)


@pytest.mark.parametrize("auto_reset", [False, True], ids=["raw", "auto_reset"])
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_jit_vmap_over_batch(env_id: str, auto_reset: bool):
    env = envs.make(env_id, auto_reset=auto_reset)
    batch = 8
    key_reset, key_step, key_action = jax.random.split(jax.random.key(1), 3)
    state, obs = jax.jit(jax.vmap(env.reset))(jax.random.split(key_reset, batch))
    assert obs.shape == (batch, env.obs_dim) and obs.dtype == jnp.float32
    actions = random_actions(env, key_action, batch)
    state, obs, reward, terminated, truncated, info = jax.jit(jax.vmap(env.step))(
        jax.random.split(key_step, batch), state, actions
    )
    assert obs.shape == (batch, env.obs_dim) and obs.dtype == jnp.float32
    assert reward.shape == (batch,) and reward.dtype == jnp.float32
    assert terminated.shape == truncated.shape == (batch,)
    assert terminated.dtype == truncated.dtype == jnp.bool_
    assert state.time.dtype == jnp.int32 and np.all(np.asarray(state.time) == 1)
    assert set(info) == ({"final_obs"} if auto_reset else set())
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state))
    # Different keys give different initial states.
    assert len(np.unique(np.asarray(obs)[:, 0])) == batch


# Per env: (state field, low, high) of gymnasium's reset distribution.
RESET_BOUNDS = {
    "CartPole-v1": [(f, -0.05, 0.05) for f in ("x", "x_dot", "theta", "theta_dot")],
    "Acrobot-v1": [(f, -0.1, 0.1) for f in ("theta1", "theta2", "dtheta1", "dtheta2")],
    "Pendulum-v1": [("theta", -math.pi, math.pi), ("theta_dot", -1.0, 1.0)],
    "MountainCar-v0": [("position", -0.6, -0.4), ("velocity", 0.0, 0.0)],
    "MountainCarContinuous-v0": [("position", -0.6, -0.4), ("velocity", 0.0, 0.0)],
}


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reset_distribution(env_id: str):
    env = _ENVS[env_id]
    state, obs = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(2), 2000))
    assert np.all(np.asarray(state.time) == 0)
    for name, low, high in RESET_BOUNDS[env_id]:
        values = np.asarray(getattr(state, name))
        assert values.dtype == np.float32, name
        assert np.all((low <= values) & (values <= high)), name
        # Uniform over the whole interval: 2000 samples reach within 1% of both ends.
        assert values.min() <= low + 0.01 * (high - low), name
        assert values.max() >= high - 0.01 * (high - low), name
    assert all(env.observation_space.contains(o) for o in np.asarray(obs))


def test_reset_dtype_float64():
    with jax.enable_x64(True):
        env = envs.make("Acrobot-v1", dtype=jnp.float64)
        state, obs = env.reset(jax.random.key(0))
        assert state.theta1.dtype == jnp.float64 and obs.dtype == jnp.float32
        state, obs, reward, *_ = _STEP["Acrobot-v1"](_KEY, state, jnp.int32(2))
        assert state.theta1.dtype == jnp.float64
        assert obs.dtype == jnp.float32 and reward.dtype == jnp.float32


def test_auto_reset_keeps_final_obs_on_termination():
    raw = _ENVS["CartPole-v1"]
    env = envs.make("CartPole-v1", auto_reset=True)
    step = jax.jit(env.step)
    key = jax.random.key(3)
    key, key_reset = jax.random.split(key)
    state, obs = env.reset(key_reset)
    for t in range(1, 100):
        key, key_step = jax.random.split(key)
        expected = _STEP["CartPole-v1"](key_step, state, jnp.int32(1))  # the raw step
        state, obs, reward, terminated, truncated, info = step(key_step, state, jnp.int32(1))
        np.testing.assert_array_equal(info["final_obs"], expected[1])
        assert reward == expected[2] and terminated == expected[3]
        assert truncated == expected[4]
        if not terminated:
            np.testing.assert_array_equal(obs, expected[1])
            assert state.time == t
            continue
        # The pole fell: the final observation is past the threshold, and the returned
        # state/obs are a fresh episode.
        assert abs(float(info["final_obs"][2])) > raw.theta_threshold_radians
        assert state.time == 0
        np.testing.assert_array_equal(obs, np.array(to_gym(state), np.float32))
        assert np.all(np.abs(np.asarray(obs)) <= 0.05)
        assert not np.array_equal(obs, info["final_obs"])
        break
    else:
        raise AssertionError("pushing right never toppled the pole")


def test_auto_reset_on_truncation_in_scan():
    env = envs.make("Pendulum-v1", auto_reset=True, max_episode_steps=3)

    def body(carry, key):
        state = carry
        state, obs, _, terminated, truncated, info = env.step(key, state, jnp.ones(1))
        return state, (state.time, obs, info["final_obs"], terminated, truncated)

    state, _ = env.reset(jax.random.key(4))
    keys = jax.random.split(jax.random.key(5), 7)
    _, (time, obs, final_obs, terminated, truncated) = jax.jit(
        lambda s, k: jax.lax.scan(body, s, k)
    )(state, keys)
    np.testing.assert_array_equal(time, [1, 2, 0, 1, 2, 0, 1])
    np.testing.assert_array_equal(truncated, [0, 0, 1, 0, 0, 1, 0])
    assert not np.any(terminated)
    done = np.asarray(truncated)
    np.testing.assert_array_equal(np.asarray(obs)[~done], np.asarray(final_obs)[~done])
    assert np.all(np.any(np.asarray(obs)[done] != np.asarray(final_obs)[done], axis=-1))


@struct.dataclass
class _CoinState:
    time: jax.Array


class _CoinFlip(envs.Env):
    """Stochastic toy env: every step ends the episode with a random observation."""

    id = "CoinFlip-v0"
    observation_space = gymnasium.spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = gymnasium.spaces.Discrete(1)
    max_episode_steps = 10

    def reset(self, key):
        return _CoinState(time=jnp.int32(0)), jax.random.uniform(key, (1,))

    def step(self, key, state, action):
        obs = jax.random.uniform(key, (1,))
        terminated, truncated = jnp.bool_(True), jnp.bool_(False)
        return _CoinState(time=state.time + 1), obs, jnp.float32(0), terminated, truncated, {}


def test_auto_reset_gives_stochastic_steps_their_own_key():
    env = envs.AutoReset(_CoinFlip())
    assert env.step_uses_key and not _ENVS["CartPole-v1"].step_uses_key
    state, _ = env.reset(jax.random.key(6))
    state, obs, _, terminated, _, info = jax.jit(env.step)(jax.random.key(7), state, 0)
    assert terminated and state.time == 0
    assert obs != info["final_obs"]  # with a shared key both draws would be equal


# ----------------------------------------------------------------------------------------
# Special-cased numerics, against gymnasium's own helpers
# ----------------------------------------------------------------------------------------

_wrap_pi_f64 = jax.jit(_wrap_pi)
_angle_normalize_f64 = jax.jit(_angle_normalize)


@settings(max_examples=300, deadline=None)
@given(st.floats(-10 * math.pi, 10 * math.pi))
def test_wrap_pi_is_gymnasium_wrap_bit_for_bit(x: float):
    with jax.enable_x64(True):
        assert float(_wrap_pi_f64(jnp.float64(x))) == gym_acrobot.wrap(x, -math.pi, math.pi)


@settings(max_examples=300, deadline=None)
@given(st.floats(-1e3, 1e3))
def test_angle_normalize_is_gymnasium_bit_for_bit(x: float):
    with jax.enable_x64(True):
        assert float(_angle_normalize_f64(jnp.float64(x))) == gym_pendulum.angle_normalize(x)


# ----------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------


def test_registry_lists_the_classic_control_ids():
    assert envs.registered_ids() == sorted(ENV_IDS)
    for env_id in ENV_IDS:
        assert isinstance(envs.make(env_id), envs.REGISTRY[env_id])
    wrapped = envs.make("CartPole-v1", auto_reset=True)
    assert isinstance(wrapped, envs.AutoReset) and wrapped.unwrapped.id == "CartPole-v1"
    assert envs.make("MountainCar-v0", max_episode_steps=7).max_episode_steps == 7


def test_unknown_id_suggests_close_names():
    with pytest.raises(envs.UnknownEnvError) as excinfo:
        envs.make("CartPol-v1")
    message = str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)
    assert "'CartPol-v1'" in message and "did you mean: CartPole-v1?" in message
    assert "\n" not in message and "Acrobot-v1" in message


def test_unknown_id_without_close_names_lists_known_ids():
    with pytest.raises(envs.UnknownEnvError, match=r"unknown env id 'Hopper-v4' \(known: "):
        envs.make("Hopper-v4")


@pytest.mark.slow
@pytest.mark.parametrize("env_id, kind", [("gym:CartPole-v1", "gym"), ("brax:inverted_pendulum", "brax")])
def test_backend_prefixes_dispatch_to_their_adapters(env_id: str, kind: str):
    """``gym:`` / ``brax:`` ids make adapters (tested in test_host_actors.py / test_brax.py)."""
    env = envs.make(env_id)
    assert env.kind == kind and env.id == env_id

"""DQN: targets worked by hand, the replay buffer, config errors and a short run through the CLI."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rlaccel.agents.dqn import losses
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlaccel import cli, replay


def test_double_dqn_targets_by_hand() -> None:
    reward = jnp.array([1.0, 0.5, 2.0])
    terminated = jnp.array([False, False, True])
    # Online net prefers action 1, 0, 1; the target net values those actions at 3, 5, 7.
    next_q_online = jnp.array([[0.0, 1.0], [2.0, 1.0], [0.0, 9.0]])
    next_q_target = jnp.array([[10.0, 3.0], [5.0, 8.0], [1.0, 7.0]])
    double = losses.q_targets(reward, terminated, next_q_online, next_q_target, gamma=0.5, double_q=True)
    # 1 + 0.5 * 3 = 2.5 ; 0.5 + 0.5 * 5 = 3.0 ; terminated: 2.0
    np.testing.assert_allclose(np.asarray(double), [2.5, 3.0, 2.0])
    vanilla = losses.q_targets(reward, terminated, next_q_online, next_q_target, gamma=0.5, double_q=False)
    # max of the target net: 1 + 0.5 * 10 = 6 ; 0.5 + 0.5 * 8 = 4.5 ; 2.0
    np.testing.assert_allclose(np.asarray(vanilla), [6.0, 4.5, 2.0])


def test_n_step_returns_by_hand() -> None:
    # Three runs of n = 3 steps, gamma = 0.5: no episode end; a termination at step 1;
    # a truncation at step 0 (bootstraps from that step's final observation).
    reward = jnp.array([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0], [1.0, 2.0, 4.0]])
    terminated = jnp.array([[False, False, False], [False, True, False], [False, False, False]])
    truncated = jnp.array([[False, False, False], [False, False, False], [True, False, False]])
    ret, discount, term_last, last = losses.n_step_returns(reward, terminated, truncated, 0.5)
    # 1 + 0.5 * 2 + 0.25 * 4 = 3 ; 1 + 0.5 * 2 = 2 (stops at the termination) ; 1
    np.testing.assert_allclose(np.asarray(ret), [3.0, 2.0, 1.0])
    np.testing.assert_allclose(np.asarray(discount), [0.125, 0.25, 0.5])
    np.testing.assert_array_equal(np.asarray(term_last), [False, True, False])
    np.testing.assert_array_equal(np.asarray(last), [2, 1, 0])
    # Targets: bootstrap value 10 where allowed -> 3 + 1.25 ; 2 (terminated) ; 1 + 5
    q = jnp.full((3, 2), 10.0)
    np.testing.assert_allclose(np.asarray(losses.q_targets(ret, term_last, q, q, discount)), [4.25, 2.0, 6.0])
    # n = 1 is the one-step target.
    r1, d1, t1, _ = losses.n_step_returns(reward[:, :1], terminated[:, :1], truncated[:, :1], 0.5)
    np.testing.assert_allclose(np.asarray(r1), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(np.asarray(d1), [0.5, 0.5, 0.5])


def test_replay_sequences_follow_one_env_and_never_pass_the_newest_item() -> None:
    # 2 envs, one row of 2 items per step; item value = 10 * step + env. Capacity 7 wraps.
    state = replay.init({"x": jnp.zeros((), jnp.int32)}, capacity=7)
    for step in range(6):
        state = replay.add(state, {"x": jnp.array([10 * step, 10 * step + 1])})
    runs = np.asarray(replay.sample_sequences(state, jax.random.PRNGKey(0), 512, length=3, stride=2)["x"])
    assert runs.shape == (512, 3)
    np.testing.assert_array_equal(runs[:, 1] - runs[:, 0], 10)  # the same env, one step later
    np.testing.assert_array_equal(runs[:, 2] - runs[:, 1], 10)
    # The buffer holds the last 7 items (21, 30, 31, 40, 41, 50, 51): a run must start at
    # least two rows before the newest, so only 21, 30 and 31 can start one.
    assert set(runs[:, 0].tolist()) == {21, 30, 31}


def test_huber_by_hand() -> None:
    x = jnp.array([0.5, -2.0, 3.0])
    # 0.5 * 0.25 ; 1 * (2 - 0.5) ; 1 * (3 - 0.5)
    np.testing.assert_allclose(np.asarray(losses.huber(x)), [0.125, 1.5, 2.5])
    np.testing.assert_allclose(float(losses.td_loss(x, "mse")), np.mean(np.asarray(x) ** 2), rtol=1e-6)  # (0.25 + 4 + 9) / 3


def test_replay_wraps_around_and_samples_only_valid_items() -> None:
    state = replay.init({"x": jnp.zeros((), jnp.int32)}, capacity=5)
    state = replay.add(state, {"x": jnp.array([1, 2, 3])})
    assert int(state.size) == 3 and int(state.position) == 3
    drawn = replay.sample(state, jax.random.PRNGKey(0), 256)["x"]
    assert set(np.asarray(drawn).tolist()) == {1, 2, 3}  # never an empty slot
    state = replay.add(state, {"x": jnp.array([4, 5, 6, 7])})
    assert int(state.size) == 5 and int(state.position) == 2
    # Slots 0 and 1 were overwritten by 6 and 7; the oldest items (1, 2) are gone.
    np.testing.assert_array_equal(np.asarray(state.data["x"]), [6, 7, 3, 4, 5])
    drawn = replay.sample(state, jax.random.PRNGKey(1), 512)["x"]
    assert set(np.asarray(drawn).tolist()) == {3, 4, 5, 6, 7}


def test_dqn_on_continuous_actions_is_a_config_error(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    rc = cli.main(["train", "--config", "configs/dqn_cartpole.yaml", "--set", "env=Pendulum-v1", "--run-dir", str(run_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("error: algo: dqn needs a discrete action space") and "Pendulum-v1" in err[0]
    assert not run_dir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_short_dqn_run_logs_sb3_tags(tmp_path, precision: str) -> None:
    run_dir = tmp_path / precision
    rc = cli.main(
        [
            "train", "--config", "configs/dqn_cartpole.yaml", "--run-dir", str(run_dir), "--no-progress",
            "--set", "total_timesteps=3000", "--set", "dqn.learning_starts=1000", "--set", "logging.log_interval=100", "--set", "logging.log_every=7",
            "--set", f"placement.actor.precision={precision}", "--set", "eval.freq=0",  # evaluation: tests/test_eval.py
            *(["--set", "logging.probe_seconds=null"] if precision == "fp32" else []),  # probes off
        ]
    )  # fmt: skip
    assert rc == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 3000 and summary["config"]["algo"] == "dqn"
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"rollout/exploration_rate", "train/loss", "train/q_mean", "rollout/ep_rew_mean", "time/fps"} <= tags
    if precision == "int8":
        assert {"quant/action_agreement", "quant/logit_mae", "actor/decision_latency_us_p50", "time/actor_sps"} <= tags
    else:  # logging.probe_seconds: null
        assert not any(t.startswith(("actor/decision_latency", "quant/")) or t in ("time/actor_sps", "time/learner_sps") for t in tags), tags
        assert "time/actor_sps" not in summary and "actor/decision_latency_us_p50" not in summary
    # Per-update metrics every 7th update and at each chunk's end (100 updates of 10 env steps).
    assert [e.step for e in events.Scalars("rollout/exploration_rate")] == [10 * u for u in range(1, 301) if u % 7 == 0 or u % 100 == 0]
    epsilon = [e.value for e in events.Scalars("rollout/exploration_rate")]
    assert epsilon[0] > epsilon[-1]  # the schedule decays
    losses_logged = [e.value for e in events.Scalars("train/loss")]
    assert losses_logged and all(np.isfinite(losses_logged))  # logged only once learning started

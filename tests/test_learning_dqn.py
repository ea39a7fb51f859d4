"""DQN learns CartPole-v1 (``configs/dqn_cartpole.yaml``), judged by deterministic evaluation
as the RL Zoo's benchmark judges it; then seed 0's int8 policy on TFLite Micro's interpreter.
Its own module so that pytest-xdist's ``--dist loadscope`` runs it beside the PPO learning
tests (``tests/test_learning.py``), not after them.
"""

from __future__ import annotations

import numpy as np
import pytest
from learned import DQN_SEEDS, ENV_IDS, export_seed0, tflite_micro_heads, train_dqn, trajectories

from rlaccel.deploy import load_policy

pytestmark = [pytest.mark.slow, pytest.mark.optimized]  # learns: XLA's default effort, as users run


def test_dqn_cartpole_eval_return() -> None:
    """DQN, PureJaxRL's configuration with a 50k buffer, 500k steps, ``DQN_SEEDS`` seeds
    vmapped, int8 actors, evaluated as ``rlaccel train`` evaluates it
    (``configs/dqn_cartpole.yaml``'s ``eval:``: every 20k env steps, 10 greedy episodes of the
    int8 policy and of its fp32 source, the program of ``rlaccel.eval_episodes`` vmapped over
    the seeds), judged like the RL Zoo's benchmark.

    DQN's greedy policy on CartPole swings between evaluations, and which seed lands where
    depends on the CPU's float rounding (AVX2 and AVX-512 sum the same matmuls in different
    orders, and the runs part ways). So the claim is over 6 seeds: the best int8 evaluation
    (what ``best/`` keeps) reaches 475 on 5, the last ones (``eval_return``) average 450 or
    more, and the last is within 10 % of the same network's fp32 return on 5. Measured on an
    AVX2 EPYC: with the 10k replay buffer PureJaxRL uses, last 394 / 294 / 500 / 284 / 500 /
    438 (mean 402); with the config's 50k, 457 / 500 / 500 / 500 / 464 / 440 (mean 477).
    The training-time ``rollout/ep_rew_mean`` includes 5 % random actions.
    """
    _, _, _, history = train_dqn()
    last, best = history[-1], np.max([h["int8"] for h in history], axis=0)
    evals = np.asarray([h["int8"] for h in history]).T  # [seeds, evaluations]
    print(f"DQN eval_return (int8) per seed {last['int8']}, fp32 {last['fp32']}, best {best}")
    assert np.sum(best >= 475) >= DQN_SEEDS - 1, evals
    assert last["int8"].mean() >= 450, (last, evals)
    assert np.sum(last["int8"] >= 0.9 * last["fp32"]) >= DQN_SEEDS - 1, last


def test_tflite_micro_is_bit_identical_on_the_policys_own_trajectories(tmp_path) -> None:
    """Seed 0, exported: TFLite Micro's heads equal the numpy reference's on >= 10k
    observations of the policy's own greedy CartPole episodes."""
    run_dir = export_seed0("dqn", tmp_path)
    ref = load_policy(run_dir / "policy.rlpolicy", "numpy-int8")
    obs = trajectories(ref, ENV_IDS["dqn"], 10_000)
    np.testing.assert_array_equal(tflite_micro_heads(run_dir / "policy_int8.tflite", obs), ref.head(obs))

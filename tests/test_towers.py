"""PPO's policy and value towers on two CPU devices (``placement.learner.towers``,
``agents/ppo/towers.py``), on the two CPU devices ``tests/conftest.py`` asks XLA for.

* One update with the towers split equals the one-device update: parameters, Adam's moments
  and every logged metric, Gaussian (with ``log_std``, a 6-wide head the value tower is padded
  to) and categorical policies.
* A host-actor run with the towers split writes the usual checkpoint: a run on one device
  resumes from it.
* Where the split cannot apply, ``split`` is one line naming the key (exit 2 from the CLI);
  ``auto`` splits only the towers it was measured to pay for.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_helpers import run_main, set_args
from gymnasium import spaces
from jax.sharding import NamedSharding, PartitionSpec

from rlaccel import checkpoint, compile_cache, placement
from rlaccel import config as config_lib
from rlaccel.agents.ppo import towers, train
from rlaccel.agents.ppo.actor import ActorExtras
from rlaccel.agents.ppo.config import PPOConfig
from rlaccel.placement import PlacementError
from rlaccel.rollout import Transition
from rlaccel.schema import PolicyKwargs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GYM_CARTPOLE = os.path.join(REPO, "configs", "ppo_gym_cartpole.yaml")
WIDE = ["ppo.policy_kwargs.net_arch=[256, 256]"]


class _Env:
    def __init__(self, action_space: spaces.Space):
        self.observation_space = spaces.Box(-np.inf, np.inf, (5,), np.float32)
        self.action_space = action_space


def _rollout(action_space: spaces.Space, steps: int, rng: np.random.Generator) -> Transition:
    discrete = isinstance(action_space, spaces.Discrete)
    action = rng.integers(0, action_space.n, (steps, 1)) if discrete else rng.normal(size=(steps, 1, action_space.shape[0]))
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return Transition(
        obs=f32(rng.normal(size=(steps, 1, 5))), action=jnp.asarray(action, jnp.int32 if discrete else jnp.float32), reward=f32(rng.normal(size=(steps, 1))),
        terminated=jnp.asarray(rng.random((steps, 1)) < 0.02), truncated=jnp.zeros((steps, 1), bool), next_obs=f32(rng.normal(size=(steps, 1, 5))),
        extras=ActorExtras(log_prob=f32(rng.normal(size=(steps, 1)) - 3.0)),
    )  # fmt: skip


@pytest.mark.parametrize("action_space", [spaces.Box(-1, 1, (6,), np.float32), spaces.Discrete(3)], ids=["gaussian", "categorical"])
def test_split_update_equals_the_one_device_update(action_space):
    """Both towers' gradients, the global-norm clip over both (``max_grad_norm`` small enough
    that it clips) and Adam: the same numbers to float rounding, after two updates."""
    cfg = PPOConfig(
        n_envs=1, n_steps=64, batch_size=32, n_epochs=2, learning_rate=1e-3, normalize=True, max_grad_norm=0.1, ent_coef=0.01, value_loss="mse",
        policy_kwargs=PolicyKwargs(net_arch={"pi": [256, 256], "vf": [256, 256]}, activation_fn="relu", ortho_init=False),
    )  # fmt: skip
    devices = tuple(jax.devices("cpu")[:2])
    env = _Env(action_space)
    one, split = train.make_agent(cfg, env, 10), train.make_agent(cfg, env, 10, tower_devices=devices)
    both = NamedSharding(towers.mesh(devices), PartitionSpec())
    rng = np.random.default_rng(0)
    state = one.init(jax.random.PRNGKey(0))
    a, b = state, jax.device_put(state, both)
    update_one, update_split = compile_cache.jit(one.update), compile_cache.jit(split.update)
    for i in range(2):
        traj, key = _rollout(action_space, cfg.n_steps, rng), jax.random.PRNGKey(i)
        a, metrics_one = update_one(a, traj, key)
        b, metrics_split = update_split(b, jax.device_put(traj, both), key)
        assert set(metrics_one) == set(metrics_split)
        for name in metrics_one:
            np.testing.assert_allclose(float(metrics_split[name]), float(metrics_one[name]), rtol=2e-5, atol=1e-7, err_msg=name)
    assert float(metrics_one["train/grad_norm"]) > cfg.max_grad_norm  # the clip acted
    assert jax.tree.structure(a) == jax.tree.structure(b)  # PPOState keeps its layout
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=2e-5, atol=1e-7), (a.params, a.opt_state), (b.params, b.opt_state))
    assert {d.id for d in b.params["value"]["Dense_0"]["kernel"].devices()} == {0, 1}


@pytest.mark.slow
def test_a_split_run_checkpoints_the_usual_state_and_resumes_on_one_device(tmp_path):
    """gymnasium's Pendulum-v1 through host actors, 256-256 towers: ``auto`` splits them; the
    checkpoint it writes restores into a one-device template and a ``together`` run resumes it."""
    from rlaccel import api

    overrides = [
        "env=gym:Pendulum-v1", *WIDE, "ppo.n_envs=1", "ppo.n_steps=64", "ppo.batch_size=32", "ppo.n_epochs=1", "ppo.normalize=true",
        "actors.max_policy_lag=0", "eval.freq=0", "logging.log_interval=1", "logging.progress=false",
    ]  # fmt: skip
    config = config_lib.load(GYM_CARTPOLE, overrides)
    assert placement.towers_wanted(config) and len(placement.tower_devices(config)) == 2
    run_dir = tmp_path / "run"
    first = api.train(config, run_dir=run_dir, stop_at=2).summary
    assert first["status"] == "stopped" and first["updates"] == 2
    assert "learner cpu:0 (policy) + cpu:1 (value) fp32" in first["placement"]
    together = config_lib.load(GYM_CARTPOLE, [*overrides, "placement.learner.towers=together"])
    assert placement.tower_devices(together) == ()
    from rlaccel.sources.host import HostSource

    template = HostSource(together, placement.resolve(together.placement)).initial_state(jax.random.PRNGKey(0))
    at_2, _ = checkpoint.restore(checkpoint.latest(run_dir / "checkpoints"), template)
    assert int(at_2.agent.step) == 2
    second = api.train(together, run_dir=run_dir, resume=True, stop_at=3).summary
    assert second["updates"] == 3 and "learner cpu:0 fp32" in second["placement"]
    at_3, _ = checkpoint.restore(checkpoint.latest(run_dir / "checkpoints"), template)
    adam_counts = {int(x) for x in jax.tree.leaves(at_3.agent.opt_state) if jnp.ndim(x) == 0}
    assert adam_counts == {3 * (64 // 32)}  # Adam's step count carried on from the split run's


DQN_GYM_CARTPOLE = os.path.join(REPO, "configs", "dqn_gym_cartpole.yaml")


@pytest.mark.parametrize(
    "path, overrides, why",
    [
        (GYM_CARTPOLE, ["ppo.policy_kwargs.net_arch=[64, 64]"], "narrower than 256"),
        (GYM_CARTPOLE, ["ppo.policy_kwargs.net_arch={pi: [256, 256], vf: [256, 128]}"], "the towers differ"),
        (GYM_CARTPOLE, [*WIDE, "env=gym:Pendulum-v1", "ppo.use_sde=true"], "gSDE"),
        (GYM_CARTPOLE, [*WIDE, "env=CartPole-v1"], "host actors"),
        (DQN_GYM_CARTPOLE, [], "no separate policy and value towers"),
    ],
    ids=["narrow", "different", "gsde", "jax-env", "dqn"],
)
def test_split_where_it_cannot_apply_is_one_line_naming_the_key(path, overrides, why):
    with pytest.raises(PlacementError, match="placement.learner.towers: split") as err:
        placement.towers_wanted(config_lib.load(path, [*overrides, "placement.learner.towers=split"]))
    assert why in str(err.value) and "\n" not in str(err.value)
    auto = config_lib.load(path, overrides)
    assert not placement.towers_wanted(auto) and placement.tower_devices(auto) == ()  # auto: quietly together


def test_auto_splits_wide_equal_towers_and_the_cli_refuses_split_with_exit_2(tmp_path):
    assert placement.tower_devices(config_lib.load(GYM_CARTPOLE, WIDE)) == tuple(jax.devices("cpu")[:2])
    assert placement.tower_devices(config_lib.load(GYM_CARTPOLE, [*WIDE, "placement.learner.device=cpu:1"])) == tuple(jax.devices("cpu")[1::-1])
    rc, _, err = run_main(["--config", GYM_CARTPOLE, *set_args(["placement.learner.towers=split"]), "--run-dir", str(tmp_path / "run")])
    assert rc == 2 and err.count("\n") == 1 and "placement.learner.towers: split" in err
    assert not (tmp_path / "run").exists()

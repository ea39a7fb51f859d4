"""The algorithm registry: a third algorithm defined only in this file trains through the
public API, the CLI and the sweep machinery without touching anything outside its definition.

The toy is REINFORCE (Williams 1992) with a return-to-go baseline of the batch mean, on
rlaccel's JAX CartPole: small enough to read here, real enough that learning can fail.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from cli_helpers import run_main

import rlaccel
from rlaccel import registry
from rlaccel.agent import Agent, AgentSpec
from rlaccel.networks import MLP


@dataclasses.dataclass(frozen=True)
class ReinforceConfig:
    """The toy's section: ``reinforce:`` in a config file."""

    n_envs: int = 16
    n_steps: int = 128
    learning_rate: float = registry.traced_field(1e-2)
    gamma: float = registry.traced_field(0.99)

    @property
    def rollout_size(self) -> int:
        return self.n_envs * self.n_steps


class ToyState(NamedTuple):
    params: Any
    opt_state: Any


class ToyActorParams(NamedTuple):
    policy: Any


def returns_to_go(rewards: jax.Array, done: jax.Array, gamma: float) -> jax.Array:
    """``[T, B]`` discounted returns within each episode (cut at ``done``; the rollout's end
    is treated as an episode end: REINFORCE does not bootstrap)."""

    def back(carry: jax.Array, x: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        r, d = x
        g = r + gamma * carry * (1.0 - d)
        return g, g

    _, g = jax.lax.scan(back, jnp.zeros_like(rewards[0]), (rewards, done.astype(jnp.float32)), reverse=True)
    return g


def make(config: Any, env: Any) -> AgentSpec:
    cfg: ReinforceConfig = config.agent
    net = MLP(hidden=(32,), out_dim=int(env.action_space.n), activation="tanh", out_gain=0.01)
    opt = optax.adam(cfg.learning_rate)

    def init(key: jax.Array) -> ToyState:
        params = net.init(key, jnp.zeros((1, env.obs_dim)))["params"]
        return ToyState(params=params, opt_state=opt.init(params))

    def head(ap: ToyActorParams, obs: jax.Array) -> jax.Array:
        return net.apply({"params": ap.policy}, obs)

    def act(ap: ToyActorParams, obs: jax.Array, noise: jax.Array) -> tuple[jax.Array, tuple]:
        return jnp.argmax(head(ap, obs) + noise, axis=-1).astype(jnp.int32), ()

    def update(state: ToyState, traj: Any, key: jax.Array) -> tuple[ToyState, dict[str, jax.Array]]:
        g = returns_to_go(traj.reward, traj.terminated | traj.truncated, cfg.gamma)
        adv = (g - g.mean()) / (g.std() + 1e-8)

        def loss_fn(params: Any) -> jax.Array:
            logp = jax.nn.log_softmax(net.apply({"params": params}, traj.obs))
            taken = jnp.take_along_axis(logp, traj.action[..., None], axis=-1)[..., 0]
            return -jnp.mean(taken * adv)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = opt.update(grads, state.opt_state)
        params = optax.apply_updates(state.params, updates)
        metrics = {"train/loss": loss, "train/grad_norm": optax.tree.norm(grads), "train/param_max_abs": optax.tree.norm(params, ord="inf")}
        return ToyState(params=params, opt_state=opt_state), metrics

    agent = Agent(
        init=init,
        actor_params=lambda state, precision: ToyActorParams(policy=state.params),
        act=act,
        noise=lambda key, n: jax.random.gumbel(key, (n, int(env.action_space.n))),
        head=head,
        update=update,
        discrete=True,
        calibrate=lambda state, obs: state,
    )
    return AgentSpec(agent, cfg.n_envs, cfg.n_steps, config.total_timesteps // cfg.rollout_size)


TOY = registry.Algorithm(
    name="reinforce",
    config=ReinforceConfig,
    make=make,
    numpy_actor=lambda *a: None,
    export=lambda *a: registry.ExportSpec(head="logits"),
    discrete_only=True,
    description="REINFORCE, defined in tests/test_registry.py",
)

CONFIG = {
    "env": "CartPole-v1",
    "algo": "reinforce",
    "total_timesteps": 16 * 128 * 60,
    "placement": {"actor": {"precision": "fp32"}},
    "logging": {"log_interval": 10, "progress": False, "probe_seconds": 0, "checkpoint_interval": 30},
    "reinforce": {"learning_rate": 1e-2},
}


@pytest.fixture
def toy():
    registry.register(TOY, replace=True)
    yield TOY
    registry.unregister("reinforce")


def test_returns_to_go_by_hand():
    r = jnp.array([[1.0], [1.0], [1.0]])
    d = jnp.array([[False], [True], [False]])
    np.testing.assert_allclose(returns_to_go(r, d, 0.5)[:, 0], [1.5, 1.0, 1.0])


def test_unknown_without_registration():
    with pytest.raises(rlaccel.config.ConfigError, match="algo: unknown algorithm 'reinforce'"):
        rlaccel.api.load_config(CONFIG)


@pytest.mark.slow
def test_toy_algorithm_trains_through_the_public_api(toy, tmp_path):
    run = rlaccel.train(CONFIG, run_dir=tmp_path / "api", progress=False)
    s = run.summary
    assert s["status"] == "completed" and s["updates"] == 60 and s["config"]["algo"] == "reinforce"
    assert s["config"]["reinforce"]["learning_rate"] == 1e-2
    # A uniformly random CartPole policy averages ~22; REINFORCE must have learned something.
    assert s["final_return"] > 60, s["final_return"]
    assert (tmp_path / "api" / "checkpoints").is_dir() and json.loads((tmp_path / "api" / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_toy_algorithm_through_the_cli_check_resume_and_sweep_keys(toy, tmp_path):
    path = tmp_path / "reinforce.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "total_timesteps": 16 * 128 * 4, "logging": {**CONFIG["logging"], "checkpoint_interval": 2}}))
    rc, out, err = run_main(["train", "--config", str(path), "--check"])
    assert rc == 0, err
    assert yaml.safe_load(out)["reinforce"] == {"n_envs": 16, "n_steps": 128, "learning_rate": 0.01, "gamma": 0.99}
    assert not (tmp_path / "run").exists()
    rc, out, err = run_main(["train", "--config", str(path), "--run-dir", str(tmp_path / "run"), "--set", "reinforce.gamma=0.95"])
    assert rc == 0 and out.startswith("done: 8,192 env steps"), err
    rc, out, err = run_main(["train", "--config", str(path), "--set", "reinforce.gama=0.9"])
    assert rc == 2 and err.strip() == "error: unknown key 'reinforce.gama'; did you mean 'reinforce.gamma'?"
    # Its traced fields are what a sweep vmaps.
    from rlaccel.sweep import grid

    base = rlaccel.api.load_config(path)
    settings = grid.make_settings(base, grid.parse_grid(["reinforce.learning_rate=1e-2,3e-3", "reinforce.n_steps=64,128"]))
    traced, groups = grid.group_settings(settings)
    assert traced == ("reinforce.learning_rate",) and len(groups) == 2


def test_registering_a_taken_name_is_refused(toy):
    with pytest.raises(ValueError, match="already registered"):
        registry.register(dataclasses.replace(TOY, description="another"))
    assert registry.get("reinforce") is TOY and "reinforce" in registry.names()
    assert registry.traced_fields(ReinforceConfig) == ("learning_rate", "gamma")


def test_builtin_algorithms_come_from_entry_points():
    assert {"ppo", "dqn"} <= set(registry.names())
    ppo = registry.get("ppo")
    assert ppo.config.__module__ == "rlaccel.agents.ppo.config" and registry.get("dqn").discrete_only
    assert callable(registry.load(ppo.make))


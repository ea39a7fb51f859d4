"""Learning algorithms, each a set of pure functions (``rlaccel.agent.Agent``).

Every algorithm has the same file roles (Brax's layout): ``config.py`` (hyperparameters),
``networks.py`` (modules and distributions), ``losses.py`` (pure maths),
``train.py`` (the agent's functions and ``make_train``).
"""

from __future__ import annotations

from typing import Any, NamedTuple


class AgentSpec(NamedTuple):
    """An agent and the rollout shape its learner consumes per update."""

    agent: Any  # rlaccel.agent.Agent
    num_envs: int
    num_steps: int  # rollout length per update
    num_updates: int

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.num_steps


def make(config: Any, env: Any) -> AgentSpec:
    """The agent named by ``config.algo`` for ``env`` (imports JAX)."""
    if config.algo == "ppo":
        from rlaccel.agents.ppo import train as ppo

        cfg = config.ppo
        n = ppo.num_updates(cfg, config.total_timesteps)
        calibrate = config.placement.actor.precision == "int8"
        return AgentSpec(ppo.make_agent(cfg, env, n, calibrate=calibrate), cfg.n_envs, cfg.n_steps, n)
    if config.algo == "dqn":
        from rlaccel.agents.dqn import train as dqn

        cfg = config.dqn
        n = dqn.num_updates(cfg, config.total_timesteps)
        calibrate = config.placement.actor.precision == "int8"
        return AgentSpec(dqn.make_agent(cfg, env, config.total_timesteps, n, calibrate=calibrate), cfg.n_envs, cfg.train_freq, n)
    raise ValueError(f"unknown algo {config.algo!r}")

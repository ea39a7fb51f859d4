"""DQN (Mnih et al. 2015) with double-DQN targets and n-step returns, for discrete actions.

Files: ``config.py`` (hyperparameters), ``networks.py`` (the Q-network, epsilon-greedy),
``losses.py`` (targets, TD loss), ``train.py`` (the agent's pure functions), ``actor.py`` (the
numpy actor of host mode and what an export needs; no JAX).
"""

from rlaccel.agents.dqn.config import DQNConfig
from rlaccel.registry import Algorithm

ALGORITHM = Algorithm(
    name="dqn",
    config=DQNConfig,
    make="rlaccel.agents.dqn.train:build",
    numpy_actor="rlaccel.agents.dqn.actor:DQNActor",
    export="rlaccel.agents.dqn.actor:export_spec",
    discrete_only=True,
    description="Deep Q-Network (double-DQN targets, n-step returns)",
)

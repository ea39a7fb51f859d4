"""PPO (Schulman et al. 2017): discrete (categorical) and continuous (Gaussian) policies.

Files: ``config.py`` (hyperparameters), ``networks.py`` (modules, distributions), ``sde.py``
(gSDE, state-dependent exploration), ``losses.py`` (GAE, the clipped loss), ``train.py`` (the
agent's pure functions), ``actor.py`` (the numpy actor of host mode and what an export needs;
no JAX).
"""

from rlaccel.agents.ppo.config import PPOConfig
from rlaccel.registry import Algorithm

ALGORITHM = Algorithm(
    name="ppo",
    config=PPOConfig,
    make="rlaccel.agents.ppo.train:build",
    numpy_actor="rlaccel.agents.ppo.actor:PPOActor",
    export="rlaccel.agents.ppo.actor:export_spec",
    description="Proximal Policy Optimisation (categorical or Gaussian policy)",
)

"""Any registered gymnasium env, stepped on the host by actor threads (``gym:<id>`` ids).

A gymnasium env is stateful Python (or C, for MuJoCo), so it cannot live inside a compiled
rollout: it is described here by a :class:`GymEnv` (id, spaces, time limit) that the host
source (``rlaccel.sources.host``) uses to build each actor's envs (``gym_id``, ``kwargs``),
and a factory for gymnasium vector envs of it::

    env = envs.make("gym:HalfCheetah-v5")
    env.kind                                  # "gym": the driver picks host actors
    venv = env.make_vector(num_envs=8, seed=0)
    obs, info = venv.reset(seed=0)            # float32 [8, obs_dim]

Vector envs auto-reset in gymnasium's ``SAME_STEP`` mode: the observation returned by a step
that ends an episode is the next episode's first one, and the true last observation is in
``info["final_obs"]`` (what bootstrapping on truncation needs), as ``envs.core.AutoReset``.
Observations are cast to float32. Ids may name a module to import first, as gymnasium
allows: ``gym:my_package.envs:MyRobot-v0``.
"""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from .core import Env, UnknownEnvError

PREFIX = "gym"


def is_mujoco(gym_id: str) -> bool:
    """Whether ``gym_id`` is one of gymnasium's own MuJoCo envs (its entry point is under
    ``gymnasium.envs.mujoco``): stepped in C, with the GIL released."""
    spec = gymnasium.registry.get(gym_id)
    entry = spec.entry_point if spec is not None else None
    return isinstance(entry, str) and entry.startswith("gymnasium.envs.mujoco")


class GymEnv:
    """Static description of a gymnasium env, and a factory for its vector envs.

    Attributes:
      id: ``"gym:<gymnasium id>"``.
      gym_id: the gymnasium id.
      kind: ``"gym"``.
      observation_space: ``Box`` float32 ``[obs_dim]``.
      action_space: ``Discrete`` or ``Box``.
      max_episode_steps: the registered time limit (``None`` when there is none).
      mujoco: one of gymnasium's MuJoCo envs (:func:`is_mujoco`).
    """

    kind = "gym"

    def __init__(self, gym_id: str, **kwargs: Any):

        self.gym_id = gym_id
        self.id = f"{PREFIX}:{gym_id}"
        self.kwargs = kwargs
        self.mujoco = is_mujoco(gym_id)
        try:
            probe = gymnasium.make(gym_id, **kwargs)
        except gymnasium.error.Error as e:  # unregistered id, missing dependency, bad version
            known = sorted(gymnasium.registry)
            close = difflib.get_close_matches(gym_id, known, n=3, cutoff=0.6)
            hint = f"; did you mean: {', '.join(f'{PREFIX}:{c}' for c in close)}?" if close else ""
            raise UnknownEnvError(f"gymnasium cannot make {gym_id!r} ({e}){hint}") from None
        try:
            obs_space, act_space = probe.observation_space, probe.action_space
            self.max_episode_steps = probe.spec.max_episode_steps if probe.spec is not None else None
        finally:
            probe.close()
        if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
            raise UnknownEnvError(f"{self.id}: observations must be a flat Box, got {obs_space}")
        if not isinstance(act_space, (spaces.Discrete, spaces.Box)) or (isinstance(act_space, spaces.Box) and len(act_space.shape) != 1):
            raise UnknownEnvError(f"{self.id}: actions must be Discrete or a flat Box, got {act_space}")
        self.observation_space = spaces.Box(obs_space.low.astype(np.float32), obs_space.high.astype(np.float32), dtype=np.float32)
        self.action_space = act_space

    is_discrete = Env.is_discrete
    obs_dim = Env.obs_dim
    num_actions = Env.num_actions
    action_dim = Env.action_dim

    def make_vector(self, num_envs: int, seed: int) -> gymnasium.vector.VectorEnv:
        """A synchronous vector env of ``num_envs`` copies, auto-resetting in the same step.

        Args:
          num_envs: copies stepped together.
          seed: seeds the copies ``seed, seed + 1, ...`` (``reset(seed=...)`` is still up to
            the caller).
        """
        venv = gymnasium.make_vec(
            self.gym_id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": gymnasium.vector.AutoresetMode.SAME_STEP},
            **self.kwargs,
        )
        venv.action_space.seed(seed)
        return venv

    def __repr__(self) -> str:
        return f"GymEnv<{self.gym_id}>"

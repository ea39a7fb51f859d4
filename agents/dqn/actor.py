"""DQN's actor in numpy (host actor threads) and what an exported DQN policy needs. No JAX.

:class:`DQNActor` does what ``train.act`` does: epsilon-greedy on the Q-values, with the
int8 Q-network computed by ``rlaccel.reference.Int8Network`` or, with ``actors.policy: c``, the
C kernel (``rlaccel.deploy.c_kernel``; both bit-exact with the JAX actors' ``rlaccel.quant.apply``)
or the fp32 one in numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlaccel.deploy.c_kernel import CInt8Network, network
from rlaccel.reference import Fp32Network, Int8Network
from rlaccel.registry import ExportSpec

__all__ = ["NOISE_DTYPE", "DQNActor", "export_spec"]

NOISE_DTYPE = np.dtype([("uniform", np.float32), ("action", np.int32)])
"""One actor's exploration noise for one step (``networks.ExplorationNoise`` as a numpy record):
explore where ``uniform < epsilon``, then take ``action``."""


class DQNActor:
    """DQN's actor in numpy: one object per published parameter version.

    ``act`` may be called from several threads at once (the network keeps its buffers per
    thread); each thread needs its own ``np.random.Generator`` for :meth:`noise`.

    Args:
      actor_params: ``train.ActorParams`` with numpy leaves; ``.policy`` is
        ``rlaccel.reference.Int8Tables`` (int8) or the flax fp32 params dict.
      version: the learner update that produced them.
      section: the ``dqn:`` config section (activation).

    Attributes:
      version: as given.
      epsilon: the exploration rate of this version (float32).
      num_actions: size of the discrete action space.
    """

    def __init__(self, actor_params: Any, version: int, section: Any):
        self.version = version
        self.epsilon = np.float32(actor_params.epsilon)
        self.net: CInt8Network | Int8Network | Fp32Network = network(actor_params.policy, section.policy_kwargs.activation)  # raw observations
        self.num_actions = self.net.out_dim

    def head(self, obs: np.ndarray) -> np.ndarray:
        """Raw observations ``[B, obs_dim]`` float32 -> Q-values ``[B, num_actions]`` float32."""
        return self.net.forward(obs)

    def noise(self, rng: np.random.Generator, num_steps: int, num_envs: int) -> np.ndarray:
        """A batch's exploration noise, a :data:`NOISE_DTYPE` record array ``[T, B]``: ``uniform``
        in ``[0, 1)`` and a uniformly drawn ``action``; ``noise[t]`` is what :meth:`act` takes."""
        out = np.empty((num_steps, num_envs), NOISE_DTYPE)
        out["uniform"] = rng.random((num_steps, num_envs), np.float32)
        out["action"] = rng.integers(0, self.num_actions, (num_steps, num_envs), np.int32)
        return out

    def act(self, obs: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, tuple]:
        """Epsilon-greedy actions for ``obs [B, obs_dim]`` with one step's ``noise [B]``.

        Returns:
          ``(action int32 [B], ())``: DQN records nothing for the learner at acting time.
        """
        greedy = np.argmax(self.net.forward(obs), axis=-1).astype(np.int32)
        return np.where(noise["uniform"] < self.epsilon, noise["action"], greedy).astype(np.int32, copy=False), ()


def export_spec(section: Any, fp32_actor_params: Any, agent_state: Any) -> ExportSpec:
    """The registry's ``export``: DQN's policy is its Q-network on raw observations (greedy = argmax)."""
    del section, fp32_actor_params, agent_state
    return ExportSpec(head="q_centered")  # Q - mean over actions (train.centered)

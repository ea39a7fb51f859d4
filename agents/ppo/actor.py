"""PPO's actor in numpy (host actor threads) and what an exported PPO policy needs. No JAX.

:class:`PPOActor` does what ``train.act`` does: normalise, fp32 or int8 head, sample, record
the behaviour log-probability. Its int8 head is ``rlaccel.reference.Int8Network``, bit-exact
with the JAX actors' ``rlaccel.quant.apply``; sampling uses ``networks.sample`` /
``networks.log_prob``'s formulas (log-probabilities agree to float rounding: numpy's exp/log
are not XLA's).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from rlaccel.reference import Fp32Network, Int8Network, Normalizer, network
from rlaccel.registry import ExportSpec

__all__ = ["ActorExtras", "PPOActor", "export_spec"]

_HALF_LOG_2PI = np.float32(0.5 * math.log(2 * math.pi))


class ActorExtras(NamedTuple):
    """Recorded at acting time for the learner (the JAX and the numpy actors record this type)."""

    log_prob: Any  # [B] float32 behaviour log-probability of the sampled action


def _network(actor_params: Any, section: Any) -> Int8Network | Fp32Network:
    """The head network of ``actor_params`` (numpy leaves) with its normaliser folded in."""
    norm = actor_params.obs_norm
    normalizer = None if norm is None else Normalizer(np.asarray(norm.mean, np.float32), np.asarray(norm.inv_std, np.float32))
    return network(actor_params.policy, section.policy_kwargs.activation, normalizer, float(section.normalization.clip_obs))


class PPOActor:
    """PPO's actor in numpy: one object per published parameter version.

    ``act`` may be called from several threads at once (the network keeps its buffers per
    thread); each thread needs its own ``np.random.Generator`` for :meth:`noise`.

    Args:
      actor_params: ``train.ActorParams`` with numpy leaves; ``.policy`` is
        ``rlaccel.reference.Int8Tables`` (int8) or the flax fp32 params dict.
      version: the learner update that produced them.
      section: the ``ppo:`` config section (activation, normaliser clip).

    Attributes:
      version: as given.
      discrete: categorical (True) or Gaussian policy.
      action_dim: number of actions (categorical) or action vector size (Gaussian).
    """

    def __init__(self, actor_params: Any, version: int, section: Any):
        self.version = version
        self.net = _network(actor_params, section)
        self.log_std = None if actor_params.log_std is None else np.asarray(actor_params.log_std, np.float32)
        self.discrete = self.log_std is None
        self.action_dim = self.net.out_dim
        if not self.discrete:
            self._std = np.exp(self.log_std)
            self._inv_std = np.exp(-self.log_std)

    def head(self, obs: np.ndarray) -> np.ndarray:
        """Raw observations ``[B, obs_dim]`` float32 -> logits or Gaussian mean ``[B, A]`` float32."""
        return self.net.forward(obs)

    def noise(self, rng: np.random.Generator, num_steps: int, num_envs: int) -> np.ndarray:
        """A batch's sampling noise ``[T, B, A]`` float32, drawn at once (as ``rollout.draw_noise``):
        Gumbel (categorical: ``argmax(logits + g)`` samples it) or standard normal (Gaussian)."""
        shape = (num_steps, num_envs, self.action_dim)
        if self.discrete:
            return -np.log(-np.log(rng.random(shape, np.float32) + np.float32(1e-20)))
        return rng.standard_normal(shape, np.float32)

    def act(self, obs: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, ActorExtras]:
        """Sample actions for ``obs [B, obs_dim]`` with one step's ``noise [B, A]``.

        Returns:
          ``(action, ActorExtras(log_prob [B] float32))``: ``action`` is int32 ``[B]``
          (Gumbel-max) or float32 ``[B, A]`` (``mean + std * noise``, unclipped: the env
          boundary clips, so the stored action keeps its exact log-probability).
        """
        head = self.net.forward(obs)
        if self.discrete:
            action = np.argmax(head + noise, axis=-1).astype(np.int32)
            shifted = head - head.max(axis=-1, keepdims=True)  # log_softmax as jax.nn computes it
            logp = np.take_along_axis(shifted, action[:, None].astype(np.intp), axis=-1)[:, 0] - np.log(np.exp(shifted).sum(axis=-1))
            return action, ActorExtras(log_prob=logp.astype(np.float32))
        action = head + self._std * noise
        z = (action - head) * self._inv_std
        logp = np.sum(-0.5 * np.square(z) - self.log_std - _HALF_LOG_2PI, axis=-1, dtype=np.float32)
        return action.astype(np.float32, copy=False), ActorExtras(log_prob=logp)


def export_spec(section: Any, fp32_actor_params: Any, agent_state: Any) -> ExportSpec:
    """The registry's ``export``: head kind, observation normaliser and log-std of a PPO policy.

    Args:
      section: the ``ppo:`` config section.
      fp32_actor_params: ``train.ActorParams`` of the fp32 policy (numpy or JAX leaves).
      agent_state: the learner's state (not needed: the actor parameters carry everything).
    """
    del agent_state
    norm, log_std = fp32_actor_params.obs_norm, fp32_actor_params.log_std
    return ExportSpec(
        head="logits" if log_std is None else "gaussian_mean",
        obs_mean=None if norm is None else np.asarray(norm.mean, np.float32),
        obs_inv_std=None if norm is None else np.asarray(norm.inv_std, np.float32),
        clip_obs=float(section.normalization.clip_obs),
        log_std=None if log_std is None else np.asarray(log_std, np.float32),
    )

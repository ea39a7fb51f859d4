"""PPO's actor in numpy (host actor threads) and what an exported PPO policy needs. No JAX.

:class:`PPOActor` does what ``acting.act`` does: normalise, fp32 or int8 head, sample, record
the behaviour log-probability. Its int8 head is ``rlaccel.reference.Int8Network`` or, with
``actors.policy: c``, the C kernel (``rlaccel.deploy.c_kernel``), both bit-exact with the JAX
actors' ``rlaccel.quant.apply``; sampling uses ``networks.sample`` /
``networks.log_prob``'s formulas, or with gSDE ``sde.py``'s (the latent features from the same
network, int8 ones dequantised; the ``latent @ exploration matrix`` product in fp32 here, on
the host). Log-probabilities agree to float rounding: numpy's exp/log are not XLA's.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from rlaccel.deploy.c_kernel import CInt8Network, network
from rlaccel.reference import Fp32Network, Int8Network, Normalizer
from rlaccel.registry import ExportSpec
from rlaccel.sources.host.stepping import StepwiseRollout

__all__ = ["ActorExtras", "PPOActor", "export_spec"]

_HALF_LOG_2PI = np.float32(0.5 * math.log(2 * math.pi))
SDE_EPSILON = np.float32(1e-6)  # sde.EPSILON (SB3's), added to the variance


class ActorExtras(NamedTuple):
    """Recorded at acting time for the learner (the JAX and the numpy actors record this type)."""

    log_prob: Any  # [B] float32 behaviour log-probability of the sampled action


def _network(actor_params: Any, section: Any) -> CInt8Network | Int8Network | Fp32Network:
    """The head network of ``actor_params`` (numpy leaves) with its normaliser folded in."""
    norm = actor_params.obs_norm
    normalizer = None if norm is None else Normalizer(np.asarray(norm.mean, np.float32), np.asarray(norm.inv_std, np.float32))
    return network(actor_params.policy, section.policy_kwargs.activation, normalizer, float(section.normalization.clip_obs))


class BlockNoise:
    """A batch's gSDE exploration matrices, indexed by step: ``noise[t]`` is the ``[B, h, A]``
    standard normal matrices step ``t`` acts with, ``blocks[t // sample_freq]`` (``blocks[0]``
    throughout when ``sample_freq <= 0``): ``sde.rollout_noise`` without repeating them."""

    def __init__(self, blocks: np.ndarray, num_steps: int, sample_freq: int):
        self.blocks, self.num_steps, self.sample_freq = blocks, num_steps, sample_freq

    def __len__(self) -> int:
        return self.num_steps

    def __getitem__(self, t: int) -> np.ndarray:
        if not 0 <= t < self.num_steps:
            raise IndexError(t)
        return self.blocks[t // self.sample_freq if self.sample_freq > 0 else 0]


class PPOActor:
    """PPO's actor in numpy: one object per published parameter version.

    ``act`` may be called from several threads at once (the network keeps its buffers per
    thread); each thread needs its own ``np.random.Generator`` for :meth:`noise`.

    Args:
      actor_params: ``acting.ActorParams`` with numpy leaves; ``.policy`` is
        ``rlaccel.reference.Int8Tables`` (int8) or the flax fp32 params dict. A 2-D
        ``log_std`` (``[latent_dim, A or 1]``) means gSDE.
      version: the learner update that produced them.
      section: the ``ppo:`` config section (activation, normaliser clip, ``sde_sample_freq``).

    Attributes:
      version: as given.
      discrete: categorical (True) or Gaussian policy.
      sde: gSDE exploration (state-dependent noise).
      action_dim: number of actions (categorical) or action vector size (Gaussian).
    """

    def __init__(self, actor_params: Any, version: int, section: Any):
        self.version = version
        self.net = _network(actor_params, section)
        self.log_std = None if actor_params.log_std is None else np.asarray(actor_params.log_std, np.float32)
        self.discrete = self.log_std is None
        self.sde = not self.discrete and self.log_std.ndim == 2
        self.action_dim = self.net.out_dim
        if self.sde:
            self.sample_freq = int(getattr(section, "sde_sample_freq", -1))
            self.latent_dim = self.log_std.shape[0]
            self._std = np.broadcast_to(np.exp(self.log_std), (self.latent_dim, self.action_dim))  # sde.std_matrix
            self._var = np.square(self._std)
        elif not self.discrete:
            self._std = np.exp(self.log_std)
            self._inv_std = np.exp(-self.log_std)

    def head(self, obs: np.ndarray) -> np.ndarray:
        """Raw observations ``[B, obs_dim]`` float32 -> logits or Gaussian mean ``[B, A]`` float32."""
        return self.net.forward(obs)

    def noise(self, rng: np.random.Generator, num_steps: int, num_envs: int) -> Any:
        """A batch's sampling noise, drawn at once (as ``rollout.draw_noise``), indexed by step:
        Gumbel (categorical: ``argmax(logits + g)`` samples it) or standard normal (Gaussian)
        ``[T, B, A]`` float32; with gSDE a :class:`BlockNoise` of ``[B, latent_dim, A]``
        standard normal matrices, fresh every ``sde_sample_freq`` steps (``sde.rollout_noise``)."""
        if self.sde:
            blocks = -(-num_steps // self.sample_freq) if self.sample_freq > 0 else 1
            return BlockNoise(rng.standard_normal((blocks, num_envs, self.latent_dim, self.action_dim), np.float32), num_steps, self.sample_freq)
        shape = (num_steps, num_envs, self.action_dim)
        if self.discrete:
            return -np.log(-np.log(rng.random(shape, np.float32) + np.float32(1e-20)))
        return rng.standard_normal(shape, np.float32)

    def act(self, obs: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, ActorExtras]:
        """Sample actions for ``obs [B, obs_dim]`` with one step's ``noise`` (``[B, A]``; gSDE: ``[B, latent_dim, A]``).

        Returns:
          ``(action, ActorExtras(log_prob [B] float32))``: ``action`` is int32 ``[B]``
          (Gumbel-max) or float32 ``[B, A]`` (``mean + std * noise``, or with gSDE
          ``mean + latent @ (std * noise)``; unclipped: the env boundary clips, so the stored
          action keeps its exact log-probability).
        """
        if self.sde:
            return self._act_sde(obs, noise)
        head = self.net.forward(obs)
        action = self.sample(head, noise, np.empty(head.shape[:-1], np.int32) if self.discrete else np.empty_like(head))
        return action, ActorExtras(log_prob=self.log_prob(head, action))

    def sample(self, head: np.ndarray, noise: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The action for ``head [..., A]`` and its ``noise`` (not gSDE), written into ``out``
        (int32 ``[...]`` or float32 ``[..., A]``): Gumbel-max ``argmax(head + noise)``, or
        ``head + std * noise``. Returns ``out``."""
        if self.discrete:
            out[...] = np.argmax(head + noise, axis=-1)
        else:
            np.add(head, np.multiply(self._std, noise, out=out), out=out)
        return out

    def log_prob(self, head: np.ndarray, action: np.ndarray) -> np.ndarray:
        """The behaviour log-probability ``[...]`` float32 of ``action`` (``[...]`` int32 or
        ``[..., A]`` float32) under the head ``[..., A]`` (not gSDE). Every row is computed
        alone (elementwise, then a reduction over the last axis), so a batch's ``[T, b]``
        gives the bits of ``T`` per-step calls."""
        if self.discrete:
            shifted = head - head.max(axis=-1, keepdims=True)  # log_softmax as jax.nn computes it
            logp = np.take_along_axis(shifted, action[..., None].astype(np.intp), axis=-1)[..., 0] - np.log(np.exp(shifted).sum(axis=-1))
            return logp.astype(np.float32)
        z = (action - head) * self._inv_std
        return np.sum(-0.5 * np.square(z) - self.log_std - _HALF_LOG_2PI, axis=-1, dtype=np.float32)

    def rollout(self, rng: np.random.Generator, num_steps: int, num_envs: int) -> Any:
        """A batch's acting (``rlaccel.sources.host.stepping``'s rollout protocol): heads and
        actions in preallocated ``[T, b, ...]`` buffers, the log-probabilities computed once for
        the batch; the same numbers as ``T`` calls of :meth:`act`. gSDE acts step by step."""
        if self.sde:
            return StepwiseRollout(self, rng, num_steps, num_envs)
        return _Rollout(self, self.noise(rng, num_steps, num_envs), num_steps, num_envs)

    def _act_sde(self, obs: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, ActorExtras]:
        """gSDE (``sde.py``): ``mean + latent @ eps`` per env, ``eps = std * noise``; the
        log-probability under ``N(mean, latent**2 @ std**2 + epsilon)``."""
        latent, mean = self.net.features(obs)
        eps = self._std * noise  # [B, h, A]
        action = mean + np.einsum("bh,bha->ba", latent, eps).astype(np.float32)
        std = np.sqrt(np.square(latent) @ self._var + SDE_EPSILON)
        z = (action - mean) / std
        logp = np.sum(-0.5 * np.square(z) - np.log(std) - _HALF_LOG_2PI, axis=-1, dtype=np.float32)
        return action.astype(np.float32, copy=False), ActorExtras(log_prob=logp)


class _Rollout:
    """:meth:`PPOActor.rollout` without gSDE: ``act(t, obs) -> action[t]`` per step (the head
    written into the batch's buffer; Gaussian ``mean + std * noise``, categorical Gumbel-max),
    ``finish() -> (actions [T, b, ...], ActorExtras(log_prob [T, b]))``."""

    def __init__(self, actor: PPOActor, noise: np.ndarray, num_steps: int, num_envs: int):
        self.actor, self.noise = actor, noise
        self.head = np.empty((num_steps, num_envs, actor.action_dim), np.float32)
        self.action = np.empty((num_steps, num_envs), np.int32) if actor.discrete else np.empty_like(self.head)
        self._forward, self._sample = actor.net.forward_into, actor.sample

    def act(self, t: int, obs: np.ndarray) -> np.ndarray:
        return self._sample(self._forward(obs, self.head[t]), self.noise[t], self.action[t])

    def finish(self) -> tuple[np.ndarray, ActorExtras]:
        return self.action, ActorExtras(log_prob=self.actor.log_prob(self.head, self.action))


def export_spec(section: Any, fp32_actor_params: Any, agent_state: Any) -> ExportSpec:
    """The registry's ``export``: head kind, observation normaliser and log-std of a PPO policy.

    Args:
      section: the ``ppo:`` config section.
      fp32_actor_params: ``acting.ActorParams`` of the fp32 policy (numpy or JAX leaves).
      agent_state: the learner's state (not needed: the actor parameters carry everything).

    A gSDE policy exports the same way: its deterministic action is the mean (the head);
    ``log_std`` is then ``[latent_dim, A or 1]``.
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

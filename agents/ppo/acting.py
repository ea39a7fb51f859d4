"""PPO's actors in JAX: what an actor holds (:class:`ActorParams`) and does (``act``, gSDE's
``act_sde``) with the fp32 or the int8 policy. ``train.make_agent`` binds them into the
``Agent``; the numpy actor doing the same on host threads is ``actor.py``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
from rlaccel.agents.ppo import networks as nets_lib
from rlaccel.agents.ppo import sde as sde_lib
from rlaccel.agents.ppo.actor import ActorExtras
from rlaccel.agents.ppo.config import PPOConfig

from rlaccel import normalize as obs_norm_lib
from rlaccel import quant
from rlaccel.reference import Normalizer

Array = jax.Array


class ActorParams(NamedTuple):
    """What an actor needs: the policy (fp32 flax params, int8 ``QuantParams``, or for numpy
    actors ``rlaccel.reference.Int8Tables``), its log-std (``[A]``; gSDE ``[latent_dim, A or 1]``)
    and the observation normaliser.

    ``obs_norm`` is ``None`` without observation normalisation; otherwise ``mean`` and
    ``inv_std = 1 / sqrt(var + 1e-8)``, computed once by :func:`actor_normalizer`, so the
    actors' ``clip((obs - mean) * inv_std, -clip_obs, clip_obs)`` is the same float32
    arithmetic in JAX and in numpy (``agents/ppo/actor.py``).
    """

    policy: Any
    log_std: Array | None
    obs_norm: Normalizer | None


def policy_head(nets: nets_lib.PPONetworks, policy_params: Any, obs: Array) -> Array:
    """fp32 policy forward: ``[..., obs_dim] -> [..., action_dim]`` (logits or mean)."""
    return nets.policy.apply({"params": policy_params}, obs)


def actor_normalizer(cfg: PPOConfig, stats: obs_norm_lib.RunningStats) -> Normalizer | None:
    """The normaliser actors apply (``None`` unless ``normalize`` asks for it)."""
    return obs_norm_lib.normalizer(stats) if cfg.normalization.norm_obs else None


def actor_head(actor_params: ActorParams, obs: Array, *, nets: nets_lib.PPONetworks, cfg: PPOConfig) -> Array:
    """The actor's policy output ``[B, A]`` for raw ``obs [B, obs_dim]``, in fp32 or int8 arithmetic."""
    obs = obs_norm_lib.apply(actor_params.obs_norm, obs, cfg.normalization.clip_obs)
    if isinstance(actor_params.policy, quant.QuantParams):
        return quant.apply(actor_params.policy, obs)
    return policy_head(nets, actor_params.policy, obs)


def actor_features(actor_params: ActorParams, obs: Array, *, cfg: PPOConfig) -> tuple[Array, Array]:
    """``(latent [B, latent_dim], head [B, A])`` for raw ``obs [B, obs_dim]``: the policy's last
    hidden layer and its output, in fp32 or int8 arithmetic (int8: both dequantised)."""
    obs = obs_norm_lib.apply(actor_params.obs_norm, obs, cfg.normalization.clip_obs)
    if isinstance(actor_params.policy, quant.QuantParams):
        return quant.features(actor_params.policy, obs)
    return nets_lib.policy_features(actor_params.policy, obs, cfg.policy_kwargs.activation)


def act(actor_params: ActorParams, obs: Array, noise: Array, *, head_fn: Callable[[ActorParams, Array], Array]) -> tuple[Array, ActorExtras]:
    """Sample actions for ``obs [B, obs_dim]`` and record their behaviour log-probabilities.

    ``noise`` is ``networks.noise(...)`` for this step. The log-probability is the one of the
    policy that sampled (int8 when the actors are quantised); ``losses.ppo_loss`` explains
    why the learner must use it.
    """
    head = head_fn(actor_params, obs)
    action = nets_lib.sample(head, actor_params.log_std, noise)
    return action, ActorExtras(log_prob=nets_lib.log_prob(head, actor_params.log_std, action))


def act_sde(
    actor_params: ActorParams, obs: Array, noise: Array, *, features_fn: Callable[[ActorParams, Array], tuple[Array, Array]]
) -> tuple[Array, ActorExtras]:
    """gSDE's ``act``: ``mean + latent @ (std * noise)`` per env (``sde.py``), and its log-probability.

    ``noise`` ``[B, latent_dim, A]`` is this step's standard normal exploration matrices
    (``sde.rollout_noise``). With int8 actors the latent features and the mean come from the
    int8 network; the ``[latent_dim x A]`` noise product is fp32 (on an NPU: the host beside it).
    """
    latent, mean = features_fn(actor_params, obs)
    action = sde_lib.sample(mean, latent, actor_params.log_std, noise)
    std = sde_lib.scale(latent, actor_params.log_std, mean.shape[-1])
    return action, ActorExtras(log_prob=sde_lib.log_prob(mean, std, action))

"""PPO's networks and action distributions.

Policy and value are separate MLPs (as SB3, CleanRL and PureJaxRL do by default), each with its
own hidden sizes (``policy_kwargs.net_arch`` as a list for both, or SB3's ``dict(pi=[..],
vf=[..])``). The policy is a plain stack of ``Dense`` layers so ``rlaccel.quant`` can run it in
int8 layer by layer; the value network only ever runs on the learner, in fp32. With gSDE
(``use_sde``) the Gaussian's noise comes from the policy's last hidden layer
(:func:`policy_features`, ``sde.py``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from gymnasium import spaces
from rlaccel.agents.ppo.config import PolicyKwargs

from rlaccel.networks import ACTIVATIONS, MLP
from rlaccel.reference import dense_layers

Array = jax.Array
Params = Any


class PPONetworks(NamedTuple):
    """The two modules and what the policy head means."""

    policy: MLP
    value: MLP
    discrete: bool
    action_dim: int  # number of actions (discrete) or action vector size (continuous)
    sde: bool = False  # gSDE: noise from the policy's latent features (``sde.py``)
    full_std: bool = True  # gSDE: log_std [latent_dim, action_dim] (else [latent_dim, 1])
    latent_dim: int = 0  # width of the policy's last hidden layer


def make_networks(observation_space: spaces.Box, action_space: spaces.Space, kwargs: PolicyKwargs, use_sde: bool = False) -> PPONetworks:
    """Policy (logits or Gaussian mean) and value networks for the given spaces.

    ``use_sde`` (continuous actions only) makes the Gaussian's noise state-dependent (gSDE).
    """
    discrete = isinstance(action_space, spaces.Discrete)
    if not discrete and not isinstance(action_space, spaces.Box):
        raise ValueError(f"PPO supports Discrete and Box action spaces, got {type(action_space).__name__}")
    if discrete and use_sde:
        raise ValueError("use_sde (gSDE) needs a continuous (Box) action space")
    action_dim = int(action_space.n) if discrete else int(math.prod(action_space.shape))
    common = dict(activation=kwargs.activation, ortho_init=kwargs.ortho_init, weight_init=kwargs.weight_init)
    return PPONetworks(
        policy=MLP(hidden=kwargs.pi_arch, out_dim=action_dim, out_gain=0.01, **common),
        value=MLP(hidden=kwargs.vf_arch, out_dim=1, out_gain=1.0, **common),
        discrete=discrete,
        action_dim=action_dim,
        sde=bool(use_sde),
        full_std=bool(kwargs.full_std),
        latent_dim=kwargs.pi_arch[-1],
    )


def log_std_shape(nets: PPONetworks) -> tuple[int, ...]:
    """``[action_dim]`` (Gaussian), ``[latent_dim, action_dim]`` or ``[latent_dim, 1]`` (gSDE, SB3's ``full_std``)."""
    if not nets.sde:
        return (nets.action_dim,)
    return (nets.latent_dim, nets.action_dim if nets.full_std else 1)


def init_params(nets: PPONetworks, key: Array, obs_dim: int, log_std_init: float) -> Params:
    """``{"policy": ..., "value": ..., "log_std": ...}`` (``log_std`` only if continuous, shaped
    by :func:`log_std_shape`, every entry ``log_std_init``)."""
    key_pi, key_v = jax.random.split(key)
    params = {"policy": nets.policy.init_params(key_pi, obs_dim), "value": nets.value.init_params(key_v, obs_dim)}
    if not nets.discrete:
        params["log_std"] = jnp.full(log_std_shape(nets), log_std_init, jnp.float32)
    return params


def policy_features(policy_params: Any, obs: Array, activation: str) -> tuple[Array, Array]:
    """fp32 policy forward that also returns its last hidden layer.

    The same ``Dense`` stack as ``PPONetworks.policy`` (``x @ kernel + bias``, activation on the
    hidden layers), written out so the latent features come with the head.

    Args:
      policy_params: the flax params ``{"Dense_0": ..., ..., "Dense_L": ...}``.
      obs: ``[..., obs_dim]`` (normalised as the policy sees them).
      activation: the hidden activation's name.

    Returns:
      ``(latent [..., latent_dim], head [..., action_dim])``.
    """
    act = ACTIVATIONS[activation]
    layers = dense_layers(policy_params)
    h = obs
    for w, b in layers[:-1]:
        h = act(jnp.dot(h, w) + b)
    w, b = layers[-1]
    return h, jnp.dot(h, w) + b


# ---------------------------------------------------------------------------------------------
# Distributions, written out (a handful of fused elementwise ops each) so that the same code
# serves the fp32 learner and the int8 actor, which only differ in how the head is computed.


def noise(key: Array, num_envs: int, action_dim: int, discrete: bool) -> Array:
    """Sampling noise for one step of ``num_envs`` actors, ``[num_envs, action_dim]``.

    Gumbel noise (discrete: ``argmax(logits + g)`` samples the categorical) or standard
    normal noise (Gaussian). Rollouts draw it for all steps at once, outside their scan.
    """
    shape = (num_envs, action_dim)
    return jax.random.gumbel(key, shape) if discrete else jax.random.normal(key, shape)


def sample(head: Array, log_std: Array | None, noise: Array) -> Array:
    """Sample actions. ``head``: logits ``[B, A]`` (discrete) or mean ``[B, A]`` (Gaussian).

    Returns ``[B]`` int32 (discrete) or ``[B, A]`` float32, unclipped (clipping to the action
    bounds happens at the env boundary so the stored action keeps its exact log-probability).
    """
    if log_std is None:
        return jnp.argmax(head + noise, axis=-1).astype(jnp.int32)
    return head + jnp.exp(log_std) * noise


def log_prob(head: Array, log_std: Array | None, action: Array) -> Array:
    """Log-probability ``[B]`` of ``action`` under the distribution of ``head``."""
    if log_std is None:
        # A one-hot product rather than a gather: it fuses with log_softmax, and its gradient
        # is elementwise instead of a scatter (both matter for small minibatches on a CPU).
        logp = jax.nn.log_softmax(head, axis=-1)
        return jnp.sum(logp * jax.nn.one_hot(action, head.shape[-1], dtype=logp.dtype), axis=-1)
    z = (action - head) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * jnp.square(z) - log_std - 0.5 * math.log(2 * math.pi), axis=-1)


def entropy(head: Array, log_std: Array | None) -> Array:
    """Entropy ``[B]``."""
    if log_std is None:
        logp = jax.nn.log_softmax(head, axis=-1)
        return -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return jnp.broadcast_to(jnp.sum(log_std + 0.5 * math.log(2 * math.pi * math.e)), head.shape[:-1])


def mode(head: Array, log_std: Array | None) -> Array:
    """Deterministic action: argmax ``[B]`` or mean ``[B, A]``."""
    return jnp.argmax(head, axis=-1).astype(jnp.int32) if log_std is None else head

"""PPO's networks and action distributions.

Policy and value are separate MLPs (as SB3, CleanRL and PureJaxRL do by default). The policy
is a plain stack of ``Dense`` layers so ``rlaccel.quant`` can run it in int8 layer by layer;
the value network only ever runs on the learner, in fp32.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from gymnasium import spaces

from rlaccel.agents.ppo.config import PolicyKwargs

Array = jax.Array
Params = Any

ACTIVATION_FNS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "elu": jax.nn.elu}


class MLP(nn.Module):
    """``Dense -> act -> ... -> Dense`` with orthogonal init (gain sqrt(2) hidden, ``out_gain`` head).

    Parameters are ``{"Dense_0": {"kernel": [in, h0], "bias": [h0]}, ..., "Dense_L": ...}``.
    """

    hidden: Sequence[int]
    out_dim: int
    activation: str = "tanh"
    out_gain: float = 1.0
    ortho_init: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[..., in] -> [..., out_dim]``."""
        act = ACTIVATION_FNS[self.activation]

        def init(gain: float) -> Any:
            return nn.initializers.orthogonal(gain) if self.ortho_init else nn.initializers.lecun_normal()

        for width in self.hidden:
            x = act(nn.Dense(width, kernel_init=init(math.sqrt(2.0)), bias_init=nn.initializers.zeros)(x))
        return nn.Dense(self.out_dim, kernel_init=init(self.out_gain), bias_init=nn.initializers.zeros)(x)


class PPONetworks(NamedTuple):
    """The two modules and what the policy head means."""

    policy: MLP
    value: MLP
    discrete: bool
    action_dim: int  # number of actions (discrete) or action vector size (continuous)


def make_networks(observation_space: spaces.Box, action_space: spaces.Space, kwargs: PolicyKwargs) -> PPONetworks:
    """Policy (logits or Gaussian mean) and value networks for the given spaces."""
    discrete = isinstance(action_space, spaces.Discrete)
    if not discrete and not isinstance(action_space, spaces.Box):
        raise ValueError(f"PPO supports Discrete and Box action spaces, got {type(action_space).__name__}")
    action_dim = int(action_space.n) if discrete else int(math.prod(action_space.shape))
    common = dict(hidden=tuple(kwargs.net_arch), activation=kwargs.activation, ortho_init=kwargs.ortho_init)
    return PPONetworks(
        policy=MLP(out_dim=action_dim, out_gain=0.01, **common),
        value=MLP(out_dim=1, out_gain=1.0, **common),
        discrete=discrete,
        action_dim=action_dim,
    )


def init_params(nets: PPONetworks, key: Array, obs_dim: int, log_std_init: float) -> Params:
    """``{"policy": ..., "value": ..., "log_std": [action_dim]}`` (``log_std`` only if continuous)."""
    key_pi, key_v = jax.random.split(key)
    dummy = jnp.zeros((1, obs_dim), jnp.float32)
    params = {"policy": nets.policy.init(key_pi, dummy)["params"], "value": nets.value.init(key_v, dummy)["params"]}
    if not nets.discrete:
        params["log_std"] = jnp.full((nets.action_dim,), log_std_init, jnp.float32)
    return params


# ---------------------------------------------------------------------------------------------
# Distributions, written out (a handful of fused elementwise ops each) so that the same code
# serves the fp32 learner and the int8 actor, which only differ in how the head is computed.


def sample(key: Array, head: Array, log_std: Array | None) -> Array:
    """Sample actions. ``head``: logits ``[B, A]`` (discrete) or mean ``[B, A]`` (Gaussian).

    Returns ``[B]`` int32 (discrete) or ``[B, A]`` float32, unclipped (clipping to the action
    bounds happens at the env boundary so the stored action keeps its exact log-probability).
    """
    if log_std is None:
        return jax.random.categorical(key, head, axis=-1).astype(jnp.int32)
    return head + jnp.exp(log_std) * jax.random.normal(key, head.shape, head.dtype)


def log_prob(head: Array, log_std: Array | None, action: Array) -> Array:
    """Log-probability ``[B]`` of ``action`` under the distribution of ``head``."""
    if log_std is None:
        logp = jax.nn.log_softmax(head, axis=-1)
        return jnp.take_along_axis(logp, action[..., None].astype(jnp.int32), axis=-1)[..., 0]
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

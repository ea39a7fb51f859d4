"""Network building blocks shared by the agents.

Policies are plain stacks of ``Dense`` layers (``Dense_0 .. Dense_L``) so that
``rlaccel.quant`` can run them in int8 layer by layer.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"tanh": jnp.tanh, "relu": jax.nn.relu, "elu": jax.nn.elu}
"""JAX activations by name: the one table of every JAX network and of ``rlaccel.quant``
(numpy's is ``rlaccel.reference.ACTIVATIONS``; config spellings: ``rlaccel.schema``)."""


def orthogonal(gain: float) -> Callable[..., Array]:
    """``nn.initializers.orthogonal(gain)`` that is safe under ``jax.vmap`` on multi-core CPUs.

    Values are exactly flax's. Under ``vmap`` (many seeds in one program) the per-seed QR
    decompositions run one after another: jaxlib 0.10's CPU runtime fans a batched LAPACK
    QR out over the intra-op thread pool and blocks on it, so two independent batched QRs
    (policy and value layers) can occupy every pool thread and deadlock a 2-core machine.
    Initialisation runs once, so this costs nothing in training.
    """
    base = nn.initializers.orthogonal(gain)

    def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        return jax.custom_batching.sequential_vmap(lambda k: base(k, shape, dtype))(key)

    return init


def torch_uniform(fan_in: int) -> Callable[..., Array]:
    """PyTorch's ``nn.Linear`` default for a layer with ``fan_in`` inputs: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
    (``kaiming_uniform_(a=sqrt(5))`` for the weight, the same bound for the bias)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


INITS = ("flax", "torch")
"""Initialisations without ``ortho_init``: ``flax`` (``lecun_normal`` kernels, zero biases: flax's
and PureJaxRL's default) or ``torch`` (PyTorch's ``nn.Linear`` default, :func:`torch_uniform`
for kernels and biases: what SB3's ``ortho_init=False`` means)."""


class MLP(nn.Module):
    """``Dense -> act -> ... -> Dense`` with orthogonal init (gain sqrt(2) hidden, ``out_gain`` head),
    or without ``ortho_init`` the ``weight_init`` of :data:`INITS`.

    Parameters are ``{"Dense_0": {"kernel": [in, h0], "bias": [h0]}, ..., "Dense_L": ...}``.
    """

    hidden: Sequence[int]
    out_dim: int
    activation: str = "tanh"
    out_gain: float = 1.0
    ortho_init: bool = True
    weight_init: str = "flax"  # without ortho_init: one of INITS

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[..., in] -> [..., out_dim]``."""
        act = ACTIVATIONS[self.activation]

        def dense(width: int, gain: float, fan_in: int) -> nn.Dense:
            if self.ortho_init:
                return nn.Dense(width, kernel_init=orthogonal(gain), bias_init=nn.initializers.zeros)
            if self.weight_init == "torch":
                return nn.Dense(width, kernel_init=torch_uniform(fan_in), bias_init=torch_uniform(fan_in))
            return nn.Dense(width, kernel_init=nn.initializers.lecun_normal(), bias_init=nn.initializers.zeros)

        for width in self.hidden:
            x = act(dense(width, math.sqrt(2.0), x.shape[-1])(x))
        return dense(self.out_dim, self.out_gain, x.shape[-1])(x)

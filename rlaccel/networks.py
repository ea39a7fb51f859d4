"""Network building blocks shared by the agents.

Policies are plain stacks of ``Dense`` layers (``Dense_0 .. Dense_L``) so that
``rlaccel.quant`` can run them in int8 layer by layer.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"tanh": jnp.tanh, "relu": jax.nn.relu, "elu": jax.nn.elu}
"""JAX activations by name: the one table of every JAX network and of ``rlaccel.quant``
(numpy's is ``rlaccel.reference.ACTIVATIONS``; config spellings: ``rlaccel.schema``)."""


INITS = ("flax", "torch")
"""Initialisations without ``ortho_init``: ``flax`` (``lecun_normal`` kernels, zero biases: flax's
and PureJaxRL's default) or ``torch`` (PyTorch's ``nn.Linear`` default: ``U(-1/sqrt(fan_in),
1/sqrt(fan_in))`` for kernels and biases, what SB3's ``ortho_init=False`` means). With
``ortho_init``: orthogonal kernels (flax's ``orthogonal``), zero biases."""

LECUN_STD = 1.0 / 0.87962566103423978
"""flax's ``lecun_normal``: a standard normal truncated at +-2, over ``0.8796`` (its std) and ``sqrt(fan_in)``."""


class Layer(NamedTuple):
    """One ``Dense`` layer of an :class:`MLP`: its kernel's ``[fan_in, width]`` and orthogonal gain."""

    shape: tuple[int, int]
    gain: float


def _draw(scheme: str, key: Array, shape: Sequence[int]) -> Array:
    """The standard draw a ``scheme`` (``ortho`` or one of :data:`INITS`) makes weights from:
    normal (ortho), normal truncated at +-2 (flax) or ``U(-1, 1)`` (torch)."""
    if scheme == "ortho":
        return jax.random.normal(key, shape, jnp.float32)
    if scheme == "flax":
        return jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)
    return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)


def _orthogonal(gain: float, shape: tuple[int, int], normal: Array) -> Array:
    """flax's orthogonal kernel (QR, sign fix, transpose) from a standard normal ``[max, min]`` of ``shape``.

    Under ``jax.vmap`` (many seeds in one program) the per-seed QR decompositions run one after
    another: jaxlib 0.10's CPU runtime fans a batched LAPACK QR out over the intra-op thread
    pool and blocks on it, so two independent batched QRs (policy and value layers) can occupy
    every pool thread and deadlock a 2-core machine. Initialisation runs once, so this costs
    nothing in training.
    """

    def from_normal(a: Array) -> Array:
        q, r = jnp.linalg.qr(a)
        q = q * jnp.sign(jnp.diag(r))
        return gain * (q.T if shape[0] < shape[1] else q)

    return jax.custom_batching.sequential_vmap(from_normal)(normal.reshape(max(shape), min(shape)))


def _kernel(scheme: str, layer: Layer, draw: Array) -> Array:
    """A layer's kernel ``[fan_in, width]`` from its ``fan_in * width`` values of :func:`_draw`."""
    if scheme == "ortho":
        return _orthogonal(layer.gain, layer.shape, draw)
    scale = LECUN_STD if scheme == "flax" else 1.0
    return draw.reshape(layer.shape) * (scale / math.sqrt(layer.shape[0]))


def _bias(scheme: str, layer: Layer, draw: Array | None) -> Array:
    """A layer's bias ``[width]``: PyTorch's from its ``width`` values of :func:`_draw` (torch), else zeros."""
    return draw / math.sqrt(layer.shape[0]) if scheme == "torch" else jnp.zeros((layer.shape[1],), jnp.float32)


class MLP(nn.Module):
    """``Dense -> act -> ... -> Dense`` with orthogonal init (gain sqrt(2) hidden, ``out_gain`` head),
    or without ``ortho_init`` the ``weight_init`` of :data:`INITS`.

    Parameters are ``{"Dense_0": {"kernel": [in, h0], "bias": [h0]}, ..., "Dense_L": ...}``.
    Agents build them with :meth:`init_params` (one random draw for every layer); flax's
    ``init`` gives the same distributions drawing layer by layer.
    """

    hidden: Sequence[int]
    out_dim: int
    activation: str = "tanh"
    out_gain: float = 1.0
    ortho_init: bool = True
    weight_init: str = "flax"  # without ortho_init: one of INITS

    @property
    def scheme(self) -> str:
        """``"ortho"`` or :attr:`weight_init`."""
        return "ortho" if self.ortho_init else self.weight_init

    def layers(self, in_dim: int) -> list[Layer]:
        """The layers for inputs of width ``in_dim``, first to last."""
        fan_ins, widths = (in_dim, *self.hidden), (*self.hidden, self.out_dim)
        gains = (math.sqrt(2.0),) * len(self.hidden) + (self.out_gain,)
        return [Layer((a, b), g) for a, b, g in zip(fan_ins, widths, gains)]

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[..., in] -> [..., out_dim]``."""
        scheme, layers = self.scheme, self.layers(x.shape[-1])
        for i, layer in enumerate(layers):

            def kernel_init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32, layer: Layer = layer) -> Array:
                return _kernel(scheme, layer, _draw(scheme, key, (math.prod(shape),)))

            def bias_init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32, layer: Layer = layer) -> Array:
                return _bias(scheme, layer, _draw(scheme, key, shape) if scheme == "torch" else None)

            x = nn.Dense(layer.shape[1], kernel_init=kernel_init, bias_init=bias_init)(x)
            if i < len(layers) - 1:
                x = ACTIVATIONS[self.activation](x)
        return x

    def init_params(self, key: Array, in_dim: int) -> dict[str, dict[str, Array]]:
        """Fresh parameters (the tree of ``init(...)["params"]``) for inputs of width ``in_dim``.

        Every layer's weights come from one draw of :func:`_draw` (then a QR per layer for
        orthogonal kernels). flax's ``init`` draws per layer and folds a key per module: on
        XLA's CPU backend each PRNG call site costs ~0.2 s of compile (a 2 x 64 PPO's policy
        and value: 18 call sites, ~1.7 s of its ~2.3 s init compile).
        """
        scheme, layers = self.scheme, self.layers(in_dim)
        sizes = [a * b for a, b in (layer.shape for layer in layers)]
        if scheme == "torch":  # biases are drawn too
            sizes += [layer.shape[1] for layer in layers]
        chunks = jnp.split(_draw(scheme, key, (sum(sizes),)), list(itertools.accumulate(sizes))[:-1])
        biases = chunks[len(layers) :] if scheme == "torch" else [None] * len(layers)
        return {f"Dense_{i}": {"kernel": _kernel(scheme, layer, chunks[i]), "bias": _bias(scheme, layer, b)} for i, (layer, b) in enumerate(zip(layers, biases))}

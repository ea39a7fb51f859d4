"""Moving a pytree to another device as a handful of buffers (:class:`Wire`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlaccel import compile_cache

__all__ = ["Wire"]


class Wire:
    """Moves one pytree structure to ``device`` as one flat buffer per dtype: a handful of
    transfers instead of one per leaf (an int8 policy has ~30 leaves, and each ``device_put``
    of a leaf costs the host ~10 µs). Packing runs where the tree lives, unpacking on
    ``device``, each one small compiled program; the values arrive bit for bit."""

    def __init__(self, example: Any, device: jax.Device):
        leaves, self.treedef = jax.tree.flatten(example)
        self.specs = [(tuple(x.shape), jnp.dtype(x.dtype)) for x in leaves]
        self.dtypes = sorted({d for _, d in self.specs}, key=str)
        self.device = device
        self._pack, self._unpack = compile_cache.jit(self.pack), compile_cache.jit(self.unpack)

    def compile(self, example: Any) -> None:
        """Compile packing (for trees like ``example``, where its shardings say) and unpacking
        (on :attr:`device`) ahead of time, so the first call does not pay for it."""
        self._pack = self._pack.lower(example).compile()
        on_device = jax.sharding.SingleDeviceSharding(self.device)
        buffers = [jax.ShapeDtypeStruct(b.shape, b.dtype, sharding=on_device) for b in jax.eval_shape(self.pack, example)]
        self._unpack = self._unpack.lower(tuple(buffers)).compile()

    def pack(self, tree: Any) -> tuple[jax.Array, ...]:
        """``tree`` -> one 1-D buffer per dtype (jittable)."""
        leaves = jax.tree.leaves(tree)
        return tuple(jnp.concatenate([x.reshape(-1) for x, (_, d) in zip(leaves, self.specs) if d == dtype]) for dtype in self.dtypes)

    def unpack(self, buffers: tuple[jax.Array, ...]) -> Any:
        """The inverse of :meth:`pack` (jittable)."""
        offsets, leaves = dict.fromkeys(self.dtypes, 0), []
        for shape, dtype in self.specs:
            n, start = int(np.prod(shape, dtype=np.int64)), offsets[dtype]
            leaves.append(buffers[self.dtypes.index(dtype)][start : start + n].reshape(shape))
            offsets[dtype] = start + n
        return jax.tree.unflatten(self.treedef, leaves)

    def packed(self, tree: Any) -> tuple[jax.Array, ...]:
        """:meth:`pack`, compiled, where ``tree`` lives (dispatched)."""
        return self._pack(tree)

    def unpacked(self, buffers: tuple[jax.Array, ...]) -> Any:
        """:meth:`unpack`, compiled, where ``buffers`` live (dispatched)."""
        return self._unpack(buffers)

    def __call__(self, tree: Any) -> Any:
        """``tree`` on :attr:`device` (dispatched: nothing waits for it)."""
        return self.unpacked(jax.device_put(self.packed(tree), self.device))

"""A replay buffer in device memory, usable inside the compiled training loop.

Circular, fixed capacity, uniform sampling; pure functions on an explicit
:class:`ReplayState` (Optax-style ``init`` / ``add`` / ``sample``), so it lives in the agent
state, is checkpointed with it and is vmapped over seeds like everything else.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array


@struct.dataclass
class ReplayState:
    """Storage ``[capacity, ...]`` per field, the next write slot and the fill level."""

    data: Any  # pytree of [capacity, ...] arrays
    position: Array  # [] int32, next slot to write
    size: Array  # [] int32, number of valid items (<= capacity)


def init(example: Any, capacity: int) -> ReplayState:
    """Empty buffer shaped after one item ``example`` (a pytree of arrays without batch axis)."""
    data = jax.tree.map(lambda x: jnp.zeros((capacity, *jnp.shape(x)), jnp.asarray(x).dtype), example)
    return ReplayState(data=data, position=jnp.zeros((), jnp.int32), size=jnp.zeros((), jnp.int32))


def capacity(state: ReplayState) -> int:
    """Number of slots."""
    return jax.tree.leaves(state.data)[0].shape[0]


def add(state: ReplayState, items: Any) -> ReplayState:
    """Append a batch ``[N, ...]`` of items, overwriting the oldest once full (``N <= capacity``)."""
    cap = capacity(state)
    n = jax.tree.leaves(items)[0].shape[0]
    slots = (state.position + jnp.arange(n)) % cap
    data = jax.tree.map(lambda buf, x: buf.at[slots].set(x), state.data, items)
    return ReplayState(data=data, position=(state.position + n) % cap, size=jnp.minimum(state.size + n, cap))


def sample(state: ReplayState, key: Array, batch_size: int) -> Any:
    """``batch_size`` items drawn uniformly with replacement from the valid ones.

    Before anything was added, returns items of slot 0 (zeros); callers wait for
    ``learning_starts`` anyway.
    """
    idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(state.size, 1))
    return jax.tree.map(lambda buf: buf[idx], state.data)

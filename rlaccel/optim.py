"""Optimiser plumbing shared by the algorithms.

:func:`flatten_if_small`: ``optax.flatten`` (the update on one concatenated vector) for
networks whose layers are all narrower than :data:`FLATTEN_BELOW`, leaf by leaf otherwise.
Measured on XLA's CPU backend (jaxlib 0.10), each variant compiled in one process and timed in
turn: one vector saved ~4 % of a PureJaxRL-sized DQN update (120-84: 180 against 187 us per
update, median of 8) and was within noise for 64-64 and 192-192 networks; from 256-wide layers
on, the concatenation of the gradients became one kernel of ~5 ms per gradient step (a 256-256
DQN step 5.8 ms against 0.49 ms leaf by leaf; PPO with two 256-256 towers 822 against 470 ms
per update).

:func:`tree_norm`: the guard's norms (``train/grad_norm``, ``train/param_max_abs``; PPO and DQN) the same way:
one reduction over the concatenated leaves below :data:`FLATTEN_BELOW` (beside ``optax.flatten``
the concatenation of the gradients is already there), ``optax.tree.norm`` leaf by leaf above.
On a 2-core Sapphire Rapids Xeon the two norms leaf by leaf cost 40-110 us of a 500-560 us
PureJaxRL-sized DQN update (all of the gap to PureJaxRL's, which computes neither); on one
vector, median 563 -> 492 us per update, PureJaxRL 542 in the same rounds
(``docs/benchmarks.md``, DQN like for like).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = ["FLATTEN_BELOW", "flatten_if_small", "tree_norm"]

FLATTEN_BELOW = 256
"""Widest hidden layer at which the update still runs on one flat vector (exclusive)."""


def flatten_if_small(tx: optax.GradientTransformation, widths: Iterable[int]) -> optax.GradientTransformation:
    """``optax.flatten(tx)`` when every width in ``widths`` (the hidden layers) is below
    :data:`FLATTEN_BELOW`, else ``tx``: the same arithmetic either way, up to float rounding of
    the global norm's sum."""
    return optax.flatten(tx) if _flat(widths) else tx


def tree_norm(tree: Any, widths: Iterable[int], ord: str | None = None) -> jax.Array:
    """``optax.tree.norm(tree, ord)``, a scalar: the L2 norm (``ord=None``) or the largest
    magnitude (``ord="inf"``) of all leaves together; on one concatenated vector when every
    width in ``widths`` is below :data:`FLATTEN_BELOW`, leaf by leaf otherwise (the same value
    up to the float rounding of the L2 sum)."""
    if not _flat(widths):
        return optax.tree.norm(tree, ord=ord)
    flat = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])
    return jnp.max(jnp.abs(flat)) if ord == "inf" else jnp.sqrt(jnp.sum(jnp.square(flat)))


def _flat(widths: Iterable[int]) -> bool:
    """The one rule of this module: every hidden layer narrower than :data:`FLATTEN_BELOW`."""
    return max(widths, default=0) < FLATTEN_BELOW

"""PPO's minibatch steps with the policy and the value tower on two devices (``placement.learner.towers``).

Model parallelism for the RL Zoo's case on a CPU: one env, two separate 256-256 towers,
minibatches of 64. Such a step is a chain of small matmuls that one core runs near its peak
and a second core's threads cannot share (XLA's intra-op pool splits none of them usefully),
while the two towers never read each other: the policy's loss terms (surrogate, entropy) do
not depend on the value network, nor the value loss on the policy. So each device takes one
tower: device 0 the policy (and ``log_std``), device 1 the value network.

What still couples them is SB3's global-norm clip: every step's clip factor is the norm of
both towers' gradients together. One ``psum`` per step carries it (with the step's loss
diagnostics, each tower's fields from its own device): the arithmetic of the one-device step
up to the float rounding of that sum (``tests/test_towers.py``). Measured on a 2-core AMD
EPYC (AVX2), the zoo HalfCheetah block's step (17-256-256, batch 64, Adam): 558-568 us
against 924-1,060 us on one device (``docs/benchmarks.md``, "The learner's towers on two CPU
devices").

The two towers are stacked on a leading axis of 2 (``shard_map`` gives each device its
slice): the value tower's head is padded with zero columns to the policy's width (its
gradients there are zero, so Adam leaves them zero), and ``log_std`` gets a copy on the value
device that nothing reads. ``PPOState`` keeps the usual layout, so checkpoints, actors and
exports never see the stacking: :func:`stack` and :func:`unstack` run inside the update.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from rlaccel.agents.ppo import losses
from rlaccel.agents.ppo import networks as nets_lib
from rlaccel.agents.ppo.config import PPOConfig

Array = jax.Array

AXIS = "tower"
"""The mesh axis: index 0 holds the policy tower, 1 the value tower."""

POLICY_FIELDS = np.array([name != "value_loss" for name in losses.LossInfo._fields], np.float32)
"""Which ``LossInfo`` fields the policy device computes (1) and which the value device does (0)."""


def mesh(devices: tuple[jax.Device, ...]) -> Mesh:
    """The two-device mesh: ``devices[0]`` trains the policy, ``devices[1]`` the value network."""
    return Mesh(np.array(devices[:2]), (AXIS,))


def _params_like(x: Any) -> bool:
    return isinstance(x, dict) and "policy" in x and "value" in x


def _stacked_like(x: Any) -> bool:
    return isinstance(x, dict) and "net" in x


def _with_head(value: dict, fn: Any) -> dict:
    """The value tower with ``fn`` applied to its last layer's leaves (``Dense_<highest>``)."""
    last = max(value, key=lambda name: int(name.split("_")[-1]))
    return {**value, last: jax.tree.map(fn, value[last])}


def _pad_head(value: dict, width: int) -> dict:
    """The value tower with its last layer padded from 1 to ``width`` output columns (zeros)."""
    return _with_head(value, lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])]))


def _unpad_head(value: dict) -> dict:
    return _with_head(value, lambda x: x[..., :1])


def _stack_params(params: dict, width: int) -> dict:
    out = {"net": jax.tree.map(lambda a, b: jnp.stack([a, b]), params["policy"], _pad_head(params["value"], width))}
    if "log_std" in params:  # the value device's copy is never read
        out["log_std"] = jnp.stack([params["log_std"], params["log_std"]])
    return out


def _unstack_params(stacked: dict) -> dict:
    out = {"policy": jax.tree.map(lambda x: x[0], stacked["net"]), "value": _unpad_head(jax.tree.map(lambda x: x[1], stacked["net"]))}
    if "log_std" in stacked:
        out["log_std"] = stacked["log_std"][0]
    return out


def stack(tree: Any, width: int) -> Any:
    """Every params-shaped subtree of ``tree`` (the parameters, Adam's moments) stacked as
    ``{"net": [2, ...], "log_std": [2, ...]}``; other leaves (step counts) unchanged."""
    return jax.tree.map(lambda x: _stack_params(x, width) if _params_like(x) else x, tree, is_leaf=_params_like)


def unstack(tree: Any) -> Any:
    """The inverse of :func:`stack`."""
    return jax.tree.map(lambda x: _unstack_params(x) if _stacked_like(x) else x, tree, is_leaf=_stacked_like)


def _specs(tree: Any) -> Any:
    """``shard_map`` specs for a :func:`stack` ed tree: stacked leaves split over the towers."""
    return jax.tree.map(lambda x: jax.tree.map(lambda _: P(AXIS), x) if _stacked_like(x) else P(), tree, is_leaf=_stacked_like)


def tower_loss(tower: dict, mb: Any, clip_range: Array, is_policy: Array, *, nets: nets_lib.PPONetworks, cfg: PPOConfig) -> tuple[Array, losses.LossInfo]:
    """The PPO loss as one tower sees it: its own terms, the other tower's held constant.

    ``tower``: ``{"net": MLP params [.., A], "log_std"}``; on the policy device its output is the
    policy head, on the value device column 0 is the value (the rest is padding). The loss has
    the one-device loss's gradient with respect to this tower (the other terms do not depend
    on it); its ``LossInfo`` is right for this tower's fields only (:data:`POLICY_FIELDS`).
    """
    out = nets.policy.apply({"params": tower["net"]}, mb.obs)  # [N, A]
    log_std = tower.get("log_std")
    keep = jax.lax.stop_gradient
    new_log_prob = jnp.where(is_policy, nets_lib.log_prob(out, log_std, mb.action), keep(mb.behaviour_log_prob))
    entropy = jnp.where(is_policy, nets_lib.entropy(out, log_std), 0.0)
    new_values = jnp.where(is_policy, keep(mb.value), out[:, 0])
    return losses.ppo_loss(
        new_log_prob, mb.behaviour_log_prob, entropy, new_values, mb.value, mb.advantage, mb.ret,
        clip_range=clip_range, clip_range_vf=cfg.clip_range_vf, ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef,
        normalize_advantage=cfg.normalize_advantage, value_loss_kind=cfg.value_loss,
    )  # fmt: skip


def _local_steps(params: Any, opt_state: Any, minibatches: Any, clip_range: Array, *, nets: nets_lib.PPONetworks, cfg: PPOConfig, adam: optax.GradientTransformation) -> tuple[Any, Any, Array]:
    """One device's share of the update's steps (inside ``shard_map``): its tower, ``[1, ...]`` slices.

    Every stacked leaf is at least 1-D here (its slice of the tower axis); the only replicated
    leaves, Adam's step counts, are scalars: so ``ndim`` tells them apart.
    """
    squeeze = lambda t: jax.tree.map(lambda x: x[0] if x.ndim else x, t)  # noqa: E731
    params, opt_state = squeeze(params), squeeze(opt_state)
    is_policy = jax.lax.axis_index(AXIS) == 0
    mask = jnp.where(is_policy, POLICY_FIELDS, 1.0 - POLICY_FIELDS)
    max_norm = cfg.max_grad_norm

    def step(carry: tuple[Any, Any], mb: Any) -> tuple[tuple[Any, Any], Array]:
        params, (clip_state, adam_state) = carry
        grads, info = jax.grad(tower_loss, has_aux=True)(params, mb, clip_range, is_policy, nets=nets, cfg=cfg)
        local_sq = sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))
        shared = jax.lax.psum(jnp.concatenate([jnp.stack(info) * mask, local_sq[None]]), AXIS)  # the one collective
        g_norm = jnp.sqrt(shared[-1])
        trigger = g_norm < max_norm  # optax.clip_by_global_norm's arithmetic on both towers' norm
        grads = jax.tree.map(lambda t: jax.lax.select(trigger, t, (t / g_norm) * max_norm), grads)
        updates, adam_state = adam.update(grads, adam_state, params)
        return (optax.apply_updates(params, updates), (clip_state, adam_state)), jnp.concatenate([shared[:-1], g_norm[None]])

    (params, opt_state), rows = jax.lax.scan(step, (params, opt_state), minibatches)
    expand = lambda t: jax.tree.map(lambda x: x[None] if x.ndim else x, t)  # noqa: E731
    return expand(params), expand(opt_state), rows


def make_scan(nets: nets_lib.PPONetworks, cfg: PPOConfig, adam: optax.GradientTransformation, devices: Mesh) -> Any:
    """``(params, opt_state, minibatches [S, batch, ...], clip_range) -> ((params, opt_state), rows [S, k])``:
    what ``lax.scan`` of ``train.minibatch_update`` returns, the towers trained on ``devices``.

    ``opt_state`` is the learner's ``chain(clip_by_global_norm, adam)`` state (``train.make_optimizer``
    without ``optax.flatten``); ``adam`` is that chain's second transformation.
    """
    width = nets.action_dim

    def scan(params: Any, opt_state: Any, minibatches: Any, clip_range: Array) -> tuple[tuple[Any, Any], Array]:
        sp, so = stack(params, width), stack(opt_state, width)
        local = functools.partial(_local_steps, nets=nets, cfg=cfg, adam=adam)
        sharded = jax.shard_map(
            local, mesh=devices, in_specs=(_specs(sp), _specs(so), P(), P()), out_specs=(_specs(sp), _specs(so), P()), check_vma=False
        )
        sp, so, rows = sharded(sp, so, minibatches, jnp.asarray(clip_range, jnp.float32))
        return (unstack(sp), unstack(so)), rows

    return scan

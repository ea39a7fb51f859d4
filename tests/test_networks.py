"""``rlaccel.networks.MLP.init_params`` (one random draw per MLP) against flax's ``init``, and
the PRNG call sites of a whole training program (each costs ~0.2 s of XLA CPU compile:
docs/benchmarks.md, "PRNG call sites and compile time")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jex_core

from rlaccel import config as config_lib
from rlaccel.networks import MLP
from rlaccel.sources.fused import make_train


@pytest.mark.parametrize("kwargs", [{}, {"ortho_init": False}, {"ortho_init": False, "weight_init": "torch"}], ids=["ortho", "flax", "torch"])
def test_init_params_has_flax_inits_tree_and_distributions(kwargs) -> None:
    mlp = MLP(hidden=(64, 64), out_dim=2, out_gain=0.01, **kwargs)
    ours = mlp.init_params(jax.random.PRNGKey(0), 4)
    flax_params = mlp.init(jax.random.PRNGKey(1), jnp.zeros((1, 4)))["params"]
    assert jax.tree.structure(ours) == jax.tree.structure(flax_params)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, flax_params)
    for name in ours:  # same spread, layer by layer (different draws; 64 values or more)
        for leaf in ("kernel", "bias"):
            a, b = np.asarray(ours[name][leaf]), np.asarray(flax_params[name][leaf])
            assert a.dtype == np.float32
            if a.size >= 64:
                np.testing.assert_allclose(a.std(), b.std(), rtol=0.25, atol=1e-7)
    kernels = [np.asarray(ours[f"Dense_{i}"]["kernel"]) for i in range(3)]
    if not kwargs:  # orthogonal: gain sqrt(2) on the hidden layers, 0.01 on the head
        np.testing.assert_allclose(kernels[1].T @ kernels[1], 2 * np.eye(64), atol=1e-5)
        np.testing.assert_allclose(kernels[0] @ kernels[0].T, 2 * np.eye(4), atol=1e-5)  # wide: rows orthonormal
        np.testing.assert_allclose(kernels[2].T @ kernels[2], 1e-4 * np.eye(2), atol=1e-9)
    assert len({k.tobytes() for k in kernels}) == 3  # every layer its own slice of the draw


def _prng_sites(jaxpr) -> int:
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name in ("random_bits", "random_split", "random_fold_in", "threefry2x32")
        for p in eqn.params.values():
            for sub in p if isinstance(p, (list, tuple)) else [p]:
                if isinstance(sub, jex_core.ClosedJaxpr):
                    count += _prng_sites(sub.jaxpr)
                elif isinstance(sub, jex_core.Jaxpr):
                    count += _prng_sites(sub)
    return count


@pytest.mark.parametrize(("path", "most"), [("configs/ppo_cartpole.yaml", 11), ("configs/dqn_cartpole.yaml", 10)])
def test_training_programs_draw_randomness_in_few_calls(path: str, most: int) -> None:
    """PPO CartPole's whole program had 32 call sites (flax's per-layer draws and key folds,
    per-step keys); now 6 at init and 5 per update. DQN's: 5 at init, 5 per update."""
    config = config_lib.load(path, ["total_timesteps=20000"])
    jaxpr = jax.make_jaxpr(make_train(config))(jax.random.PRNGKey(0))
    assert _prng_sites(jaxpr.jaxpr) <= most

"""Tests for ``rlaccel.agents.ppo.losses``: GAE and the clipped PPO loss, against hand-worked numbers
and a plain Python reference loop."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rlaccel.agents.ppo.losses import compute_gae, ppo_loss


def col(*xs, dtype=jnp.float32):
    """A ``[T, 1]`` column (one env)."""
    return jnp.asarray(xs, dtype)[:, None]


# --------------------------------------------------------------------------------------------
# GAE


def test_gae_hand_worked_three_steps():
    # gamma = 0.9, lambda = 0.8, so gamma * lambda = 0.72. One env, three steps:
    #   t=0: r=1, V=0.5, episode TERMINATES here; V(s'_0)=7.0 must be ignored.
    #   t=1: r=2, V=1.0, nothing ends; V(s'_1) = V(s_2) = 1.5.
    #   t=2: r=3, V=1.5, episode is TRUNCATED (time limit); bootstrap from V(final obs) = 2.0.
    #
    # deltas: delta_t = r_t + gamma * (1 - term_t) * V(s'_t) - V(s_t)
    #   delta_2 = 3 + 0.9 * 2.0 - 1.5 = 3.3        (truncation bootstraps)
    #   delta_1 = 2 + 0.9 * 1.5 - 1.0 = 2.35
    #   delta_0 = 1 + 0         - 0.5 = 0.5        (termination: no future value)
    # advantages: A_t = delta_t + 0.72 * (1 - done_t) * A_{t+1}
    #   A_2 = 3.3                                  (last step: no A_3)
    #   A_1 = 2.35 + 0.72 * 3.3 = 2.35 + 2.376 = 4.726
    #   A_0 = 0.5                                  (done at t=0: A_1 belongs to the next episode)
    # returns = A + V = [1.0, 5.726, 4.8]
    rewards = col(1.0, 2.0, 3.0)
    values = col(0.5, 1.0, 1.5)
    next_values = col(7.0, 1.5, 2.0)
    terminated = col(True, False, False, dtype=jnp.bool_)
    truncated = col(False, False, True, dtype=jnp.bool_)
    adv, ret = compute_gae(rewards, values, next_values, terminated, truncated, 0.9, 0.8)
    assert adv.shape == ret.shape == (3, 1)
    np.testing.assert_allclose(np.asarray(adv)[:, 0], [0.5, 4.726, 3.3], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ret)[:, 0], [1.0, 5.726, 4.8], rtol=1e-6)


def test_gae_truncation_in_the_middle_bootstraps_but_cuts_the_recursion():
    # Same numbers, but now t=1 is truncated and t=2 terminates; gamma = 0.9, lambda = 0.8.
    #   delta_2 = 3 + 0 - 1.5 = 1.5                 A_2 = 1.5
    #   delta_1 = 2 + 0.9 * 4.0 - 1.0 = 4.6         A_1 = 4.6       (V(final obs of ep.) = 4.0)
    #   delta_0 = 1 + 0.9 * 1.0 - 0.5 = 1.4         A_0 = 1.4 + 0.72 * 4.6 = 4.712
    rewards = col(1.0, 2.0, 3.0)
    values = col(0.5, 1.0, 1.5)
    next_values = col(1.0, 4.0, 9.0)
    terminated = col(False, False, True, dtype=jnp.bool_)
    truncated = col(False, True, False, dtype=jnp.bool_)
    adv, ret = compute_gae(rewards, values, next_values, terminated, truncated, 0.9, 0.8)
    np.testing.assert_allclose(np.asarray(adv)[:, 0], [4.712, 4.6, 1.5], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ret)[:, 0], [5.212, 5.6, 3.0], rtol=1e-6)


def test_gae_lambda_one_is_the_discounted_return_minus_value():
    # lambda = 1, no episode end: A_0 + V_0 = r_0 + g r_1 + g^2 r_2 + g^3 V(s'_2), g = 0.5:
    #   1 + 0.5 * 2 + 0.25 * 4 + 0.125 * 8 = 1 + 1 + 1 + 1 = 4
    rewards = col(1.0, 2.0, 4.0)
    values = col(3.0, 5.0, 6.0)
    next_values = col(5.0, 6.0, 8.0)
    no = col(False, False, False, dtype=jnp.bool_)
    _, ret = compute_gae(rewards, values, next_values, no, no, 0.5, 1.0)
    # returns: R_2 = 4 + 0.5 * 8 = 8; R_1 = 2 + 0.5 * 8 = 6; R_0 = 1 + 0.5 * 6 = 4
    np.testing.assert_allclose(np.asarray(ret)[:, 0], [4.0, 6.0, 8.0], rtol=1e-6)
    # lambda = 0: one-step TD targets r_t + g V(s'_t)
    _, ret0 = compute_gae(rewards, values, next_values, no, no, 0.5, 0.0)
    np.testing.assert_allclose(np.asarray(ret0)[:, 0], [1 + 2.5, 2 + 3.0, 4 + 4.0], rtol=1e-6)


def reference_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """The textbook reverse loop, float64, no JAX."""
    T, B = rewards.shape
    adv = np.zeros((T, B))
    for b in range(B):
        running = 0.0
        for t in reversed(range(T)):
            nonterminal = 0.0 if terminated[t, b] else 1.0
            cont = 0.0 if (terminated[t, b] or truncated[t, b]) else 1.0
            delta = rewards[t, b] + gamma * nonterminal * next_values[t, b] - values[t, b]
            running = delta + gamma * lam * cont * running
            adv[t, b] = running
    return adv, adv + values


@st.composite
def trajectories(draw):
    T = draw(st.integers(1, 9))
    B = draw(st.integers(1, 3))
    floats = st.floats(-10, 10, allow_nan=False, width=32)
    arr = lambda: draw(hnp.arrays(np.float32, (T, B), elements=floats))
    flags = lambda: draw(hnp.arrays(np.bool_, (T, B)))
    gamma = draw(st.floats(0.0, 1.0))
    lam = draw(st.floats(0.0, 1.0))
    return arr(), arr(), arr(), flags(), flags(), gamma, lam


# gamma and lambda only enter arithmetic, so they can be traced: one compile per [T, B] shape.
_jit_gae = jax.jit(compute_gae)


@settings(deadline=None, max_examples=60)
@given(trajectories())
def test_gae_matches_a_python_reverse_loop(data):
    rewards, values, next_values, terminated, truncated, gamma, lam = data
    adv, ret = _jit_gae(
        jnp.asarray(rewards),
        jnp.asarray(values),
        jnp.asarray(next_values),
        jnp.asarray(terminated),
        jnp.asarray(truncated),
        jnp.float32(gamma),
        jnp.float32(lam),
    )
    want_adv, want_ret = reference_gae(
        rewards.astype(np.float64), values.astype(np.float64), next_values.astype(np.float64), terminated, truncated, gamma, lam
    )
    # float32 vs float64: |A| is at most ~ 30 * T here, so an absolute tolerance of 1e-4 is ample.
    np.testing.assert_allclose(np.asarray(adv), want_adv, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(ret), want_ret, rtol=1e-5, atol=1e-4)


def test_gae_is_jittable_and_batch_columns_are_independent():
    key = jax.random.PRNGKey(0)
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    T, B = 16, 4
    r, v, nv = (jax.random.normal(k, (T, B)) for k in (k1, k2, k3))
    term = jax.random.bernoulli(k4, 0.1, (T, B))
    trunc = jax.random.bernoulli(k5, 0.1, (T, B))
    adv, _ = jax.jit(compute_gae, static_argnums=(5, 6))(r, v, nv, term, trunc, 0.99, 0.95)
    for b in range(B):
        adv_b, _ = _jit_gae(r[:, b : b + 1], v[:, b : b + 1], nv[:, b : b + 1], term[:, b : b + 1], trunc[:, b : b + 1], 0.99, 0.95)
        np.testing.assert_allclose(np.asarray(adv[:, b]), np.asarray(adv_b[:, 0]), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# PPO loss

# Four samples with importance ratios r = [1.5, 1.1, 0.7, 0.7], clip_range 0.2 (so [0.8, 1.2]),
# advantages A = [1, -1, 2, -1] (no normalisation, to keep the numbers by hand):
#   i  r    A   r*A    clip(r)*A        min      clipped?  (|r - 1| > 0.2)
#   0  1.5   1   1.5   1.2 * 1 = 1.2     1.2      yes
#   1  1.1  -1  -1.1   1.1 * -1 = -1.1  -1.1      no
#   2  0.7   2   1.4   0.8 * 2 = 1.6     1.4      yes
#   3  0.7  -1  -0.7   0.8 * -1 = -0.8  -0.8      yes
# surrogate mean = (1.2 - 1.1 + 1.4 - 0.8) / 4 = 0.7 / 4 = 0.175 -> policy loss = -0.175
# clip_fraction = 3 / 4
RATIOS = np.array([1.5, 1.1, 0.7, 0.7])
BEHAVIOUR = np.array([-0.5, -1.0, -2.0, -0.3])
ADV = np.array([1.0, -1.0, 2.0, -1.0])
ENTROPY = np.array([0.5, 0.6, 0.7, 0.8])  # mean 0.65 -> entropy_loss = -0.65
NEW_V = np.array([1.0, 2.0, 3.0, 4.0])
OLD_V = np.array([1.5, 1.5, 3.0, 3.0])
RETURNS = np.array([2.0, 2.0, 2.0, 2.0])


def loss_of(new_log_prob=None, advantages=ADV, clip_range_vf=None, normalize_advantage=False, ent_coef=0.01, vf_coef=0.5, value_loss_kind="half_mse"):
    if new_log_prob is None:
        new_log_prob = BEHAVIOUR + np.log(RATIOS)
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return ppo_loss(
        f32(new_log_prob),
        f32(BEHAVIOUR),
        f32(ENTROPY),
        f32(NEW_V),
        f32(OLD_V),
        f32(advantages),
        f32(RETURNS),
        clip_range=0.2,
        clip_range_vf=clip_range_vf,
        ent_coef=ent_coef,
        vf_coef=vf_coef,
        normalize_advantage=normalize_advantage,
        value_loss_kind=value_loss_kind,
    )


def test_ppo_loss_hand_worked_without_value_clipping():
    total, info = loss_of()
    assert float(info.policy_gradient_loss) == pytest.approx(-0.175, abs=1e-6)
    assert float(info.clip_fraction) == pytest.approx(0.75)
    # approx_kl = mean((r - 1) - log r)  (http://joschu.net/blog/kl-approx.html)
    kl = np.mean([(r - 1) - math.log(r) for r in RATIOS])
    # = ((0.5 - 0.405465) + (0.1 - 0.095310) + 2 * (-0.3 + 0.356675)) / 4 = 0.212575 / 4 = 0.053144
    assert kl == pytest.approx(0.053144, abs=1e-6)
    assert float(info.approx_kl) == pytest.approx(kl, abs=1e-6)
    # value loss = 0.5 * mean((V - R)^2) = 0.5 * mean([1, 0, 1, 4]) = 0.75
    assert float(info.value_loss) == pytest.approx(0.75, abs=1e-6)
    assert float(info.entropy_loss) == pytest.approx(-0.65, abs=1e-6)
    # total = -0.175 + 0.5 * 0.75 + 0.01 * -0.65 = 0.1935
    assert float(total) == pytest.approx(0.1935, abs=1e-6)


def test_ppo_loss_sb3_value_loss_has_no_half():
    # SB3's F.mse_loss (an RL Zoo block's value_loss: mse): mean([1, 0, 1, 4]) = 1.5
    total, info = loss_of(value_loss_kind="mse")
    assert float(info.value_loss) == pytest.approx(1.5, abs=1e-6)
    # total = -0.175 + 0.5 * 1.5 + 0.01 * -0.65 = 0.5685
    assert float(total) == pytest.approx(0.5685, abs=1e-6)


def test_ppo_loss_hand_worked_with_value_clipping():
    # clip_range_vf = 0.2: V_clip = V_old + clip(V - V_old, -0.2, 0.2)
    #   V_old 1.5, V 1 -> 1.3: max((1 - 2)^2 = 1,  (1.3 - 2)^2 = 0.49) = 1
    #   V_old 1.5, V 2 -> 1.7: max((2 - 2)^2 = 0,  (1.7 - 2)^2 = 0.09) = 0.09
    #   V_old 3,   V 3 -> 3:   max(1, 1)                               = 1
    #   V_old 3,   V 4 -> 3.2: max((4 - 2)^2 = 4,  (3.2 - 2)^2 = 1.44) = 4
    # value loss = 0.5 * (1 + 0.09 + 1 + 4) / 4 = 0.5 * 1.5225 = 0.76125
    total, info = loss_of(clip_range_vf=0.2)
    assert float(info.value_loss) == pytest.approx(0.76125, abs=1e-6)
    # total = -0.175 + 0.5 * 0.76125 - 0.0065 = 0.199125
    assert float(total) == pytest.approx(0.199125, abs=1e-6)
    # The policy terms do not depend on the value clip.
    _, plain = loss_of(clip_range_vf=None)
    assert float(info.policy_gradient_loss) == float(plain.policy_gradient_loss)
    # A clip so wide it never binds gives the unclipped loss.
    _, wide = loss_of(clip_range_vf=100.0)
    assert float(wide.value_loss) == pytest.approx(0.75, abs=1e-6)


def test_ppo_loss_gradient_vanishes_where_the_ratio_is_clipped():
    # d(policy loss)/d(log pi_i) = -(1/N) * r_i * A_i where the unclipped term is the minimum,
    # 0 where the clipped (constant) term is: samples 0 and 3 above.
    #   i=1: -(1/4) * 1.1 * -1 = 0.275;   i=2: -(1/4) * 0.7 * 2 = -0.35
    def policy_loss(logp):
        return loss_of(new_log_prob=logp)[1].policy_gradient_loss

    grad = jax.grad(policy_loss)(jnp.asarray(BEHAVIOUR + np.log(RATIOS), jnp.float32))
    np.testing.assert_allclose(np.asarray(grad), [0.0, 0.275, -0.35, 0.0], atol=1e-6)


def test_ppo_loss_at_ratio_one_is_minus_the_mean_advantage():
    _, info = loss_of(new_log_prob=BEHAVIOUR)
    assert float(info.policy_gradient_loss) == pytest.approx(-np.mean(ADV), abs=1e-6)  # = -0.25
    assert float(info.approx_kl) == 0.0 and float(info.clip_fraction) == 0.0


def test_ppo_loss_normalised_advantages_are_affine_invariant():
    # With per-minibatch normalisation, A and 3 A + 5 give the same loss.
    total_a, info_a = loss_of(normalize_advantage=True)
    total_b, info_b = loss_of(advantages=3.0 * ADV + 5.0, normalize_advantage=True)
    assert float(info_a.policy_gradient_loss) == pytest.approx(float(info_b.policy_gradient_loss), abs=1e-5)
    assert float(total_a) == pytest.approx(float(total_b), abs=1e-5)
    # ...and differ from the unnormalised loss (the option does something).
    _, info_raw = loss_of(normalize_advantage=False)
    assert abs(float(info_a.policy_gradient_loss) - float(info_raw.policy_gradient_loss)) > 1e-2
    # Normalised advantages have mean 0, so at ratio 1 the surrogate is 0.
    _, info_one = loss_of(new_log_prob=BEHAVIOUR, normalize_advantage=True)
    assert float(info_one.policy_gradient_loss) == pytest.approx(0.0, abs=1e-6)


def test_adam_runs_on_one_vector_below_256_wide_and_leaf_by_leaf_from_256():
    import optax

    from rlaccel.optim import flatten_if_small

    params = {"b": jnp.arange(4.0), "w": jnp.arange(12.0).reshape(3, 4) / 7}
    grads = jax.tree.map(lambda p: jnp.sin(p) + 0.5, params)
    tx = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-2))
    flat, leafy = flatten_if_small(tx, (64, 192)), flatten_if_small(tx, (256, 64))
    mu = lambda state: state[1][0].mu  # noqa: E731 - chain(clip, adam): Adam's first moment
    assert mu(flat.init(params)).shape == (16,)  # optax.flatten: one vector
    assert jax.tree.structure(mu(leafy.init(params))) == jax.tree.structure(params)
    (u_flat, _), (u_leafy, _) = flat.update(grads, flat.init(params), params), leafy.update(grads, leafy.init(params), params)
    for a, b in zip(jax.tree.leaves(u_flat), jax.tree.leaves(u_leafy)):
        np.testing.assert_allclose(a, b, rtol=1e-6)  # the same update either way


@pytest.mark.parametrize("widths", [(64, 192), (256, 64)])
def test_tree_norm_is_optaxs_norm_and_propagates_nan(widths):
    """One concatenated vector below 256 wide, leaf by leaf from 256: optax's values either way
    (the L2 sum to rounding, the largest magnitude exactly); one NaN parameter makes both NaN."""
    import optax

    from rlaccel.optim import tree_norm

    tree = {"b": jnp.arange(4.0) - 2.5, "w": jnp.sin(jnp.arange(12.0)).reshape(3, 4) * 3}
    np.testing.assert_allclose(tree_norm(tree, widths), optax.tree.norm(tree), rtol=1e-6)
    assert float(tree_norm(tree, widths, ord="inf")) == float(optax.tree.norm(tree, ord="inf")) == float(jnp.max(jnp.abs(tree["w"])))
    bad = {**tree, "b": tree["b"].at[1].set(jnp.nan)}
    assert np.isnan(tree_norm(bad, widths)) and np.isnan(tree_norm(bad, widths, ord="inf"))

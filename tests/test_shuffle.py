"""``rlaccel.shuffle``: PPO's minibatch permutations from packed one-operand sorts."""

import itertools

import jax
import numpy as np
import pytest

from rlaccel import shuffle


@pytest.mark.parametrize("n", [1, 2, 3, 5, 512, 1000, 70_000])
def test_every_row_is_a_permutation(n):
    perms = np.asarray(shuffle.permutations(jax.random.PRNGKey(n), (3, n)))
    assert perms.shape == (3, n) and perms.dtype == np.int32
    for row in perms:
        np.testing.assert_array_equal(np.sort(row), np.arange(n))
    if n >= 5:
        assert not np.array_equal(perms[0], perms[1]), "rows must be independent"


@pytest.mark.parametrize(("n", "rounds"), [(1, 2), (512, 2), (2**16, 2), (2**16 + 1, 3), (2**20, 3), (2**24, 4)])
def test_rounds_until_a_tie_in_every_round_is_as_rare_as_32_bits(n, rounds):
    assert shuffle.rounds_for(n) == rounds


def test_beyond_max_packed_an_argsort_draws_them(monkeypatch):
    assert shuffle.rounds_for(2**24 + 1) is None
    monkeypatch.setattr(shuffle, "MAX_PACKED", 8)
    perms = np.asarray(shuffle.permutations(jax.random.PRNGKey(3), (4, 100)))
    assert perms.dtype == np.int32
    for row in perms:
        np.testing.assert_array_equal(np.sort(row), np.arange(100))
    assert len({tuple(row) for row in perms}) == 4


def test_all_24_orders_of_four_are_equally_likely():
    """A chi-square test at p = 0.001 (23 degrees of freedom: 49.7) over 48,000 draws."""
    perms = np.asarray(shuffle.permutations(jax.random.PRNGKey(0), (48_000, 4)))
    index = {p: i for i, p in enumerate(itertools.permutations(range(4)))}
    counts = np.bincount([index[tuple(p)] for p in perms], minlength=24)
    expected = len(perms) / 24
    assert ((counts - expected) ** 2 / expected).sum() < 49.7, counts


def test_the_rollouts_first_index_lands_anywhere():
    """PPO CartPole's rollout (512 indices): where index 0 goes, over 40,960 permutations, is
    uniform over 16 bins of 32 positions (chi-square, p = 0.001, 15 degrees of freedom: 37.7)."""
    perms = np.asarray(shuffle.permutations(jax.random.PRNGKey(1), (40_960, 512)))
    position = np.argmax(perms == 0, axis=1)
    counts = np.bincount(position // 32, minlength=16)
    expected = len(perms) / 16
    assert ((counts - expected) ** 2 / expected).sum() < 37.7, counts


def test_rounds_break_the_ties_of_few_random_bits():
    """2^20 indices leave 12 random bits a round: one round would keep runs of ~256 tied
    indices in index order (adjacent positions ascending ~99.6 % of the time); three rounds,
    each re-shuffling the last, leave adjacent positions ascending half the time."""
    perm = np.asarray(shuffle.permutations(jax.random.PRNGKey(2), (2**20,)))
    np.testing.assert_array_equal(np.sort(perm), np.arange(2**20))
    ascending = np.mean(perm[1:] > perm[:-1])
    assert abs(ascending - 0.5) < 0.005, ascending

"""Specification of `mpqjax.optim.acquisition`: the pure steps of a k-means TPE proposal."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from mpqjax.optim import parzen
from mpqjax.optim.acquisition import (
    MAX_ENUMERATED,
    enumerate_configurations,
    fingerprint,
    hash_multipliers,
    history_order,
    log_ratio,
    normal_kmeans_thresholds,
    select,
    split,
    trial_outcomes,
    uniform_pool,
)
from mpqjax.optim.space import SearchSpace, categorical, integer, ordinal, real


def history(values, capacity):
    """Objective values [capacity]: ``values`` first, unused (NaN) slots after."""
    return jnp.full(capacity, jnp.nan).at[: len(values)].set(jnp.asarray(values, jnp.float32))


def test_outcomes_and_order_of_a_history():
    y = history([2.0, jnp.nan, 0.0, jnp.inf, 1.0], 8)
    finite, failed, utility = trial_outcomes(y, 5)
    assert np.asarray(finite).tolist() == [True, False, True, False, True, False, False, False]
    assert np.asarray(failed).tolist() == [False, True, False, True, False, False, False, False]
    np.testing.assert_array_equal(np.asarray(utility[:1]), [-2.0])  # minimising: higher utility is lower y
    assert np.asarray(history_order(y, 5))[:3].tolist() == [0, 4, 2]  # worst to best, failed and unused after
    assert np.asarray(history_order(y, 5, maximize=True))[:3].tolist() == [2, 4, 0]


def test_failed_trials_join_the_bad_cluster():
    y = history([0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9, jnp.nan, jnp.inf], 64)
    good, bad = split(y, 12, 4, order=history_order(y, 12))
    good, bad = np.asarray(good), np.asarray(bad)
    assert bad[10] and bad[11] and not good[10] and not good[11]
    assert good[0] and not good[9] and bad[9]  # minimising: 0 is best, 9 is worst
    assert not np.any(good & bad)
    assert not np.any(good[12:] | bad[12:])  # unused slots join neither


def test_g_takes_every_trial_outside_the_best_cluster_or_the_worst_cluster_only():
    y = history([0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, jnp.nan], 16)
    good, rest = (np.asarray(mask) for mask in split(y, 13, 4))
    good_worst, worst = (np.asarray(mask) for mask in split(y, 13, 4, bad="worst"))
    np.testing.assert_array_equal(good, good_worst)  # l(x)'s data do not depend on the choice
    told = np.arange(16) < 13
    np.testing.assert_array_equal(rest, told & ~good)  # "rest": everything else told, the failed trial included
    assert worst[12] and worst[11] and not worst[6] and worst.sum() < rest.sum()  # "worst": the middle is left out
    with pytest.raises(ValueError, match="bad must be one of"):
        split(y, 13, 4, bad="middle")


def test_an_outlier_does_not_claim_the_worst_cluster_with_normal_scores():
    y = jnp.concatenate([jnp.linspace(0.0, 1.0, 19), jnp.array([1000.0])])  # one diverged, heavily penalised trial
    good_v, bad_v = split(y, 20, 4, cluster_on="values", bad="worst")
    good_s, bad_s = split(y, 20, 4, bad="worst")
    assert int(bad_v.sum()) == 1  # the paper's raw values: g(x) is fitted to the outlier alone
    assert int(bad_s.sum()) >= 3 and int(good_s.sum()) <= int(good_v.sum())  # normal scores: balanced tails
    assert bool(good_s[0]) and bool(bad_s[19])


def test_split_of_maximised_values_mirrors_minimised_ones():
    y = history([0.3, 2.0, 1.1, 0.7, 5.0, 4.2, 3.3, 1.9], 10)
    low_good, low_bad = split(y, 8, 3)
    high_good, high_bad = split(-y, 8, 3, maximize=True)
    np.testing.assert_array_equal(np.asarray(low_good), np.asarray(high_good))
    np.testing.assert_array_equal(np.asarray(low_bad), np.asarray(high_bad))
    with pytest.raises(ValueError, match="cluster_on must be"):
        split(y, 8, 3, cluster_on="ranks")


def test_normal_thresholds_are_the_lloyd_max_quantiser_of_a_standard_normal():
    table = normal_kmeans_thresholds(4)
    assert table.shape == (5, 3) and not table.flags.writeable
    np.testing.assert_allclose(table[2, :1], [0.0], atol=1e-4)
    np.testing.assert_allclose(table[3, :2], [-0.6120, 0.6120], atol=1e-3)  # Max (1960), N = 3
    np.testing.assert_allclose(table[4], [-0.9816, 0.0, 0.9816], atol=1e-3)  # Max (1960), N = 4
    assert np.all(np.isinf(table[2, 1:]))
    # each threshold is the midpoint of the conditional means of its two neighbouring intervals
    edges = np.concatenate([[-np.inf], table[4], [np.inf]])
    means = (norm.pdf(edges[:-1]) - norm.pdf(edges[1:])) / (norm.cdf(edges[1:]) - norm.cdf(edges[:-1]))
    np.testing.assert_allclose(table[4], (means[:-1] + means[1:]) / 2, atol=1e-3)


def test_log_ratio_is_the_difference_of_the_two_log_densities():
    space = SearchSpace([ordinal("bits", (2, 4, 8)), real("lr", 1e-3, 1.0, log=True)])
    layout = parzen.make_layout(space.spec())
    observations = space.sample(jax.random.key(0), 6)
    kernels = parzen.kernels(layout, observations, 0.3)
    l_model = parzen.Parzen(parzen.mixture_log_weights(jnp.array([1.0, 1, 0, 0, 0, 0])), kernels)
    g_model = parzen.Parzen(parzen.mixture_log_weights(jnp.array([0.0, 0, 0, 1, 1, 1])), kernels)
    x = space.sample(jax.random.key(1), 5)

    @functools.partial(jax.jit, static_argnames="joint")  # one program per mode: op by op takes seconds
    def both(l_model, g_model, x, joint):
        expected = parzen.log_prob(layout, l_model, x, joint=joint) - parzen.log_prob(layout, g_model, x, joint=joint)
        return log_ratio(layout, l_model, g_model, x, joint=joint), expected

    for joint in (True, False):
        actual, expected = both(l_model, g_model, x, joint=joint)
        np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_fingerprints_are_equal_exactly_for_equal_configurations():
    space = SearchSpace([ordinal("a", (1, 2, 3)), integer("n", 1, 64, log=True), real("x", 0.0, 1.0)])
    spec, multipliers = space.spec(), hash_multipliers(None, 3)
    x = jnp.array([[0.0, np.log(4.0), 0.25], [0.0, np.log(4.0), 0.25], [1.0, np.log(4.0), 0.25],
                   [0.0, np.log(5.0), 0.25], [0.0, np.log(4.0), 0.2500001]])
    hashes = np.asarray(fingerprint(spec, multipliers, x))
    assert hashes.dtype == np.uint32
    assert hashes[0] == hashes[1] and len(set(hashes[1:].tolist())) == 4
    drawn = hash_multipliers(jax.random.key(0), 3)
    assert np.all(np.asarray(drawn) % 2 == 1) and not np.array_equal(np.asarray(drawn), np.asarray(multipliers))
    other = np.asarray(fingerprint(spec, drawn, x))
    assert other[0] == other[1] and not np.array_equal(other, hashes)


def test_select_prefers_new_distinct_feasible_candidates():
    space = SearchSpace([ordinal("a", (0, 1, 2, 3))])
    spec, multipliers = space.spec(), hash_multipliers(None, 1)
    pool = jnp.array([[3.0], [3.0], [2.0], [1.0], [0.0]])
    score = jnp.array([5.0, 4.0, 3.0, 2.0, 1.0])
    told = fingerprint(spec, multipliers, jnp.array([[2.0], [1.0]]))
    assert np.asarray(select(spec, multipliers, pool, score, 2)).ravel().tolist() == [3.0, 2.0]  # no repeat
    avoid = [(told, jnp.array([True, False]))]  # only 2 is taken (the mask drops 1)
    assert np.asarray(select(spec, multipliers, pool, score, 2, avoid=avoid)).ravel().tolist() == [3.0, 1.0]
    feasible = lambda candidates: candidates[:, 0] < 3
    assert np.asarray(select(spec, multipliers, pool, score, 2, avoid=avoid,
                             feasible=feasible)).ravel().tolist() == [1.0, 0.0]
    # an exhausted pool still fills the batch, with the best of what is left
    assert np.asarray(select(spec, multipliers, pool[:2], score[:2], 2)).ravel().tolist() == [3.0, 3.0]


def test_small_index_spaces_are_enumerated_for_the_uniform_pool(bits_space):
    tiny = SearchSpace([ordinal("a", (1, 2, 3)), categorical("b", ("x", "y"))])
    every = enumerate_configurations(tiny)
    assert every.shape == (6, 2) and len({tuple(row) for row in every.tolist()}) == 6
    assert enumerate_configurations(bits_space) is None  # 5^6 > MAX_ENUMERATED
    assert 5**6 > MAX_ENUMERATED >= 5**5
    assert enumerate_configurations(SearchSpace([real("x", 0.0, 1.0)])) is None
    pool, rank = uniform_pool(jax.random.key(0), tiny.spec(), 2, every)
    assert pool is every and rank.shape == (6,)
    pool, rank = uniform_pool(jax.random.key(0), bits_space.spec(), 10, None)
    assert pool.shape == (40, 6) and rank.shape == (40,)  # max(4 n, 32) random draws

"""Specification of `mpqjax.optim.parzen`: Parzen estimators against a NumPy/SciPy reference, normalisation,
sampling."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mpqjax.optim import parzen
from mpqjax.optim.space import SearchSpace, categorical, conditional, integer, optional, ordinal, real

BANDWIDTH = 0.2
PRIOR_WEIGHT = 1.0


@pytest.fixture(scope="module")
def space():
    return SearchSpace([
        ordinal("bits", (2, 3, 4, 6, 8)),
        categorical("act", ("relu", "gelu", "tanh")),
        integer("units", 0, 99),  # 100 values: GRID
        integer("trees", 1, 1000, log=True),  # LOG_INT
        real("dropout", 0.0, 0.5),  # CONTINUOUS
        real("lr", 1e-4, 1e-1, log=True),  # CONTINUOUS on log scale
    ])


def _reference_kernels(space, observations, x):
    """Per-dimension kernel probabilities/densities [C, N + 1, D] of candidates x under each component (NumPy)."""
    spec = space.spec()
    n_obs = observations.shape[0]
    out = np.zeros((x.shape[0], n_obs + 1, len(space)))
    for d, dim in enumerate(space.dimensions):
        low, high = float(spec.low[d]), float(spec.high[d])
        span = high - low
        centres = np.append(observations[:, d], (low + high) / 2)
        sigmas = np.append(np.full(n_obs, BANDWIDTH * span), span)
        for c, value in enumerate(x[:, d]):
            for m, (mu, sigma) in enumerate(zip(centres, sigmas, strict=True)):
                if dim.name == "act":
                    n = 3
                    smoothing = min(1.0, 2 * BANDWIDTH)
                    prob = 1.0 / n if m == n_obs else (1 - smoothing) * (value == mu) + smoothing / n
                elif dim.name == "bits":
                    n = 5
                    grid = np.arange(n)
                    mass = stats.norm.cdf(grid + 0.5, mu, sigma) - stats.norm.cdf(grid - 0.5, mu, sigma)
                    if m == n_obs:  # prior: centred, the whole index range as sigma
                        mass = stats.norm.cdf(grid + 0.5, 2, n) - stats.norm.cdf(grid - 0.5, 2, n)
                    prob = mass[int(value)] / mass.sum()
                else:
                    norm = stats.norm.cdf(high, mu, sigma) - stats.norm.cdf(low, mu, sigma)
                    if dim.name == "units":
                        lower, upper = value - 0.5, value + 0.5
                    elif dim.name == "trees":
                        natural = np.exp(value)
                        lower, upper = max(np.log(natural - 0.5), low), min(np.log(natural + 0.5), high)
                    else:
                        prob = stats.norm.pdf(value, mu, sigma) / norm
                        out[c, m, d] = prob
                        continue
                    prob = (stats.norm.cdf(upper, mu, sigma) - stats.norm.cdf(lower, mu, sigma)) / norm
                out[c, m, d] = prob
    return out


@pytest.fixture(scope="module")
def fitted(space):
    observations = np.asarray(space.sample(jax.random.key(0), 6))
    weights = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    model = parzen.fit(parzen.make_layout(space.spec()), observations, weights, BANDWIDTH, PRIOR_WEIGHT)
    candidates = np.asarray(space.sample(jax.random.key(1), 7))
    reference = _reference_kernels(space, observations, candidates)
    mixture = np.append(weights, PRIOR_WEIGHT)
    return model, candidates, reference, mixture / mixture.sum()


def test_joint_log_density_matches_reference(space, fitted):
    model, candidates, kernels, mixture = fitted
    expected = np.log(np.sum(mixture[None] * np.prod(kernels, axis=2), axis=1))
    actual = parzen.log_prob(parzen.make_layout(space.spec()), model, candidates, joint=True)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=2e-4, atol=2e-4)


def test_independent_log_density_matches_reference(space, fitted):
    model, candidates, kernels, mixture = fitted
    expected = np.sum(np.log(np.sum(mixture[None, :, None] * kernels, axis=1)), axis=1)
    actual = parzen.log_prob(parzen.make_layout(space.spec()), model, candidates, joint=False)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=2e-4, atol=2e-4)


@pytest.fixture(scope="module")
def discrete_space():
    return SearchSpace([ordinal("a", (1, 2, 3)), categorical("b", ("x", "y")), integer("c", 1, 4)])


def _all_configs(space):
    return np.array(list(itertools.product(*[range(d.num_choices) for d in space.dimensions])), dtype=np.float32)


@pytest.mark.parametrize("joint", [True, False])
def test_probabilities_sum_to_one_over_a_discrete_space(discrete_space, joint):
    layout = parzen.make_layout(discrete_space.spec())
    observations = np.array([[0, 1, 3], [2, 0, 0], [1, 1, 1]], dtype=np.float32)
    model = parzen.fit(layout, observations, np.array([1.0, 2.0, 1.0]), 0.3, 0.5)
    total = np.exp(np.asarray(parzen.log_prob(layout, model, _all_configs(discrete_space), joint=joint))).sum()
    assert total == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("joint", [True, False])
def test_sampling_frequencies_follow_the_density(discrete_space, joint):
    layout = parzen.make_layout(discrete_space.spec())
    observations = np.array([[0, 1, 3], [2, 0, 0]], dtype=np.float32)
    model = parzen.fit(layout, observations, np.array([1.0, 1.0]), 0.15, 1.0)
    configs = _all_configs(discrete_space)
    probabilities = np.exp(np.asarray(parzen.log_prob(layout, model, configs, joint=joint)))
    draws = np.asarray(parzen.sample(jax.random.key(2), layout, model, 20000, joint=joint))
    index = {tuple(row): i for i, row in enumerate(configs.tolist())}
    frequencies = np.bincount([index[tuple(row)] for row in draws.tolist()], minlength=len(configs)) / len(draws)
    assert 0.5 * np.abs(frequencies - probabilities).sum() < 0.02  # total-variation distance


def test_continuous_samples_follow_a_truncated_gaussian():
    space = SearchSpace([real("x", 0.0, 1.0)])
    layout = parzen.make_layout(space.spec())
    model = parzen.fit(layout, np.array([[0.9]]), np.array([1.0]), 0.2, 1e-6)  # prior weight ~ 0
    draws = np.asarray(parzen.sample(jax.random.key(3), layout, model, 4000))[:, 0]
    assert draws.min() >= 0.0 and draws.max() <= 1.0
    reference = stats.truncnorm((0.0 - 0.9) / 0.2, (1.0 - 0.9) / 0.2, loc=0.9, scale=0.2)
    assert stats.kstest(draws, reference.cdf).pvalue > 0.01


def test_excluded_observations_do_not_count(discrete_space):
    layout = parzen.make_layout(discrete_space.spec())
    observations = np.array([[0, 1, 3], [2, 0, 0]], dtype=np.float32)
    with_excluded = parzen.fit(layout, observations, np.array([1.0, 0.0]), 0.2)
    alone = parzen.fit(layout, observations[:1], np.array([1.0]), 0.2)
    configs = _all_configs(discrete_space)
    np.testing.assert_allclose(np.asarray(parzen.log_prob(layout, with_excluded, configs)),
                               np.asarray(parzen.log_prob(layout, alone, configs)), rtol=1e-5)


def test_log_prob_is_finite_far_from_every_observation():
    space = SearchSpace([ordinal("a", tuple(range(60)))] * 1 + [real("x", 0.0, 1.0)])
    layout = parzen.make_layout(space.spec())
    model = parzen.fit(layout, np.array([[0.0, 0.0]]), np.array([1.0]), 0.001)
    value = parzen.log_prob(layout, model, jnp.array([[59.0, 1.0]]))
    assert np.isfinite(np.asarray(value)).all()


@pytest.mark.parametrize("bandwidth", [0.25, 0.08, 0.01])
def test_kernel_tables_stay_finite_when_dimensions_have_different_choice_counts(bandwidth):
    from mpqjax.optim.space import SearchSpace, integer, ordinal

    space = SearchSpace([ordinal("bits", (6, 8)), ordinal("w", (0.75, 0.875, 1, 1.125, 1.25)), integer("n", 1, 30)])
    tables = parzen.kernel_tables(parzen.make_layout(space.spec()), bandwidth)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tables))


# -- tree-structured spaces ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree_space(space):
    """`space` with dropout and lr existing only under two of the activations, and trees optional."""
    dims = list(space.dimensions)
    dims[3] = optional(dims[3])
    dims[4] = conditional(dims[4], "act", ["relu", "gelu"])
    dims[5] = conditional(dims[5], "act", ["gelu"])
    return SearchSpace(dims)


@pytest.mark.parametrize("joint", [True, False])
def test_conditional_densities_use_each_dimension_where_it_is_active(space, tree_space, joint):
    # joint: an observation lacking a dimension counts with the prior kernel there; independent: each dimension's
    # mixture is fitted over the observations that have it; a candidate's missing dimensions count for nothing
    observations = np.array(tree_space.sample(jax.random.key(3), 8))
    observations[1, 3] = observations[6, 3] = np.nan  # two trials without the optional "trees"
    candidates = np.asarray(tree_space.sample(jax.random.key(4), 9))
    weights = np.array([1.0, 1, 0, 1, 1, 0, 1, 1])
    model = parzen.fit(parzen.make_layout(tree_space.spec()), observations, weights, BANDWIDTH, PRIOR_WEIGHT)
    kernels = _reference_kernels(space, np.nan_to_num(observations), np.nan_to_num(candidates))  # [C, N + 1, D]
    has = np.append(~np.isnan(observations), np.ones((1, len(space)), bool), axis=0)  # [N + 1, D]
    kernels = np.where(has[None], kernels, kernels[:, -1:, :])  # the prior kernel where an observation lacks one
    kernels = np.where(np.isnan(candidates)[:, None, :], 1.0, kernels)
    mixture = np.append(weights, PRIOR_WEIGHT)
    if joint:
        expected = np.log((kernels.prod(-1) * mixture / mixture.sum()).sum(-1))
    else:
        per_dimension = mixture[:, None] * has
        per_dimension = per_dimension / per_dimension.sum(0)
        expected = np.log((kernels * per_dimension[None]).sum(1)).sum(-1)
    actual = parzen.log_prob(parzen.make_layout(tree_space.spec()), model, candidates, joint=joint)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-4, atol=1e-4)


def test_a_flat_space_is_unchanged_by_the_conditional_path(space, fitted):
    model, candidates, reference, mixture = fitted
    layout = parzen.make_layout(space.spec(), conditional=True)  # the conditional code on data without NaN
    observations_model = parzen.Parzen(model.log_weights, parzen.kernels(layout, _observations(space), BANDWIDTH))
    for joint in (True, False):
        np.testing.assert_allclose(
            np.asarray(parzen.log_prob(layout, observations_model, candidates, joint=joint)),
            np.asarray(parzen.log_prob(parzen.make_layout(space.spec()), model, candidates, joint=joint)),
            rtol=1e-5, atol=1e-5)


def _observations(space):
    return np.asarray(space.sample(jax.random.key(0), 6))  # the `fitted` fixture's observations


def test_the_prior_kernel_of_a_weighted_categorical_is_its_weights():
    space = SearchSpace([categorical("k", ("a", "b", "c"), weights=(0.2, 0.5, 0.3))])
    _, prior = parzen.kernel_tables(parzen.make_layout(space.spec()), BANDWIDTH)
    np.testing.assert_allclose(np.exp(np.asarray(prior[0, :3])), [0.2, 0.5, 0.3], rtol=1e-5)

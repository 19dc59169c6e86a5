"""Allocation of one option per item under additive budgets: the exact ILP and the rate-distortion bisection."""

import itertools

import numpy as np
import pytest

from mpqjax.optim import allocation


def brute_force(loss, costs, budgets, allowed=None):
    """The best feasible choice by enumeration (None if none is feasible)."""
    items, options = loss.shape
    allowed = np.ones(loss.shape, bool) if allowed is None else allowed
    best = None
    for choice in itertools.product(range(options), repeat=items):
        choice = np.asarray(choice)
        if not allowed[np.arange(items), choice].all():
            continue
        if (costs[:, np.arange(items), choice].sum(axis=1) <= budgets).all():
            value = loss[np.arange(items), choice].sum()
            if best is None or value < best[0]:
                best = (value, choice)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_ilp_matches_brute_force_on_small_tables(seed):
    rng = np.random.default_rng(seed)
    loss = rng.random((5, 4)) * 10.0 ** rng.uniform(-9, 2)  # HAWQ's sensitivities can be tiny: scale-free
    costs = rng.random((2, 5, 4)) * 10
    budgets = rng.random(2) * 15 + 10
    allowed = rng.random((5, 4)) < 0.8
    allowed[:, 0] = True
    expected = brute_force(loss, costs, budgets, allowed)
    if expected is None:
        with pytest.raises(ValueError):
            allocation.solve_ilp(loss, costs, budgets, allowed=allowed)
        return
    choice = allocation.solve_ilp(loss, costs, budgets, allowed=allowed)
    assert allowed[np.arange(5), choice].all()
    assert (costs[:, np.arange(5), choice].sum(axis=1) <= budgets + 1e-9).all()
    assert loss[np.arange(5), choice].sum() == pytest.approx(expected[0], rel=1e-9)


def test_ilp_without_binding_budget_takes_each_items_best():
    loss = np.array([[3.0, 1.0, 2.0], [0.5, 4.0, 0.1]])
    choice = allocation.solve_ilp(loss, np.ones((1, 2, 3)), [np.inf])
    assert choice.tolist() == [1, 2]


def test_ilp_refuses_a_budget_below_the_cheapest_choice():
    costs = np.array([[[8.0, 4.0], [8.0, 4.0]]])
    with pytest.raises(ValueError, match="no choice meets budget 0: the cheapest costs 8"):
        allocation.solve_ilp(np.zeros((2, 2)), costs, [7.0])


def test_malformed_arguments_are_refused():
    with pytest.raises(ValueError, match="item 1 has no allowed option"):
        allocation.solve_ilp(np.zeros((2, 2)), np.ones((1, 2, 2)), [9.0], allowed=[[True, False], [False, False]])
    with pytest.raises(ValueError, match="1 resources but 2 budgets"):
        allocation.solve_ilp(np.zeros((2, 2)), np.ones((1, 2, 2)), [9.0, 9.0])
    with pytest.raises(ValueError, match="finite"):
        allocation.lagrangian_choice([[0.0, np.nan]], [[1.0, 2.0]], 1.0)


def rate_distortion_table(seed, items=30, options=5):
    """Distortion falling and rate rising with the option (bit-widths), like a layer's or channel's curve."""
    rng = np.random.default_rng(seed)
    rate = np.cumsum(rng.uniform(1, 4, (items, options)), axis=1)
    distortion = np.cumsum(rng.uniform(0.1, 3, (items, options))[:, ::-1], axis=1)[:, ::-1]
    return distortion, rate


@pytest.mark.parametrize("seed", range(4))
def test_rate_falls_as_the_multiplier_grows(seed):
    distortion, rate = rate_distortion_table(seed)
    multipliers = np.geomspace(1e-4, 1e3, 60)
    rates = [rate[np.arange(30), allocation.lagrangian_choice(distortion, rate, m)].sum() for m in multipliers]
    assert np.all(np.diff(rates) <= 1e-9)
    distortions = [distortion[np.arange(30), allocation.lagrangian_choice(distortion, rate, m)].sum()
                   for m in multipliers]
    assert np.all(np.diff(distortions) >= -1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_bisection_meets_the_budget_with_the_smallest_multiplier(seed):
    distortion, rate = rate_distortion_table(seed)
    budget = 0.5 * (rate[:, 0].sum() + rate[:, -1].sum())
    choice, multiplier = allocation.bisect_multiplier(distortion, rate, budget)
    assert rate[np.arange(30), choice].sum() <= budget
    slightly_less = allocation.lagrangian_choice(distortion, rate, multiplier * (1 - 1e-6))
    assert rate[np.arange(30), slightly_less].sum() > budget  # any smaller multiplier breaks the budget


def test_bisection_is_optimal_for_the_rate_it_reaches():
    distortion, rate = rate_distortion_table(7, items=5, options=4)
    budget = 0.6 * rate.sum(axis=0)[-1]
    choice, _ = allocation.bisect_multiplier(distortion, rate, budget)
    reached = rate[np.arange(5), choice].sum()
    best = brute_force(distortion, rate[None], np.array([reached]))
    assert distortion[np.arange(5), choice].sum() == pytest.approx(best[0])


def test_bisection_keeps_the_unconstrained_choice_when_it_fits():
    distortion, rate = rate_distortion_table(0)
    choice, multiplier = allocation.bisect_multiplier(distortion, rate, rate.sum())
    assert multiplier == 0.0 and choice.tolist() == np.argmin(distortion, axis=1).tolist()


def test_bisection_refuses_an_unreachable_budget():
    distortion, rate = rate_distortion_table(0)
    with pytest.raises(ValueError, match="cheapest rate"):
        allocation.bisect_multiplier(distortion, rate, rate[:, 0].sum() - 1)

"""Specification of mpqjax.report.pareto: the Pareto front of accuracy against cost, against a brute-force reference."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpqjax import report


def brute_force_front(accuracy, cost):
    """Reference: O(n^2) domination check; of identical points only the first counts; sorted by cost."""
    valid = [i for i in range(len(accuracy)) if accuracy[i] is not None and cost[i] is not None
             and math.isfinite(accuracy[i]) and math.isfinite(cost[i])]
    front = []
    for i in valid:
        dominated = any(accuracy[j] >= accuracy[i] and cost[j] <= cost[i]
                        and (accuracy[j] > accuracy[i] or cost[j] < cost[i]) for j in valid)
        duplicate = any(j < i and accuracy[j] == accuracy[i] and cost[j] == cost[i] for j in valid)
        if not dominated and not duplicate:
            front.append(i)
    return sorted(front, key=lambda i: (cost[i], i))


# Few distinct values, so ties in accuracy, in cost and in both are common.
values = st.one_of(st.none(), st.just(math.nan), st.just(math.inf), st.sampled_from([0.0, 0.25, 0.5, 1.0]),
                   st.floats(0, 1))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(values, values), max_size=25))
def test_pareto_front_matches_brute_force(points):
    accuracy, cost = [p[0] for p in points], [p[1] for p in points]
    front = report.pareto_front(accuracy, cost)
    assert front.dtype.kind == "i"
    assert front.tolist() == brute_force_front(accuracy, cost)
    # Along the front cost rises and accuracy strictly rises.
    assert all(cost[a] < cost[b] and accuracy[a] < accuracy[b] for a, b in zip(front[:-1], front[1:], strict=True))


def test_pareto_front_examples():
    assert report.pareto_front([0.9, 0.8, 0.95, None], [2.0, 3.0, 5.0, 1.0]).tolist() == [0, 2]
    assert report.pareto_front([0.9, 0.9, 0.9], [1.0, 1.0, 2.0]).tolist() == [0]  # identical: the first one
    assert report.pareto_front([0.5, 0.9], [1.0, 1.0]).tolist() == [1]  # same cost: the more accurate
    assert report.pareto_front([None, math.nan], [1.0, 2.0]).tolist() == []
    assert report.pareto_front([], []).tolist() == []
    with pytest.raises(ValueError, match="same length"):
        report.pareto_front([0.5, 0.6], [1.0])

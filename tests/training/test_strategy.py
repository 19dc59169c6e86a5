"""Specification of mpqjax.training.strategy: the measured choice of population size and strategy."""

import json

import pytest

from mpqjax.training import strategy


def test_choose_measures_the_candidates_and_prefers_the_smaller_population(masked_mlp, digits):
    choice = strategy.choose(masked_mlp, digits, batch_size=128, steps_per_configuration=10, populations=[1, 2],
                             strategies=("sequential", "vmap"), repeats=1, tolerance=0.0)
    assert [(m["population"], m["strategy"]) for m in choice.measurements] == [(1, "sequential"), (2, "vmap")]
    fastest = max(choice.measurements, key=lambda m: m["configurations_per_hour"])
    assert (choice.population, choice.strategy) == (fastest["population"], fastest["strategy"])
    for m in choice.measurements:
        assert m["configurations_per_hour"] == pytest.approx(3600 * m["population"] / (m["seconds_per_step"] * 10))
    anything = strategy.choose(masked_mlp, digits, batch_size=128, steps_per_configuration=10, populations=[1, 2],
                               strategies=("sequential", "vmap"), repeats=1, tolerance=1.0)
    assert anything.population == 1 and json.loads(json.dumps(anything.to_dict()))["strategy"] == "sequential"
    assert anything.max_population >= 2 and anything.to_dict()["max_population"] == anything.max_population


def test_choose_refuses_unknown_strategies_and_an_empty_set_of_candidates(masked_mlp, digits):
    with pytest.raises(ValueError, match="strategy must be one of sequential, vmap, scan, got 'pmap'"):
        strategy.choose(masked_mlp, digits, batch_size=128, steps_per_configuration=10, strategies=("pmap",))
    with pytest.raises(ValueError, match="no strategy to measure"):  # vmap of one member is not a candidate
        strategy.choose(masked_mlp, digits, batch_size=128, steps_per_configuration=10, populations=[1],
                        strategies=("vmap",), repeats=1)

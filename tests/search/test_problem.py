"""Specification of mpqjax.search.problem: limits in absolute units, the unpruned space, the attainability check
that refuses impossible limits, and a configuration's cost record and objective."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from mpqjax import cost as cost_model
from mpqjax.nn import models
from mpqjax.search.config import SearchConfig
from mpqjax.search.problem import COST_FIELDS, Problem, check_attainable, config_limits, full_space


@pytest.fixture(scope="module")
def table():
    return models.layer_table("digits_cnn")


@pytest.fixture(scope="module")
def target():
    return cost_model.load_target("fpga")


def test_limits_combine_absolute_values_and_reductions_against_fip16(table, target):
    fip16 = cost_model.fip16_size_bytes(table)
    limits = config_limits(SearchConfig(min_size_reduction=4.0, max_size_bytes=fip16 / 5), table, target)
    assert limits.size_bytes == pytest.approx(fip16 / 5)  # the stricter one
    limits = config_limits(SearchConfig(min_size_reduction=4.0, max_size_bytes=fip16 / 3), table, target)
    assert limits.size_bytes == pytest.approx(fip16 / 4)
    limits = config_limits(SearchConfig(min_size_reduction=None), table, target)
    assert limits.to_dict()["size_bytes"] is None


def test_a_speedup_limit_is_a_latency_limit_against_fip16(table, target):
    ones = np.ones(len(table))
    fip16_latency = float(cost_model.cost(table, np.full(len(table), 16), ones, target).latency_seconds)
    limits = config_limits(SearchConfig(min_size_reduction=None, min_speedup=2.0, max_energy_joules=1e-3,
                                        min_throughput=50.0), table, target)
    assert limits.latency_seconds == pytest.approx(fip16_latency / 2)
    assert limits.energy_joules == pytest.approx(1e-3) and limits.throughput_per_second == pytest.approx(50.0)


def test_the_full_space_takes_every_bit_width_except_the_fixed_layers(table):
    space = full_space(SearchConfig(bits=(8, 4, 2), fixed_bits=(("conv1", 8),)), table).space
    choices = {dimension.name: set(dimension.choices) for dimension in space.dimensions}
    assert choices.pop("bits/conv1") == {8}
    assert all(values == {8, 4, 2} for name, values in choices.items() if name.startswith("bits/"))
    assert all(values == set(SearchConfig.widths) for name, values in choices.items() if name.startswith("width/"))
    with pytest.raises(ValueError, match=r"fixed_bits names unknown layers \['conv9'\]; layers are"):
        full_space(SearchConfig(fixed_bits=(("conv9", 8),)), table)


@pytest.mark.parametrize("settings, message", [
    (dict(max_size_bytes=1000.0), "the smallest possible size is .* kB, above the limit 1 kB"),
    (dict(min_speedup=1000.0), "the smallest possible latency is .*, above the limit"),
    (dict(min_throughput=1e12), "the highest possible throughput is .* inferences/s, below the limit"),
])
def test_limits_no_configuration_meets_are_refused(table, target, settings, message):
    config = SearchConfig(**settings)
    with pytest.raises(ValueError, match=message):
        check_attainable(full_space(config, table), target, config_limits(config, table, target), "")


def test_attainable_limits_pass(table, target):
    config = SearchConfig()
    check_attainable(full_space(config, table), target, config_limits(config, table, target), "")


@pytest.fixture(scope="module")
def problem(table, target):
    config = SearchConfig(prune=False)
    space = full_space(config, table)
    return Problem(config, None, table, target, config_limits(config, table, target), None, None, None, space)


def test_a_feasible_configuration_scores_its_accuracy(problem, table):
    bits, widths = np.full(len(table), 2), np.ones(len(table), np.float32)
    record = problem.cost_record(bits, widths, 0.9)
    assert record["feasible"] and record["objective"] == pytest.approx(0.9)
    assert record["bits"] == [2] * len(table) and record["widths"] == [1.0] * len(table)
    cost = cost_model.cost(table, bits, widths, problem.target)
    for name in COST_FIELDS:
        assert record[name] == pytest.approx(float(getattr(cost, name)), rel=1e-6)


def test_a_configuration_over_a_limit_is_penalised_and_infeasible(problem, table):
    bits, widths = np.full(len(table), 8), np.full(len(table), 1.25, np.float32)
    record = problem.cost_record(bits, widths, 0.9)
    over = record["size_bytes"] / problem.limits.size_bytes - 1
    assert not record["feasible"] and over > 0
    assert record["objective"] == pytest.approx(0.9 - problem.config.penalty * over, rel=1e-5)


@pytest.mark.parametrize("pick", [min, max])
def test_the_optimisers_feasibility_agrees_with_the_records(problem, pick):
    space = problem.layer_space.space
    config = {dimension.name: pick(dimension.choices) for dimension in space.dimensions}
    feasible = bool(problem.feasible_fn()(space.values(jnp.asarray(space.encode(config)))))
    assert feasible == problem.cost_record(*problem.layer_space.to_arrays(config), 0.9)["feasible"]
    assert feasible == (pick is min)


def test_a_failed_accuracy_has_no_objective(problem, table):
    record = problem.cost_record(np.full(len(table), 4), np.ones(len(table)), math.nan)
    assert record["objective"] is None and record["validation_accuracy"] is None


def test_layer_rows_split_the_configuration_by_layer(problem, table):
    bits, widths = np.full(len(table), 4), np.ones(len(table), np.float32)
    rows = problem.layer_rows(bits, widths)
    assert [row["name"] for row in rows] == list(table.names)
    assert sum(row["size_bytes"] for row in rows) == pytest.approx(problem.cost_record(bits, widths, 1.0)["size_bytes"],
                                                                   rel=1e-5)
    assert [row["weights"] for row in rows] == [layer.weights for layer in table]

"""Specification of mpqjax.search.problem: limits in absolute units, the unpruned space, the attainability check
that refuses impossible limits, and a configuration's cost record and objective."""

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest

from mpqjax import cost as cost_model
from mpqjax import sensitivity
from mpqjax.nn import models
from mpqjax.search import objective
from mpqjax.search.config import SearchConfig
from mpqjax.search.problem import COST_FIELDS, Problem, cheapest_pruning, check_attainable, config_limits, full_space


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


def test_a_bit_operations_limit_counts_macs_times_both_bit_widths(table, target):
    limits = config_limits(SearchConfig(min_size_reduction=None, max_bops=5e6), table, target)
    assert limits.bops == 5e6 and limits.to_dict()["bops"] == 5e6
    bits, widths = np.full(len(table), 2), np.ones(len(table), np.float32)
    cost = cost_model.cost(table, bits, widths, target)
    assert float(cost.bops) == pytest.approx(float(np.sum(cost.layer_macs)) * 4)
    assert bool(objective.is_feasible(cost, limits)) == (float(cost.bops) <= 5e6)


def test_the_full_space_takes_every_bit_width_except_the_fixed_layers(table):
    space = full_space(SearchConfig(bits=(8, 4, 2), fixed_bits=(("conv1", 8),)), table).space
    choices = {dimension.name: set(dimension.choices) for dimension in space.dimensions}
    assert choices.pop("bits/conv1") == {8}
    assert all(values == {8, 4, 2} for name, values in choices.items() if name.startswith("bits/"))
    assert all(values == set(SearchConfig.widths) for name, values in choices.items() if name.startswith("width/"))
    with pytest.raises(ValueError, match=r"fixed_bits names unknown layers \['conv9'\]; layers are"):
        full_space(SearchConfig(fixed_bits=(("conv9", 8),)), table)


@pytest.mark.parametrize("settings, message", [
    (dict(max_size_bytes=1000.0), "the smallest possible size is .* kB, above the limit 1 kB: relax the limit or "
                                  "allow fewer bits / narrower widths"),
    (dict(min_speedup=1000.0), "the smallest possible latency is .*, above the limit"),
    (dict(min_throughput=1e12), "the highest possible throughput is .* inferences/s, below the limit"),
    (dict(max_energy_joules=1e-9), "the smallest possible energy is .* uJ, above the limit 0.001 uJ"),
    (dict(max_bops=1e3), "the smallest possible bit-operations is .* M bit-operations, above the limit 0.001 M"),
    (dict(max_size_bytes=10e3, fixed_bits=(("conv3", 8),)), r"the smallest possible size is 24 kB, above the limit "
     r"10 kB, with conv3 at least 8 bits \(\{8\}\): relax the limit or allow those layers fewer bits"),
])
def test_limits_no_configuration_meets_are_refused_with_the_limits(table, target, settings, message):
    config = SearchConfig(**{"min_size_reduction": None, **settings})
    with pytest.raises(ValueError, match=message):
        config_limits(config, table, target)


def test_attainable_limits_pass(table, target):
    config = SearchConfig()
    check_attainable(full_space(config, table), target, config_limits(config, table, target), "")


def _cheapest(layer_space, target, name):
    """``name`` of the space's configuration of the smallest bits and widths."""
    cheapest = {dimension.name: min(dimension.choices) for dimension in layer_space.space.dimensions}
    return float(getattr(cost_model.cost(layer_space.table, *layer_space.to_arrays(cheapest), target), name))


def test_a_limit_every_pruning_breaks_is_refused_before_training_and_names_what_keeps_it_up(table, target):
    # 8.5 kB is above the unpruned space's smallest model (every layer at 2 bits, width 0.75: 8.45 kB), but each of
    # the four clusters takes a layer, so some layer keeps 6 bits ({8, 6}) and another 3 ({6, 4, 3})
    config = SearchConfig(max_size_bytes=8.5e3, min_size_reduction=None)
    with pytest.raises(ValueError, match=r"the smallest possible size after any Hessian pruning is 8.618 kB, above "
                       r"the limit 8.5 kB: each of the 4 sensitivity clusters gets a layer, so at best conv1 at "
                       r"least 6 bits \(\{8, 6\}\), head at least 3 bits \(\{6, 4, 3\}\); relax the limit, give "
                       r"the most sensitive clusters fewer bits \(bit sets\) or search without pruning"):
        config_limits(config, table, target)
    # without pruning, with smaller sets, or with a little more room, it can be met
    config_limits(SearchConfig(max_size_bytes=8.5e3, min_size_reduction=None, prune=False), table, target)
    config_limits(SearchConfig(max_size_bytes=8.5e3, min_size_reduction=None, bit_sets=((2, 3), (2,))), table,
                  target)
    config_limits(SearchConfig(max_size_bytes=8.7e3, min_size_reduction=None), table, target)
    # a one-shot method does not prune its space (dnas searches widths too: 2 bits at width 0.75 meets it)
    config_limits(SearchConfig(max_size_bytes=8.5e3, min_size_reduction=None, method="dnas"), table, target)


@pytest.mark.parametrize("name", ["size_bytes", "latency_seconds", "energy_joules"])
def test_the_cheapest_pruning_is_the_best_case_over_every_assignment_of_clusters(table, target, name):
    # digits_cnn has 4 free layers and 4 bit sets: every pruning gives each set one layer (a permutation)
    config = SearchConfig(bit_sets=((8, 6), (6, 4, 3), (4, 3, 2), (3, 2)))
    bound = _cheapest(cheapest_pruning(config, table, target, name), target, name)
    brute = min(_cheapest(sensitivity.layer_space(table, [config.bit_sets[j] for j in order], widths=config.widths),
                          target, name) for order in itertools.permutations(range(4)))
    assert bound == pytest.approx(brute, rel=1e-6)
    # with two fixed layers, two free layers take the first two sets (one each)
    fixed = SearchConfig(fixed_bits=(("conv1", 8), ("head", 8)))
    pruned = cheapest_pruning(fixed, table, target, name)
    choices = [sorted(d.choices) for d in pruned.space.dimensions if d.name.startswith("bits/")]
    assert choices[0] == [8] and choices[3] == [8] and sorted(map(tuple, choices[1:3])) == [(3, 4, 6), (6, 8)]
    assert cheapest_pruning(SearchConfig(fixed_bits=tuple((n, 8) for n in table.names)), table, target, name) is None


@pytest.mark.parametrize("seed", range(6))
def test_no_pruning_the_traces_give_is_cheaper_than_the_cheapest_pruning(table, target, seed):
    traces = np.random.default_rng(seed).lognormal(0.0, 2.0, len(table))
    config = SearchConfig()
    pruned = sensitivity.prune_space(table, traces, bit_sets=config.bit_sets, widths=config.widths).layer_space
    for name in ("size_bytes", "latency_seconds", "energy_joules"):
        best_case = _cheapest(cheapest_pruning(config, table, target, name), target, name)
        assert _cheapest(pruned, target, name) >= best_case * (1 - 1e-6)


def test_after_pruning_the_message_names_the_layers_the_pruning_raised(table, target):
    pruned = sensitivity.layer_space(table, [(3, 2), (8, 6), (6, 4, 3), (4, 3, 2)])
    limits = config_limits(SearchConfig(max_size_bytes=9e3, min_size_reduction=None, prune=False), table, target)
    with pytest.raises(ValueError, match=r"the smallest possible size after Hessian pruning is .* kB, above the limit "
                       r"9 kB: the pruning left conv2 at least 6 bits \(\{8, 6\}\), conv3 at least 3 bits "
                       r"\(\{6, 4, 3\}\); relax the limit, give those layers fewer bits"):
        check_attainable(pruned, target, limits, " after Hessian pruning")


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

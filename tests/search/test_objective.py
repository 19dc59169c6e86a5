"""Specification of mpqjax.search.objective: limits, relative violations, feasibility and the Lagrangian objective."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpqjax import cost as cost_model
from mpqjax.nn import models
from mpqjax.search import objective


class FakeCost:
    def __init__(self, size, latency, energy=1.0, throughput=None, bops=1.0):
        self.size_bytes = jnp.asarray(size, jnp.float32)
        self.bops = jnp.asarray(bops, jnp.float32)
        self.latency_seconds = jnp.asarray(latency, jnp.float32)
        self.energy_joules = jnp.asarray(energy, jnp.float32)
        self.throughput_per_second = 1.0 / self.latency_seconds if throughput is None else jnp.asarray(throughput)


def test_unset_limits_never_bind():
    limits = objective.make_limits()
    cost = FakeCost(1e9, 1e3, 1e6)
    assert np.all(np.asarray(objective.violations(cost, limits)) == 0)
    assert bool(objective.is_feasible(cost, limits))
    assert float(objective.objective(0.9, cost, limits)) == pytest.approx(0.9)
    assert limits.to_dict() == dict.fromkeys(objective.LIMIT_NAMES)


def test_violations_are_relative_excesses_in_limit_order():
    limits = objective.make_limits(size_bytes=100, latency_seconds=2.0, energy_joules=4.0, throughput_per_second=1.0,
                                   bops=1e6)
    cost = FakeCost(size=150, latency=4.0, energy=2.0, bops=1.1e6)  # size 50% over, latency 100% over,
    # throughput 0.25 < 1, bit-operations 10% over
    np.testing.assert_allclose(np.asarray(objective.violations(cost, limits)), [0.5, 1.0, 0.0, 0.75, 0.1], rtol=1e-6)
    assert not bool(objective.is_feasible(cost, limits))
    # accuracy - multiplier * sum of violations; per-limit multipliers weigh each one
    assert float(objective.objective(0.9, cost, limits, 2.0)) == pytest.approx(0.9 - 2.0 * 2.35)
    assert float(objective.objective(0.9, cost, limits, [1.0, 0.0, 0.0, 0.0, 0.0])) == pytest.approx(0.4)
    assert float(objective.objective(0.9, cost, limits, [0.0, 0.0, 0.0, 0.0, 1.0])) == pytest.approx(0.8)


def test_a_configuration_on_the_limit_is_feasible_and_unpenalised():
    limits = objective.make_limits(size_bytes=100)
    cost = FakeCost(size=100, latency=1.0)
    assert bool(objective.is_feasible(cost, limits))
    assert float(objective.objective(0.8, cost, limits)) == pytest.approx(0.8)


def test_failed_trials_stay_nan():
    limits = objective.make_limits(size_bytes=100)
    assert math.isnan(float(objective.objective(math.nan, FakeCost(50, 1.0), limits)))


def test_works_on_real_costs_under_jit_and_vmap():
    table = models.layer_table("digits_cnn")
    limits = objective.make_limits(size_bytes=cost_model.fip16_size_bytes(table) / 6)
    bits = jnp.asarray([[8, 8, 8, 8], [2, 2, 2, 2], [4, 3, 3, 4], [8, 3, 2, 8]], jnp.float32)
    widths = jnp.ones((4, 4))

    @jax.jit
    def score(bits, widths):
        cost = cost_model.cost(table, bits, widths)
        return (objective.objective(jnp.full(bits.shape[0], 0.9), cost, limits), objective.is_feasible(cost, limits),
                cost.size_reduction_vs_fip16)

    values, feasible, reduction = score(bits, widths)
    assert feasible.tolist() == (np.asarray(reduction) >= 6 - 1e-5).tolist() == [False, True, False, True]
    assert float(values[1]) == pytest.approx(0.9) and float(values[0]) < 0.9 - 1.0


@pytest.mark.parametrize("limit", [{"size_bytes": -1}, {"latency_seconds": 0}, {"energy_joules": math.inf},
                                   {"throughput_per_second": math.nan}, {"size_bytes": "10"}, {"size_bytes": True}])
def test_bad_limits_are_refused_by_name(limit):
    name = next(iter(limit))
    with pytest.raises(ValueError, match=name):
        objective.make_limits(**limit)

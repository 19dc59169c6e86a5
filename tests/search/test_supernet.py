"""Specification of mpqjax.search.supernet: the relaxed methods' supernet trained under the expected cost, its
configuration valid, within the limits and the same for a seed, its divergence reported, the limits it weighs."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpqjax.search import channels, objective, relaxed, supernet

CHANNELS = {"dense1": 32, "dense2": 16, "head": 10}


@pytest.mark.parametrize("method", ["mixprec", "dnas"])
def test_a_proposal_is_valid_within_the_limits_and_the_same_for_a_seed(method, relaxed_problem):
    problem = relaxed_problem(widths=(1.0,) if method == "mixprec" else (0.75, 1.0, 1.25), method=method)
    proposal, details = supernet.propose_relaxed(method, problem, jax.random.key(0))
    again, _ = supernet.propose_relaxed(method, problem, jax.random.key(0))
    assert proposal == again
    cost = problem.cost(proposal.bits, proposal.widths, proposal.channel_bits)
    assert bool(objective.is_feasible(cost, problem.limits))
    assert details["steps"] == len(problem.dataset.train) // (2 if method == "dnas" else 1) // 128
    assert set(details["multipliers"]) == {"size_bytes"} and details["multipliers"]["size_bytes"] >= 0
    assert set(details["fitted"]) == {"lowered", "raised"}
    assert np.isfinite(details["final_cross_entropy"])
    if method == "mixprec":
        layout = channels.channel_layout(problem.table, proposal.channel_bits)  # valid: checked there
        np.testing.assert_array_equal(layout.widths, proposal.widths)
        assert set(proposal.channel_bits) == set(CHANNELS)
        assert 0 not in proposal.channel_bits["head"]
    else:
        assert proposal.channel_bits is None
        assert set(proposal.widths.tolist()) <= {0.75, 1.0, 1.25}


def test_a_diverging_supernet_fails_with_the_reason(relaxed_problem):
    problem = relaxed_problem(widths=(1.0,), method="mixprec", finetune_learning_rate=1e30)
    with pytest.raises(ValueError, match=r"mixprec: the supernet's training diverged at step \d+ of \d+"):
        supernet.propose_relaxed("mixprec", problem, jax.random.key(0))


def test_cost_ratios_weigh_only_the_set_limits():
    limits = objective.make_limits(size_bytes=100.0, throughput_per_second=1e3)
    # what cost_ratios reads of a mpqjax.cost.Cost
    cost = types.SimpleNamespace(size_bytes=jnp.asarray(50.0), latency_seconds=jnp.asarray(2e-3),
                                 energy_joules=jnp.asarray(2.0), bops=jnp.asarray(2.0))
    ratios = supernet.cost_ratios(cost, limits)
    np.testing.assert_allclose(ratios, [0.5, 0.0, 0.0, 2.0, 0.0])


@pytest.mark.parametrize("method", ["mixprec", "dnas"])
def test_a_latency_limit_is_the_cost_the_supernet_weighs_and_its_configuration_meets(method, relaxed_problem):
    problem = relaxed_problem(widths=(1.0,) if method == "mixprec" else (0.75, 1.0, 1.25), method=method,
                              min_size_reduction=None, min_speedup=1.5)
    proposal, details = supernet.propose_relaxed(method, problem, jax.random.key(0))
    assert set(details["multipliers"]) == set(details["expected_cost_ratio"]) == {"latency_seconds"}
    cost = problem.cost(proposal.bits, proposal.widths, proposal.channel_bits)
    assert float(cost.latency_seconds) <= problem.limits.latency_seconds
    assert bool(objective.is_feasible(cost, problem.limits))



def test_with_soft_limits_the_most_probable_configuration_is_proposed_as_it_is(relaxed_problem):
    problem = relaxed_problem(widths=(0.75, 1.0, 1.25), method="dnas", soft_limits=True)
    proposal, details = supernet.propose_relaxed("dnas", problem, jax.random.key(0))
    space = relaxed.relaxed_space("dnas", problem)
    relaxation, logits, _ = supernet.train_supernet("dnas", problem, space, jax.random.key(0))
    most_probable = relaxation.argmax(logits)
    assert details["fitted"] == {"lowered": 0, "raised": 0}
    np.testing.assert_array_equal(proposal.bits, most_probable.bits)
    np.testing.assert_array_equal(proposal.widths, most_probable.widths)

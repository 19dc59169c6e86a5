"""Specification of mpqjax.search.peers: the one-shot peers' configurations (uniform precision, HAWQ-V3's ILP,
rate-distortion per layer and per channel) from the same problem, and the resource tables they allocate under."""

import dataclasses
import itertools

import jax
import numpy as np
import pytest

from mpqjax import cost as cost_model
from mpqjax.nn import models, quant
from mpqjax.search import objective, peers
from mpqjax.search.config import SearchConfig
from mpqjax.search.problem import Problem, config_limits, full_space
from mpqjax.sensitivity.leaves import leaf_paths
from mpqjax.training import train


def limited(problem, **changes) -> Problem:
    """``problem`` with some limits changed (None: unset)."""
    return dataclasses.replace(problem, limits=objective.make_limits(**{**problem.limits.to_dict(), **changes}))


@pytest.fixture(scope="module")
def problem(digits, trained_float_mlp, masked_mlp):
    """The MLP on digits at a size limit 6x below FiP16, bits-only (widths 1), every layer any of 8, 4, 2 bits."""
    float_model, float_variables, _ = trained_float_mlp(2)
    config = SearchConfig(model="mlp", bits=(8, 4, 2), widths=(1.0,), prune=False, min_size_reduction=6.0,
                          calibration="max")
    table = masked_mlp.table(digits.input_shape)
    target = cost_model.load_target("fpga")
    limits = config_limits(config, table, target)
    return Problem(config, digits, table, target, limits, float_model, float_variables, masked_mlp,
                   full_space(config, table))


def exhaustive(problem, loss):
    """The least total ``loss[l, b]`` over every configuration within the limits (options 2, 4, 8)."""
    options = [2, 4, 8]
    best = None
    for choice in itertools.product(range(3), repeat=len(problem.table)):
        bits = np.asarray([options[c] for c in choice])
        cost = problem.cost(bits, np.ones(len(bits), np.float32))
        if float(cost.size_bytes) <= problem.limits.size_bytes:
            value = loss[np.arange(len(bits)), list(choice)].sum()
            best = value if best is None or value < best else best
    return best


def test_resource_tables_add_up_to_the_cost_model(problem):
    options = np.array([2, 4, 8])
    costs, budgets, names = peers.resource_tables(problem, options)
    assert names == ["size_bytes"] and costs.shape == (1, len(problem.table), 3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        choice = rng.integers(0, 3, len(problem.table))
        size = float(problem.cost(options[choice], np.ones(len(choice), np.float32)).size_bytes)
        # the reference's size (every layer at 2 bits) plus each layer's change equals the model's size
        assert costs[0, np.arange(len(choice)), choice].sum() - budgets[0] == pytest.approx(
            size - problem.limits.size_bytes, rel=1e-5)


def test_a_throughput_limit_is_a_latency_budget(problem):
    costs, budgets, names = peers.resource_tables(limited(problem, throughput_per_second=1e3), [2, 4, 8])
    assert names == ["size_bytes", "latency_seconds"]
    reference = problem.cost(np.full(len(problem.table), 2), np.ones(len(problem.table), np.float32))
    assert budgets[1] == pytest.approx(1e-3 - float(reference.latency_seconds))


def test_hawq_ilp_meets_a_bit_operations_limit_with_the_least_sensitivity(problem):
    ones = np.ones(3, np.float32)
    eights = float(problem.cost(np.full(3, 8), ones).bops)
    bounded = limited(problem, size_bytes=None, bops=0.3 * eights)
    costs, budgets, names = peers.resource_tables(bounded, [2, 4, 8])
    assert names == ["bops"]
    traces = [1.0, 4.0, 0.5]
    (proposal,) = peers.propose("hawq_ilp", bounded, jax.random.key(0), traces_per_weight=traces)
    assert float(problem.cost(proposal.bits, ones).bops) <= 0.3 * eights
    omega = peers.layer_sensitivities(problem, [2, 4, 8], traces)
    best = None
    for choice in itertools.product(range(3), repeat=3):
        bits = np.asarray([[2, 4, 8][c] for c in choice])
        if float(problem.cost(bits, ones).bops) <= 0.3 * eights:
            value = omega[np.arange(3), list(choice)].sum()
            best = value if best is None or value < best else best
    chosen = omega[np.arange(3), [[2, 4, 8].index(b) for b in proposal.bits]].sum()
    assert chosen == pytest.approx(best)


def test_hawq_sensitivity_is_the_trace_per_weight_times_the_squared_quantisation_error(problem):
    traces = np.array([2.0, 3.0, 5.0])
    omega = peers.layer_sensitivities(problem, [2, 8], traces)
    params = problem.float_variables["params"]
    by_path = dict(zip(leaf_paths(params), jax.tree.leaves(params), strict=True))
    kernel = np.asarray(by_path[problem.table[1].weight_path])
    error = float(np.sum((np.asarray(quant.quantize_weights(kernel, 2)) - kernel) ** 2))
    assert omega[1, 0] == pytest.approx(3.0 * error, rel=1e-5)
    assert (omega[:, 1] < omega[:, 0]).all()  # 8 bits perturb less than 2


def test_hawq_ilp_minimises_the_total_sensitivity_within_the_limits(problem):
    traces = [1.0, 4.0, 0.5]
    (proposal,) = peers.propose("hawq_ilp", problem, jax.random.key(0), traces_per_weight=traces)
    omega = peers.layer_sensitivities(problem, [2, 4, 8], traces)
    chosen = omega[np.arange(3), [[2, 4, 8].index(b) for b in proposal.bits]].sum()
    assert chosen == pytest.approx(exhaustive(problem, omega))
    assert (proposal.widths == 1).all()
    assert float(problem.cost(proposal.bits, proposal.widths).size_bytes) <= problem.limits.size_bytes


def test_layer_distortion_is_zero_in_float_and_falls_with_the_bits(problem):
    distortion = peers.layer_distortions(problem, [2, 4, 8, 16], jax.random.key(0))
    assert distortion.shape == (3, 4)
    assert np.allclose(distortion[:, 3], 0.0)  # 16 bits: not quantised, the float outputs
    assert (distortion[:, 0] > distortion[:, 2]).all()


def test_layer_distortion_measures_the_output_change_of_one_quantised_layer(problem):
    distortion = peers.layer_distortions(problem, [4], jax.random.key(0))
    x = peers.calibration_inputs(problem)
    model = problem.quant_model
    variables = models.transfer_variables(jax.random.key(0), model, problem.float_model, problem.float_variables,
                                          input_shape=problem.dataset.input_shape)
    variables = train.calibrate(model, variables, x, bits=np.full(3, 4), widths=np.ones(3), method="max")
    reference = train.predict(model, variables, x, bits=np.full(3, 16), widths=np.ones(3))
    logits = train.predict(model, variables, x, bits=[16, 4, 16], widths=np.ones(3))
    assert distortion[1, 0] == pytest.approx(float(np.mean((logits - reference) ** 2)), rel=1e-5)


def test_rd_layers_spends_the_size_budget_on_the_most_distorting_layers(problem):
    (proposal,) = peers.propose("rd_layers", problem, jax.random.key(0))
    assert float(problem.cost(proposal.bits, proposal.widths).size_bytes) <= problem.limits.size_bytes
    distortion = peers.layer_distortions(problem, [2, 4, 8], jax.random.key(0))
    chosen = distortion[np.arange(3), [[2, 4, 8].index(b) for b in proposal.bits]].sum()
    # a Lagrangian point: no configuration of at most its size has less total distortion
    size = float(problem.cost(proposal.bits, proposal.widths).size_bytes)
    tight = limited(problem, size_bytes=size)
    assert chosen == pytest.approx(exhaustive(tight, distortion))


def test_uniform_proposes_each_bit_width_within_the_limits_highest_first(problem):
    proposals = peers.propose("uniform", problem, jax.random.key(0))
    fitting = [bits for bits in (8, 4, 2) if float(problem.cost(np.full(3, bits), np.ones(3)).size_bytes)
               <= problem.limits.size_bytes]
    assert [int(p.bits[0]) for p in proposals] == fitting and all(len(set(p.bits)) == 1 for p in proposals)
    soft = dataclasses.replace(problem, config=dataclasses.replace(problem.config, soft_limits=True))
    assert [int(p.bits[0]) for p in peers.propose("uniform", soft, jax.random.key(0))] == [8, 4, 2]


def test_one_shot_methods_refuse_what_they_cannot_do(problem):
    with pytest.raises(ValueError, match="'kmeans_tpe' is not a one-shot method"):
        peers.propose("kmeans_tpe", problem, jax.random.key(0))
    with pytest.raises(ValueError, match="hawq_ilp needs the Hessian traces"):
        peers.propose("hawq_ilp", problem, jax.random.key(0))
    two_limits = limited(problem, latency_seconds=1.0)
    with pytest.raises(ValueError, match="rd_layers allocates under one limit, got 2"):
        peers.propose("rd_layers", two_limits, jax.random.key(0))
    tiny = limited(problem, size_bytes=10.0)
    with pytest.raises(ValueError, match="no uniform bit-width of \\[2, 4, 8\\] meets the limits"):
        peers.propose("uniform", tiny, jax.random.key(0))


def test_channel_distortion_is_the_output_change_of_one_quantised_channel(problem):
    distortions = peers.channel_distortions(problem, [2, 8], examples=64)
    assert [rows.shape for rows in distortions] == [(layer.out_channels, 2) for layer in problem.table]
    params = problem.float_variables["params"]
    by_path = dict(zip(leaf_paths(params), jax.tree.leaves(params), strict=True))
    path = problem.table[1].weight_path
    kernel = np.asarray(by_path[path])
    changed = kernel.copy()
    changed[:, 5] = np.asarray(quant.quantize_weights(kernel, 2))[:, 5]  # channel 5 alone, at 2 bits
    flat = {p: (changed if p == path else leaf) for p, leaf in by_path.items()}
    treedef = jax.tree.structure(params)
    x = peers.calibration_inputs(problem, 64)
    others = {k: v for k, v in problem.float_variables.items() if k != "params"}
    apply = lambda p: np.asarray(problem.float_model.apply({"params": p, **others}, x, None, None))  # noqa: E731
    reference = apply(params)
    logits = apply(jax.tree.unflatten(treedef, [flat[p] for p in leaf_paths(params)]))
    assert distortions[1][5, 0] == pytest.approx(float(np.mean((logits - reference) ** 2)), rel=1e-4)
    assert (distortions[1][:, 1] <= distortions[1][:, 0]).all()


def test_rd_channels_gives_each_channel_a_bit_width_within_the_size_limit(problem):
    (proposal,) = peers.propose("rd_channels", problem, jax.random.key(0))
    assert list(proposal.channel_bits) == list(problem.table.names)
    for layer, bits in zip(problem.table, proposal.bits, strict=True):
        row = proposal.channel_bits[layer.name]
        assert len(row) == layer.out_channels and set(row) <= {0, 2, 4, 8} and max(row) == bits
    assert float(problem.cost(proposal.bits, proposal.widths, proposal.channel_bits).size_bytes) \
        <= problem.limits.size_bytes
    # channel-wise, the size is spent where a channel distorts the output most: some layer mixes bit-widths
    assert any(len(set(row)) > 1 for row in proposal.channel_bits.values())


def test_rd_channels_needs_a_size_limit(problem):
    no_size = limited(problem, size_bytes=None)
    with pytest.raises(ValueError, match="rd_channels allocates under a size limit"):
        peers.propose("rd_channels", no_size, jax.random.key(0))


def test_pruning_distortion_is_the_output_change_of_a_switched_off_channel(problem):
    assert peers.prunable_layers(problem.table) == [0, 1]  # the MLP's hidden layers; the head is fixed
    distortions = peers.pruning_distortions(problem, jax.random.key(0), examples=64)
    assert sorted(distortions) == [0, 1] and distortions[0].shape == (32,)
    # hidden channel 3 of the first layer switched off: the second layer reads 0 from it (batch norm's offset
    # included), as if its input row 3 were zero
    params = problem.float_variables["params"]
    second = problem.table[1].weight_path.split("/")[0]
    off = jax.tree.map(np.asarray, params)
    off[second] = {**off[second], "kernel": off[second]["kernel"].copy()}
    off[second]["kernel"][3, :] = 0.0
    x = peers.calibration_inputs(problem, 64)
    others = {k: v for k, v in problem.float_variables.items() if k != "params"}
    apply = lambda p: np.asarray(problem.float_model.apply({"params": p, **others}, x, None, None))  # noqa: E731
    expected = float(np.mean((apply(off) - apply(params)) ** 2))
    assert distortions[0][3] == pytest.approx(expected, rel=1e-4, abs=1e-9)

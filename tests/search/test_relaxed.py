"""Specification of mpqjax.search.relaxed: the gradient-based methods' relaxed choices (mixprec: per-channel bit-widths
or pruned, per-layer activations; dnas: per-layer bit-widths and per-group widths), their model and expected cost
exact at one-hot choices, their argmax valid for the cost model, its fit to the limits, and the refusals."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpqjax.search import channels, objective, relaxed
from mpqjax.training import train

# the MLP's layers: fc1 (32 channels) and fc2 (16) own their channels; the head (10 classes) cannot prune
CHANNELS = {"dense1": 32, "dense2": 16, "head": 10}


@pytest.fixture(scope="module")
def mixprec_problem(relaxed_problem):
    """The MLP on digits, 6x below FiP16, bit-widths 8, 4, 2, widths 1: mixprec's problem."""
    return relaxed_problem(widths=(1.0,), method="mixprec")


@pytest.fixture(scope="module")
def dnas_problem(relaxed_problem):
    """The same with widths 0.75, 1, 1.25: dnas's problem."""
    return relaxed_problem(widths=(0.75, 1.0, 1.25), method="dnas")


def peaked(logits, choose):
    """Logits whose softmax is exactly one-hot: ``choose(row) -> column`` per row, the others 1000 below."""
    rows = np.asarray(logits).reshape(-1, np.shape(logits)[-1])
    peaks = np.full(rows.shape, -1000.0, np.float32)
    for index, row in enumerate(rows):
        peaks[index, choose(index, row)] = 0.0
    return jnp.asarray(peaks.reshape(np.shape(logits)))


def test_mixprec_chooses_per_channel_bits_or_pruning_and_per_layer_activations(mixprec_problem):
    space = relaxed.relaxed_space("mixprec", mixprec_problem)
    assert space.options.tolist() == [2, 4, 8] and space.allowed.all()
    assert space.prunable == (True, True, False)  # the head's channels are the classes
    logits = relaxed.relaxer("mixprec", mixprec_problem, space).init()
    assert logits["act"].shape == (3, 3)
    assert {name: value.shape for name, value in logits["weights"].items()} == {
        name: (channels, 4) for name, channels in CHANNELS.items()}  # pruned, 2, 4, 8 bits


def test_dnas_chooses_per_layer_bits_and_per_group_widths(dnas_problem):
    space = relaxed.relaxed_space("dnas", dnas_problem)
    assert space.widths.tolist() == [0.75, 1.0, 1.25]
    assert space.groups == ((0,), (1,))  # the head is not scalable
    logits = relaxed.relaxer("dnas", dnas_problem, space).init()
    assert logits["bits"].shape == (3, 3) and logits["widths"].shape == (2, 3)


def mixprec_choice(space, rng):
    """A random channel-wise configuration of the MLP as peaked logits: some channels pruned in fc1 and fc2."""
    act = peaked(np.zeros((3, 3)), lambda index, row: int(rng.integers(0, 3)))
    weights = {}
    for index, (name, count) in enumerate(CHANNELS.items()):
        first = 0 if space.prunable[index] else 1
        choice = rng.integers(first, 4, count)
        choice[0] = max(choice[0], 1)  # a layer keeps a channel
        weights[name] = peaked(np.zeros((count, 4)), lambda channel, row, choice=choice: int(choice[channel]))
    return {"act": act, "weights": weights}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixprec_expected_cost_at_one_hot_choices_is_the_channel_wise_cost(mixprec_problem, seed):
    space = relaxed.relaxed_space("mixprec", mixprec_problem)
    relaxation = relaxed.relaxer("mixprec", mixprec_problem, space)
    logits = mixprec_choice(space, np.random.default_rng(seed))
    configuration = relaxation.argmax(jax.tree.map(np.asarray, logits))
    assert 0 in configuration.channel_bits["dense1"] + configuration.channel_bits["dense2"]
    _, expected = relaxation.relax(logits, 1.0, {})
    exact = mixprec_problem.cost(configuration.bits, configuration.widths, configuration.channel_bits)
    for field in ("size_bytes", "latency_cycles", "bops", "energy_joules"):
        assert float(getattr(expected, field)) == pytest.approx(float(getattr(exact, field)), rel=1e-5), field


@pytest.mark.parametrize("seed", [0, 1])
def test_dnas_expected_cost_at_one_hot_choices_is_the_cost_model(dnas_problem, seed):
    rng = np.random.default_rng(seed)
    space = relaxed.relaxed_space("dnas", dnas_problem)
    relaxation = relaxed.relaxer("dnas", dnas_problem, space)
    logits = {"bits": peaked(np.zeros((3, 3)), lambda index, row: int(rng.integers(0, 3))),
              "widths": peaked(np.zeros((2, 3)), lambda index, row: int(rng.integers(0, 3)))}
    configuration = relaxation.argmax(jax.tree.map(np.asarray, logits))
    ranks = {"dense1": jnp.arange(40), "dense2": jnp.arange(20)}
    _, expected = relaxation.relax(logits, 1.0, ranks)
    exact = dnas_problem.cost(configuration.bits, configuration.widths)
    for field in ("size_bytes", "latency_cycles", "bops", "energy_joules"):
        assert float(getattr(expected, field)) == pytest.approx(float(getattr(exact, field)), rel=1e-5), field


def test_the_relaxed_model_at_one_hot_choices_is_the_discrete_channel_wise_model(mixprec_problem, digits):
    problem = mixprec_problem
    space = relaxed.relaxed_space("mixprec", problem)
    relaxation = relaxed.relaxer("mixprec", problem, space)
    logits = mixprec_choice(space, np.random.default_rng(3))
    configuration = relaxation.argmax(jax.tree.map(np.asarray, logits))
    model, shape = problem.quant_model, digits.input_shape
    variables, _ = train.finetune_start(jax.random.key(0), problem.float_model, problem.float_variables, model,
                                        digits, bits=8, widths=1.0, calibration="max")
    relaxation_arrays, _ = relaxation.relax(logits, 1.0, {})
    x = digits.test.x[:32]
    relaxed_logits = model.apply(variables, x, np.full(3, 8.0), np.ones(3), relaxation=relaxation_arrays)
    layout = channels.channel_layout(problem.table, configuration.channel_bits)
    discrete = model.with_weight_bits(variables, channels.weight_bits_of(model, configuration.channel_bits,
                                                                         configuration.bits, shape), shape)
    discrete = model.with_quant_variables(discrete, shape, ranks=layout.ranks)
    exact_logits = model.apply(discrete, x, configuration.bits.astype(np.float32), layout.widths)
    np.testing.assert_allclose(relaxed_logits, exact_logits, rtol=1e-5, atol=1e-5)


def at_the_limit(problem, relaxation, logits, configuration) -> bool:
    """Within the limits, and no choice can take its next higher option without breaking one."""
    def feasible(candidate):
        return bool(objective.is_feasible(problem.cost(candidate.bits, candidate.widths, candidate.channel_bits),
                                          problem.limits))

    if not feasible(configuration):
        return False
    for choice in relaxation.choices(logits, configuration):
        higher = [option for option in range(choice.current + 1, len(choice.allowed)) if choice.allowed[option]]
        if higher and feasible(relaxation.assign(configuration, choice.key, higher[0])):
            return False
    return True


def test_fit_lowers_the_least_confident_choices_until_the_limits_are_met(dnas_problem):
    space = relaxed.relaxed_space("dnas", dnas_problem)
    relaxation = relaxed.relaxer("dnas", dnas_problem, space)
    # every layer most likely at 8 bits and every width at 1.25: far over a 6x limit; dense2's 8 bits least sure
    bits = np.asarray([[0.0, 1.0, 5.0], [0.0, 1.0, 1.5], [0.0, 1.0, 5.0]], np.float32)
    logits = {"bits": bits, "widths": np.asarray([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]], np.float32)}
    start = relaxation.argmax(logits)
    assert start.bits.tolist() == [8, 8, 8] and start.widths.tolist() == [1.25, 1.25, 1.0]
    assert not at_the_limit(dnas_problem, relaxation, logits, start)
    fitted, moved = relaxed.fit(dnas_problem, relaxation, logits, start)
    assert moved["lowered"] > 0
    assert at_the_limit(dnas_problem, relaxation, logits, fitted)
    assert fitted.bits[1] < 8  # the least confident went down first


@pytest.mark.parametrize("method", ["mixprec", "dnas"])
def test_fit_raises_a_configuration_under_the_limits_until_no_choice_can_rise(method, mixprec_problem,
                                                                               dnas_problem):
    problem = mixprec_problem if method == "mixprec" else dnas_problem
    relaxation = relaxed.relaxer(method, problem, relaxed.relaxed_space(method, problem))
    logits = jax.tree.map(lambda value: -np.asarray(value, np.float32) * np.arange(value.shape[-1]),
                          relaxation.init())  # every choice most likely at its cheapest option
    start = relaxation.argmax(logits)
    assert bool(objective.is_feasible(problem.cost(start.bits, start.widths, start.channel_bits), problem.limits))
    fitted, moved = relaxed.fit(problem, relaxation, logits, start)
    assert moved == {"lowered": 0, "raised": moved["raised"]} and moved["raised"] > 0
    assert at_the_limit(problem, relaxation, logits, fitted)


def test_fit_refuses_limits_no_lowering_meets(mixprec_problem):
    problem = dataclasses.replace(mixprec_problem, limits=objective.make_limits(size_bytes=10.0))
    space = relaxed.relaxed_space("mixprec", problem)
    relaxation = relaxed.relaxer("mixprec", problem, space)
    logits = jax.tree.map(np.asarray, relaxation.init())
    with pytest.raises(ValueError, match="no configuration its supernet can lower to meets the limits"):
        relaxed.fit(problem, relaxation, logits, relaxation.argmax(logits))


def test_relaxed_methods_refuse_what_they_cannot_relax(relaxed_problem, mixprec_problem):
    with pytest.raises(ValueError, match="mixprec quantises weights channel by channel at 2 to 8 bits, but layer "
                                         "'dense1' may take"):
        relaxed.relaxed_space("mixprec", relaxed_problem(widths=(1.0,), bits=(16, 4), min_size_reduction=3.0))
    fixed = relaxed_problem(widths=(1.0,), fixed_bits=(("dense1", 8), ("dense2", 8), ("head", 8)),
                            min_size_reduction=1.5)
    with pytest.raises(ValueError, match="mixprec has nothing to relax"):
        relaxed.relaxed_space("mixprec", fixed)
    with pytest.raises(ValueError, match="dnas has nothing to relax"):
        relaxed.relaxed_space("dnas", fixed)
    unlimited = dataclasses.replace(mixprec_problem, limits=objective.make_limits())
    with pytest.raises(ValueError, match="mixprec trades accuracy against a limit"):
        relaxed.relaxed_space("mixprec", unlimited)
    with pytest.raises(ValueError, match="'hawq_ilp' is not a relaxed method"):
        relaxed.relaxed_space("hawq_ilp", mixprec_problem)


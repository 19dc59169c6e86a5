"""Specification of the relaxed ("mixture") forward pass of a gradient-based precision search: `quant.mixed_weights`
and `quant.mixed_activations` (probability-weighted sums of the quantisers at candidate bit-widths), and
``Model.apply(..., relaxation=Relaxation(...))``: each layer's input a mixture over ``act_bits``, its weight a mixture
over ``weight_bits`` (per layer or per output channel), and a width group's channels kept with probabilities that
multiply its mask. A one-hot relaxation is the discrete model; keep 0 is the channel pruned; new probability values
compile nothing new."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpqjax.nn import Relaxation, models, quant

user_models = sys.modules["user_models"]  # loaded by tests/nn/conftest.py

ACT_BITS = np.array([2, 3, 4, 8], np.float32)
WEIGHT_BITS = np.array([0, 2, 3, 4, 8], np.float32)  # 0: a pruned option


def assert_same(actual, expected):
    """Equal up to float32 rounding of differently fused programs (on a CPU they are exactly equal)."""
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)


def one_hot(values, options):
    """One row per value: 1 at that value's option."""
    values = np.asarray(values, np.float32)
    return (values[..., None] == options).astype(np.float32)


class Case:
    """A model, its variables, a batch, its jitted ``apply`` and a discrete configuration whose bits are options."""

    def __init__(self, model, variables, shape, bits):
        self.model, self.variables, self.shape = model, variables, shape
        self.names = model.table().names
        self.x = jax.random.normal(jax.random.key(1), (2, *shape))
        self.bits = np.asarray(bits, np.float32)
        self.ones = np.ones(len(self.names), np.float32)
        self.apply = jax.jit(model.apply, static_argnames=("train", "mutable"))


@pytest.fixture(scope="module")
def digits():
    """The zoo's digits CNN at width 1: conv1 (4), conv2 (8), conv3 (8), each its own width group, and a head."""
    model = models.get("digits_cnn", channels=(4, 8, 8), max_width=1.0)
    return Case(model, models.init_variables(jax.random.key(0), model), (8, 8, 1), [4, 2, 8, 3])


@pytest.fixture(scope="module")
def residual():
    """A user's linen CNN (tests/nn/user_models.py): a residual stream (``Conv_0`` and ``ResidualBlock_0/Conv_1``
    share one width group), biases, batch norm, a strided conv and a dense head."""
    model = models.wrap(user_models.ResidualCNN(), input_shape=(8, 8, 1))
    return Case(model, user_models.random_variables(model), (8, 8, 1), [3, 4, 2, 8, 4])


@pytest.fixture(params=["digits", "residual"])
def case(request):
    return request.getfixturevalue(request.param)


# ------------------------------------------------------------------------------------------ the quantisers
def test_mixed_weights_are_the_probability_weighted_sum_of_the_quantised_kernels():
    kernel = jax.random.normal(jax.random.key(2), (3, 3, 2, 4))
    q2, q4 = quant.quantize_weights(kernel, 2), quant.quantize_weights(kernel, 4)
    mixed = quant.mixed_weights(kernel, jnp.array([2.0, 4.0]), jnp.array([0.5, 0.5]))
    np.testing.assert_allclose(mixed, (q2 + q4) / 2, rtol=1e-6, atol=1e-7)
    # per output channel: each channel its own mixture; a pruned option (0 bits) contributes zeros
    probs = jnp.array([[0.0, 1.0, 0.0], [0.25, 0.5, 0.25], [1.0, 0.0, 0.0], [0.5, 0.0, 0.5]])
    mixed = quant.mixed_weights(kernel, jnp.array([0.0, 2.0, 4.0]), probs)
    np.testing.assert_allclose(mixed, probs[:, 1] * q2 + probs[:, 2] * q4, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(mixed[..., 2], 0.0)
    # one-hot is that option's quantiser, exactly
    np.testing.assert_array_equal(quant.mixed_weights(kernel, jnp.array([4.0, 2.0]), jnp.array([0.0, 1.0])), q2)


def test_mixed_activations_are_the_probability_weighted_sum_of_the_quantised_inputs():
    x = jax.random.normal(jax.random.key(3), (5, 6))
    options, probs = jnp.array([2.0, 3.0, 16.0]), jnp.array([0.2, 0.3, 0.5])
    expected = sum(p * quant.quantize_activations(x, b, 1.5, signed=True) for b, p in zip(options, probs, strict=True))
    np.testing.assert_allclose(quant.mixed_activations(x, options, probs, 1.5, signed=True), expected, rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_array_equal(quant.mixed_activations(x, options, jnp.array([0.0, 1.0, 0.0]), 1.5, signed=False),
                                  quant.quantize_activations(x, 3, 1.5, signed=False))


def test_gradients_reach_the_probabilities_the_kernel_and_a_learned_clip():
    kernel = jax.random.normal(jax.random.key(4), (6, 3))
    cotangent = jax.random.normal(jax.random.key(5), (6, 3))
    options, probs = jnp.array([2.0, 4.0]), jnp.array([0.25, 0.75])
    by_probs, by_kernel = jax.grad(lambda p, k: jnp.sum(quant.mixed_weights(k, options, p) * cotangent),
                                   argnums=(0, 1))(probs, kernel)
    expected = [jnp.sum(quant.quantize_weights(kernel, b) * cotangent) for b in options]
    np.testing.assert_allclose(by_probs, expected, rtol=1e-5)
    np.testing.assert_allclose(by_kernel, cotangent, rtol=1e-6)  # straight through, the probabilities summing to 1
    x = 3 * jax.random.normal(jax.random.key(6), (16,))
    clip_gradient = jax.grad(lambda clip: jnp.sum(quant.mixed_activations(x, options, probs, clip, signed=True,
                                                                          mode="pact")))(1.0)
    assert np.isfinite(clip_gradient) and clip_gradient != 0


# ------------------------------------------------------------------------------------------ one-hot is discrete
def test_one_hot_probabilities_are_the_discrete_model(case):
    """Per-layer one-hot act and weight probabilities at ``bits`` are ``apply(bits=bits)``, whatever ``bits`` the
    relaxed call is given (the relaxation decides every layer)."""
    weight_probs = {name: one_hot(b, WEIGHT_BITS) for name, b in zip(case.names, case.bits, strict=True)}
    relaxation = Relaxation(act_bits=ACT_BITS, act_probs=one_hot(case.bits, ACT_BITS), weight_bits=WEIGHT_BITS,
                            weight_probs=weight_probs)
    expected = case.apply(case.variables, case.x, case.bits, case.ones)
    relaxed = case.apply(case.variables, case.x, np.full_like(case.bits, 16.0), case.ones, relaxation=relaxation)
    assert_same(relaxed, expected)
    # the weights only: the inputs at bits
    weights_only = Relaxation(weight_bits=WEIGHT_BITS, weight_probs=weight_probs)
    assert_same(case.apply(case.variables, case.x, case.bits, case.ones, relaxation=weights_only), expected)


def test_per_channel_one_hot_weight_probabilities_are_per_channel_weight_bits(case):
    rng = np.random.default_rng(0)
    channels = case.model.weight_channels()
    chosen = {name: rng.choice([2, 3, 4, 8], channels[name]).astype(np.float32) for name in case.names[1:3]}
    expected = case.apply(case.model.with_weight_bits(case.variables, chosen), case.x, case.bits, case.ones)
    relaxation = Relaxation(act_bits=ACT_BITS, act_probs=one_hot(case.bits, ACT_BITS), weight_bits=WEIGHT_BITS,
                            weight_probs={name: one_hot(bits, WEIGHT_BITS) for name, bits in chosen.items()})
    relaxed = case.apply(case.variables, case.x, case.bits, case.ones, relaxation=relaxation)
    assert_same(relaxed, expected)


def test_half_and_half_weight_probabilities_of_the_head_average_its_two_quantised_outputs():
    """The output is linear in the last layer's weight: its 0.5/0.5 mixture gives the mean of the two outputs."""
    model = models.wrap(user_models.PlainMLP(), input_shape=(64,))
    variables = user_models.random_variables(model)
    x = jax.random.normal(jax.random.key(7), (4, 64))
    bits = np.array([4.0, 3.0, 4.0], np.float32)
    ones = np.ones(3, np.float32)
    outputs = [model.apply(model.with_weight_bits(variables, {"Dense_2": [b] * 10}), x, bits, ones) for b in (2, 8)]
    relaxation = Relaxation(weight_bits=np.array([2.0, 8.0]), weight_probs={"Dense_2": np.array([0.5, 0.5])})
    np.testing.assert_allclose(model.apply(variables, x, bits, ones, relaxation=relaxation),
                               (outputs[0] + outputs[1]) / 2, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ soft channel keep
def test_keep_one_is_the_hard_mask_and_keep_zero_is_the_channel_pruned(digits, residual):
    for case, group, members, channel in ((digits, "conv2", [1], 3), (residual, "Conv_0", [0, 2], 5)):
        held = case.model.held_channels(case.shape)[group]
        keep = np.ones(held, np.float32)
        unchanged = case.apply(case.variables, case.x, case.bits, case.ones, relaxation=Relaxation(keep={group: keep}))
        np.testing.assert_array_equal(unchanged, case.apply(case.variables, case.x, case.bits, case.ones))
        keep[channel] = 0.0
        relaxed = case.apply(case.variables, case.x, case.bits, case.ones, relaxation=Relaxation(keep={group: keep}))
        # the discrete way: the group at width (C - 1) / C, that channel ranked last
        rank = np.arange(held)
        rank[channel], rank[channel + 1:] = held - 1, rank[channel + 1:] - 1
        pruned = case.model.with_quant_variables(case.variables, case.shape, ranks={group: rank})
        widths = case.ones.copy()
        widths[members] = (held - 1) / held
        assert_same(relaxed, case.apply(pruned, case.x, case.bits, widths))
        assert not np.allclose(relaxed, unchanged, atol=1e-4)


def test_a_channel_kept_with_probability_zero_contributes_nothing(residual):
    """Changing what produces the channel (kernels, biases, batch-norm shifts of the residual stream's two convs)
    changes no output."""
    case, channel = residual, 2
    keep = np.ones(8, np.float32)
    keep[channel] = 0.0
    relaxation = Relaxation(act_bits=ACT_BITS, act_probs=np.full((5, 4), 0.25, np.float32), keep={"Conv_0": keep})
    changed = jax.tree.map(lambda leaf: leaf, case.variables)
    rng = np.random.default_rng(1)
    for collection, path in (("params", ("Conv_0", "kernel")), ("params", ("Conv_0", "bias")),
                             ("params", ("BatchNorm_0", "bias")), ("batch_stats", ("BatchNorm_0", "mean")),
                             ("params", ("ResidualBlock_0", "Conv_1", "kernel")),
                             ("params", ("ResidualBlock_0", "Conv_1", "bias")),
                             ("params", ("ResidualBlock_0", "BatchNorm_1", "bias"))):
        parent = changed[collection]
        for key in path[:-1]:
            parent = parent[key]
        leaf = parent[path[-1]]
        parent[path[-1]] = leaf.at[..., channel].add(3.0 * rng.standard_normal(leaf.shape[:-1]).astype(np.float32))
    before = case.apply(case.variables, case.x, case.bits, case.ones, relaxation=relaxation)
    np.testing.assert_array_equal(case.apply(changed, case.x, case.bits, case.ones, relaxation=relaxation), before)
    keep[channel] = 0.5  # kept at all: the change shows
    half_kept = Relaxation(act_bits=ACT_BITS, act_probs=relaxation.act_probs, keep={"Conv_0": keep})
    assert not np.allclose(case.apply(changed, case.x, case.bits, case.ones, relaxation=half_kept), before,
                           atol=1e-4)


# ------------------------------------------------------------------------------------------ training a supernet
def test_gradients_reach_every_probability(digits):
    case = digits
    rng = np.random.default_rng(2)
    relaxation = Relaxation(
        act_bits=ACT_BITS, act_probs=jax.nn.softmax(rng.standard_normal((4, 4)).astype(np.float32)),
        weight_bits=WEIGHT_BITS,
        weight_probs={"conv1": jax.nn.softmax(jnp.asarray(rng.standard_normal((4, 5)), jnp.float32)),
                      "conv3": jax.nn.softmax(jnp.asarray(rng.standard_normal(5), jnp.float32))},
        keep={"conv2": jnp.asarray(rng.uniform(0.2, 1.0, 8), jnp.float32)})
    labels = jnp.arange(2)

    def loss(relaxation):
        logits = case.model.apply(case.variables, case.x, case.bits, case.ones, relaxation=relaxation)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), labels])

    grads = jax.jit(jax.grad(loss))(relaxation)
    for label, gradient in (("act_probs", grads.act_probs), ("conv1", grads.weight_probs["conv1"]),
                            ("conv3", grads.weight_probs["conv3"]), ("keep", grads.keep["conv2"])):
        assert np.all(np.isfinite(gradient)) and float(jnp.abs(gradient).max()) > 0, label
    assert np.all(np.abs(grads.act_probs).max(axis=1) > 0)  # every layer's row


def test_new_probability_values_compile_nothing_new(digits, compilations):
    case = digits
    rng = np.random.default_rng(3)

    def draw():
        return Relaxation(act_bits=ACT_BITS, act_probs=jax.nn.softmax(jnp.asarray(rng.standard_normal((4, 4)))),
                          weight_bits=WEIGHT_BITS,
                          weight_probs={"conv2": jax.nn.softmax(jnp.asarray(rng.standard_normal((8, 5))))},
                          keep={"conv1": jnp.asarray(rng.uniform(size=4), jnp.float32)})

    step = jax.jit(jax.value_and_grad(lambda r: jnp.sum(case.model.apply(case.variables, case.x, case.bits,
                                                                         case.ones, relaxation=r))))
    first, second, third = draw(), draw(), draw()
    outputs = [step(first)[0], case.model.apply(case.variables, case.x, case.bits, case.ones, relaxation=first)]
    with compilations() as compiled:
        outputs += [step(second)[0], case.model.apply(case.variables, case.x, case.bits, case.ones, relaxation=third)]
    assert compiled == [], compiled
    np.testing.assert_allclose(outputs[0], jnp.sum(outputs[1]), rtol=1e-6)  # the jitted and the eager call agree
    assert len({float(jnp.sum(output)) for output in outputs[1:]}) == 3


def test_calibration_of_a_relaxed_input_uses_its_highest_option(digits):
    case = digits
    relaxation = Relaxation(act_bits=ACT_BITS, act_probs=one_hot(np.full(4, 2.0), ACT_BITS))
    _, relaxed = case.apply(case.variables, case.x, case.bits, case.ones, mutable=("calibration",),
                            relaxation=relaxation)
    stats = {bits: case.apply(case.variables, case.x, np.full(4, bits, np.float32), case.ones,
                              mutable=("calibration",))[1]["calibration"]["conv1"]["input_stats"][0]
             for bits in (2.0, 8.0)}
    first = relaxed["calibration"]["conv1"]["input_stats"][0]  # the image: the same input at any bits
    np.testing.assert_array_equal(first, stats[8.0])
    assert not np.array_equal(first, stats[2.0])


# ------------------------------------------------------------------------------------------ validation
def test_a_bad_relaxation_is_refused_naming_the_layer(digits):
    case = digits
    model, variables, x, bits, ones = case.model, case.variables, case.x, case.bits, case.ones

    def refused(match, relaxation, bits=bits):
        with pytest.raises(ValueError, match=match):
            model.apply(variables, x, bits, ones, relaxation=relaxation)

    per_layer = np.full(5, 0.2, np.float32)
    refused("weight_probs: unknown layer 'conv9'; the quantised layers are: conv1, conv2, conv3, head",
            Relaxation(weight_bits=WEIGHT_BITS, weight_probs={"conv9": per_layer}))
    refused(r"weight_probs: layer 'conv2' has shape \(7, 5\), expected \(5,\) or \(8, 5\)",
            Relaxation(weight_bits=WEIGHT_BITS, weight_probs={"conv2": np.full((7, 5), 0.2)}))
    refused(r"weight_probs: layer 'conv2' has shape \(4,\)", Relaxation(weight_bits=WEIGHT_BITS,
                                                                         weight_probs={"conv2": np.ones(4)}))
    refused("weight_probs needs weight_bits", Relaxation(weight_probs={"conv2": per_layer}))
    refused(r"keep: 'conv9' is an unknown layer; the width groups' first layers are: conv1, conv2, conv3",
            Relaxation(keep={"conv9": np.ones(8)}))
    refused("keep: 'head' is not the first layer of a width group that can narrow",
            Relaxation(keep={"head": np.ones(10)}))
    refused(r"keep: layer 'conv1' has shape \(8,\), expected \(4,\)", Relaxation(keep={"conv1": np.ones(8)}))
    refused(r"act_probs has shape \(3, 4\), expected \(4, 4\)",
            Relaxation(act_bits=ACT_BITS, act_probs=np.ones((3, 4))))
    refused("act_bits and act_probs go together", Relaxation(act_bits=ACT_BITS))
    refused(r"act_bits\[1\] must be an integer in \[2, 16\], got 0", Relaxation(act_bits=np.array([2.0, 0.0]),
                                                                              act_probs=np.ones((4, 2))))
    refused(r"weight_bits\[2\] must be 0 \(pruned\) or an integer in \[2, 16\], got 4.5",
            Relaxation(weight_bits=np.array([0.0, 2.0, 4.5]), weight_probs={"conv2": np.ones(3)}))
    refused("a relaxation needs bits too", Relaxation(keep={"conv1": np.ones(4)}), bits=None)
    with pytest.raises(ValueError, match="model 'digits_cnn' is not quantised: it takes no relaxation"):
        model.clone(quantize=False).apply(variables, x, bits, ones, relaxation=Relaxation())
    # a residual group's other members hold its keep under its first layer's name
    residual_model = models.wrap(user_models.ResidualCNN(), input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match="keep: 'ResidualBlock_0/Conv_1' is not the first layer of a width group"):
        residual_model.apply(user_models.random_variables(residual_model), x, np.full(5, 4.0), np.ones(5),
                             relaxation=Relaxation(keep={"ResidualBlock_0/Conv_1": np.ones(8)}))

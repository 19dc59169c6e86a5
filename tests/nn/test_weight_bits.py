"""Specification of per-output-channel weight bit-widths: `quant.quantize_weights` with one bit-width per channel,
and `Model.with_weight_bits`, which stores them as variables (``variables["quant"][layer]["weight_bits"]``) that
the interceptor uses for the layer's weight instead of its bit-width ``bits[l]`` (its input keeps ``bits[l]``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpqjax.data import Split
from mpqjax.nn import models, quant
from mpqjax.nn.models.small import DigitsCNN
from mpqjax.training import population, train

CHANNELS = (4, 8, 8)  # conv1, conv2, conv3; the head has 10 outputs
BITS = np.array([4, 3, 5, 6], np.float32)
ONES = np.ones(4, np.float32)


@pytest.fixture(scope="module")
def digits():
    """A digits CNN at width 1 (its weights hold exactly the table's channels), its variables and a tiny batch."""
    model = models.get("digits_cnn", channels=CHANNELS, max_width=1.0)
    variables = models.init_variables(jax.random.key(0), model)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    return model, variables, x


def per_channel_reference(kernel, bits):
    """``kernel`` quantised one output channel at a time, each at its own scalar bit-width."""
    return jnp.concatenate([quant.quantize_weights(kernel[..., c:c + 1], bits[c]) for c in range(len(bits))], -1)


# ------------------------------------------------------------------------------------------ the quantiser
def test_per_channel_bits_quantise_each_channel_as_its_own_scalar_bits():
    kernel = jax.random.normal(jax.random.key(2), (3, 3, 2, 5))
    bits = jnp.array([2, 3, 4, 8, 16], jnp.float32)  # 16: that channel passes through unchanged
    quantized = quant.quantize_weights(kernel, bits)
    np.testing.assert_array_equal(quantized, per_channel_reference(kernel, bits))
    np.testing.assert_array_equal(quantized[..., 4], kernel[..., 4])
    assert not np.allclose(quantized[..., 0], kernel[..., 0])
    # a vector of one bit-width is the scalar bit-width (to an ulp of the scale: XLA on CPU may divide some lanes by
    # a broadcast scalar through its reciprocal; the per-channel division is the correctly rounded one)
    np.testing.assert_allclose(quant.quantize_weights(kernel, jnp.full(5, 3.0)), quant.quantize_weights(kernel, 3),
                               rtol=1e-6, atol=0)
    # a dense kernel (in, out) too
    dense = jax.random.normal(jax.random.key(3), (6, 3))
    dense_bits = jnp.array([2, 5, 8])
    np.testing.assert_array_equal(quant.quantize_weights(dense, dense_bits), per_channel_reference(dense, dense_bits))


def test_per_channel_bits_keep_the_straight_through_gradient():
    kernel = jax.random.normal(jax.random.key(4), (3, 3, 2, 4))
    cotangent = jax.random.normal(jax.random.key(5), kernel.shape)
    bits = jnp.array([2, 4, 8, 16], jnp.float32)
    gradient = jax.grad(lambda k: jnp.sum(quant.quantize_weights(k, bits) * cotangent))(kernel)
    np.testing.assert_array_equal(gradient, cotangent)


# ------------------------------------------------------------------------------------------ the model
def test_weight_bits_equal_to_the_layers_bits_change_nothing(digits):
    model, variables, x = digits
    reference = model.apply(variables, x, BITS, ONES)
    same = model.with_weight_bits(variables, {"conv2": [BITS[1]] * 8, "head": [int(BITS[3])] * 10})
    assert same["quant"]["conv2"]["weight_bits"].dtype == jnp.float32
    assert same["quant"]["conv2"]["weight_bits"].shape == (8,)
    np.testing.assert_array_equal(model.apply(same, x, BITS, ONES), reference)
    assert "weight_bits" not in variables["quant"]["conv2"]  # the variables given are not changed


def test_one_channel_at_two_bits_is_that_channel_quantised_by_hand(digits):
    model, variables, x = digits
    pass_through = np.full(4, 16.0, np.float32)  # every other quantiser leaves its values unchanged
    layer_bits = np.full(8, 8.0, np.float32)
    layer_bits[3] = 2.0
    with_bits = model.with_weight_bits(variables, {"conv2": layer_bits})
    kernel = variables["params"]["conv2"]["kernel"]
    by_hand = jax.tree.map(lambda leaf: leaf, variables)
    by_hand["params"] = {**variables["params"], "conv2": {**variables["params"]["conv2"],
                                                          "kernel": per_channel_reference(kernel, layer_bits)}}
    output = model.apply(with_bits, x, pass_through, ONES)
    np.testing.assert_allclose(output, model.apply(by_hand, x, pass_through, ONES), rtol=1e-6, atol=1e-6)
    assert not np.allclose(output, model.apply(variables, x, pass_through, ONES), atol=1e-4)


def test_a_growing_model_takes_one_bit_width_per_channel_its_module_holds():
    model = models.get("digits_cnn", channels=CHANNELS)  # max width 1.25: conv2's module holds 10 channels
    variables = models.init_variables(jax.random.key(6), model)
    assert variables["params"]["conv2"]["kernel"].shape[-1] == 10
    x = jax.random.normal(jax.random.key(7), (2, 8, 8, 1))
    widths = np.array([1.25, 1.25, 1.0, 1.0], np.float32)
    same = model.with_weight_bits(variables, {"conv2": [BITS[1]] * 10})
    np.testing.assert_array_equal(model.apply(same, x, BITS, widths), model.apply(variables, x, BITS, widths))
    with pytest.raises(ValueError, match="layer 'conv2': got 8 channel bit-widths for the 10 channels its weight"):
        model.with_weight_bits(variables, {"conv2": [4] * 8})


def test_removing_weight_bits_restores_the_variables(digits):
    model, variables, x = digits
    with_bits = model.with_weight_bits(variables, {"conv1": [2, 3, 4, 8], "conv3": [5] * 8})
    removed = model.with_weight_bits(with_bits, {"conv1": None, "conv3": None})
    assert jax.tree.structure(removed) == jax.tree.structure(variables)
    assert "weight_bits" in with_bits["quant"]["conv1"]  # removing returns new variables too
    np.testing.assert_array_equal(model.apply(removed, x, BITS, ONES), model.apply(variables, x, BITS, ONES))


def test_quant_variables_transfer_and_checks_keep_weight_bits_and_never_invent_them(digits):
    model, variables, _ = digits
    with_bits = model.with_weight_bits(variables, {"conv2": [2] * 8})
    kept = model.with_quant_variables(with_bits)
    np.testing.assert_array_equal(kept["quant"]["conv2"]["weight_bits"], np.full(8, 2.0))
    model.check_variables(with_bits)  # the quant collection is the quantiser's, not the module's: it passes
    float_model = model.clone(quantize=False)
    transferred = models.transfer_variables(jax.random.key(8), model, float_model, with_bits)
    assert not any("weight_bits" in layer for layer in transferred["quant"].values())


# ------------------------------------------------------------------------------------------ training, evaluation
def test_training_evaluation_and_calibration_carry_weight_bits_without_recompiling(digits, compilations):
    model, variables, _ = digits
    x = np.asarray(jax.random.normal(jax.random.key(9), (8, 8, 8, 1)))
    y = np.arange(8) % 10
    bits, widths = train.config_arrays(model, BITS, None, x.shape[1:])
    first = model.with_weight_bits(variables, {"conv2": [2] * 8, "head": [8] * 10})
    second = model.with_weight_bits(variables, {"conv2": [8, 2, 8, 2, 3, 4, 5, 6], "head": [2] * 10})

    step = train.train_step(model)
    state, loss = step(train.init_state(first), x, y, bits, widths, 1e-3, 1e-4)
    assert np.isfinite(loss)
    np.testing.assert_array_equal(state.model_state["quant"]["conv2"]["weight_bits"], np.full(8, 2.0))
    second_state = train.init_state(second)
    with compilations() as programs:
        state, loss = step(second_state, x, y, bits, widths, 1e-3, 1e-4)
    assert np.isfinite(loss) and programs == []  # new values, same program

    split = Split(x, y)
    accuracies = [train.evaluate(model, first, split, bits=BITS, batch_size=8)]
    with compilations() as programs:
        accuracies.append(train.evaluate(model, second, split, bits=BITS, batch_size=8))
    assert programs == [] and all(0.0 <= accuracy <= 1.0 for accuracy in accuracies)
    assert not np.array_equal(train.predict(model, first, x, bits=BITS), train.predict(model, second, x, bits=BITS))

    calibrated = train.calibrate(model, first, x, bits=BITS, batch_size=8, num_batches=1)
    np.testing.assert_array_equal(calibrated["quant"]["conv2"]["weight_bits"], np.full(8, 2.0))


def test_each_member_of_a_population_has_its_own_weight_bits(digits):
    model, variables, x = digits
    members = [model.with_weight_bits(variables, {"conv3": bits}) for bits in ([2] * 8, [8, 7, 6, 5, 4, 3, 2, 2])]
    stacked = jax.tree.map(lambda *leaves: np.stack([np.asarray(leaf) for leaf in leaves]), *members)
    bits = np.stack([BITS, BITS])
    logits = population.predict(model, stacked, np.asarray(x), bits=bits, widths=np.ones_like(bits))
    for member, member_logits in zip(members, logits, strict=True):
        np.testing.assert_allclose(member_logits, model.apply(member, x, BITS, ONES), rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits[0], logits[1])


# ------------------------------------------------------------------------------------------ validation
def test_weight_bits_are_checked_naming_the_layer(digits):
    model, variables, _ = digits
    with pytest.raises(ValueError, match="unknown layer 'conv9'; the quantised layers are: conv1, conv2"):
        model.with_weight_bits(variables, {"conv9": [4] * 8})
    with pytest.raises(ValueError, match="layer 'conv2': got 7 channel bit-widths for the 8 channels"):
        model.with_weight_bits(variables, {"conv2": [4] * 7})
    with pytest.raises(ValueError, match="layer 'conv2': channel bits must be a 1-D array of numbers"):
        model.with_weight_bits(variables, {"conv2": [[4] * 8]})
    with pytest.raises(ValueError, match="layer 'conv2': channel 2's bit-width must be an integer in .* got 4.5"):
        model.with_weight_bits(variables, {"conv2": [4, 4, 4.5, 4, 4, 4, 4, 4]})
    with pytest.raises(ValueError, match="layer 'conv1': channel 0's bit-width must be an integer in .* got 1"):
        model.with_weight_bits(variables, {"conv1": [1, 2, 3, 4]})
    with pytest.raises(ValueError, match="layer 'conv1': channel 3's bit-width .* got 9"):
        model.with_weight_bits(variables, {"conv1": [2, 3, 4, 9]})
    with pytest.raises(ValueError, match="layer 'conv1': channel 1's bit-width .* got 16"):
        model.with_weight_bits(variables, {"conv1": [8, 16, 8, 8]})
    with pytest.raises(ValueError, match="layer 'conv1': channel bits must be a 1-D array of numbers"):
        model.with_weight_bits(variables, {"conv1": [[2, 3], [4]]})
    with pytest.raises(ValueError, match="model 'digits_cnn' is not quantised"):
        model.clone(quantize=False).with_weight_bits(variables, {"conv1": [4] * 4})


def test_a_layer_left_in_float_takes_no_weight_bits():
    model = models.wrap(DigitsCNN(channels=CHANNELS), input_shape=(8, 8, 1), exclude="head")
    variables = models.init_variables(jax.random.key(10), model)
    with pytest.raises(ValueError, match="layer 'head' is not quantised"):
        model.with_weight_bits(variables, {"head": [4] * 10})

"""Specification of mpqjax.nn.intercept through a user's own models: at 16 bits the model computes exactly what the
user's module computes; a hand-written linen twin of the zoo's digits_cnn fake-quantises as the zoo does; a narrowed
layer equals the model with those channels removed; one compiled program serves every configuration; gradients,
calibration statistics and batch statistics come back as training needs them."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, traverse_util

from mpqjax.nn import models, quant
from mpqjax.nn.models import as_variables, wrap

user_models = sys.modules["user_models"]  # loaded by tests/nn/conftest.py

LINEN_MODELS = {
    "ResidualCNN": (8, 8, 1), "SeparableCNN": (8, 8, 3), "Mixer": (8, 4), "ConcatCNN": (8, 8, 3),
    "FlattenNet": (8, 8, 1), "PlainMLP": (64,), "PlainCNN": (8, 8, 1),
}


def batch(shape, seed=0, size=4):
    return jax.random.normal(jax.random.key(seed), (size, *shape))


def randomise_batch_stats(variables, seed=1):
    """Batch statistics away from their identity initialisation, so that batch norm does something."""
    if "batch_stats" not in variables:
        return variables
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(variables["batch_stats"])
    for path, value in sorted(flat.items()):
        noise = rng.uniform(size=value.shape).astype(np.float32)
        flat[path] = jnp.asarray(0.5 + noise if path[-1] == "var" else noise - 0.5)
    return {**variables, "batch_stats": traverse_util.unflatten_dict(flat)}


def user_variables(variables):
    return {name: value for name, value in variables.items() if name != "quant"}


def init(model, seed=0):
    """`user_models.random_variables`: stands in for a trained model's variables."""
    return user_models.random_variables(model, seed)


def jitted(apply):
    """``apply`` compiled (one program per test beats op-by-op dispatch of the interpreted trace)."""
    return jax.jit(apply, static_argnames=("train", "mutable"))


# -- (a) 16 bits is the user's model ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LINEN_MODELS))
def test_linen_model_at_16_bits_equals_the_users_module_exactly(name):
    module, shape = getattr(user_models, name)(), LINEN_MODELS[name]
    model = wrap(module, input_shape=shape)
    variables = init(model)
    x = batch(shape)
    count = len(model.table())
    expected = jitted(module.apply)(user_variables(variables), x)
    np.testing.assert_array_equal(jitted(model.apply)(variables, x, jnp.full(count, 16.0), jnp.ones(count)), expected)
    np.testing.assert_array_equal(jitted(model.apply)(variables, x), expected)  # no configuration: the float model


def nnx_module_and_variables():
    """The NNX CNN with batch statistics set as a user would set them, wrapped, and its variables as mpqjax takes
    them (`as_variables` of its state, default clips)."""
    module = user_models.NnxCNN()
    rng = np.random.default_rng(0)
    for norm in (module.stem_norm, module.conv_norm):
        norm.mean[...] = jnp.asarray(rng.uniform(-0.5, 0.5, norm.mean.shape), jnp.float32)
        norm.var[...] = jnp.asarray(rng.uniform(0.5, 1.5, norm.var.shape), jnp.float32)
    model = wrap(module, input_shape=(8, 8, 1))
    return module, model, model.with_quant_variables(as_variables(model, nnx.state(module)))


def test_nnx_model_at_16_bits_equals_the_users_module_exactly():
    module, model, variables = nnx_module_and_variables()
    x = batch((8, 8, 1))
    module.eval()
    np.testing.assert_array_equal(jitted(model.apply)(variables, x, jnp.full(3, 16.0), jnp.ones(3)),
                                  nnx.jit(lambda module, x: module(x))(module, x))


def test_low_bits_change_the_output_and_bits_of_one_layer_only_change_that_layers_operands():
    model = wrap(user_models.PlainMLP(), input_shape=(64,))
    variables = init(model)
    x = batch((64,))
    forward = jitted(model.apply)
    float_out = forward(variables, x, jnp.full(3, 16.0), jnp.ones(3))
    assert float(jnp.abs(forward(variables, x, jnp.array([3.0, 16, 16]), jnp.ones(3)) - float_out).max()) > 1e-2
    # the last layer at 2 bits, by hand: its input and kernel fake-quantised, the rest float
    params = variables["params"]
    hidden = jax.nn.relu(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    hidden = jax.nn.relu(hidden @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"])
    clip = variables["quant"]["Dense_2"]["act_clip"]
    expected = (quant.quantize_activations(hidden, 2, clip, signed=False)
                @ quant.quantize_weights(params["Dense_2"]["kernel"], 2) + params["Dense_2"]["bias"])
    np.testing.assert_allclose(forward(variables, x, jnp.array([16.0, 16, 2]), jnp.ones(3)), expected, atol=1e-5)


# -- (b) the zoo's models ---------------------------------------------------------------------------------------------


def test_the_zoo_digits_cnn_computes_the_hand_written_quantised_forward_pass():
    """A zoo model goes through the same interception: each convolution reads its input fake-quantised per tensor
    (signed for the image, unsigned after a ReLU) and its kernel per output channel, then batch norm and ReLU."""
    model = models.get("digits_cnn", channels=(4, 8, 8), max_width=1.0)
    variables = randomise_batch_stats(models.init_variables(jax.random.key(3), model))
    names = model.table().names
    variables["quant"] = {name: {"act_clip": jnp.float32(1.0 + 0.5 * index)} for index, name in enumerate(names)}
    params, stats = variables["params"], variables["batch_stats"]
    bits = np.array([8, 4, 3, 6], np.float32)

    def conv_bn_relu(h, name, index, stride):
        h = quant.quantize_activations(h, bits[index], variables["quant"][name]["act_clip"], signed=index == 0)
        kernel = quant.quantize_weights(params[name]["kernel"], bits[index])
        h = jax.lax.conv_general_dilated(h, kernel, (stride, stride), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        norm, running = params[f"{name}_bn"], stats[f"{name}_bn"]
        h = (h - running["mean"]) / jnp.sqrt(running["var"] + 1e-5) * norm["scale"] + norm["bias"]
        return jax.nn.relu(h)

    x = batch((8, 8, 1), seed=4, size=8)
    h = conv_bn_relu(conv_bn_relu(conv_bn_relu(x, "conv1", 0, 1), "conv2", 1, 2), "conv3", 2, 2).mean(axis=(1, 2))
    h = quant.quantize_activations(h, bits[3], variables["quant"]["head"]["act_clip"], signed=False)
    expected = h @ quant.quantize_weights(params["head"]["kernel"], bits[3]) + params["head"]["bias"]
    np.testing.assert_allclose(jitted(model.apply)(variables, x, bits, np.ones(4, np.float32)), expected, atol=1e-4)


# -- (c) narrowing equals removal -------------------------------------------------------------------------------------


def sliced_to(variables, small_variables):
    """``variables`` cut to the shapes of ``small_variables``: every array keeps its leading entries on every axis."""
    return jax.tree.map(lambda big, small: big[tuple(slice(0, size) for size in small.shape)], variables,
                        small_variables)


@pytest.mark.parametrize("big, small, shape, widths, bits", [
    (user_models.PlainMLP((16, 8)), user_models.PlainMLP((8, 8)), (64,), [0.5, 1.0, 1.0], "mixed"),
    (user_models.PlainMLP((16, 8)), user_models.PlainMLP((12, 2)), (64,), [0.75, 0.25, 1.0], "mixed"),
    (user_models.PlainCNN((8, 8)), user_models.PlainCNN((8, 4)), (8, 8, 1), [1.0, 0.5, 1.0], "mixed"),
    # a residual block: the stem and the block's last conv narrow together, the block's inner conv and the strided
    # conv on their own; the smaller model is the same code with half the features
    (user_models.ResidualCNN(features=8), user_models.ResidualCNN(features=4), (8, 8, 1), [0.5, 0.5, 0.5, 0.5, 1.0],
     "mixed"),
    (user_models.ResidualCNN(features=8), user_models.ResidualCNN(features=4), (8, 8, 1), [0.5, 0.5, 0.5, 0.5, 1.0],
     "float"),
], ids=["mlp-first", "mlp-both", "cnn-batch-norm", "residual", "residual-float"])
def test_a_narrowed_model_equals_the_model_with_those_channels_removed(big, small, shape, widths, bits):
    big_model, small_model = wrap(big, input_shape=shape), wrap(small, input_shape=shape)
    count = len(big_model.table())
    variables = init(big_model)
    small_variables = sliced_to(variables, jax.eval_shape(small_model.init_variables, jax.random.key(1)))
    bits = jnp.full(count, 16.0) if bits == "float" else jnp.asarray(([6.0, 4.0, 8.0, 5.0, 7.0])[:count])
    x = batch(shape)
    np.testing.assert_allclose(jitted(big_model.apply)(variables, x, bits, jnp.asarray(widths)),
                               jitted(small_model.apply)(small_variables, x, bits, jnp.ones(count)), atol=1e-5)


def test_narrowed_concatenation_equals_zeroing_the_consumers_rows_of_the_inactive_channels():
    model = wrap(user_models.ConcatCNN(), input_shape=(8, 8, 3))
    variables = init(model)
    x = batch((8, 8, 3))
    bits = jnp.array([6.0, 5.0, 4.0, 8.0])
    zeroed = jax.tree.map(lambda value: value, variables)
    kernel = zeroed["params"]["Conv_2"]["kernel"]
    # Conv_0 keeps 2 of 4 channels, Conv_1 3 of 6: concatenated channels 2, 3 and 7, 8, 9 are off
    zeroed["params"]["Conv_2"]["kernel"] = kernel.at[:, :, jnp.array([2, 3, 7, 8, 9]), :].set(0.0)
    forward = jitted(model.apply)
    np.testing.assert_allclose(forward(variables, x, bits, jnp.array([0.5, 0.5, 1.0, 1.0])),
                               forward(zeroed, x, bits, jnp.ones(4)), atol=1e-5)


def test_narrowed_flattened_conv_equals_zeroing_the_dense_rows_of_its_inactive_channels():
    model = wrap(user_models.FlattenNet(), input_shape=(8, 8, 1))
    variables = init(model)
    x = batch((8, 8, 1))
    bits = jnp.array([5.0, 4.0, 8.0])
    zeroed = jax.tree.map(lambda value: value, variables)
    inactive = np.tile([False, True, True, True], 16)  # 1 of 4 channels kept at every one of the 4x4 pixels
    zeroed["params"]["Dense_0"]["kernel"] = jnp.where(inactive[:, None], 0.0, variables["params"]["Dense_0"]["kernel"])
    forward = jitted(model.apply)
    np.testing.assert_allclose(forward(variables, x, bits, jnp.array([0.25, 1.0, 1.0])),
                               forward(zeroed, x, bits, jnp.ones(3)), atol=1e-5)


# -- (d) one program for every configuration --------------------------------------------------------------------------


def test_one_compiled_program_serves_every_bit_and_width_configuration(compilations):
    model = wrap(user_models.ResidualCNN(), input_shape=(8, 8, 1))
    variables = init(model)
    x = batch((8, 8, 1))
    configurations = [(jnp.array(bits, jnp.float32), jnp.array(widths, jnp.float32)) for bits, widths in (
        ([8, 8, 8, 8, 8], [1, 1, 1, 1, 1]), ([2, 4, 3, 6, 16], [0.5, 0.75, 0.5, 0.25, 1]),
        ([16, 5, 7, 3, 4], [0.25, 1, 0.25, 0.5, 1]))]
    forward = jax.jit(lambda v, x, b, w: model.apply(v, x, b, w))
    with compilations() as compiled:
        outputs = [forward(variables, x, bits, widths) for bits, widths in configurations]
    assert len(compiled) == 1, compiled
    assert all(float(jnp.abs(outputs[i] - outputs[j]).max()) > 1e-3 for i, j in ((0, 1), (0, 2), (1, 2)))


def test_a_population_of_configurations_vmaps_to_each_configurations_output():
    model = wrap(user_models.ConcatCNN(), input_shape=(8, 8, 3))
    variables = init(model)
    x = batch((8, 8, 3))
    bits = jnp.array([[8.0, 4, 3, 6], [2, 16, 5, 4], [6, 6, 6, 6]])
    widths = jnp.array([[1.0, 0.5, 0.75, 1], [0.25, 1, 0.5, 1], [1, 1, 1, 1]])
    population = jax.jit(jax.vmap(model.apply, in_axes=(None, None, 0, 0)))(variables, x, bits, widths)
    one = jitted(model.apply)
    for row in range(3):
        np.testing.assert_allclose(population[row], one(variables, x, bits[row], widths[row]), atol=1e-5)


# -- (e) gradients ----------------------------------------------------------------------------------------------------


def cross_entropy_gradients(model, variables, x, labels, bits):
    count = len(model.table())

    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, x, bits, jnp.ones(count), train=True,
                                mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return jax.jit(jax.grad(loss))(variables["params"])


@pytest.mark.parametrize("module, shape", [(user_models.ResidualCNN(), (8, 8, 1)), (user_models.NnxCNN(), (8, 8, 1))],
                         ids=["linen", "nnx"])
def test_gradients_reach_every_kernel_through_the_fake_quantisation(module, shape):
    model = wrap(module, input_shape=shape)
    variables = init(model)
    count = len(model.table())
    grads = cross_entropy_gradients(model, variables, batch(shape, size=8), jnp.arange(8) % 10, jnp.full(count, 3.0))
    flat = traverse_util.flatten_dict(grads)
    kernels = {path: value for path, value in flat.items() if path[-1] == "kernel"}
    assert len(kernels) == count
    for path, value in kernels.items():
        assert np.all(np.isfinite(value)) and float(jnp.abs(value).max()) > 0, path


def test_learned_clips_get_gradients():
    model = wrap(user_models.PlainMLP(), input_shape=(64,), act_clipping="lsq")
    variables = init(model)
    assert "act_clip" not in variables["quant"]["Dense_0"] and variables["params"]["Dense_0"]["act_clip"] == 4.0
    grads = cross_entropy_gradients(model, variables, batch((64,), size=8), jnp.arange(8), jnp.full(3, 3.0))
    for name in model.table().names:
        assert np.isfinite(grads[name]["act_clip"]) and float(jnp.abs(grads[name]["act_clip"])) > 0, name


# -- (f) calibration statistics ---------------------------------------------------------------------------------------


def test_calibration_statistics_come_back_per_layer():
    model = wrap(user_models.PlainMLP(), input_shape=(64,))
    variables = init(model)
    params = variables["params"]
    params["Dense_0"]["bias"] = params["Dense_0"]["bias"].at[8:].set(10.0)  # large values in the inactive channels
    x = batch((64,), size=16)
    bits, widths = jnp.full(3, 16.0), jnp.array([0.5, 1.0, 1.0])
    _, collected = jitted(model.apply)(variables, x, bits, widths, mutable=("calibration",))
    stats = collected["calibration"]
    assert set(stats) == {"Dense_0", "Dense_1", "Dense_2"}
    for name in stats:
        assert stats[name]["input_stats"][0].shape == (3,)
    # the first layer's input is the signed image, the second's the first's ReLU output, its 8 active channels only
    image_stats = jax.jit(quant.calibration_stats, static_argnames="signed")(x, 16.0, signed=True)
    np.testing.assert_allclose(stats["Dense_0"]["input_stats"][0], image_stats)
    hidden = jax.nn.relu(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    assert float(hidden[:, 8:].min()) > float(hidden[:, :8].max())
    np.testing.assert_allclose(stats["Dense_1"]["input_stats"][0][0], hidden[:, :8].max(), rtol=1e-6)


# -- (g) batch statistics -------------------------------------------------------------------------------------------


def test_training_mode_updates_linen_batch_statistics_as_the_users_module_does():
    module = user_models.ResidualCNN()
    model = wrap(module, input_shape=(8, 8, 1))
    variables = init(model)
    x = batch((8, 8, 1), size=8)
    forward = jitted(model.apply)
    out, updates = forward(variables, x, jnp.full(5, 16.0), jnp.ones(5), train=True, mutable=("batch_stats",))
    expected_out, expected = jitted(module.apply)(user_variables(variables), x, train=True, mutable=("batch_stats",))
    np.testing.assert_allclose(out, expected_out, atol=1e-5)
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), updates["batch_stats"],
                 expected["batch_stats"])
    _, quantised = forward(variables, x, jnp.full(5, 3.0), jnp.ones(5), train=True, mutable=("batch_stats",))
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), quantised["batch_stats"], variables["batch_stats"])
    assert all(change > 0 for change in jax.tree.leaves(moved))


def test_training_mode_updates_nnx_batch_statistics_as_the_users_module_does():
    module, model, variables = nnx_module_and_variables()
    x = batch((8, 8, 1), size=8)
    out, updates = jitted(model.apply)(variables, x, jnp.full(3, 16.0), jnp.ones(3), train=True,
                                       mutable=("batch_stats",))
    module.train()
    expected_out = nnx.jit(lambda module, x: module(x))(module, x)  # updates the module's own statistics
    expected = as_variables(model, nnx.state(module))["batch_stats"]
    np.testing.assert_allclose(out, expected_out, atol=1e-5)
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(expected)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), updates["batch_stats"], expected)
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), updates["batch_stats"], variables["batch_stats"])
    assert all(change > 0 for change in jax.tree.leaves(moved))

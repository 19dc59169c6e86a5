"""Specification of mpqjax.export.lowering: a quantised model's forward pass in integer arithmetic, predicting what
the fake-quantised model predicts, for the zoo's models and for a user's own."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mpqjax.export import lower
from mpqjax.export.lowering import LoweringError
from mpqjax.nn import models
from mpqjax.nn.table import scale_channels
from mpqjax.training.train import calibrate


def calibrated_clips(model, variables, x, bits, widths):
    """``variables`` with each layer's clip at its input's largest magnitude on ``x`` (a calibration's "max")."""
    return calibrate(model, variables, x, bits=bits, widths=widths, method="max", batch_size=len(x), num_batches=1)


def inputs(shape, count=96, seed=0):
    return np.random.default_rng(seed).normal(size=(count, *shape)).astype(np.float32)


def assert_agrees(model, variables, x, bits, widths, *, logit_tolerance):
    """The integer program predicts the fake-quantised model's class on at least 99.9% of ``x``."""
    fake = np.asarray(model.apply(variables, x, bits, widths))
    program = lower(model, variables, bits, widths, input_bound=float(np.abs(x).max()), input_shape=x.shape[1:])
    logits = program(x)
    assert logits.dtype == np.float32 and logits.shape == fake.shape
    assert np.mean(logits.argmax(-1) == fake.argmax(-1)) >= 0.999
    assert np.max(np.abs(logits - fake)) <= logit_tolerance
    return program


# -- the zoo -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_cnn():
    model = models.get("digits_cnn", num_classes=10, max_width=1.25)
    x = inputs((8, 8, 1))
    bits, widths = [6, 4, 2, 3], [0.875, 0.75, 1.25, 1.0]
    variables = calibrated_clips(model, model.init_variables(jax.random.key(0), (8, 8, 1)), x, bits, widths)
    return model, variables, x, bits, widths


def test_digits_cnn_agrees_with_the_fake_quantised_model_within_float_rounding(digits_cnn):
    assert_agrees(*digits_cnn, logit_tolerance=1e-4)


def test_layers_hold_int8_codes_of_the_kept_channels_only(digits_cnn):
    model, variables, x, bits, widths = digits_cnn
    program = lower(model, variables, bits, widths, input_bound=float(np.abs(x).max()))
    table = model.table()
    assert [layer.name for layer in program.layers] == list(table.names)
    for index, layer in enumerate(program.layers):
        assert layer.codes.dtype == np.int8 and layer.bits == bits[index]
        limit = 2 ** (bits[index] - 1) - 1
        assert np.abs(layer.codes).max() <= limit
        kept_out = scale_channels(table[index].out_channels, widths[index]) if table[index].scalable else \
            table[index].out_channels
        assert layer.block().shape[-1] == kept_out
        if index > 0:  # a layer reads only the channels its producer keeps
            assert layer.block().shape[-2] == program.layers[index - 1].block().shape[-1]
        outside = np.ones(layer.codes.shape, bool)
        outside[np.ix_(*[dict(layer.kept).get(axis, np.arange(size)) for axis, size in enumerate(layer.codes.shape)])] \
            = False
        assert not np.any(layer.codes[outside])  # switched-off channels are zero


def channel_wise(digits_cnn, seed=3):
    """digits_cnn with a random weight bit-width in 2..8 per output channel of every layer."""
    model, variables, x, bits, widths = digits_cnn
    rng = np.random.default_rng(seed)
    held = model.weight_channels((8, 8, 1))
    weight_bits = {name: rng.integers(2, 9, count).tolist() for name, count in held.items()}
    return model.with_weight_bits(variables, weight_bits), weight_bits


def test_channel_wise_weights_agree_and_hold_each_channels_codes_at_its_bits(digits_cnn):
    model, _, x, bits, widths = digits_cnn
    variables, weight_bits = channel_wise(digits_cnn)
    program = assert_agrees(model, variables, x, bits, widths, logit_tolerance=1e-4)
    for index, layer in enumerate(program.layers):
        assert layer.bits == bits[index]  # the input codes keep the layer's bit-width
        assert list(layer.weight_bits) == weight_bits[layer.name]
        codes = np.moveaxis(layer.codes, layer.channel_axis, -1).reshape(-1, layer.codes.shape[layer.channel_axis])
        limits = 2 ** (np.asarray(weight_bits[layer.name]) - 1) - 1
        assert (np.abs(codes).max(axis=0) <= limits).all()
        assert (np.abs(codes).max(axis=0)[np.abs(codes).max(axis=0) > 0] == limits[np.abs(codes).max(axis=0) > 0]).all()
        kept = dict(layer.kept).get(layer.channel_axis % layer.codes.ndim, np.arange(len(limits)))
        groups = layer.weight_groups()
        assert sorted(c for _, channels in groups for c in channels) == list(range(len(kept)))
        assert all((np.asarray(weight_bits[layer.name])[kept][channels] == b).all() for b, channels in groups)


def test_a_residual_network_with_padded_shortcuts_agrees():
    model = models.get("resnet20", num_classes=10)
    shape = (8, 8, 3)
    table = model.table(shape)
    bits = np.random.default_rng(1).choice([2, 3, 4, 6, 8], len(table))
    widths = [0.75 if layer.scalable else 1.0 for layer in table]
    x = inputs(shape, count=48)
    model = model.clone(example_shape=shape)
    variables = calibrated_clips(model, model.init_variables(jax.random.key(0), shape), x, bits, widths)
    assert_agrees(model, variables, x, bits, widths, logit_tolerance=0.5)


# -- a user's own models -------------------------------------------------------------------------------------------
class UserNet(nn.Module):
    """Branches joined by concatenation, a residual addition, a depthwise convolution, leaky ReLU, ReLU6, average
    and max pooling, biases."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        stem = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3))(x)))
        left = nn.leaky_relu(nn.Conv(4, (1, 1))(stem), 0.1)
        right = nn.relu6(nn.Conv(4, (3, 3), feature_group_count=4)(nn.Conv(4, (1, 1))(stem)))
        joined = jnp.concatenate([left, right], axis=-1) + stem
        pooled = nn.max_pool(nn.avg_pool(joined, (2, 2), (2, 2)), (2, 2), (1, 1), padding="SAME")
        return nn.Dense(5)(pooled.reshape(pooled.shape[0], -1))


class UserNNX(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 6, (3, 3), rngs=rngs)
        self.norm = nnx.BatchNorm(6, use_running_average=True, rngs=rngs)
        self.head = nnx.Linear(6, 4, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.norm(self.conv(x))).mean(axis=(1, 2)))


def randomised(variables, seed=1):
    """Every parameter and batch statistic random (variances positive), so batch norm is not an identity."""
    quant = variables.get("quant")
    variables = {name: value for name, value in variables.items() if name != "quant"}
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [jax.random.normal(key, leaf.shape, leaf.dtype) * 0.5 for key, leaf in zip(keys, leaves, strict=True)]
    variables = jax.tree_util.tree_unflatten(treedef, leaves)
    if "batch_stats" in variables:
        variables["batch_stats"] = jax.tree.map(lambda leaf: jnp.abs(leaf) + 0.5, variables["batch_stats"])
    return {**variables, "quant": quant} if quant is not None else variables


def test_a_linen_model_with_branches_pooling_and_leaky_relu_agrees():
    shape = (8, 8, 1)
    model = models.wrap(UserNet(), input_shape=shape)
    variables = randomised(model.init_variables(jax.random.key(0), shape))
    table = model.table()
    bits, widths = [8, 4, 3, 6, 5, 8][: len(table)], [1.0] * len(table)
    x = inputs(shape, count=256)
    assert_agrees(model, calibrated_clips(model, variables, x, bits, widths), x, bits, widths, logit_tolerance=0.5)


def test_an_nnx_model_agrees():
    shape = (8, 8, 1)
    model = models.wrap(UserNNX(nnx.Rngs(0)), input_shape=shape)
    variables = randomised(model.init_variables(jax.random.key(0), shape))
    x = inputs(shape)
    assert_agrees(model, calibrated_clips(model, variables, x, [4, 8], [1.0, 1.0]), x, [4, 8], [1.0, 1.0],
                  logit_tolerance=1e-3)


def test_raw_pixels_are_normalised_in_integers_as_the_float_inputs_were(digits_cnn):
    model, variables, _, bits, widths = digits_cnn
    pixels = np.random.default_rng(3).integers(0, 256, size=(64, 8, 8, 1)).astype(np.uint8)
    mean, std = np.array([100.0], np.float32), np.array([60.0], np.float32)
    from_pixels = lower(model, variables, bits, widths, normalisation=(mean, std))
    assert from_pixels.input_dtype == np.uint8 and from_pixels.normalisation == {"mean": [100.0], "std": [60.0]}
    normalised = (pixels.astype(np.float32) - mean) / std
    from_floats = lower(model, variables, bits, widths, input_bound=float(np.abs(normalised).max()))
    np.testing.assert_allclose(from_pixels(pixels), from_floats(normalised), atol=1e-4)
    with pytest.raises(ValueError, match="raw 8-bit pixels"):
        from_pixels(normalised)
    with pytest.raises(ValueError, match=r"example shape \(8, 8\), expected \(8, 8, 1\)"):
        from_floats(normalised[..., 0])


# -- what cannot be expressed --------------------------------------------------------------------------------------
class TanhNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        hidden = jnp.tanh(nn.Conv(4, (3, 3), name="features")(x))
        return nn.Dense(3, name="head")(hidden.mean(axis=(1, 2)))


class PlainNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        hidden = nn.relu(nn.Conv(4, (3, 3), name="features")(x))
        return nn.Dense(3, name="head")(hidden.mean(axis=(1, 2)))


def test_an_operation_without_an_integer_form_is_named_with_the_layer_before_it():
    model = models.wrap(TanhNet(), input_shape=(8, 8, 1))
    variables = model.init_variables(jax.random.key(0), (8, 8, 1))
    with pytest.raises(LoweringError, match=r"^operation 'tanh' after layer 'features' cannot run in the integer "
                                            r"program$"):
        lower(model, variables, [8, 8], [1.0, 1.0], input_bound=3.0)


def test_layers_above_8_bits_and_layers_left_in_float_are_refused(digits_cnn):
    model, variables, _, _, widths = digits_cnn
    with pytest.raises(LoweringError, match=r"'conv2' is at 16 bits; the integer program holds 2 to 8 bits"):
        lower(model, variables, [8, 16, 4, 8], widths, input_bound=3.0)
    excluded = models.wrap(PlainNet(), input_shape=(8, 8, 1), exclude=["head"])
    with pytest.raises(LoweringError, match=r"weight 'head/kernel', left in float by the rules"):
        lower(excluded, excluded.init_variables(jax.random.key(0), (8, 8, 1)), [8], [1.0], input_bound=3.0)


@pytest.mark.parametrize("entry, message", [
    ({}, "give either input_bound"),
    ({"input_bound": 1.0, "normalisation": ([0.0], [1.0])}, "give either input_bound"),
    ({"input_bound": -1.0}, "input_bound must be a positive number"),
    ({"input_bound": float("nan")}, "input_bound must be a positive number"),
    ({"normalisation": ([0.0], [0.0])}, "positive standard deviations"),
])
def test_bad_input_entries_are_one_line_errors(digits_cnn, entry, message):
    model, variables, _, bits, widths = digits_cnn
    with pytest.raises(ValueError, match=message):
        lower(model, variables, bits, widths, **entry)


def test_a_configuration_that_does_not_fit_the_model_is_refused(digits_cnn):
    model, variables, _, _, _ = digits_cnn
    with pytest.raises(ValueError, match="bits"):
        lower(model, variables, [8, 4], [1.0] * 4, input_bound=3.0)

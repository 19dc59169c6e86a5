"""Specification of mpqjax.nn.graph through a user's own models: the layer table found in a trace equals a hand count,
width groups follow the graph (residual adds tie, depthwise convs follow their producer, channel-mixing ops fix),
input masks of concatenated and flattened inputs, and which layer inputs are non-negative."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpqjax import cost
from mpqjax.nn import graph, intercept
from mpqjax.nn.models import wrap

user_models = sys.modules["user_models"]  # loaded by tests/nn/conftest.py

# name, kind, in, out, kernel, stride, groups, out_hw, weights, macs -- counted by hand from user_models.py
HAND_COUNTS = {
    "ResidualCNN": ((8, 8, 1), [
        ("Conv_0", "conv", 1, 8, (3, 3), (1, 1), 1, (8, 8), 3 * 3 * 1 * 8, 3 * 3 * 1 * 8 * 64),
        ("ResidualBlock_0/Conv_0", "conv", 8, 8, (3, 3), (1, 1), 1, (8, 8), 3 * 3 * 8 * 8, 3 * 3 * 8 * 8 * 64),
        ("ResidualBlock_0/Conv_1", "conv", 8, 8, (3, 3), (1, 1), 1, (8, 8), 3 * 3 * 8 * 8, 3 * 3 * 8 * 8 * 64),
        ("Conv_1", "conv", 8, 16, (3, 3), (2, 2), 1, (4, 4), 3 * 3 * 8 * 16, 3 * 3 * 8 * 16 * 16),
        ("Dense_0", "dense", 16, 10, (1, 1), (1, 1), 1, (1, 1), 160, 160),
    ]),
    "NnxCNN": ((8, 8, 1), [
        ("stem", "conv", 1, 8, (3, 3), (1, 1), 1, (8, 8), 72, 72 * 64),
        ("conv", "conv", 8, 16, (3, 3), (2, 2), 1, (4, 4), 1152, 1152 * 16),
        ("head", "dense", 16, 10, (1, 1), (1, 1), 1, (1, 1), 160, 160),
    ]),
    "SeparableCNN": ((8, 8, 3), [
        ("Conv_0", "conv", 3, 8, (3, 3), (1, 1), 1, (8, 8), 3 * 3 * 3 * 8, 3 * 3 * 3 * 8 * 64),
        ("Conv_1", "depthwise", 8, 8, (3, 3), (1, 1), 8, (8, 8), 3 * 3 * 8, 3 * 3 * 8 * 64),
        ("Conv_2", "conv", 8, 16, (1, 1), (1, 1), 1, (8, 8), 8 * 16, 8 * 16 * 64),
        ("Conv_3", "conv", 16, 16, (3, 3), (1, 1), 2, (8, 8), 3 * 3 * 8 * 16, 3 * 3 * 8 * 16 * 64),
        ("Dense_0", "dense", 16, 10, (1, 1), (1, 1), 1, (1, 1), 160, 160),
    ]),
    # dense layers on (batch, tokens, channels) apply their weights at every token (or every channel when mixing
    # tokens): those positions are their "pixels" (out_hw)
    "Mixer": ((8, 4), [
        ("embed", "dense", 4, 8, (1, 1), (1, 1), 1, (8, 1), 32, 32 * 8),
        ("MixerBlock_0/Dense_0", "dense", 8, 6, (1, 1), (1, 1), 1, (8, 1), 48, 48 * 8),
        ("MixerBlock_0/Dense_1", "dense", 6, 8, (1, 1), (1, 1), 1, (8, 1), 48, 48 * 8),
        ("MixerBlock_0/Dense_2", "dense", 8, 12, (1, 1), (1, 1), 1, (8, 1), 96, 96 * 8),
        ("MixerBlock_0/Dense_3", "dense", 12, 8, (1, 1), (1, 1), 1, (8, 1), 96, 96 * 8),
        ("AttentionBlock_0/query", "dense", 8, 4, (1, 1), (1, 1), 1, (8, 1), 32, 32 * 8),
        ("AttentionBlock_0/key", "dense", 8, 4, (1, 1), (1, 1), 1, (8, 1), 32, 32 * 8),
        ("AttentionBlock_0/value", "dense", 8, 8, (1, 1), (1, 1), 1, (8, 1), 64, 64 * 8),
        ("head", "dense", 8, 10, (1, 1), (1, 1), 1, (1, 1), 80, 80),
    ]),
    "ConcatCNN": ((8, 8, 3), [
        ("Conv_0", "conv", 3, 4, (3, 3), (1, 1), 1, (8, 8), 108, 108 * 64),
        ("Conv_1", "conv", 3, 6, (1, 1), (1, 1), 1, (8, 8), 18, 18 * 64),
        ("Conv_2", "conv", 10, 8, (3, 3), (1, 1), 1, (8, 8), 3 * 3 * 10 * 8, 3 * 3 * 10 * 8 * 64),
        ("Dense_0", "dense", 8, 10, (1, 1), (1, 1), 1, (1, 1), 80, 80),
    ]),
    "FlattenNet": ((8, 8, 1), [
        ("Conv_0", "conv", 1, 4, (3, 3), (2, 2), 1, (4, 4), 36, 36 * 16),
        ("Dense_0", "dense", 64, 16, (1, 1), (1, 1), 1, (1, 1), 1024, 1024),
        ("Dense_1", "dense", 16, 10, (1, 1), (1, 1), 1, (1, 1), 160, 160),
    ]),
}


def build(name):
    """The user model ``name`` of user_models.py (the NNX one constructed, as a user does)."""
    return getattr(user_models, name)()


def wrapped(name):
    shape, _ = HAND_COUNTS[name]
    return wrap(build(name), input_shape=shape)


def scalable(table):
    return {layer.name for layer in table if layer.scalable}


def group_of(table, name):
    return table[table.names.index(name)].width_group


@pytest.mark.parametrize("name", sorted(HAND_COUNTS))
def test_layer_table_equals_a_hand_count(name):
    shape, expected = HAND_COUNTS[name]
    table = wrapped(name).table()
    found = [(layer.name, layer.kind, layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.groups,
              layer.out_hw, layer.weights, layer.macs) for layer in table]
    assert found == expected
    assert table.input_shape == shape and table.model == name
    assert all(layer.use_bias for layer in table)  # flax's Conv, Dense and nnx's Conv, Linear add a bias
    assert [layer.weight_path for layer in table] == [f"{row[0]}/kernel" for row in expected]
    assert table.total_macs == sum(row[9] for row in expected)


@pytest.mark.parametrize("name, followed_by_batch_norm", [
    ("ResidualCNN", [True, True, True, False, False]),
    ("NnxCNN", [True, True, False]),
])
def test_batch_norm_after_a_layer_is_in_its_spec(name, followed_by_batch_norm):
    assert [layer.batch_norm for layer in wrapped(name).table()] == followed_by_batch_norm


def test_the_residual_add_ties_the_stem_and_the_blocks_last_conv():
    table = wrapped("ResidualCNN").table()
    assert table.width_groups() == [[0, 2], [1], [3], [4]]
    assert group_of(table, "Conv_0") == group_of(table, "ResidualBlock_0/Conv_1")
    assert scalable(table) == {"Conv_0", "ResidualBlock_0/Conv_0", "ResidualBlock_0/Conv_1", "Conv_1"}
    # who reads whom: the block reads the stem, the strided conv reads the sum (the stem's group), the head Conv_1
    assert [layer.input_layer for layer in table] == [-1, 0, 1, 0, 3]


def test_nnx_layers_follow_their_attribute_names_and_the_logits_layer_is_fixed():
    table = wrapped("NnxCNN").table()
    assert table.width_groups() == [[0], [1], [2]]
    assert scalable(table) == {"stem", "conv"}
    assert [layer.input_layer for layer in table] == [-1, 0, 1]


def test_depthwise_is_tied_to_its_producer_and_a_grouped_conv_fixes_its_channels():
    table = wrapped("SeparableCNN").table()
    assert group_of(table, "Conv_1") == group_of(table, "Conv_0")
    assert table[1].kind == "depthwise" and table[1].scalable
    # narrowing either side of a 2-group conv would remove whole groups' inputs: not the removal of channels
    assert not table[2].scalable and not table[3].scalable and not table[4].scalable
    # the pointwise conv reads the depthwise output: as many channels as the producer that sets them
    source = table[table[2].input_layer]
    assert source.width_group == table[1].width_group and source.out_channels == table[1].out_channels


def test_mixer_and_attention_only_the_hidden_layers_of_the_mlps_scale():
    table = wrapped("Mixer").table()
    # LayerNorm over channels fixes the residual stream (embed, Dense_1's token axis, Dense_3, value); the q.k
    # contraction fixes query and key; the logits are fixed. The two MLPs' hidden layers are free.
    assert scalable(table) == {"MixerBlock_0/Dense_0", "MixerBlock_0/Dense_2"}
    assert table[2].input_layer == 1 and table[4].input_layer == 3
    assert len({layer.width_group for layer in table}) == len(table)


@pytest.mark.parametrize("op, scales", [
    ("relu", True), ("gelu", True), ("tanh", True), ("token_softmax", True),
    ("layer_norm", False), ("rms_norm", False), ("softmax", False), ("channel_sum", False),
])
def test_elementwise_ops_keep_a_layer_scalable_and_channel_mixing_ops_fix_it(op, scales):
    table = wrap(user_models.ChannelOp(op), input_shape=(4, 6)).table()
    assert table.names == ("Dense_0", "Dense_1")
    assert table[0].scalable is scales and not table[1].scalable
    assert table[0].out_hw == (4, 1) and table[0].macs == 4 * 6 * 8  # applied at each of the 4 tokens
    assert table[1].input_layer == (0 if scales else -1)


def test_concatenation_masks_the_consumer_with_its_producers_masks_side_by_side():
    model = wrapped("ConcatCNN")
    analysis = model.analysis()
    table = analysis.table
    assert scalable(table) == {"Conv_0", "Conv_1", "Conv_2"}
    assert analysis.plan.in_masks[2] == ("concat", (("group", 0, 4), ("group", 1, 6)))
    base = [layer.out_channels for layer in table]
    mask = intercept.mask_of(analysis.plan.in_masks[2], jnp.array([0.5, 0.5, 1.0, 1.0]), base)
    np.testing.assert_array_equal(mask, [1, 1, 0, 0, 1, 1, 1, 0, 0, 0])  # 2 of 4, then 3 of 6 (6 * 0.5 rounds up)
    mask = intercept.mask_of(analysis.plan.in_masks[2], jnp.array([1.0, 0.25, 1.0, 1.0]), base)
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    assert intercept.mask_of(analysis.plan.in_masks[0], jnp.ones(4), base) is None  # the model input


def test_flattening_gives_a_product_space_that_stays_scalable():
    analysis = wrapped("FlattenNet").analysis()
    assert scalable(analysis.table) == {"Conv_0", "Dense_0"}
    description = analysis.plan.in_masks[1]
    assert description == ("product", (("ones", 4), ("ones", 4), ("group", 0, 4)))
    mask = intercept.mask_of(description, jnp.array([0.5, 1.0, 1.0]), [4, 16, 10])
    # (4, 4, 4) flattened row-major: every pixel keeps its first 2 of 4 channels
    np.testing.assert_array_equal(mask, np.tile([1, 1, 0, 0], 16))
    assert analysis.plan.in_masks[2] == ("group", 1, 16)
    # the cost model reads the flattened producer's channels at each of its 16 positions
    assert (analysis.table[1].input_layer, analysis.table[1].input_repeat) == (0, 16)
    counts = cost.layer_counts(analysis.table, [0.5, 1.0, 1.0], exact=True)
    np.testing.assert_array_equal(counts["consumed"], [1, 2 * 16, 16])
    np.testing.assert_array_equal(counts["weights"], [9 * 2, 2 * 16 * 16, 160])


@pytest.mark.parametrize("name, signed", [
    ("ResidualCNN", (True, False, False, False, False)),  # the image, then ReLU outputs and their means
    ("NnxCNN", (True, False, False)),
    ("ConcatCNN", (True, True, False, False)),  # a concatenation of ReLU outputs is non-negative
    ("Mixer", (True,) * 9),  # LayerNorm, GELU and attention outputs can be negative
])
def test_inputs_after_a_relu_are_unsigned_and_the_first_layers_input_is_signed(name, signed):
    assert wrapped(name).analysis().plan.signed == signed


def test_softmax_output_is_non_negative():
    plan = wrap(user_models.ChannelOp("softmax"), input_shape=(4, 6)).analysis().plan
    assert plan.signed == (True, False)


def test_a_weight_used_twice_gives_two_layers_with_unique_names():
    table = wrap(user_models.SharedDense(), input_shape=(8,)).table()
    assert table.names == ("Dense_0", "Dense_0#2", "Dense_1")
    assert table[1].weight_path == table[0].weight_path == "Dense_0/kernel"
    assert table[1].input_layer == 0


def test_discover_on_a_plain_function_names_weights_by_their_path():
    params = {"w1": jnp.ones((6, 5)), "scale": jnp.ones((5,)), "v2": jnp.ones((5, 3))}

    def forward(params, state, x):
        del state
        hidden = jnp.tanh(x @ params["w1"])
        return hidden @ (params["v2"] * params["scale"][:, None])  # a weight computed from two leaves

    paths = ["scale", "v2", "w1"]  # jax flattens dict keys in sorted order
    closed = jax.make_jaxpr(forward)(params, {}, jnp.ones((2, 6)))
    found = graph.discover(closed, paths, 3, 0)
    assert found.names == ("w1", "v2")  # a leaf not called kernel keeps its whole path; the larger leaf names it
    assert [layer.kind for layer in found.layers] == ["dense", "dense"]
    assert [(layer.in_channels, layer.out_channels) for layer in found.layers] == [(6, 5), (5, 3)]
    assert found.fixed == (False, True)  # the output is fixed; the hidden layer is not
    assert found.in_masks == (None, ("group", 0, 5))
    assert found.input_nonneg == (False, False)
    assert found.input_layer == (-1, 0)
    # leaving the hidden layer in float fixes its channels
    assert graph.discover(closed, paths, 3, 0, fixed_layers=frozenset({0})).fixed == (True, True)

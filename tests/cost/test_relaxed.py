"""Specification of `mpqjax.cost.relaxed`: the differentiable cost of probabilities over bit-widths and channels.

One-hot probabilities cost exactly what the discrete model costs (`cost` for per-layer choices, `channel_cost` for
per-channel ones, pruned channels removed); in between, each layer's choices are averaged and its input channels
are its producer's expected channels. Expected numbers are written out from the counting rules, not copied from the
code. The paper's packing: 15 multiplications per DSP at 2 bits, 6 at 3-4 bits, 2 at 5-8 bits.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpqjax import cost as cost_model
from mpqjax.cost import relaxed
from mpqjax.nn.table import LayerSpec, LayerTable

BITS = np.array([2, 3, 4, 6, 8], np.float32)
WIDTHS = np.array([0.75, 0.875, 1.0, 1.125, 1.25], np.float32)
SMALL_FPGA = cost_model.FPGATarget(rows=2, cols=8, clock_hz=1e6, energy_per_dsp_op_pj=2.0, energy_per_byte_pj=10.0)
TARGETS = (
    cost_model.FPGATarget(rows=4, cols=8, overhead_cycles=3.0),
    cost_model.FPGATarget(packing=cost_model.hikonv_packing_table()),
    cost_model.GenericTarget(),
)

# Every kind of wiring: a stem, a depthwise layer tied to it, a pointwise and a 3x3 conv in one residual width group,
# a grouped conv alone in its group, a dense layer reading its flattened 2x2 map (input_repeat 4), a fixed head.
MIXED = LayerTable(
    (
        LayerSpec("stem", "conv", 3, 8, kernel=(3, 3), stride=(2, 2), out_hw=(4, 4), width_group=0, batch_norm=True),
        LayerSpec("dw", "depthwise", 8, 8, kernel=(3, 3), out_hw=(4, 4), input_layer=0, width_group=0,
                  batch_norm=True),
        LayerSpec("pw", "conv", 8, 16, out_hw=(4, 4), input_layer=1, width_group=1, batch_norm=True),
        LayerSpec("conv", "conv", 16, 16, kernel=(3, 3), out_hw=(4, 4), input_layer=2, width_group=1),
        LayerSpec("grouped", "conv", 16, 8, kernel=(3, 3), stride=(2, 2), out_hw=(2, 2), input_layer=3,
                  width_group=2, groups=2),
        LayerSpec("fc", "dense", 32, 12, input_layer=4, input_repeat=4, width_group=3, use_bias=True),
        LayerSpec("head", "dense", 12, 10, input_layer=5, width_group=4, scalable=False, use_bias=True),
    ),
    model="mixed",
)
# A 3x3 conv 3->4 on a 2x2 output with batch-norm, then a fixed dense head reading the flattened map (4 * 4 -> 3).
FLAT = LayerTable(
    (
        LayerSpec("conv", "conv", 3, 4, kernel=(3, 3), out_hw=(2, 2), width_group=0, batch_norm=True),
        LayerSpec("head", "dense", 16, 3, input_layer=0, input_repeat=4, width_group=1, scalable=False,
                  use_bias=True),
    ),
    model="flat",
)


@pytest.fixture(scope="module")
def tables(two_layer_table, branchy_table):
    from mpqjax.nn import models

    zoo = {name: models.layer_table(name) for name in ("digits_cnn", "resnet20", "mobilenet_v2")}
    return {"mixed": MIXED, "two_layer": two_layer_table, "branchy": branchy_table, **zoo}


@pytest.fixture(scope="module")
def jitted():
    return (jax.jit(cost_model.cost, static_argnums=0), jax.jit(relaxed.relaxed_cost, static_argnums=0),
            jax.jit(relaxed.layer_choice_groups, static_argnums=0))


def _assert_costs_equal(left, right, rtol=1e-6):
    for field in cost_model.Cost._fields:
        np.testing.assert_allclose(getattr(left, field), getattr(right, field), rtol=rtol, err_msg=field)


def _one_hot(indices, count):
    return np.eye(count, dtype=np.float32)[indices]


def _layer_choices(table, count, seed):
    """Indices into BITS (per layer) and WIDTHS (per width group) of ``count`` configurations, shape (count, L)."""
    rng = np.random.default_rng(seed)
    bit_index = rng.integers(0, len(BITS), size=(count, len(table)))
    width_index = np.empty((count, len(table)), np.int64)
    for group in table.width_groups():
        width_index[:, group] = rng.integers(0, len(WIDTHS), size=(count, 1))
    return bit_index, width_index


def _prunable(table):
    """Layers whose channels can be pruned one by one: scalable, alone in their width group, no depthwise reader."""
    alone = {group[0] for group in table.width_groups() if len(group) == 1}
    read_by_depthwise = {layer.input_layer for layer in table if layer.kind == "depthwise"}
    return [index in alone and layer.scalable and layer.kind != "depthwise" and index not in read_by_depthwise
            for index, layer in enumerate(table)]


def _channel_choice(table, seed):
    """A one-hot channel-wise choice: ``(act_index, channel_probs, kept channel bits, widths)``; prunable layers
    lose some channels (column 0), every kept channel takes a bit-width of BITS."""
    rng = np.random.default_rng(seed)
    produced = cost_model.layer_counts(table, np.ones(len(table)), exact=True)["produced"]
    channel_probs, kept_bits, widths = [], [], []
    for index, (layer, prunable) in enumerate(zip(table, _prunable(table), strict=True)):
        channels = int(produced[index])
        options = rng.integers(1, len(BITS) + 1, size=channels)
        if prunable and channels > 1:
            options[rng.choice(channels, size=rng.integers(1, channels // 2 + 1), replace=False)] = 0
        channel_probs.append(_one_hot(options, len(BITS) + 1))
        kept_bits.append(BITS[options[options > 0] - 1].astype(np.int64))
        widths.append(np.count_nonzero(options) / layer.out_channels if prunable else 1.0)
    return rng.integers(0, len(BITS), size=len(table)), channel_probs, kept_bits, widths


# -- one-hot probabilities are the discrete model ------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS, ids=["fpga", "fpga_hikonv", "generic"])
@pytest.mark.parametrize("name", ["mixed", "two_layer", "branchy", "digits_cnn", "resnet20", "mobilenet_v2"])
def test_one_hot_layer_choices_equal_the_per_layer_cost(tables, jitted, name, target):
    table = tables[name]
    cost, relaxed_cost, layer_choice_groups = jitted
    bit_index, width_index = _layer_choices(table, 4, seed=len(name))
    act_probs, groups = layer_choice_groups(table, _one_hot(bit_index, len(BITS)), BITS,
                                            _one_hot(width_index, len(WIDTHS)), WIDTHS)
    # One call costs the batch of 4 (leading axes); each entry is checked against the discrete model's.
    batched = relaxed_cost(table, act_probs, BITS, groups, BITS, target)
    _assert_costs_equal(batched, cost(table, BITS[bit_index], WIDTHS[width_index], target))


@pytest.mark.parametrize("target", TARGETS, ids=["fpga", "fpga_hikonv", "generic"])
@pytest.mark.parametrize("name", ["mixed", "branchy", "digits_cnn", "resnet20", "mobilenet_v2"])
def test_one_hot_channel_choices_equal_the_channel_wise_cost_of_the_kept_channels(tables, jitted, name, target):
    table = tables[name]
    relaxed_cost = jitted[1]
    for seed in range(2):
        act_index, channel_probs, kept_bits, widths = _channel_choice(table, seed)
        groups = relaxed.channel_probs_groups(channel_probs, len(BITS))
        result = relaxed_cost(table, _one_hot(act_index, len(BITS)), BITS, groups, BITS, target)
        _assert_costs_equal(result, cost_model.channel_cost(table, BITS[act_index], widths, kept_bits, target))


def test_the_mixed_table_prunes_its_lone_layers():
    # The channel test above prunes the grouped conv and the dense layer; the tied and fixed layers keep theirs.
    assert _prunable(MIXED) == [False, False, False, False, True, True, False]


# -- between one-hot: averages and expectations --------------------------------------------------------------------


def _flat_choice(pruned_probability):
    """`relaxed_cost`'s ``(act_probs, act_bits, group_channels, weight_bits)`` of FLAT: conv channels at 2, 4, 8, 4
    bits (channel 1's probability partly on pruned), activations at 4 bits; the head's 3 channels and activations at
    8 bits. Channel options: (pruned, 2, 4, 8)."""
    conv = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 1, 0]], np.float32)
    conv[1] = [pruned_probability, 0, 1 - pruned_probability, 0]
    head = np.array([[0, 0, 0, 1]] * 3, np.float32)
    act_probs = np.array([[0, 1, 0], [0, 0, 1]], np.float32)
    options = np.array([2, 4, 8], np.float32)
    return act_probs, options, relaxed.channel_probs_groups([conv, head], 3), options


def test_a_pruned_channel_costs_nothing(jitted):
    kept, pruned = (jitted[1](FLAT, *_flat_choice(probability), SMALL_FPGA) for probability in (0.0, 1.0))
    # conv: 3*3*3 = 27 weights per channel, channels at 2+4+8+4 bits -> 486 bits, batch-norm 2*4 values at 16 -> 128;
    # head: 4 channels * 4 positions * 3 outputs at 8 bits -> 384, bias 3 * 16 -> 48. 1046 bits = 130.75 bytes.
    assert float(kept.size_bytes) == 130.75
    # Pruning channel 1 (4 bits) removes its 27 weights at 4 bits (108), its 2 batch-norm values (32) and the head's
    # 4 * 3 weights at 8 bits that read it (96): 236 bits = 29.5 bytes.
    assert float(pruned.size_bytes) == 130.75 - 29.5
    np.testing.assert_array_equal(pruned.layer_weights, [81, 36])
    assert np.all(np.asarray(pruned.layer_cycles) <= np.asarray(kept.layer_cycles))
    assert float(pruned.latency_cycles) <= float(kept.latency_cycles)


def test_a_partly_pruned_channel_costs_its_expectation(jitted):
    quarter = jitted[1](FLAT, *_flat_choice(0.25), SMALL_FPGA)
    # Size is linear in the one channel's probability: a quarter of the 29.5 bytes pruning it saves.
    np.testing.assert_allclose(float(quarter.size_bytes), 130.75 - 0.25 * 29.5, rtol=1e-6)
    np.testing.assert_allclose(quarter.layer_weights, [27 * 3.75, 3.75 * 4 * 3], rtol=1e-6)


def test_a_producers_width_choices_reach_its_consumer_as_expected_channels(two_layer_table):
    # The conv's widths 0.5 (4 channels) and 1.0 (8) at 50/50: 6 expected channels, which is width 0.75's count, so
    # the conv and the head that reads it cost exactly what width 0.75 costs (bits one-hot at 4 and 8).
    bit_probs = _one_hot([1, 2], 3)
    width_probs = np.array([[0.5, 0.5], [1.0, 0.0]], np.float32)
    act_probs, groups = relaxed.layer_choice_groups(two_layer_table, bit_probs, [2, 4, 8], width_probs, [0.5, 1.0])
    np.testing.assert_array_equal(groups.sum(-1), [[6, 6, 6], [10, 10, 10]])  # whatever the bits
    result = relaxed.relaxed_cost(two_layer_table, act_probs, [2, 4, 8], groups, [2, 4, 8], SMALL_FPGA)
    _assert_costs_equal(result, cost_model.cost(two_layer_table, [4, 8], [0.75, 1.0], SMALL_FPGA))


@pytest.mark.parametrize("target", [SMALL_FPGA, cost_model.GenericTarget()], ids=["fpga", "generic"])
def test_each_layers_activation_choices_are_averaged(jitted, target):
    # Channel-wise choices leave the channel counts the same whatever the activations: every layer's figures, and
    # the totals, are the average of its figures at each activation bit-width.
    _, channel_probs, _, _ = _channel_choice(MIXED, seed=3)
    groups = relaxed.channel_probs_groups(channel_probs, len(BITS))
    rng = np.random.default_rng(3)
    first, second = _one_hot(rng.integers(0, len(BITS), (2, len(MIXED))), len(BITS))
    mixed = jitted[1](MIXED, 0.25 * first + 0.75 * second, BITS, groups, BITS, target)
    ends = [jitted[1](MIXED, probs, BITS, groups, BITS, target) for probs in (first, second)]
    for field in ("layer_size_bytes", "layer_cycles", "layer_macs", "layer_bops", "layer_weights", "size_bytes",
                  "latency_cycles", "bops", "energy_joules"):
        average = 0.25 * np.asarray(getattr(ends[0], field)) + 0.75 * np.asarray(getattr(ends[1], field))
        np.testing.assert_allclose(getattr(mixed, field), average, rtol=1e-6, err_msg=field)


# -- gradients ------------------------------------------------------------------------------------------------------

_SCALAR_FIELDS = ("size_bytes", "latency_cycles", "latency_seconds", "throughput_per_second", "speedup_vs_fip16",
                  "size_reduction_vs_fip16", "size_reduction_vs_fp32", "bops", "energy_joules")


def _scalars(result):
    return jnp.stack([getattr(result, name) for name in _SCALAR_FIELDS])


def _soft(rng, shape):
    return np.asarray(jax.nn.softmax(rng.normal(size=shape), axis=-1), np.float32)


@pytest.mark.parametrize("target", [SMALL_FPGA, cost_model.GenericTarget()], ids=["fpga", "generic"])
def test_gradients_of_layer_choices_are_finite_and_have_the_expected_sign(target):
    rng = np.random.default_rng(0)
    bit_probs, width_probs = _soft(rng, (len(MIXED), len(BITS))), _soft(rng, (len(MIXED), len(WIDTHS)))

    def fields(bit_probs, width_probs):
        act_probs, groups = relaxed.layer_choice_groups(MIXED, bit_probs, BITS, width_probs, WIDTHS)
        return _scalars(relaxed.relaxed_cost(MIXED, act_probs, BITS, groups, BITS, target))

    jacobians = jax.jit(jax.jacrev(fields, argnums=(0, 1)))(bit_probs, width_probs)
    grads = {name: (jacobians[0][index], jacobians[1][index]) for index, name in enumerate(_SCALAR_FIELDS)}
    for name, pair in grads.items():
        assert all(np.all(np.isfinite(grad)) for grad in pair), name
    # Moving probability to a higher bit-width (along e_high - e_low) raises size and BOPs and never lowers latency.
    for name in ("size_bytes", "bops"):
        assert np.all(np.diff(grads[name][0], axis=-1) > 0), name
    assert np.all(np.diff(grads["latency_cycles"][0], axis=-1) >= -1e-6 * np.abs(grads["latency_cycles"][0]).max())
    # A wider width raises size and latency (the straight-through ceil gives latency a slope); the fixed head's
    # width probabilities change nothing.
    scalable = np.array([layer.scalable for layer in MIXED])
    for name in ("size_bytes", "latency_cycles", "energy_joules"):
        assert np.all(np.diff(grads[name][1][scalable], axis=-1) > 0), name
        np.testing.assert_allclose(np.diff(grads[name][1][~scalable], axis=-1), 0, atol=1e-6, err_msg=name)


def test_gradients_of_channel_choices_are_finite_and_pruning_lowers_size():
    rng = np.random.default_rng(1)
    produced = cost_model.layer_counts(MIXED, np.ones(len(MIXED)), exact=True)["produced"]
    channel_probs = [_soft(rng, (int(channels), len(BITS) + 1)) for channels in produced]
    act_probs = _soft(rng, (len(MIXED), len(BITS)))

    def fields(act_probs, channel_probs):
        groups = relaxed.channel_probs_groups(channel_probs, len(BITS))
        return _scalars(relaxed.relaxed_cost(MIXED, act_probs, BITS, groups, BITS, SMALL_FPGA))

    act_jacobian, channel_jacobians = jax.jit(jax.jacrev(fields, argnums=(0, 1)))(act_probs, channel_probs)
    assert np.all(np.isfinite(act_jacobian)) and all(np.all(np.isfinite(jacobian)) for jacobian in channel_jacobians)
    size_grads = [jacobian[_SCALAR_FIELDS.index("size_bytes")] for jacobian in channel_jacobians]
    for grad in size_grads:
        grad = np.asarray(grad)
        # "Pruned" is not counted (gradient 0); each kept option costs more the more bits it has.
        assert np.all(grad[:, 0] == 0) and np.all(grad[:, 1] > 0) and np.all(np.diff(grad[:, 1:], axis=-1) > 0)


def test_the_straight_through_ceil_counts_exactly_with_the_identitys_slope():
    table = LayerTable((LayerSpec("conv", "conv", 3, 8, kernel=(3, 3), out_hw=(4, 4)),))
    target = cost_model.FPGATarget(rows=4, cols=8)
    groups = np.array([[[0.0, 8.0]]], np.float32)  # 8 channels at 4 bits, activations at 4 bits

    @jax.jit
    def cycles(groups):
        return relaxed.relaxed_cost(table, [[1.0]], [4], groups, [2, 4], target).latency_cycles

    # Row passes 16 pixels * ceil(27/8) = 64, 4 bits pack 6: ceil(64/6) = 11 per invocation, 8/4 = 2 invocations.
    assert float(cycles(groups)) == 22.0
    assert float(cycles(groups - np.float32(0.5))) == 22.0  # 7.5 channels still take 2 invocations
    # d cycles / d channels = 11 cycles per invocation / 4 rows, at any channel count.
    np.testing.assert_allclose(jax.grad(cycles)(groups), [[[11 / 4, 11 / 4]]], rtol=1e-6)


def test_quotients_round_up_exactly_where_float32_division_does_not(jitted):
    # 225 inputs on 15 columns: 15 passes per pixel, 196 pixels -> 2940 row passes; 2 bits pack 15 -> 196 cycles per
    # invocation; 21 channels on 7 rows -> 3 invocations: 588 cycles. XLA divides by a broadcast divisor as a
    # multiplication by its reciprocal, and 2940 * fl(1/15) and 21 * fl(1/7) come out above 196 and 3.
    table = LayerTable((LayerSpec("conv", "conv", 225, 21, out_hw=(14, 14)),))
    target = cost_model.FPGATarget(rows=7, cols=15)
    act_probs, groups = _one_hot([0], 2), np.array([[[21.0, 0.0], [0.0, 0.0]]], np.float32)
    for costed in (relaxed.relaxed_cost, jitted[1]):
        assert float(costed(table, act_probs, [2, 8], groups, [2, 8], target).latency_cycles) == 588
    assert float(cost_model.channel_cost(table, [2], [1.0], [[2] * 21], target).latency_cycles) == 588


# -- jit, batches, checks, package face -----------------------------------------------------------------------------


def test_new_probabilities_do_not_recompile(compilations):
    rng = np.random.default_rng(2)
    inputs = [tuple(jnp.asarray(array) for array in relaxed.layer_choice_groups(
        MIXED, _soft(rng, (len(MIXED), len(BITS))), BITS, _soft(rng, (len(MIXED), len(WIDTHS))), WIDTHS))
        for _ in range(2)]
    costed = jax.jit(lambda act_probs, groups, target: relaxed.relaxed_cost(MIXED, act_probs, BITS, groups, BITS,
                                                                            target).size_bytes)
    with compilations() as compiled:
        sizes = [costed(act_probs, groups, SMALL_FPGA) for act_probs, groups in inputs]
    assert len(compiled) == 1
    assert float(sizes[0]) != float(sizes[1])


def test_vmap_equals_a_python_loop(jitted):
    rng = np.random.default_rng(4)
    act_probs, groups = relaxed.layer_choice_groups(MIXED, _soft(rng, (3, len(MIXED), len(BITS))), BITS,
                                                    _soft(rng, (3, len(MIXED), len(WIDTHS))), WIDTHS)
    mapped = jax.jit(jax.vmap(lambda a, g: relaxed.relaxed_cost(MIXED, a, BITS, g, BITS, SMALL_FPGA)))(act_probs,
                                                                                                       groups)
    for index in range(3):
        single = jitted[1](MIXED, act_probs[index], BITS, groups[index], BITS, SMALL_FPGA)
        for name in cost_model.Cost._fields:
            np.testing.assert_allclose(getattr(mapped, name)[index], getattr(single, name), rtol=1e-6, err_msg=name)


def test_mismatched_shapes_raise_a_value_error():
    act_probs, groups = relaxed.layer_choice_groups(FLAT, _one_hot([0, 1], 3), [2, 4, 8], [[1.0], [1.0]], [1.0])
    with pytest.raises(ValueError, match="must end in"):
        relaxed.relaxed_cost(FLAT, act_probs, [2, 4], groups, [2, 4, 8])
    with pytest.raises(ValueError, match="must end in"):
        relaxed.relaxed_cost(MIXED, act_probs, [2, 4, 8], groups, [2, 4, 8])
    with pytest.raises(ValueError, match="must be 1-D"):
        relaxed.relaxed_cost(FLAT, act_probs, 4, groups, [2, 4, 8])
    with pytest.raises(ValueError, match="must end in"):
        relaxed.layer_choice_groups(FLAT, _one_hot([0, 1], 3), [2, 4], [[1.0], [1.0]], [1.0])
    with pytest.raises(ValueError, match="layer 1's channel probabilities have 3 options, layer 0's 4"):
        relaxed.channel_probs_groups([np.ones((4, 4)), np.ones((3, 3))], 2)


def test_the_names_are_reachable_from_the_package():
    for name in relaxed.__all__:
        assert getattr(cost_model, name) is getattr(relaxed, name) and name in cost_model.__all__, name
    assert cost_model.relaxed is relaxed

"""Specification of `mpqjax.cost.channels`: the cost of configurations with a weight bit-width per output channel.

Expected numbers are written out from the counting rules in the module docstring, not copied from the code. The
paper's packing (multiplications per DSP): 15 at 2 bits, 6 at 3-4 bits, 2 at 5-8 bits, 1 at 16 bits.
"""


import numpy as np
import pytest

from mpqjax import cost as cost_model
from mpqjax.cost import channels
from mpqjax.nn.config import MAX_CHANNEL_BITS, MIN_BITS
from mpqjax.nn.table import LayerSpec, LayerTable

# A 3x3 conv 2->4 on a 2x2 output with batch-norm, then a dense head 4->3 with a bias (not scalable).
TINY = LayerTable(
    (
        LayerSpec("conv", "conv", 2, 4, kernel=(3, 3), out_hw=(2, 2), width_group=0, batch_norm=True),
        LayerSpec("head", "dense", 4, 3, input_layer=0, width_group=1, scalable=False, use_bias=True),
    ),
    model="tiny",
)
TINY_FPGA = cost_model.FPGATarget(rows=2, cols=8, clock_hz=1e6, energy_per_dsp_op_pj=2.0, energy_per_byte_pj=10.0)


def _assert_costs_equal(left, right, rtol=1e-6):
    for field in cost_model.Cost._fields:
        np.testing.assert_allclose(getattr(left, field), getattr(right, field), rtol=rtol, err_msg=field)


# -- hand counts ----------------------------------------------------------------------------------------------------


def test_mixed_channel_bits_hand_counts_on_the_fpga():
    result = channels.channel_cost(TINY, [4, 8], [1.0, 1.0], [[2, 2, 8, 4], None], TINY_FPGA)
    # conv: patch 3*3*2 = 18 weights per channel; channel bits 2+2+8+4 = 16 -> 18*16 = 288 bits; batch-norm 2*4 = 8
    # values at 16 bits = 128 -> 416 bits = 52 bytes. head (None: 8 bits): 4*3 = 12 weights at 8 bits = 96 bits,
    # bias 3 at 16 = 48 -> 144 bits = 18 bytes.
    np.testing.assert_array_equal(result.layer_size_bytes, [52, 18])
    assert result.size_bytes == 70
    np.testing.assert_array_equal(result.layer_weights, [72, 12])
    np.testing.assert_array_equal(result.layer_macs, [288, 12])
    # BOPs: conv 4 pixels * 18 = 72 MACs per channel * channel bits 16 * activations 4 = 4608; head 12 * 8 * 8 = 768.
    np.testing.assert_array_equal(result.layer_bops, [4608, 768])
    assert result.bops == 5376
    # Cycles: conv row passes 4 pixels * ceil(18/8) = 12. Groups: 2 channels at 2 bits pack at max(2, 4) = 4 bits
    # (6 per DSP): ceil(12/6) = 2 * ceil(2/2) = 1 invocation -> 2; 1 channel at 4 bits: 2 * 1 -> 2; 1 channel at
    # 8 bits (2 per DSP): ceil(12/2) = 6 * 1 -> 6. Layer: 10. head: 1 pass, 8 bits pack 2 -> 1; 3 outputs on 2 rows
    # -> 2 invocations -> 2.
    np.testing.assert_array_equal(result.layer_cycles, [10, 2])
    assert result.latency_cycles == 12
    np.testing.assert_allclose(result.latency_seconds, 12 / 1e6, rtol=1e-12)
    np.testing.assert_allclose(result.throughput_per_second, 1e6 / 12, rtol=1e-12)
    # Baselines at width 1 and 16 bits: size (72 + 8 + 12 + 3) * 2 = 190 bytes, FP32 380; cycles conv 12 passes at 1
    # per DSP * 2 invocations = 24, head 1 * 2 = 2 -> 26.
    np.testing.assert_allclose(result.size_reduction_vs_fip16, 190 / 70, rtol=1e-12)
    np.testing.assert_allclose(result.size_reduction_vs_fp32, 380 / 70, rtol=1e-12)
    np.testing.assert_allclose(result.speedup_vs_fip16, 26 / 12, rtol=1e-12)
    # Energy: DSP operations conv 72*2/6 + 72/6 + 72/2 = 72, head 12/2 = 6 -> 78 at 2 pJ. Bytes moved: conv weights
    # 288 bits + activations (2*2*2 inputs + 4*4 outputs = 24) at 4 bits = 96 -> 48 bytes; head 96 bits + (4 + 3)
    # at 8 bits = 56 -> 19 bytes; 67 bytes at 10 pJ.
    np.testing.assert_allclose(result.energy_joules, (78 * 2 + 67 * 10) * 1e-12, rtol=1e-12)


def test_mixed_channel_bits_on_the_generic_target():
    target = cost_model.GenericTarget(bops_per_cycle=1000.0, clock_hz=1e3, energy_per_bop_pj=1.0, energy_per_byte_pj=0)
    result = channels.channel_cost(TINY, [4, 8], [1.0, 1.0], [[2, 2, 8, 4], None], target)
    # BOPs as on the FPGA (4608 + 768); the FiP16 baseline's: (288 + 12) MACs * 16 * 16.
    assert result.size_bytes == 70 and result.bops == 5376
    np.testing.assert_allclose(result.layer_cycles, [4.608, 0.768], rtol=1e-12)
    np.testing.assert_allclose(result.latency_seconds, 5.376 / 1e3, rtol=1e-12)
    np.testing.assert_allclose(result.speedup_vs_fip16, 300 * 256 / 5376, rtol=1e-12)
    np.testing.assert_allclose(result.energy_joules, 5376 * 1e-12, rtol=1e-12)


def test_a_layer_split_into_two_groups_costs_the_sum_of_two_sub_layers():
    # 5 channels, three at 4 bits and two at 8 (in any order), activations at 4 bits, with per-invocation overhead:
    # the layer runs as a 3-channel sub-layer packed at 4 bits and a 2-channel one packed at max(8, 4) = 8 bits.
    target = cost_model.FPGATarget(rows=2, cols=8, overhead_cycles=3.0)
    layer = dict(kind="conv", in_channels=2, kernel=(3, 3), out_hw=(2, 2), batch_norm=True)
    table = LayerTable((LayerSpec("conv", out_channels=5, **layer),))
    result = channels.channel_cost(table, [4], [1.0], [[4, 8, 4, 4, 8]], target)
    four = cost_model.cost(LayerTable((LayerSpec("conv", out_channels=3, **layer),)), [4], [1.0], target)
    eight = cost_model.cost(LayerTable((LayerSpec("conv", out_channels=2, **layer),)), [8], [1.0], target)
    # Cycles: 12 row passes; 3 channels: ceil(12/6) * 2 + 3 * 2 = 10; 2 channels: ceil(12/2) * 1 + 3 * 1 = 9.
    assert result.latency_cycles == float(four.latency_cycles) + float(eight.latency_cycles) == 19
    assert result.size_bytes == float(four.size_bytes) + float(eight.size_bytes)
    assert result.layer_macs[0] == float(four.layer_macs[0]) + float(eight.layer_macs[0])


def test_the_order_of_a_layers_channels_does_not_matter():
    ordered = channels.channel_cost(TINY, [4, 8], [1.0, 1.0], [[2, 2, 4, 8], [3, 5, 8]], TINY_FPGA)
    shuffled = channels.channel_cost(TINY, [4, 8], [1.0, 1.0], [[8, 2, 4, 2], [8, 3, 5]], TINY_FPGA)
    _assert_costs_equal(ordered, shuffled, rtol=0)


def test_channel_groups_are_the_bit_widths_present_with_their_counts():
    assert channels.channel_groups([4, 2, 4, 8, 2, 4]) == [(2, 2), (4, 3), (8, 1)]
    assert channels.channel_groups(np.array([3.0, 3.0])) == [(3, 2)]


# -- agreement with the per-layer cost ------------------------------------------------------------------------------


def _random_configs(table, count, seed):
    """Configurations whose layer bit-widths stay in the channel range [2, 8] and whose widths respect the groups."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        bits = rng.integers(MIN_BITS, MAX_CHANNEL_BITS + 1, size=len(table))
        group_widths = {group: rng.choice([0.5, 0.75, 1.0, 1.25]) for group in range(len(table))}
        yield bits, np.array([group_widths[layer.width_group] for layer in table])


_TARGETS = (
    TINY_FPGA,
    cost_model.FPGATarget(rows=4, cols=8, packing=cost_model.hikonv_packing_table(), overhead_cycles=3.0),
    cost_model.GenericTarget(),
)


@pytest.mark.parametrize("target", _TARGETS)
def test_every_entry_none_equals_the_per_layer_cost(branchy_table, target):
    for bits, widths in _random_configs(branchy_table, 5, seed=0):
        expected = cost_model.cost(branchy_table, bits, widths, target)
        _assert_costs_equal(channels.channel_cost(branchy_table, bits, widths, [None] * len(bits), target), expected)


def test_layer_bits_up_to_16_with_every_entry_none_equal_the_per_layer_cost(two_layer_table):
    # Only channel bit-widths stop at 8: a layer without channel bits may be unquantised.
    expected = cost_model.cost(two_layer_table, [16, 5], [0.75, 1.0], TINY_FPGA)
    _assert_costs_equal(channels.channel_cost(two_layer_table, [16, 5], [0.75, 1.0], [None, None], TINY_FPGA), expected)


@pytest.mark.parametrize("target", _TARGETS)
def test_every_channel_at_its_layers_bits_equals_the_per_layer_cost(branchy_table, target):
    for bits, widths in _random_configs(branchy_table, 5, seed=1):
        produced = cost_model.layer_counts(branchy_table, widths, exact=True)["produced"]
        channel_bits = [np.full(int(count), layer_bits) for count, layer_bits in zip(produced, bits, strict=True)]
        expected = cost_model.cost(branchy_table, bits, widths, target)
        _assert_costs_equal(channels.channel_cost(branchy_table, bits, widths, channel_bits, target), expected)


def test_a_layer_with_channel_bits_leaves_the_other_layers_costs_alone():
    mixed = channels.channel_cost(TINY, [4, 8], [1.0, 1.0], [[2, 2, 8, 4], None], TINY_FPGA)
    per_layer = cost_model.cost(TINY, [4, 8], [1.0, 1.0], TINY_FPGA)
    for field in ("layer_size_bytes", "layer_cycles", "layer_macs", "layer_bops", "layer_weights"):
        np.testing.assert_allclose(getattr(mixed, field)[1], getattr(per_layer, field)[1], err_msg=field)


def test_channel_bits_follow_the_widths():
    # At width 0.5 the conv produces 2 channels, and the head reads 2: each is given one bit-width per channel.
    result = channels.channel_cost(TINY, [4, 8], [0.5, 1.0], [[2, 8], [2, 2, 2]], TINY_FPGA)
    # conv: 18 weights per channel * (2 + 8) bits + 2*2 batch-norm values * 16 = 244 bits. head: reads 2 channels,
    # so 2 weights per output channel * (2 + 2 + 2) bits = 12, and a bias of 3 * 16 = 48 -> 60 bits.
    np.testing.assert_array_equal(result.layer_size_bytes, [244 / 8, 60 / 8])


# -- validation -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel_bits", "message"),
    [
        ([None], "channel_bits has 1 entries but the table has 2 layers"),
        (None, "channel_bits must be a sequence"),
        ([[2, 2, 8], None], "layer 'conv': got 3 channel bit-widths for the 4 channels"),
        ([None, [8, 8, 8, 8]], "layer 'head': got 4 channel bit-widths for the 3 channels"),
        ([[2, 2, 9, 4], None], r"layer 'conv': channel 2's bit-width must be an integer in \[2, 8\], got 9"),
        ([[2, 1, 8, 4], None], r"layer 'conv': channel 1's bit-width must be an integer in \[2, 8\], got 1"),
        ([None, [4, 4.5, 4]], r"layer 'head': channel 1's bit-width must be an integer in \[2, 8\], got 4.5"),
        ([None, [4, np.nan, 4]], "layer 'head': channel 1's bit-width"),
        ([None, [True, True, True]], "layer 'head': channel bits must be a 1-D array of numbers"),
        ([None, "448"], "layer 'head': channel bits must be a 1-D array of numbers"),
        ([None, [[4, 4, 4]]], "layer 'head': channel bits must be a 1-D array of numbers"),
        ([None, [[4], [4, 4]]], "layer 'head': channel bits must be a 1-D array of numbers"),
    ],
)
def test_bad_channel_bits_raise_a_value_error_naming_the_layer(channel_bits, message):
    with pytest.raises(ValueError, match=message):
        channels.channel_cost(TINY, [4, 8], [1.0, 1.0], channel_bits, TINY_FPGA)


def test_the_layer_bits_and_widths_are_checked_as_any_configuration():
    with pytest.raises(ValueError, match="layer 'head': bit-width must be an integer in"):
        channels.channel_cost(TINY, [4, 17], [1.0, 1.0], [None, None], TINY_FPGA)
    with pytest.raises(ValueError, match="channel_cost costs one configuration"):
        channels.channel_cost(TINY, [[4, 8], [4, 8]], [1.0, 1.0], [None, None], TINY_FPGA)


# -- package face ---------------------------------------------------------------------------------------------------

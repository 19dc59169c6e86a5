"""Specification of `mpqjax.cost.model`: size, latency, speed-up, BOPs and energy of configurations on a target.

Expected numbers below are written out from the counting rules in the module docstring, not copied from the code.
The tables (`two_layer_table`, `branchy_table`) are the shared fixtures of tests/conftest.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpqjax import cost as cost_model
from mpqjax.nn.config import MAX_BITS, MIN_BITS

SMALL_FPGA = cost_model.FPGATarget(rows=4, cols=8, clock_hz=1e6, energy_per_dsp_op_pj=2.0, energy_per_byte_pj=10.0)


# -- the hand-counted two-layer network -----------------------------------------------------------------------------


def test_two_layer_network_hand_counts_on_the_fpga(two_layer_table):
    bits, widths = np.array([4, 8]), np.array([0.75, 1.0])
    result = cost_model.cost(two_layer_table, bits, widths, SMALL_FPGA)
    # conv: 8 * 0.75 -> 6 channels; 3*3*3*6 = 162 weights at 4 bits, batch-norm 2*6 = 12 values at 16 bits.
    # head: reads 6 channels; 6*10 = 60 weights at 8 bits, bias 10 values at 16 bits; not scalable.
    conv_bytes = (162 * 4 + 12 * 16) / 8  # 105
    head_bytes = (60 * 8 + 10 * 16) / 8  # 80
    np.testing.assert_allclose(result.layer_size_bytes, [conv_bytes, head_bytes])
    assert float(result.size_bytes) == 185.0
    np.testing.assert_allclose(result.layer_weights, [162, 60])
    # conv: patch 27 -> ceil(27/8) = 4 passes per pixel, 16 pixels -> 64 passes; 4 bits pack 6 -> ceil(64/6) = 11;
    # 6 output channels on 4 rows -> 2 invocations: 22 cycles. head: 1 pass, 8 bits pack 2 -> 1; 10 outputs -> 3.
    np.testing.assert_allclose(result.layer_cycles, [22, 3])
    assert float(result.latency_cycles) == 25.0
    np.testing.assert_allclose(result.latency_seconds, 25 / 1e6, rtol=1e-6)
    np.testing.assert_allclose(result.throughput_per_second, 1e6 / 25, rtol=1e-6)
    # FiP16 baseline at width 1: conv (216 weights + 16 bn) * 2 bytes = 464, head (80 + 10) * 2 = 180 -> 644 bytes;
    # cycles: conv 64 passes * 2 invocations = 128, head 1 * 3 = 3 -> 131. FP32: 1288 bytes.
    np.testing.assert_allclose(result.size_reduction_vs_fip16, 644 / 185, rtol=1e-6)
    np.testing.assert_allclose(result.size_reduction_vs_fp32, 1288 / 185, rtol=1e-6)
    np.testing.assert_allclose(result.speedup_vs_fip16, 131 / 25, rtol=1e-6)
    # MACs: conv 162 * 16 pixels = 2592, head 60. BOPs: 2592 * 4 * 4 + 60 * 8 * 8.
    np.testing.assert_allclose(result.layer_macs, [2592, 60])
    assert float(result.bops) == 2592 * 16 + 60 * 64
    # Energy: DSP operations 2592/6 + 60/2 = 462 at 2 pJ; bytes moved: conv (162 weights + 4*4*3 inputs + 16*6
    # outputs) at 4 bits = 153, head (60 + 6 + 10) at 8 bits = 76 -> 229 bytes at 10 pJ.
    np.testing.assert_allclose(result.energy_joules, (462 * 2 + 229 * 10) * 1e-12, rtol=1e-6)


def test_two_layer_network_hand_counts_on_the_generic_target(two_layer_table):
    target = cost_model.GenericTarget(bops_per_cycle=1000.0, clock_hz=1e3, energy_per_bop_pj=1.0, energy_per_byte_pj=0)
    result = cost_model.cost(two_layer_table, np.array([4, 8]), np.array([0.75, 1.0]), target)
    bops = 2592 * 16 + 60 * 64
    fip16_bops = (216 * 16 + 80) * 256
    assert float(result.size_bytes) == 185.0
    np.testing.assert_allclose(result.latency_cycles, bops / 1000, rtol=1e-6)
    np.testing.assert_allclose(result.latency_seconds, bops / 1000 / 1e3, rtol=1e-6)
    np.testing.assert_allclose(result.speedup_vs_fip16, fip16_bops / bops, rtol=1e-6)
    np.testing.assert_allclose(result.energy_joules, bops * 1e-12, rtol=1e-6)


def test_layer_counts_of_the_two_layer_network(two_layer_table):
    counts = cost_model.layer_counts(two_layer_table, [0.75, 1.0], exact=True)
    assert counts["consumed"].dtype == np.float64
    # conv: 3 -> 6 channels, patch 3*3*3 = 27, 16 pixels, 12 batch-norm values; inputs 4*4*3 + outputs 16*6.
    # head: 6 -> 10 (not scalable), patch 6, 1 pixel, 10 bias values; inputs 6 + outputs 10.
    assert counts["consumed"].tolist() == [3, 6] and counts["produced"].tolist() == [6, 10]
    assert counts["patch"].tolist() == [27, 6] and counts["weights"].tolist() == [162, 60]
    assert counts["aux"].tolist() == [12, 10] and counts["pixels"].tolist() == [16, 1]
    assert counts["macs"].tolist() == [2592, 60] and counts["activations"].tolist() == [144, 16]
    traced = jax.jit(lambda widths: cost_model.layer_counts(two_layer_table, widths))(jnp.array([0.75, 1.0]))
    for name, value in counts.items():
        np.testing.assert_array_equal(traced[name], value, err_msg=name)


def test_bits_and_widths_as_lists_int64_or_float32_run_the_same_operations(two_layer_table, compilations):
    reference = cost_model.cost(two_layer_table, np.array([4, 8], np.float32), np.array([0.75, 1.0], np.float32))
    counts = cost_model.layer_counts(two_layer_table, np.array([0.75, 1.0], np.float32))
    forms = (([4, 8], [0.75, 1.0]), (np.array([4, 8], np.int64), np.array([0.75, 1.0])))
    with compilations() as compiled:
        results = [(cost_model.cost(two_layer_table, bits, widths), cost_model.layer_counts(two_layer_table, widths))
                   for bits, widths in forms]
    assert compiled == []  # every form is used as float32: the float32 call's (eager) operations serve them all
    for result, result_counts in results:
        for left, right in zip(result, reference, strict=True):
            np.testing.assert_array_equal(left, right)
        for name, value in counts.items():
            np.testing.assert_array_equal(result_counts[name], value, err_msg=name)


def test_fip16_size_bytes_of_the_two_layer_network(two_layer_table):
    # (216 weights + 16 batch-norm + 80 weights + 10 bias) at 16 bits.
    assert cost_model.fip16_size_bytes(two_layer_table) == 644.0


def test_bias_bits_set_the_precision_of_biases_and_batch_norm(two_layer_table):
    target = cost_model.FPGATarget(bias_bits=32)
    result = cost_model.cost(two_layer_table, np.array([4, 8]), np.array([0.75, 1.0]), target)
    assert float(result.size_bytes) == (162 * 4 + 12 * 32 + 60 * 8 + 10 * 32) / 8


def test_overhead_cycles_are_paid_per_invocation(two_layer_table):
    plain = cost_model.cost(two_layer_table, np.array([4, 8]), np.array([0.75, 1.0]), SMALL_FPGA)
    target = cost_model.FPGATarget(rows=4, cols=8, overhead_cycles=5.0)
    result = cost_model.cost(two_layer_table, np.array([4, 8]), np.array([0.75, 1.0]), target)
    assert float(result.latency_cycles) == float(plain.latency_cycles) + 5 * (2 + 3)


@pytest.mark.parametrize("model", ["resnet20", "mobilenet_v2"])
def test_cycles_are_whole_quotients_rounded_up_on_an_array_of_any_shape(model):
    # a compiled division by a broadcast 7 or 15 may run as a multiplication by its reciprocal, which lands above a
    # whole quotient (2940 * fl(1/15) is 196.00002): the counts must still be the exact ceilings, as NumPy's float64
    from mpqjax.nn import models

    table = models.layer_table(model)
    target = cost_model.FPGATarget(rows=7, cols=15)
    rng = np.random.default_rng(0)
    bits = rng.choice([2, 3, 4, 6, 8], size=(64, len(table))).astype(np.float32)
    widths = np.ones((64, len(table)), np.float32)
    for group in table.width_groups():
        if table[group[0]].scalable:
            widths[:, group] = rng.choice([0.75, 0.875, 1.0, 1.125, 1.25], size=(64, 1))
    cycles = jax.jit(jax.vmap(lambda b, w: cost_model.cost(table, b, w, target).layer_cycles))(bits, widths)
    exact = [cost_model.channel_cost(table, b, w, [None] * len(table), target).layer_cycles
             for b, w in zip(bits, widths, strict=True)]
    np.testing.assert_array_equal(np.asarray(cycles), np.asarray(exact))
    assert int(cost_model.exact_ceil_div(jnp.float32(2940.0), jnp.float32(15.0))) == 196


def test_bits_are_rounded_and_clipped_to_the_valid_range_inside_jit(two_layer_table):
    # jitted code cannot raise: out-of-range bit-widths cost as the nearest valid one (check_config refuses them).
    costed = jax.jit(lambda bits: cost_model.cost(two_layer_table, bits, 1.0, SMALL_FPGA).size_bytes)
    assert MIN_BITS == 2 and MAX_BITS == 16
    assert float(costed(jnp.array([1.0, 8.0]))) == float(costed(jnp.array([2.0, 8.0])))
    assert float(costed(jnp.array([32.0, 8.0]))) == float(costed(jnp.array([16.0, 8.0])))
    assert float(costed(jnp.array([3.6, 8.0]))) == float(costed(jnp.array([4.0, 8.0])))


def test_fip16_resnet20_size_matches_the_paper():
    from mpqjax.nn import models

    table = models.layer_table("resnet20")
    # Table II: 0.54 MB (10**6 bytes) for the FiP16 baseline.
    assert round(cost_model.fip16_size_bytes(table) / 1e6, 2) == 0.54


# -- jit, vmap, batches -------------------------------------------------------------------------------------------


def _random_configs(table, count, seed):
    rng = np.random.default_rng(seed)
    bits = rng.integers(MIN_BITS, MAX_BITS + 1, size=(count, len(table)))
    group_widths = {group: rng.choice([0.5, 0.75, 0.875, 1.0, 1.25, 2.0], size=count) for group in range(len(table))}
    widths = np.stack([group_widths[layer.width_group] for layer in table], axis=-1)
    return bits.astype(np.int32), widths.astype(np.float32)


@pytest.fixture(scope="module")
def batched_cost():
    return jax.jit(jax.vmap(cost_model.cost, in_axes=(None, 0, 0, None)), static_argnums=0)


@pytest.mark.parametrize("target", [cost_model.FPGATarget(rows=4, cols=8), cost_model.GenericTarget()])
def test_vmap_equals_a_python_loop(batched_cost, branchy_table, target):
    bits, widths = _random_configs(branchy_table, 12, seed=0)
    batched = batched_cost(branchy_table, bits, widths, target)
    for index in range(len(bits)):
        single = cost_model.cost(branchy_table, bits[index], widths[index], target)
        for field in cost_model.Cost._fields:
            np.testing.assert_allclose(getattr(batched, field)[index], getattr(single, field), rtol=1e-6, err_msg=field)


def test_batch_axes_broadcast_without_vmap(branchy_table):
    bits, widths = _random_configs(branchy_table, 6, seed=1)
    jitted = jax.jit(cost_model.cost, static_argnums=0)
    batched = jitted(branchy_table, bits.reshape(2, 3, -1), widths.reshape(2, 3, -1))
    assert batched.size_bytes.shape == (2, 3)
    assert batched.layer_cycles.shape == (2, 3, len(branchy_table))
    flat = jitted(branchy_table, bits, widths)
    np.testing.assert_allclose(batched.latency_cycles.reshape(-1), flat.latency_cycles, rtol=1e-6)


def test_target_numbers_are_traced_so_changing_them_does_not_recompile(two_layer_table):
    traces = []

    def total_cycles(bits, widths, target):
        traces.append(1)
        return cost_model.cost(two_layer_table, bits, widths, target).latency_cycles

    jitted = jax.jit(total_cycles)
    bits, widths = jnp.array([4, 8]), jnp.array([0.75, 1.0])
    first = jitted(bits, widths, SMALL_FPGA)
    other = cost_model.FPGATarget(rows=2, cols=8, clock_hz=5e6, packing=cost_model.hikonv_packing_table())
    second = jitted(bits, widths, other)
    assert len(traces) == 1
    assert float(first) == 25.0
    # 2 rows: conv 3 invocations of ceil(64/6) = 11, head 5 invocations of 1 -> 33 + 5.
    assert float(second) == 38.0


# -- monotonicity ---------------------------------------------------------------------------------------------------

_MONOTONE_FIELDS = ("size_bytes", "latency_cycles", "bops", "energy_joules")
_TARGETS = (
    cost_model.FPGATarget(rows=4, cols=8),
    cost_model.FPGATarget(rows=16, cols=16, packing=cost_model.hikonv_packing_table(), overhead_cycles=3.0),
    cost_model.GenericTarget(),
)


@pytest.fixture(scope="module")
def pair_cost(branchy_table):
    return jax.jit(jax.vmap(lambda bits, widths, target: cost_model.cost(branchy_table, bits, widths, target),
                            (0, 0, None)))


def _draw_config(data, table):
    """A valid configuration of ``table`` drawn by hypothesis: bits per layer, one width per width group."""
    bits = data.draw(st.lists(st.integers(MIN_BITS, MAX_BITS), min_size=len(table), max_size=len(table)), "bits")
    groups = sorted({layer.width_group for layer in table})
    group_widths = data.draw(st.fixed_dictionaries({group: st.floats(0.25, 2.0) for group in groups}), "widths")
    return bits, group_widths


@settings(max_examples=40, deadline=None)
@given(data=st.data(), drop=st.integers(1, MAX_BITS - MIN_BITS), target_index=st.integers(0, len(_TARGETS) - 1))
def test_fewer_bits_never_cost_more(pair_cost, branchy_table, data, drop, target_index):
    bits, group_widths = _draw_config(data, branchy_table)
    layer = data.draw(st.integers(0, len(branchy_table) - 1), "layer")
    widths = [group_widths[spec.width_group] for spec in branchy_table]
    fewer = list(bits)
    fewer[layer] = max(MIN_BITS, bits[layer] - drop)
    result = pair_cost(np.array([bits, fewer]), np.array([widths, widths], np.float32), _TARGETS[target_index])
    for field in _MONOTONE_FIELDS:
        value = np.asarray(getattr(result, field))
        assert value[1] <= value[0], field
    assert result.speedup_vs_fip16[1] >= result.speedup_vs_fip16[0]


@settings(max_examples=40, deadline=None)
@given(data=st.data(), factor=st.floats(0.1, 1.0), target_index=st.integers(0, len(_TARGETS) - 1))
def test_narrower_never_costs_more(pair_cost, branchy_table, data, factor, target_index):
    bits, group_widths = _draw_config(data, branchy_table)
    group = data.draw(st.sampled_from(sorted(group_widths)), "group")
    widths = [group_widths[spec.width_group] for spec in branchy_table]
    narrower = [group_widths[spec.width_group] * (factor if spec.width_group == group else 1.0)
                for spec in branchy_table]
    result = pair_cost(np.array([bits, bits]), np.array([widths, narrower], np.float32), _TARGETS[target_index])
    for field in _MONOTONE_FIELDS:
        value = np.asarray(getattr(result, field))
        assert value[1] <= value[0], field

"""Specification of mpqjax.cost: the cost model (size, latency, speed-up, BOPs, energy) and hardware targets.

Expected numbers below are written out from the counting rules in the module docstring, not copied from the code.
"""

import json
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpqjax import cost as cost_model
from mpqjax.nn.models import LayerSpec, LayerTable

# A two-layer network: 3x3 conv 3->8 on a 4x4 output with batch-norm, then a dense head 8->10 with a bias.
TWO_LAYER = LayerTable(
    (
        LayerSpec("conv", "conv", 3, 8, kernel=(3, 3), out_hw=(4, 4), width_group=0, batch_norm=True),
        LayerSpec("head", "dense", 8, 10, input_layer=0, width_group=1, scalable=False, use_bias=True),
    ),
    model="two_layer",
)

# Residual and depthwise wiring: stem -> depthwise (tied to the stem) -> pointwise -> conv, with a residual add of
# the pointwise and the last conv (same width group), and a dense head reading the residual stream.
BRANCHY = LayerTable(
    (
        LayerSpec("stem", "conv", 3, 8, kernel=(3, 3), stride=(2, 2), out_hw=(8, 8), width_group=0, batch_norm=True),
        LayerSpec("dw", "depthwise", 8, 8, kernel=(3, 3), out_hw=(8, 8), input_layer=0, width_group=0),
        LayerSpec("pw", "conv", 8, 16, out_hw=(8, 8), input_layer=1, width_group=2, batch_norm=True),
        LayerSpec("conv", "conv", 16, 16, kernel=(3, 3), out_hw=(8, 8), input_layer=2, width_group=2),
        LayerSpec("head", "dense", 16, 10, input_layer=3, width_group=4, scalable=False, use_bias=True),
    ),
    model="branchy",
)

SMALL_FPGA = cost_model.FPGATarget(rows=4, cols=8, clock_hz=1e6, energy_per_dsp_op_pj=2.0, energy_per_byte_pj=10.0)


# -- packing ----------------------------------------------------------------------------------------------------------


def test_paper_packing_table_pads_unlisted_widths_to_the_next_listed_one():
    table = cost_model.packing_table(cost_model.PAPER_PACKING)
    assert len(table) == 16
    by_bits = dict(enumerate(table, start=1))
    assert [by_bits[b] for b in (2, 3, 4, 6, 8, 16)] == [15, 6, 6, 2, 2, 1]  # the paper's numbers
    assert [by_bits[b] for b in (1, 5, 7, 9, 15)] == [15, 2, 2, 1, 1]  # padded to 2, 6, 8, 16, 16 bits
    assert cost_model.FPGATarget().packing == table


def test_packing_table_rejects_bad_tables():
    with pytest.raises(ValueError, match="must list 16 bits"):
        cost_model.packing_table({2: 15, 8: 2})
    with pytest.raises(ValueError, match="16 entries"):
        cost_model.packing_table([1, 2, 3])
    with pytest.raises(ValueError, match="at least 1"):
        cost_model.packing_table([0] + [1] * 15)
    with pytest.raises(ValueError, match="outside 1..16"):
        cost_model.packing_table({17: 1, 16: 1})


@pytest.mark.parametrize(
    ("bits", "activations", "weights", "additions", "slice_bits"),
    [
        # 8 bits: 2 activations in 16-bit slices use 16 + 8 = 24 <= 27 bits of port A; one weight in port B.
        (8, 2, 1, 0, 16),
        # 6 bits: 2x1 in 12-bit slices (20 <= 27); 2x2 would need 13 + 6 = 19 > 18 bits of port B.
        (6, 2, 1, 0, 12),
        # 4 bits: 3x2 in 9-bit slices (1 guard bit): A 2*9 + 4 = 22 <= 27, B 9 + 4 = 13 <= 18; 6 products, 4 outputs.
        (4, 3, 2, 2, 9),
        # 2 bits: 5x3 in 6-bit slices (2 guard bits): A 4*6 + 2 = 26, B 2*6 + 2 = 14; 15 products, 7 outputs.
        (2, 5, 3, 8, 6),
    ],
)
def test_hikonv_rule_reproduces_the_papers_packing(bits, activations, weights, additions, slice_bits):
    packing = cost_model.hikonv_packing(bits)
    assert packing.products == cost_model.PAPER_PACKING[bits]
    assert (packing.activations, packing.weights) == (activations, weights)
    assert packing.additions == additions
    assert packing.slice_bits == slice_bits


def test_hikonv_rule_at_3_bits_packs_8_where_the_paper_uses_6():
    # 4 activations x 2 weights in 7-bit slices: A 3*7 + 3 = 24 <= 27, B 7 + 3 = 10 <= 18; 8 products, 5 outputs.
    # The paper runs 3-bit operands in its 4-bit layout (6 products); HiKonv's rule fits 8.
    packing = cost_model.hikonv_packing(3)
    assert (packing.activations, packing.weights, packing.products, packing.additions) == (4, 2, 8, 3)
    assert cost_model.PAPER_PACKING[3] == 6


def test_hikonv_rule_for_other_multipliers():
    # 18x18 multiplier, 4 bits: 2x2 in 9-bit slices (9 + 4 = 13 <= 18); 3x1 would need 2*8 + 4 = 20 > 18.
    assert cost_model.hikonv_packing(4, multiplier_bits=(18, 18)).products == 4
    # 1 bit on 27x18: 7x4 in 4-bit slices (2 guard bits): A 6*4 + 1 = 25, B 3*4 + 1 = 13.
    assert cost_model.hikonv_packing(1).products == 28
    # A guard bit more per slice (to accumulate 2 packed products): 4 bits keep 3x2 in 10-bit slices (A 2*10 + 4
    # = 24, B 10 + 4 = 14), 2 bits lose 5x3 (7-bit slices: A 4*7 + 2 = 30 > 27).
    assert cost_model.hikonv_packing(4, extra_guard_bits=1).products == 6
    assert cost_model.hikonv_packing(2, extra_guard_bits=1).products < 15
    with pytest.raises(ValueError, match="do not fit"):
        cost_model.hikonv_packing(16, multiplier_bits=(12, 12))


def test_hikonv_table_is_non_increasing_in_bits_and_16_bits_packs_one():
    for multiplier_bits in ((27, 18), (18, 18), (25, 18), (32, 32)):
        table = cost_model.hikonv_packing_table(multiplier_bits=multiplier_bits)
        assert all(a >= b for a, b in zip(table, table[1:], strict=False))
        assert table[15] == 1


# -- the hand-counted two-layer network -----------------------------------------------------------------------------


def test_two_layer_network_hand_counts_on_the_fpga():
    bits, widths = np.array([4, 8]), np.array([0.75, 1.0])
    result = cost_model.cost(TWO_LAYER, bits, widths, SMALL_FPGA)
    # conv: 8 * 0.75 -> 6 channels; 3*3*3*6 = 162 weights at 4 bits, batch-norm 2*6 = 12 values at 16 bits.
    # head: reads 6 channels; 6*10 = 60 weights at 8 bits, bias 10 values at 16 bits; not scalable.
    conv_bytes = (162 * 4 + 12 * 16) / 8  # 105
    head_bytes = (60 * 8 + 10 * 16) / 8  # 80
    np.testing.assert_allclose(result.layer_size_bytes, [conv_bytes, head_bytes])
    assert float(result.size_bytes) == 185.0
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


def test_two_layer_network_hand_counts_on_the_generic_target():
    target = cost_model.GenericTarget(bops_per_cycle=1000.0, clock_hz=1e3, energy_per_bop_pj=1.0, energy_per_byte_pj=0)
    result = cost_model.cost(TWO_LAYER, np.array([4, 8]), np.array([0.75, 1.0]), target)
    bops = 2592 * 16 + 60 * 64
    fip16_bops = (216 * 16 + 80) * 256
    assert float(result.size_bytes) == 185.0
    np.testing.assert_allclose(result.latency_cycles, bops / 1000, rtol=1e-6)
    np.testing.assert_allclose(result.latency_seconds, bops / 1000 / 1e3, rtol=1e-6)
    np.testing.assert_allclose(result.speedup_vs_fip16, fip16_bops / bops, rtol=1e-6)
    np.testing.assert_allclose(result.energy_joules, bops * 1e-12, rtol=1e-6)


def test_bias_bits_set_the_precision_of_biases_and_batch_norm():
    target = cost_model.FPGATarget(bias_bits=32)
    result = cost_model.cost(TWO_LAYER, np.array([4, 8]), np.array([0.75, 1.0]), target)
    assert float(result.size_bytes) == (162 * 4 + 12 * 32 + 60 * 8 + 10 * 32) / 8


def test_overhead_cycles_are_paid_per_invocation():
    plain = cost_model.cost(TWO_LAYER, np.array([4, 8]), np.array([0.75, 1.0]), SMALL_FPGA)
    target = cost_model.FPGATarget(rows=4, cols=8, overhead_cycles=5.0)
    result = cost_model.cost(TWO_LAYER, np.array([4, 8]), np.array([0.75, 1.0]), target)
    assert float(result.latency_cycles) == float(plain.latency_cycles) + 5 * (2 + 3)


def test_width_semantics_follow_the_layer_table():
    report = cost_model.cost_report(BRANCHY, 8, [0.5, 0.5, 1.5, 1.5, 3.0], cost_model.FPGATarget())
    rows = {row["name"]: row for row in report["layers"]}
    assert (rows["stem"]["in_channels"], rows["stem"]["out_channels"], rows["stem"]["weights"]) == (3, 4, 108)
    assert (rows["dw"]["in_channels"], rows["dw"]["out_channels"], rows["dw"]["weights"]) == (4, 4, 36)
    assert (rows["pw"]["in_channels"], rows["pw"]["out_channels"], rows["pw"]["weights"]) == (4, 24, 96)
    assert (rows["conv"]["in_channels"], rows["conv"]["out_channels"]) == (24, 24)
    assert (rows["head"]["in_channels"], rows["head"]["out_channels"], rows["head"]["weights"]) == (24, 10, 240)
    assert rows["dw"]["macs"] == 36 * 64
    # Depthwise on the 16x16 array: patch 3*3 = 9 -> 1 pass per pixel, 64 pixels, 8 bits pack 2, 4 channels: 1 call.
    assert rows["dw"]["latency_cycles"] == math.ceil(64 * 1 / 2) * 1
    assert report["totals"]["weights"] == 108 + 36 + 96 + 24 * 24 * 9 + 240


def test_fip16_resnet20_size_matches_the_paper():
    from mpqjax.nn import models

    table = models.layer_table("resnet20")
    # Table II: 0.54 MB (10**6 bytes) for the FiP16 baseline.
    assert round(cost_model.fip16_size_bytes(table) / 1e6, 2) == 0.54


# -- jit, vmap, batches -------------------------------------------------------------------------------------------


def _random_configs(table, count, seed):
    rng = np.random.default_rng(seed)
    bits = rng.integers(1, 17, size=(count, len(table)))
    group_widths = {group: rng.choice([0.5, 0.75, 0.875, 1.0, 1.25, 2.0], size=count) for group in range(len(table))}
    widths = np.stack([group_widths[layer.width_group] for layer in table], axis=-1)
    return bits.astype(np.int32), widths.astype(np.float32)


@pytest.fixture(scope="module")
def batched_cost():
    return jax.jit(jax.vmap(cost_model.cost, in_axes=(None, 0, 0, None)), static_argnums=0)


@pytest.mark.parametrize("target", [cost_model.FPGATarget(rows=4, cols=8), cost_model.GenericTarget()])
def test_vmap_equals_a_python_loop(batched_cost, target):
    bits, widths = _random_configs(BRANCHY, 12, seed=0)
    batched = batched_cost(BRANCHY, bits, widths, target)
    for index in range(len(bits)):
        single = cost_model.cost(BRANCHY, bits[index], widths[index], target)
        for field in cost_model.Cost._fields:
            np.testing.assert_allclose(getattr(batched, field)[index], getattr(single, field), rtol=1e-6, err_msg=field)


def test_batch_axes_broadcast_without_vmap():
    bits, widths = _random_configs(BRANCHY, 6, seed=1)
    jitted = jax.jit(cost_model.cost, static_argnums=0)
    batched = jitted(BRANCHY, bits.reshape(2, 3, -1), widths.reshape(2, 3, -1))
    assert batched.size_bytes.shape == (2, 3)
    assert batched.layer_cycles.shape == (2, 3, len(BRANCHY))
    flat = jitted(BRANCHY, bits, widths)
    np.testing.assert_allclose(batched.latency_cycles.reshape(-1), flat.latency_cycles, rtol=1e-6)


def test_target_numbers_are_traced_so_changing_them_does_not_recompile():
    traces = []

    def total_cycles(bits, widths, target):
        traces.append(1)
        return cost_model.cost(TWO_LAYER, bits, widths, target).latency_cycles

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
def pair_cost():
    return jax.jit(jax.vmap(lambda bits, widths, target: cost_model.cost(BRANCHY, bits, widths, target), (0, 0, None)))


_group_of_layer = [layer.width_group for layer in BRANCHY]
_layer_bits = st.lists(st.integers(1, 16), min_size=len(BRANCHY), max_size=len(BRANCHY))
_group_widths = st.fixed_dictionaries({group: st.floats(0.25, 2.0) for group in sorted(set(_group_of_layer))})


@settings(max_examples=40, deadline=None)
@given(
    bits=_layer_bits,
    group_widths=_group_widths,
    layer=st.integers(0, len(BRANCHY) - 1),
    drop=st.integers(1, 15),
    target_index=st.integers(0, len(_TARGETS) - 1),
)
def test_fewer_bits_never_cost_more(pair_cost, bits, group_widths, layer, drop, target_index):
    widths = [group_widths[group] for group in _group_of_layer]
    fewer = list(bits)
    fewer[layer] = max(1, bits[layer] - drop)
    result = pair_cost(np.array([bits, fewer]), np.array([widths, widths], np.float32), _TARGETS[target_index])
    for field in _MONOTONE_FIELDS:
        value = np.asarray(getattr(result, field))
        assert value[1] <= value[0], field
    assert result.speedup_vs_fip16[1] >= result.speedup_vs_fip16[0]


@settings(max_examples=40, deadline=None)
@given(
    bits=_layer_bits,
    group_widths=_group_widths,
    group=st.sampled_from(sorted(set(_group_of_layer))),
    factor=st.floats(0.1, 1.0),
    target_index=st.integers(0, len(_TARGETS) - 1),
)
def test_narrower_never_costs_more(pair_cost, bits, group_widths, group, factor, target_index):
    widths = [group_widths[g] for g in _group_of_layer]
    narrower = [group_widths[g] * (factor if g == group else 1.0) for g in _group_of_layer]
    result = pair_cost(np.array([bits, bits]), np.array([widths, narrower], np.float32), _TARGETS[target_index])
    for field in _MONOTONE_FIELDS:
        value = np.asarray(getattr(result, field))
        assert value[1] <= value[0], field


# -- validation -----------------------------------------------------------------------------------------------------


def test_validate_config_broadcasts_scalars_and_keeps_batches():
    bits, widths = cost_model.validate_config(BRANCHY, 4, [1.0, 1.0, 0.5, 0.5, 1.0])
    assert bits.tolist() == [4] * 5 and bits.dtype == np.int32
    assert widths.dtype == np.float32
    bits, widths = cost_model.validate_config(BRANCHY, np.full((3, 5), 8), 1.0)
    assert bits.shape == widths.shape == (3, 5)


@pytest.mark.parametrize(
    ("bits", "widths", "message"),
    [
        (0, 1.0, r"bit-width 0 of layer 'stem' is outside 1\.\.16"),
        ([8, 8, 8, 17, 8], 1.0, r"bit-width 17 of layer 'conv' is outside 1\.\.16"),
        ([8, 2.5, 8, 8, 8], 1.0, r"bit-width 2\.5 of layer 'dw' is not an integer"),
        (float("nan"), 1.0, "not an integer"),
        (8, 0.0, r"width multiplier 0 of layer 'stem' must be finite and > 0"),
        (8, [1, 1, 1, 1, -1], "width multiplier -1 of layer 'head'"),
        (8, float("inf"), "must be finite"),
        ([8, 8, 8], 1.0, "got 3 bit-widths for the 5 layers of branchy"),
        (8, [1.0] * 6, "got 6 width multipliers for the 5 layers of branchy"),
        (8, [1.0, 0.5, 1.0, 1.0, 1.0], "layers 'stem' and 'dw' share a width group but have width multipliers 1 and"),
        ("eight", 1.0, "bit-widths must be numbers"),
    ],
)
def test_validate_config_names_the_problem(bits, widths, message):
    with pytest.raises(ValueError, match=message):
        cost_model.validate_config(BRANCHY, bits, widths)


def test_cost_report_validates_and_takes_one_configuration():
    with pytest.raises(ValueError, match="outside"):
        cost_model.cost_report(TWO_LAYER, [4, 20], 1.0)
    with pytest.raises(ValueError, match="one configuration"):
        cost_model.cost_report(TWO_LAYER, np.full((2, 2), 4), 1.0)


def test_cost_report_is_json_ready_and_agrees_with_cost():
    report = cost_model.cost_report(TWO_LAYER, [4, 8], [0.75, 1.0], SMALL_FPGA)
    assert json.loads(json.dumps(report)) == report
    assert report["totals"]["size_bytes"] == 185.0
    assert report["totals"]["latency_cycles"] == 25.0
    assert [row["mults_per_dsp"] for row in report["layers"]] == [6, 2]
    assert report["target"]["rows"] == 4


# -- targets --------------------------------------------------------------------------------------------------------


def test_targets_round_trip_through_plain_data():
    for target in (SMALL_FPGA, cost_model.GenericTarget(bops_per_cycle=10.0), cost_model.FPGATarget(name="mine")):
        assert cost_model.target_from_dict(cost_model.target_to_dict(target)) == target


def test_load_target_by_name_json_and_toml(tmp_path):
    assert cost_model.load_target("fpga") == cost_model.FPGATarget()
    assert cost_model.load_target("generic") == cost_model.GenericTarget()
    json_file = tmp_path / "board.json"
    json_file.write_text(json.dumps({"kind": "fpga", "rows": 32, "cols": 8, "clock_hz": 3e8, "packing": "hikonv"}))
    target = cost_model.load_target(json_file)
    assert (target.rows, target.cols, target.clock_hz) == (32, 8, 3e8)
    assert target.packing == cost_model.hikonv_packing_table()
    toml_file = tmp_path / "board.toml"
    toml_file.write_text(
        'kind = "fpga"\nname = "dsp18"\nmultiplier_bits = [18, 18]\npacking = "hikonv"\nenergy_per_byte_pj = 5\n'
    )
    target = cost_model.load_target(str(toml_file))
    assert target.name == "dsp18" and target.energy_per_byte_pj == 5.0
    assert target.packing == cost_model.hikonv_packing_table(multiplier_bits=(18, 18))
    sparse = tmp_path / "sparse.toml"
    sparse.write_text('kind = "fpga"\n[packing]\n"4" = 4\n"8" = 2\n"16" = 1\n')
    assert cost_model.load_target(sparse).packing[:9] == (4, 4, 4, 4, 2, 2, 2, 2, 1)


def test_example_target_files_load():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "experiments" / "targets"
    files = sorted(folder.glob("*.toml")) + sorted(folder.glob("*.json"))
    assert len(files) >= 2
    for path in files:
        assert isinstance(cost_model.load_target(path), (cost_model.FPGATarget, cost_model.GenericTarget))


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ('{"kind": "fpga", "rows": ', ".json", "malformed target file"),
        ("kind = fpga", ".toml", "malformed target file"),
        ('{"kind": "asic"}', ".json", "target kind must be one of"),
        ('{"rows": 4}', ".json", "target kind must be one of"),
        ('{"kind": "fpga", "colums": 4}', ".json", r"unknown fpga target setting\(s\) \['colums'\]"),
        ('{"kind": "fpga", "rows": 0}', ".json", "rows must be finite and > 0"),
        ('{"kind": "fpga", "rows": 2.5}', ".json", "rows must be an integer"),
        ('{"kind": "fpga", "clock_hz": "fast"}', ".json", "clock_hz must be a number"),
        ('{"kind": "fpga", "packing": "magic"}', ".json", "packing must be"),
        ('{"kind": "generic", "packing": "paper"}', ".json", "unknown generic target setting"),
        ("[1, 2]", ".json", "a target must be a table of settings"),
    ],
)
def test_malformed_target_files_give_one_line_errors(tmp_path, content, suffix, message):
    path = tmp_path / f"target{suffix}"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        cost_model.load_target(path)
    assert "\n" not in str(error.value)


def test_unknown_target_names_and_missing_files():
    with pytest.raises(ValueError, match="unknown target 'tpu'"):
        cost_model.load_target("tpu")
    with pytest.raises(ValueError, match="target file not found"):
        cost_model.load_target("no/such/board.toml")


def test_toml_without_tomllib_or_tomli_names_the_missing_package(tmp_path, monkeypatch):
    path = tmp_path / "board.toml"
    path.write_text('kind = "fpga"\n')
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(ValueError, match="tomli"):
        cost_model.load_target(path)


def test_target_constructors_check_their_numbers():
    with pytest.raises(ValueError, match="cols must be finite and > 0"):
        cost_model.FPGATarget(cols=0)
    with pytest.raises(ValueError, match="clock_hz"):
        cost_model.GenericTarget(clock_hz=-1.0)
    with pytest.raises(ValueError, match="energy_per_byte_pj"):
        cost_model.FPGATarget(energy_per_byte_pj=float("nan"))

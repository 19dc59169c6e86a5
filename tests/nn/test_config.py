"""Specification of `mpqjax.nn.config`: the one validation of a user's bit-widths and width multipliers.

The tables (`two_layer_table`, `branchy_table`) are the shared fixtures of tests/conftest.py. In `branchy_table`,
"stem" and "dw" share a width group, as do "pw" and "conv"; "head" (dense, 16 -> 10) is not scalable.
"""

import subprocess
import sys

import numpy as np
import pytest

from mpqjax.nn import config


def test_the_range_is_2_to_16_bits():
    assert (config.MIN_BITS, config.MAX_BITS) == (2, 16)


# -- check_config ---------------------------------------------------------------------------------------------------


def test_check_config_broadcasts_scalars_and_keeps_batches(branchy_table):
    bits, widths = config.check_config(branchy_table, 4, [1.0, 1.0, 0.5, 0.5, 1.0])
    assert bits.tolist() == [4] * 5 and bits.dtype == np.int32
    assert widths.tolist() == [1.0, 1.0, 0.5, 0.5, 1.0] and widths.dtype == np.float32
    bits, widths = config.check_config(branchy_table, np.full((3, 5), 8), 1.0)
    assert bits.shape == widths.shape == (3, 5)


def test_check_config_accepts_every_bit_width_from_2_to_16(two_layer_table):
    for bits in range(2, 17):
        assert config.check_config(two_layer_table, [bits, 16], 1.0)[0].tolist() == [bits, 16]
    assert config.check_config(two_layer_table, [8.0, 4.0], 1.0)[0].tolist() == [8, 4]  # integral floats


def test_a_half_given_as_none_is_skipped(branchy_table):
    bits, widths = config.check_config(branchy_table, None, 0.5)
    assert bits is None and widths.tolist() == [0.5] * 5
    bits, widths = config.check_config(branchy_table, [8, 8, 4, 4, 8], None)
    assert bits.tolist() == [8, 8, 4, 4, 8] and widths is None


@pytest.mark.parametrize(
    ("bits", "widths", "message"),
    [
        (0, 1.0, r"layer 'stem': bit-width must be an integer in \[2, 16\] \(16: not quantised\), got 0"),
        (1, 1.0, r"layer 'stem': bit-width .* got 1$"),
        ([8, 8, 8, 17, 8], 1.0, r"layer 'conv': bit-width .* got 17"),
        ([8, 8, 8, 8, 32], 1.0, r"layer 'head': bit-width .* got 32"),
        ([8, 2.5, 8, 8, 8], 1.0, r"layer 'dw': bit-width must be an integer .* got 2\.5"),
        (float("nan"), 1.0, "layer 'stem': bit-width .* got nan"),
        (np.array([[8] * 5, [8, 8, 1, 8, 8]]), 1.0, "layer 'pw': bit-width .* got 1"),
        (8, 0.0, "layer 'stem': width multiplier must be finite and > 0, got 0"),
        (8, [1, 1, 1, 1, -1], "layer 'head': width multiplier must be finite and > 0, got -1"),
        (8, float("inf"), "must be finite"),
        ([8, 8, 8], 1.0, "bits has 3 entries but model 'branchy' has 5 weight layers"),
        (8, [1.0] * 6, "widths has 6 entries but model 'branchy' has 5 weight layers"),
        (8, [1.0, 0.5, 1.0, 1.0, 1.0], r"layer 'dw' must share the width multiplier of layer 'stem' \(1\), got 0\.5"),
        (8, np.array([[1.0] * 5, [1.0, 1.0, 1.0, 0.5, 1.0]]), "layer 'conv' must share .* of layer 'pw'"),
        (8, [0.01, 0.01, 1.0, 1.0, 1.0], "layer 'stem': width multiplier 0.01 leaves 8 channels at zero"),
        ("eight", 1.0, "bits must be numbers"),
        (8, "wide", "widths must be numbers"),
        (np.full((3, 5), 8), np.ones((2, 5)), r"bits of shape \(3, 5\) and widths of shape \(2, 5\) do not broadcast"),
    ],
)
def test_check_config_names_the_problem(branchy_table, bits, widths, message):
    with pytest.raises(ValueError, match=message):
        config.check_config(branchy_table, bits, widths)


def test_a_table_without_a_model_name_says_the_table(two_layer_table):
    from mpqjax.nn.table import LayerTable

    unnamed = LayerTable(two_layer_table.layers)
    with pytest.raises(ValueError, match="bits has 3 entries but the table has 2 weight layers"):
        config.check_config(unnamed, [8, 8, 8], 1.0)


def test_max_width_bounds_the_channels_of_scalable_layers(two_layer_table):
    # conv: 8 channels; at 1.25 -> 10, at 1.3 -> floor(10.4 + 0.5) = 10 (same channels: allowed), at 1.5 -> 12.
    assert config.check_config(two_layer_table, 8, [1.3, 1.0], max_width=1.25)[1].tolist() == pytest.approx([1.3, 1])
    with pytest.raises(ValueError, match="layer 'conv': width multiplier 1.5 exceeds max_width 1.25"):
        config.check_config(two_layer_table, 8, [1.5, 1.0], max_width=1.25)
    assert config.check_config(two_layer_table, 8, [1.5, 1.0])[1].tolist() == [1.5, 1.0]  # no max_width: no bound


def test_a_layer_that_is_not_scalable_takes_any_positive_width(two_layer_table):
    # "head" keeps its 10 outputs whatever its multiplier: neither zero channels nor max_width apply to it.
    assert config.check_config(two_layer_table, 8, [1.0, 0.01], max_width=1.25)[1].tolist() == pytest.approx([1, 0.01])
    assert config.check_config(two_layer_table, 8, [1.0, 3.0], max_width=1.25)[1].tolist() == [1.0, 3.0]


def test_widths_of_one_group_are_compared_in_float32(branchy_table):
    # 0.1 in float64 and in float32 differ, but both are the width a model computes with (float32).
    widths = np.array([0.75, 0.75, 1.0, 1.0, 1.0])
    widths[:2] = [0.1, np.float32(0.1)]
    assert config.check_config(branchy_table, 8, widths)[1][0] == np.float32(0.1)
    widths[1] = np.nextafter(np.float32(0.1), np.float32(1.0))
    with pytest.raises(ValueError, match="layer 'dw' must share the width multiplier of layer 'stem'"):
        config.check_config(branchy_table, 8, widths)


# -- check_bits -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", (1, 0, 17, 33, 4.5, float("nan"), True, "8", None))
def test_check_bits_names_the_layer(bad):
    with pytest.raises(ValueError, match=r"layer 'conv2': bit-width must be an integer in \[2, 16\]"):
        config.check_bits([8, bad], ["conv1", "conv2"])


def test_check_bits_accepts_the_supported_range_and_keeps_the_shape():
    assert config.check_bits([2, 3, 8, 16], list("abcd")).tolist() == [2, 3, 8, 16]
    assert config.check_bits(np.array([[8, 6], [4, 2]]), "bit_sets").tolist() == [[8, 6], [4, 2]]
    assert config.check_bits(4, "bits").tolist() == 4
    assert config.check_bits((), "bits").tolist() == []


def test_check_bits_by_setting_name():
    with pytest.raises(ValueError, match=r"^baseline_bits: bit-width must be an integer in \[2, 16\] .*got 32$"):
        config.check_bits((8, 32), "baseline_bits")
    with pytest.raises(ValueError, match=r"^bits: bit-width .* got 'x'$"):
        config.check_bits([8, "x"], "bits")
    with pytest.raises(ValueError, match="got 2 bit-widths for 3 layer names"):
        config.check_bits([8, 8], ["a", "b", "c"])


def test_importing_the_validation_imports_neither_flax_nor_jax():
    script = "import sys, mpqjax.nn.config; print([m for m in ('flax', 'optax', 'jax') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"

"""Specification of mpqjax.report.format: numbers for people and markdown tables."""

import math

import numpy as np
import pytest

from mpqjax import report


def test_formatting_of_sizes_and_durations():
    assert report.format_size(2104) == "2.104 kB" and report.format_size(12.0) == "12 B"
    assert report.format_size(3.5e6) == "3.5 MB" and report.format_size(None) == "–"
    assert report.format_seconds(1.25e-5) == "12.5 µs" and report.format_seconds(0.002) == "2 ms"
    assert report.format_seconds(3.0) == "3 s" and report.format_seconds(float("nan")) == "–"


def test_formatting_of_energies_percentages_factors_and_counts():
    assert report.format_energy(3.2e-6) == "3.2 µJ" and report.format_energy(4e-13) == "0.4 pJ"
    assert report.format_percent(0.9861) == "98.61 %" and report.format_percent(0.5, digits=0) == "50 %"
    assert report.format_factor(3.456) == "3.46x" and report.format_count(5966.0) == "5,966"
    assert report.format_values([4, 1.25, 1.0]) == "4 1.25 1" and report.format_values(None) == ""


@pytest.mark.parametrize("missing", [None, math.nan, math.inf, "abc", True])
def test_a_missing_or_non_numeric_value_reads_as_a_dash(missing):
    for fmt in (report.format_size, report.format_seconds, report.format_energy, report.format_percent,
                report.format_factor, report.format_count):
        assert fmt(missing) == report.MISSING == "–"


def test_unit_for_picks_the_largest_unit_of_at_least_one():
    assert report.unit_for(0.002, report.TIME_UNITS) == (1e-3, "ms")
    assert report.unit_for(2.0e9, report.SIZE_UNITS) == (1e9, "GB")
    assert report.unit_for(-5e-4, report.TIME_UNITS) == (1e-6, "µs")  # by magnitude
    assert report.unit_for(1e-15, report.ENERGY_UNITS) == (1e-12, "pJ")  # tiny: the smallest unit
    assert report.format_quantity(2500.0, report.SIZE_UNITS) == "2.5 kB"


def test_markdown_table_aligns_and_escapes():
    lines = report.markdown_table(["layer", "bits"], [["conv|1", 8], ["a\nb", 4]], "lr")
    assert lines == ["| layer | bits |", "| --- | ---: |", "| conv\\|1 | 8 |", "| a b | 4 |"]
    assert report.markdown_table(["", ""], [])[1] == "| --- | --- |"  # left by default


def test_widths_print_exactly_in_their_shortest_form():
    assert [report.format_width(w) for w in (1.125, 0.875, 1.0, 0.75, 2)] == ["1.125", "0.875", "1", "0.75", "2"]
    # A float32 width (as the model holds it, and as trial records store it) in the shortest form that reads back
    # as that float32; any other float exactly as a float64.
    assert report.format_width(float(np.float32(1.1))) == "1.1" and report.format_width(1 / 3) == "0.3333333333333333"
    assert float(np.float32(report.format_width(float(np.float32(0.9))))) == float(np.float32(0.9))
    assert report.format_width(None) == report.format_width(math.nan) == report.MISSING
    assert report.format_values([8, 1.125, 0.875, 1.0]) == "8 1.125 0.875 1"

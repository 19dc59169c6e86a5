"""Specification of `mpqjax.cost.report`: one checked configuration's cost as plain data (per-layer rows, totals).

The tables (`two_layer_table`, `branchy_table`) are the shared fixtures of tests/conftest.py.
"""

import json
import math

import numpy as np
import pytest

from mpqjax import cost as cost_model

SMALL_FPGA = cost_model.FPGATarget(rows=4, cols=8, clock_hz=1e6, energy_per_dsp_op_pj=2.0, energy_per_byte_pj=10.0)


def test_cost_report_is_json_ready_and_agrees_with_cost(two_layer_table):
    report = cost_model.cost_report(two_layer_table, [4, 8], [0.75, 1.0], SMALL_FPGA)
    assert json.loads(json.dumps(report)) == report
    assert report["model"] == "two_layer"
    assert report["totals"]["size_bytes"] == 185.0
    assert report["totals"]["latency_cycles"] == 25.0
    assert (report["totals"]["weights"], report["totals"]["macs"]) == (162 + 60, 2592 + 60)
    assert [row["mults_per_dsp"] for row in report["layers"]] == [6, 2]
    assert report["target"]["rows"] == 4
    result = cost_model.cost(two_layer_table, np.array([4, 8]), np.array([0.75, 1.0]), SMALL_FPGA)
    for field in ("speedup_vs_fip16", "size_reduction_vs_fp32", "bops", "energy_joules"):
        assert report["totals"][field] == pytest.approx(float(getattr(result, field)), rel=1e-6), field


def test_cost_report_defaults_to_the_papers_fpga_and_reads_target_names(two_layer_table):
    assert cost_model.cost_report(two_layer_table, 8, 1.0)["target"] == cost_model.target_to_dict(
        cost_model.FPGATarget())
    generic = cost_model.cost_report(two_layer_table, 8, 1.0, "generic")
    assert generic["target"]["kind"] == "generic"
    assert "mults_per_dsp" not in generic["layers"][0]  # only an FPGA packs multiplications


def test_width_semantics_follow_the_layer_table(branchy_table):
    report = cost_model.cost_report(branchy_table, 8, [0.5, 0.5, 1.5, 1.5, 3.0], cost_model.FPGATarget())
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


def test_cost_report_checks_and_takes_one_configuration(two_layer_table):
    with pytest.raises(ValueError, match=r"layer 'head': bit-width must be an integer in \[2, 16\]"):
        cost_model.cost_report(two_layer_table, [4, 20], 1.0)
    # 1 bit is outside [2, 16]: the cost model refuses it like every other user of a configuration
    with pytest.raises(ValueError, match="layer 'conv': bit-width .* got 1"):
        cost_model.cost_report(two_layer_table, 1, 1.0)
    with pytest.raises(ValueError, match="one configuration"):
        cost_model.cost_report(two_layer_table, np.full((2, 2), 4), 1.0)
    with pytest.raises(ValueError, match="unknown target 'tpu'"):
        cost_model.cost_report(two_layer_table, 4, 1.0, "tpu")

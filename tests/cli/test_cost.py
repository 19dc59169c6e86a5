"""Specification of ``mpqjax cost``: per-layer table and totals of a configuration, JSON output, exit code 2 on bad
input with a one-line message."""

import json

import pytest

from mpqjax import cli
from mpqjax import cost as cost_model
from mpqjax.nn import models

# The paper's Table IV widths for ResNet-20 (20 layers); the bits are the 19 it lists plus 8 for the head.
PAPER_BITS = "8,3,3,3,3,3,3,3,2,2,2,2,3,3,2,2,3,3,8,8"
PAPER_WIDTHS = ",".join(["1"] * 7 + ["0.75"] * 13)


@pytest.fixture(scope="module")
def resnet20():
    return models.layer_table("resnet20")


def test_prints_a_row_per_layer_and_the_totals(capsys, resnet20):
    assert cli.main(["cost", "--model", "resnet20", "--bits", PAPER_BITS, "--widths", PAPER_WIDTHS]) == 0
    out = capsys.readouterr().out
    bits = [float(b) for b in PAPER_BITS.split(",")]
    expected = cost_model.cost_report(resnet20, bits, [float(w) for w in PAPER_WIDTHS.split(",")])
    for layer in resnet20:
        assert layer.name in out
    size = expected["totals"]["size_bytes"]
    assert f"{size:,.0f} bytes" in out
    assert f"{expected['totals']['latency_cycles']:,.0f} cycles" in out
    assert f"{expected['totals']['speedup_vs_fip16']:.3g}x faster than FiP16" in out


def test_json_output_matches_the_library_and_single_values_broadcast(capsys, resnet20):
    argv = ["cost", "--model", "resnet20", "--bits", "4", "--widths", "0.875", "--target", "generic", "--json"]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["bits"] for row in report["layers"]] == [4] * len(resnet20)
    assert report["target"]["kind"] == "generic"
    expected = cost_model.cost(resnet20, 4, 0.875, cost_model.GenericTarget())
    assert report["totals"]["size_bytes"] == pytest.approx(float(expected.size_bytes))
    assert report["totals"]["bops"] == pytest.approx(float(expected.bops))


def test_defaults_are_the_fip16_baseline_of_the_papers_table(capsys):
    assert cli.main(["cost", "--model", "resnet20", "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    assert round(totals["size_bytes"] / 1e6, 2) == 0.54  # Table II, FiP16 ResNet-20
    assert totals["speedup_vs_fip16"] == 1.0


def test_target_file(capsys, tmp_path):
    path = tmp_path / "board.json"
    path.write_text(json.dumps({"kind": "fpga", "name": "board-x", "rows": 8, "cols": 8, "packing": "hikonv"}))
    assert cli.main(["cost", "--model", "resnet20", "--bits", "3", "--target", str(path)]) == 0
    assert "resnet20 on board-x" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--bits", "17"], "layer 'stem': bit-width must be an integer in [2, 16] (16: not quantised), got 17"),
        (["--bits", "0"], "must be an integer in [2, 16]"),
        (["--bits", "1"], "must be an integer in [2, 16]"),
        (["--bits", "2.5"], "must be an integer in [2, 16] (16: not quantised), got 2.5"),
        (["--bits", "8,x"], "--bits: 'x' is not a number"),
        (["--widths", "0"], "layer 'stem': width multiplier must be finite and > 0, got 0"),
        (["--widths", "-0.5"], "must be finite and > 0"),
        (["--bits", "8,8,8"], "bits has 3 entries but model 'resnet20' has 20 weight layers"),
        (["--target", "tpu"], "unknown target 'tpu'"),
        (["--target", "missing.toml"], "target file not found"),
        (["--model", "resnet99"], "resnet99"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, options, message):
    argv = ["cost", "--model", "resnet20", *options]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpqjax cost: error:")
    assert message in lines[0]


def test_malformed_target_file_exits_2(capsys, tmp_path):
    path = tmp_path / "board.toml"
    path.write_text("kind = = fpga\n")
    assert cli.main(["cost", "--model", "resnet20", "--target", str(path)]) == 2
    err = capsys.readouterr().err
    assert "malformed target file" in err and len(err.strip().splitlines()) == 1

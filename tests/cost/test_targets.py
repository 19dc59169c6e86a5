"""Specification of `mpqjax.cost.targets`: hardware targets as data, read from names, mappings and target files."""

import json
from pathlib import Path

import jax
import pytest

from mpqjax import cost as cost_model

SMALL_FPGA = cost_model.FPGATarget(rows=4, cols=8, clock_hz=1e6, energy_per_dsp_op_pj=2.0, energy_per_byte_pj=10.0)


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


def test_target_constructors_check_their_numbers():
    with pytest.raises(ValueError, match="cols must be finite and > 0"):
        cost_model.FPGATarget(cols=0)
    with pytest.raises(ValueError, match="clock_hz"):
        cost_model.GenericTarget(clock_hz=-1.0)
    with pytest.raises(ValueError, match="energy_per_byte_pj"):
        cost_model.FPGATarget(energy_per_byte_pj=float("nan"))


def test_targets_are_pytrees_of_their_numbers():
    leaves, treedef = jax.tree_util.tree_flatten(SMALL_FPGA)
    # rows, cols, clock_hz, 16 packing entries, bias_bits, overhead_cycles, two energies; name and DSP ports static
    assert len(leaves) == 3 + 16 + 4
    assert jax.tree_util.tree_unflatten(treedef, leaves) == SMALL_FPGA
    assert len(jax.tree_util.tree_leaves(cost_model.GenericTarget())) == 5


def test_load_target_passes_targets_and_mappings_through():
    assert cost_model.load_target(SMALL_FPGA) is SMALL_FPGA
    assert cost_model.load_target({"kind": "generic", "bops_per_cycle": 8}) == cost_model.GenericTarget(
        bops_per_cycle=8.0)

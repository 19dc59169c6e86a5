"""Specification of ``mpqjax export``: a finished folder's model as an integer-only file, ONNX or Qwix rules,
checked against the fake-quantised model; bad input exits 2 in one line and writes nothing."""

import os

import numpy as np
import pytest

from mpqjax import cli, export


@pytest.fixture(scope="module")
def integer_file(trained_digits_folder, tmp_path_factory):
    """``mpqjax export``'s integer file of the trained folder, and what the command printed."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("export") / "digits_int.npz"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["export", str(trained_digits_folder), "--out", str(out)]) == 0
    return out, printed.getvalue()


def test_writes_the_integer_file_and_reports_its_payload_and_agreement(integer_file):
    out, printed = integer_file
    described = export.load_program(out).metadata["integer"]
    payload = described["payload_bytes"]
    assert f"weights {payload} B packed (bitstream); the cost model's weight size is {payload} B" in printed
    assert "input: raw 8-bit pixels" in printed
    assert "agree with the fake-quantised model's on 100.00% of 360 test examples" in printed
    for layer in described["layers"]:
        assert f"{layer['name']:<24} {layer['bits']:>4} {layer['kept_weights']:>12}" in printed


def test_the_default_file_is_in_the_folder_and_the_dsp_layout_is_an_option(trained_digits_folder, capsys):
    assert cli.main(["export", str(trained_digits_folder), "--layout", "dsp", "--float-input"]) == 0
    path = trained_digits_folder / "model_int.npz"
    integer = export.load_program(path).metadata["integer"]
    assert integer["layout"] == "dsp" and integer["input_dtype"] == "float32"
    assert "(dsp)" in capsys.readouterr().out
    os.remove(path)


def test_onnx_runs_in_onnxruntime_with_the_same_predictions(trained_digits_folder, integer_file, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert cli.main(["export", str(trained_digits_folder), "--format", "onnx", "--out", str(out)]) == 0
    assert "agree with the fake-quantised model's on 100.00% of 360 test examples" in capsys.readouterr().out
    integer_out, _ = integer_file
    pixels = np.random.default_rng(0).integers(0, 17, size=(7, 8, 8, 1)).astype(np.uint8)
    np.testing.assert_array_equal(export.run_onnx(str(out), pixels), export.load_program(integer_out)(pixels))


def test_qwix_rules_are_python_a_qwix_user_pastes(trained_digits_folder, tmp_path, capsys):
    out = tmp_path / "rules.py"
    assert cli.main(["export", str(trained_digits_folder), "--format", "qwix", "--out", str(out)]) == 0
    assert "4 Qwix rules" in capsys.readouterr().out
    import qwix

    namespace = {"qwix": qwix}
    exec(out.read_text(), namespace)
    assert [rule.weight_qtype for rule in namespace["rules"]] == ["int6", "int4", "int2", "int3"]


@pytest.mark.parametrize("arguments, message", [
    (["export", "{missing}"], "run folder '{missing}' does not exist"),
    (["export", "{empty}"], "has no finished model (no model.npz"),
    (["export", "{trained}", "--layout", "nibbles"], "invalid choice: 'nibbles'"),
    (["export", "{trained}", "--out", "{missing}/x.npz"], "does not exist"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(trained_digits_folder, tmp_path, capsys, arguments,
                                                            message):
    (tmp_path / "empty").mkdir()
    names = {"missing": str(tmp_path / "missing"), "empty": str(tmp_path / "empty"),
             "trained": str(trained_digits_folder)}
    before = sorted(os.listdir(trained_digits_folder))
    assert cli.main([argument.format(**names) for argument in arguments]) == 2
    error = capsys.readouterr().err
    assert message.format(**names) in error and len(error.strip().splitlines()) == 1
    assert sorted(os.listdir(trained_digits_folder)) == before and os.listdir(tmp_path / "empty") == []


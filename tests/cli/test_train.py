"""Specification of ``mpqjax train``: the search's final step on its own (a configuration from --config or
--bits/--widths, or the float model), exported; bad input exits 2 in one line and writes nothing."""

import json
import os

import jax
import numpy as np
import pytest

from mpqjax import cli, export, search

SMALL = ["--float-epochs", "1", "--batch-size", "128", "--epochs", "1"]


@pytest.mark.slow
def test_trains_bits_and_widths_given_per_layer_or_once_and_the_float_model(tmp_path, capsys):
    out = tmp_path / "mlp"
    assert cli.main(["train", "--model", "mlp", "--bits", "8,4,8", "--widths", "1", *SMALL, "--out", str(out)]) == 0
    summary = json.loads((out / "train.json").read_text())
    assert summary["bits"] == [8, 4, 8] and summary["widths"] == [1.0, 1.0, 1.0] and summary["epochs"] == 1
    assert 0 < summary["test_accuracy"] <= 1 and summary["cost"]["size_bytes"] > 0
    assert export.load_program(out / "model.npz").metadata["bits"] == [8, 4, 8]
    assert "training mlp at bits [8, 4, 8]" in capsys.readouterr().out

    again = tmp_path / "again"  # the same settings train the same model
    assert cli.main(["train", "--model", "mlp", "--bits", "8,4,8", *SMALL, "--out", str(again)]) == 0
    assert json.loads((again / "train.json").read_text())["test_accuracy"] == summary["test_accuracy"]

    floating = tmp_path / "float"  # the search's float model (here from its cache)
    assert cli.main(["train", "--model", "mlp", "--float", "--float-epochs", "1", "--batch-size", "128",
                     "--out", str(floating)]) == 0
    result = json.loads((floating / "train.json").read_text())
    assert result["float"] and result["epochs"] == 1 and result["float_model"].startswith("cache ")
    config = search.SearchConfig(model="mlp", float_epochs=1, batch_size=128)
    dataset = search.load_dataset(config)
    saved = search.float_model_of(config, dataset, checkpoint=str(floating / "float_params.msgpack")).variables
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(search.float_model_of(config, dataset).variables),
                    strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("arguments, message", [
    (["train", "--out", "x"], "--config or --bits"),
    (["train", "--bits", "4,4", "--out", "x"], "--bits: expected 1 or 4 values (one per layer), got 2"),
    (["train", "--bits", "4", "--widths", "0", "--out", "x"], "width multiplier must be finite and > 0"),
    (["train", "--bits", "1", "--out", "x"], "bit-width must be an integer in [2, 16]"),
    (["train", "--float", "--bits", "4", "--out", "x"], "--float trains the float model: it takes no --config"),
    (["train", "--float", "--epochs", "4", "--out", "x"], "give --float-epochs and --float-lr"),
    (["train", "--config", "missing.json", "--out", "x"], "missing.json"),
    (["train", "--bits", "4", "--lr", "0", "--out", "x"], "--lr must be a positive number, got 0.0"),
    (["train", "--bits", "4", "--model", "resnet99", "--out", "x"], "unknown model 'resnet99'"),
    (["train", "--out"], "expected one argument"),
    (["train", "--config", "best_config.json", "--bits", "8", "--out", "x"], "--config gives the configuration (its "
                                                                            "bits and widths): it takes no --bits"),
    (["train", "--config", "best_config.json", "--widths", "1", "--out", "x"], "it takes no --bits or --widths"),
    (["train", "--float", "--target", "generic", "--out", "x"], "--target has no effect with --float"),
    (["train", "--float", "--calibration", "max", "--out", "x"], "--calibration has no effect with --float"),
    (["train", "--float", "--params", "f.msgpack", "--out", "x"], "--float trains the float model: --params gives "
                                                                 "one already"),
    (["train", "--bits", "4", "--params", "f.msgpack", "--float-lr", "0.1", "--out", "x"],
     "--float-lr has no effect with --params"),
    (["train", "--bits", "4", "--seed", "-1", "--out", "x"], "--seed must be an integer in [0, 2**32 - 1], got -1"),
    (["train", "--bits", "4", "--batch-size", "5000", "--out", "x"], "batch_size 5000 exceeds the 1257 training"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, arguments, message):
    monkeypatch.chdir(tmp_path)
    assert cli.main(arguments) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_a_folder_holding_a_trained_model_is_left_untouched(tmp_path, capsys):
    (tmp_path / "train.json").write_text("{}")
    assert cli.main(["train", "--bits", "4", "--out", str(tmp_path)]) == 2
    assert "already holds a trained model" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["train.json"]

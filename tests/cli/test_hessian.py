"""Specification of ``mpqjax hessian``: the search's sensitivity step on its own (same float model, same traces),
its table, JSON and plot; bad input exits 2 in one line."""

import json

import jax
import numpy as np
import pytest

from mpqjax import cli, search, store
from mpqjax.nn import models

SMALL = ["--hessian-batch-size", "64", "--batches", "1", "--max-probes", "8", "--chunk-size", "8"]


@pytest.mark.slow
def test_trains_briefly_then_reports_traces_clusters_and_bits(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["hessian", "--model", "digits_cnn", "--epochs", "1", "--out", str(out), *SMALL,
                     "--fix-bits", "conv1=8,head=8"]) == 0
    printed = capsys.readouterr().out
    assert "training the float digits_cnn" in printed and "search space: 10^" in printed
    result = json.loads((out / "hessian.json").read_text())
    table = models.layer_table("digits_cnn")
    assert [row["name"] for row in result["layers"]] == list(table.names)
    assert [row["weights"] for row in result["layers"]] == [layer.weights for layer in table]
    for row in result["layers"]:
        assert row["probes"] == 8 and row["std_error"] > 0
        assert row["trace_per_weight"] == pytest.approx(row["trace"] / row["weights"])
        assert row["name"] in printed
    assert result["layers"][0]["candidate_bits"] == [8] and result["layers"][0]["cluster"] == -1
    for row in result["layers"][1:-1]:
        assert row["candidate_bits"] == result["bit_sets"][row["cluster"]]
    assert result["log10_size_after"] < result["log10_size_before"]
    assert (out / "hessian.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the float model is the search's with the same settings: the same cache entry, the same variables
    config = search.SearchConfig(float_epochs=1)
    dataset = search.load_dataset(config)
    float_net = search.float_model_of(config, dataset)
    assert float_net.source.startswith("cache ")
    saved = store.load_variables(out / "float_params.msgpack", float_net.variables)
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(float_net.variables), strict=True):
        np.testing.assert_array_equal(a, b)

    # the saved float checkpoint is accepted by --params: no training, same traces with the same seed
    again = tmp_path / "again"
    assert cli.main(["hessian", "--model", "digits_cnn", "--params", str(out / "float_params.msgpack"),
                     "--out", str(again), *SMALL, "--fix-bits", "conv1=8,head=8"]) == 0
    assert "training the float" not in capsys.readouterr().out
    repeated = json.loads((again / "hessian.json").read_text())
    assert [r["trace"] for r in repeated["layers"]] == pytest.approx([r["trace"] for r in result["layers"]])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--model", "no_such_model"], "unknown model"),
        (["--model", "digits_cnn", "--dataset", "mnist"], "unknown dataset"),
        (["--model", "digits_cnn", "--max-probes", "0"], "--max-probes"),
        (["--model", "digits_cnn", "--tol", "0"], "--tol"),
        (["--model", "digits_cnn", "--probing", "diagonal"], "--probing"),
        (["--model", "digits_cnn", "--bit-sets", "8,x"], "--bit-sets"),
        (["--model", "digits_cnn", "--fix-bits", "conv9=8"], "unknown layers"),
        (["--model", "digits_cnn", "--params", "missing.msgpack"], "missing.msgpack' does not exist"),
        (["--model", "digits_cnn", "--params", "garbage"], "(expected a float digits_cnn at width 1 for digits)"),
        (["--model", "digits_cnn", "--hessian-tol", "-1"], "--tol must be a positive number, got -1.0"),
        (["--model", "digits_cnn", "--epochs", "0"], "--epochs must be a positive integer, got 0"),
        (["--params", "garbage", "--batch-size", "32"], "--batch-size has no effect with --params: the float model "
                                                        "is read from it, not trained"),
        (["--params", "garbage", "--epochs", "3", "--weight-decay", "0"], "--epochs has no effect with --params"),
        (["--params", "garbage", "--weight-decay", "0"], "--weight-decay has no effect with --params"),
        (["--fix-bits", "conv1=99"], "--fix-bits: layer 'conv1': bit-width must be an integer in [2, 16]"),
        (["--seed", "-1"], "--seed must be an integer in [0, 2**32 - 1], got -1"),
        (["--hessian-batch-size", "5000"], "hessian_batch_size 5000 exceeds the 1257 training examples"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, arguments, message):
    (tmp_path / "garbage").write_bytes(b"not msgpack at all")
    arguments = [str(tmp_path / a) if a in ("garbage", "missing.msgpack") else a for a in arguments]
    out = tmp_path / "out"
    assert cli.main(["hessian", *arguments, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert not (out / "hessian.json").exists()

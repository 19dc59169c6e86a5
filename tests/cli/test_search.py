"""Specification of ``mpqjax search``: the main job from the command line (then ``mpqjax report`` and ``mpqjax train``
on its folder), its summary, options from the search's settings, the distributed run, and one-line errors with exit
code 2 that leave existing folders alone."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from mpqjax import cli, export

SMALL = ["--trials", "4", "--n-initial", "2", "--float-epochs", "2", "--batch-size", "128", "--finetune-epochs", "1",
         "--final-epochs", "1", "--no-prune"]


@pytest.fixture(autouse=True)
def no_shared_compilation_cache(monkeypatch):
    # the CLI turns on JAX's persistent compilation cache; tests keep the process's configuration as it is
    monkeypatch.setenv("MPQJAX_NO_COMPILATION_CACHE", "1")


@pytest.mark.slow
def test_search_then_report_then_train_the_best_configuration(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["search", *SMALL, "--out", str(out), "--max-size", "20kB"]) == 0
    captured = capsys.readouterr()
    assert "trial 4/4" in captured.err  # the progress display
    assert "best configuration: trial" in captured.out and "smaller than FiP16" in captured.out
    best = json.loads((out / "best_config.json").read_text())
    assert best["size_bytes"] <= 20_000
    meta = json.loads((out / "search.json").read_text())
    assert meta["limits"]["size_bytes"] == 20_000 and meta["settings"]["min_size_reduction"] is None

    os.remove(out / "report.md")
    assert cli.main(["report", str(out)]) == 0
    assert "report.md" in capsys.readouterr().out and (out / "report.md").is_file()

    # mpqjax train runs the search's final step: with the search's settings it reproduces its model exactly
    trained = tmp_path / "trained"
    assert cli.main(["train", "--config", str(out / "best_config.json"), "--epochs", "1", "--float-epochs", "2",
                     "--batch-size", "128", "--out", str(trained)]) == 0
    summary = json.loads((trained / "train.json").read_text())
    assert summary["bits"] == [row["bits"] for row in best["layers"]]
    assert summary["test_accuracy"] == best["test_accuracy"]
    assert summary["validation_accuracy"] == best["final_validation_accuracy"]
    assert export.load_model(trained / "model.npz").bits.tolist() == summary["bits"]
    searched, retrained = np.load(out / "model.npz"), np.load(trained / "model.npz")
    assert sorted(retrained.files) == sorted(searched.files)
    for name in searched.files:
        np.testing.assert_array_equal(retrained[name], searched[name])


@pytest.mark.parametrize("arguments, message", [
    (["search", "--model", "no_such_model"], "unknown model"),
    (["search", "--dataset", "mnist"], "unknown dataset"),
    (["search", "--target", "no_such_target"], "target"),
    (["search", "--max-size=-3kB"], "--max-size"),
    (["search", "--max-latency", "soon"], "--max-latency"),
    (["search", "--min-size-reduction=-2"], "--min-size-reduction"),
    (["search", "--trials", "0"], "trials"),
    (["search", "--params", "garbage.msgpack"], "garbage.msgpack"),
    (["search", "--max-size", "1kB"], "smallest possible size is"),
    (["search", "--resume"], "--resume needs --out"),
    (["search", "--population", "0"], "--population must be a positive integer or 'auto', got 0"),
    (["search", "--population", "many"], "--population: must be a positive integer or 'auto', got 'many'"),
    (["search", "--population", "8", "--trials", "4"], "--population 8 exceeds --trials=4"),
    (["search", "--strategy", "pmap"], "--strategy must be auto or one of sequential, vmap, scan"),
    (["search", "--bits", "8,x"], "--bits: expected comma-separated integers, got '8,x'"),
    (["search", "--bits", "8,1"], "--bits: bit-width must be an integer in [2, 16]"),
    (["search", "--bit-sets", "8,6;x"], "--bit-sets: expected groups of integers"),
    (["search", "--fix-bits", "conv1"], "--fix-bits: expected 'layer=bits' items, got 'conv1'"),
    (["search", "--fix-bits", "conv9=8"], "fixed_bits names unknown layers ['conv9']"),
    (["search", "--calibration", "median"], "--calibration must be one of max, percentile, mse"),
    (["search", "--finetune-lr", "0"], "--finetune-lr must be a positive number, got 0.0"),
    (["search", "--no-size-limit", "--max-size", "2kB"], "--no-size-limit contradicts --max-size"),
    (["search", "--distributed"], "--distributed needs --out"),
    (["search", "--coordinator", "localhost:1234"], "need --distributed"),
    (["search", "--distributed", "--out", "x", "--coordinator", "localhost:1234"], "needs all of"),
    (["search", "--distributed", "--out", "x", "--coordinator", "nowhere", "--num-processes", "2",
      "--process-id", "0"], "host:port"),
    (["search", "--distributed", "--out", "x", "--coordinator", "localhost:1234", "--num-processes", "2",
      "--process-id", "2"], "process id must be in [0, 2)"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, arguments, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.msgpack").write_bytes(b"not a checkpoint")
    assert cli.main(arguments) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["garbage.msgpack"]  # no folder created, no file written


def test_an_existing_search_folder_is_left_untouched(tmp_path, capsys):
    out = tmp_path / "previous"
    out.mkdir()
    (out / "search.json").write_text('{"format": "mpqjax-search/1", "settings": {"trials": 3}}')
    before = (out / "search.json").read_bytes()
    assert cli.main(["search", "--out", str(out)]) == 2
    assert "holds another search" in capsys.readouterr().err
    assert (out / "search.json").read_bytes() == before and os.listdir(out) == ["search.json"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_a_search_over_two_processes_equals_one_process_with_as_many_devices(tmp_path):
    # Two processes of two forced CPU devices each form one 4-device mesh through jax.distributed (Gloo); the run
    # must equal one process with four devices, trial for trial, and process 1 writes its copy to OUT-process1.
    arguments = [*SMALL, "--model", "mlp", "--trials", "2", "--n-initial", "2", "--float-epochs", "1",
                 "--population", "2", "--strategy", "vmap", "--quiet"]
    command = [sys.executable, "-m", "mpqjax.cli", "search", *arguments]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MPQJAX_NO_COMPILATION_CACHE": "1"}
    address = f"localhost:{_free_port()}"
    runs = [subprocess.Popen([*command, "--out", str(tmp_path / "spread"), "--distributed", "--coordinator",
                              address, "--num-processes", "2", "--process-id", str(index)],
                             env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for index in (0, 1)]
    runs.append(subprocess.Popen([*command, "--out", str(tmp_path / "single")],
                                 env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for run in runs:
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-2000:]

    folders = [tmp_path / "spread", tmp_path / "spread-process1", tmp_path / "single"]
    devices = [json.loads((folder / "search.json").read_text())["devices"] for folder in folders]
    assert [(d["count"], d["processes"]) for d in devices] == [(4, 2), (4, 2), (4, 1)]

    def trials(folder):  # every field but the wall-clock time
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (folder / "trials.jsonl").read_text().splitlines()]

    assert trials(folders[1]) == trials(folders[0]) == trials(folders[2])
    assert len(trials(folders[0])) == 2
    models = [np.load(folder / "model.npz") for folder in folders]
    for other in models[1:]:
        assert sorted(other.files) == sorted(models[0].files)
        for name in models[0].files:
            np.testing.assert_array_equal(other[name], models[0][name])

"""Specification of ``mpqjax search``: the main job from the command line (then ``mpqjax report`` and ``mpqjax train``
on its folder), its summary, options from the search's settings, the distributed run, one-line errors with exit
code 2 that leave existing folders alone, one search per folder, and Ctrl-C then ``--resume``."""

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mpqjax import cli, export, search, store

SMALL = ["--trials", "4", "--n-initial", "2", "--float-epochs", "2", "--batch-size", "128", "--finetune-epochs", "1",
         "--final-epochs", "1", "--no-prune"]
# the uninterrupted search that an interrupted one is compared with: trials enough to interrupt it in the middle
SEARCH = [*SMALL, "--trials", "8", "--max-size", "20kB"]


@pytest.fixture(autouse=True)
def no_shared_compilation_cache(monkeypatch):
    # the CLI turns on JAX's persistent compilation cache; tests keep the process's configuration as it is
    monkeypatch.setenv("MPQJAX_NO_COMPILATION_CACHE", "1")


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """``mpqjax search SEARCH --out <folder>``: ``(folder, stdout, stderr)``."""
    out = tmp_path_factory.mktemp("search") / "run"
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        patch.setenv("MPQJAX_NO_COMPILATION_CACHE", "1")
        assert cli.main(["search", *SEARCH, "--out", str(out)]) == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue()


@pytest.mark.slow
def test_search_then_report_then_train_the_best_configuration(searched, tmp_path, capsys):
    out, stdout, stderr = searched
    assert stderr.startswith(f"search of 8 trials, output folder {out}\n")  # where to look, first
    assert "trial 7: 8/8 done" in stderr  # the progress display
    assert "best configuration: trial" in stdout and "smaller than FiP16" in stdout
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
    assert export.load_program(trained / "model.npz").metadata["bits"] == summary["bits"]
    exported, retrained = np.load(out / "model.npz"), np.load(trained / "model.npz")
    assert sorted(retrained.files) == sorted(exported.files)
    for name in exported.files:
        np.testing.assert_array_equal(retrained[name], exported[name])


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


def _snapshot(folder):
    """Every file of a folder: its bytes and modification time."""
    return {name: ((folder / name).read_bytes(), (folder / name).stat().st_mtime_ns) for name in os.listdir(folder)}


def _locked_message(out, pid):
    return (f"mpqjax search: error: output folder {str(out)!r} is used by the search of process {pid} on "
            f"{socket.gethostname()} since ")


def test_a_folder_another_search_holds_is_refused_new_or_resumed_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "previous"
    out.mkdir()
    (out / "search.json").write_text('{"format": "mpqjax-search/1", "settings": {"trials": 3}}')
    before = _snapshot(out)
    with store.FolderLock.acquire(out):  # the lock of a running search, held by this process
        for arguments in (["--resume"], ["--seed", "1"], ["--resume", "--trials", "5"]):
            assert cli.main(["search", "--out", str(out), *arguments]) == 2
            error = capsys.readouterr().err
            assert error.startswith(_locked_message(out, os.getpid())) and error.endswith("; wait for it or stop it\n")
            assert len(error.splitlines()) == 1
    assert _snapshot(out) == before
    new = tmp_path / "new"
    with store.FolderLock.acquire(new):
        assert cli.main(["search", "--out", str(new)]) == 2
        assert capsys.readouterr().err.startswith(_locked_message(new, os.getpid()))
        assert os.listdir(new) == ["search.lock"]


def _arrays(path):
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}


def _without_seconds(folder):
    return [{k: v for k, v in record.items() if k not in search.TIME_FIELDS}
            for record in store.read_jsonl(folder / "trials.jsonl")]


@pytest.mark.slow
def test_ctrl_c_stops_with_one_line_and_resume_ends_like_an_uninterrupted_run(searched, tmp_path, capsys):
    reference, _, _ = searched
    out = tmp_path / "interrupted"
    # `python -m mpqjax.cli`, with Ctrl-C's default handler even where this process was started with SIGINT ignored
    # (a background job), which its children would inherit
    command = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "runpy.run_module('mpqjax.cli', run_name='__main__', alter_sys=True)")
    process = subprocess.Popen([sys.executable, "-c", command, "search", *SEARCH, "--out", str(out)],
                               env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not store.read_jsonl(out / "trials.jsonl") and process.poll() is None:
            assert time.monotonic() < deadline, "the search made no progress"
            time.sleep(0.02)
        # a second search on the folder while the first runs: refused at once, the first goes on
        assert cli.main(["search", *SEARCH, "--out", str(out)]) == 2
        assert cli.main(["search", "--out", str(out), "--resume"]) == 2
        errors = capsys.readouterr().err.splitlines()
        assert len(errors) == 2 and all(line.startswith(_locked_message(out, process.pid)) for line in errors)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    logged = store.read_jsonl(out / "trials.jsonl")
    assert process.returncode == 130 and "Traceback" not in stderr
    assert stderr.splitlines()[0] == f"search of 8 trials, output folder {out}"
    assert stderr.splitlines()[-1] == (f"mpqjax search: interrupted after trial {len(logged) - 1}; resume with: "
                                       f"mpqjax search --out {out} --resume")
    assert 1 <= len(logged) < 8 and not (out / "search.lock").exists()
    meta = json.loads((out / "search.json").read_text())
    assert meta["command"][1:] == ["search", *SEARCH, "--out", str(out)]

    assert cli.main(["search", "--out", str(out), "--resume"]) == 0  # the command it printed, as is
    assert capsys.readouterr().err.startswith(f"resuming the search in {out} after trial {len(logged) - 1} "
                                              f"({len(logged)} of 8 trials logged; float model: ")
    assert _without_seconds(out) == _without_seconds(reference)
    best, expected = (json.loads((folder / "best_config.json").read_text()) for folder in (out, reference))
    assert best == expected
    exported, uninterrupted = _arrays(out / "model.npz"), _arrays(reference / "model.npz")
    assert sorted(exported) == sorted(uninterrupted)
    for name, array in uninterrupted.items():
        np.testing.assert_array_equal(exported[name], array)
    resumed = json.loads((out / "search.json").read_text())
    assert resumed["float"]["source"] == meta["float"]["source"] and resumed["status"] == "finished"


@pytest.mark.slow
def test_a_failed_resume_exits_2_and_leaves_every_file_as_it_was(searched, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(searched[0], copy)
    (copy / "float_params.msgpack").write_bytes(b"damaged")
    before = _snapshot(copy)
    assert cli.main(["search", "--out", str(copy), "--resume", "--trials", "9"]) == 2
    error = capsys.readouterr().err
    assert "float_params.msgpack' as a checkpoint" in error and len(error.splitlines()) == 1
    assert _snapshot(copy) == before


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
        return [{k: v for k, v in json.loads(line).items() if k not in search.TIME_FIELDS}
                for line in (folder / "trials.jsonl").read_text().splitlines()]

    assert trials(folders[1]) == trials(folders[0]) == trials(folders[2])
    assert len(trials(folders[0])) == 2
    models = [np.load(folder / "model.npz") for folder in folders]
    for other in models[1:]:
        assert sorted(other.files) == sorted(models[0].files)
        for name in models[0].files:
            np.testing.assert_array_equal(other[name], models[0][name])

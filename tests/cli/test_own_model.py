"""Specification of the commands on a user's own Flax model, named ``package.module:factory``: ``mpqjax search`` end to
end and resumed, ``mpqjax cost`` of its layers, a search begun in Python with a model object that the command
cannot resume, and bad input (each a one-line error, exit code 2, no traceback, nothing written).

The user's module is ``tests/search/own_models_factory.py``; its folder is put on ``sys.path`` as a user's current
folder would be.
"""

import contextlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import mpqjax
from mpqjax import cli, data, export, search
from mpqjax import cost as cost_model
from mpqjax.nn.models import wrap

FACTORY_DIR = str(pathlib.Path(__file__).resolve().parents[1] / "search")
SPEC = "own_models_factory:make_cnn"
LAYERS = ["Conv_0", "Conv_1", "Conv_2", "Conv_3", "Dense_0"]
SMALL = ["--trials", "2", "--n-initial", "2", "--population", "2", "--strategy", "sequential", "--float-epochs", "3",
         "--float-lr", "0.03", "--batch-size", "32", "--finetune-epochs", "1", "--final-epochs", "1", "--no-prune"]
RUN_FILES = ["search.json", "trials.jsonl", "trials.csv", "tpe_state.npz", "float_params.msgpack",
             "best_config.json", "model.npz", "pareto.png", "report.md"]


@pytest.fixture(autouse=True)
def user_folder(monkeypatch):
    # the CLI turns on JAX's persistent compilation cache; tests keep the process's configuration as it is
    monkeypatch.setenv("MPQJAX_NO_COMPILATION_CACHE", "1")
    monkeypatch.syspath_prepend(FACTORY_DIR)


def read_json(folder, name: str) -> dict:
    with open(os.path.join(folder, name)) as handle:
        return json.load(handle)


def read_trials(folder) -> list[dict]:
    """The trial records of a run folder, without their timing."""
    with open(os.path.join(folder, "trials.jsonl")) as handle:
        return [{k: v for k, v in json.loads(line).items() if k not in search.TIME_FIELDS}
                for line in handle if line.strip()]


def contents(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def one_line_error(captured, command: str = "search") -> str:
    """The error line of a failed command, checked to be the only output: no traceback, nothing on stdout."""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert captured.out == ""
    assert lines[0].startswith(f"mpqjax {command}: error: "), lines[0]
    return lines[0]


# -- mpqjax search --model package.module:factory ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """``mpqjax search --model own_models_factory:make_cnn SMALL --out <folder>``: ``(folder, stdout, stderr)``."""
    out = tmp_path_factory.mktemp("own-cli") / "run"
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        patch.setenv("MPQJAX_NO_COMPILATION_CACHE", "1")
        patch.syspath_prepend(FACTORY_DIR)
        code = cli.main(["search", "--model", SPEC, *SMALL, "--out", str(out)])
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue()


@pytest.mark.slow
def test_a_search_of_a_users_factory_writes_a_complete_folder(searched):
    out, stdout, stderr = searched
    assert stderr.startswith(f"search of 2 trials, output folder {out}\n")
    assert "best configuration: trial" in stdout
    assert sorted(os.listdir(out)) == sorted(RUN_FILES)
    meta = read_json(out, "search.json")
    assert meta["status"] == "finished" and meta["model"] == SPEC and meta["dataset"] == "digits"
    assert [layer["name"] for layer in meta["layers"]] == LAYERS
    assert meta["settings"]["widths"] == [0.75, 0.875, 1.0]  # a plain module only narrows
    best = read_json(out, "best_config.json")
    assert [row["name"] for row in best["layers"]] == LAYERS
    for name in LAYERS:  # the summary's table names the model's layers
        assert name in stdout
    # the exported program, with no model code, scores the recorded test accuracy on the same examples
    program = export.load_program(out / "model.npz")
    test = data.load("digits", seed=0).test
    assert float(np.mean(program.predict(test.x).argmax(axis=-1) == test.y)) == best["test_accuracy"]


@pytest.mark.slow
def test_the_command_resumes_a_search_of_a_users_factory(searched, tmp_path, capsys):
    folder = tmp_path / "resumed"
    shutil.copytree(searched[0], folder)
    assert cli.main(["search", "--resume", "--out", str(folder), "--trials", "4", "--quiet"]) == 0
    assert "best configuration: trial" in capsys.readouterr().out
    trials = read_trials(folder)
    assert [record["trial"] for record in trials] == [0, 1, 2, 3]
    assert trials[:2] == read_trials(searched[0])  # the logged trials are kept
    assert read_json(folder, "search.json")["status"] == "finished"


def stop_after_the_first_trial(event: dict) -> None:
    if event["event"] == "trial":
        raise KeyboardInterrupt  # as Ctrl-C: the logged trial is kept for a resume


@pytest.mark.slow
def test_a_search_begun_in_python_with_a_model_object_cannot_be_resumed_by_the_command(tmp_path, capsys):
    import own_models_factory

    module = own_models_factory.ResidualCNN()
    variables = module.init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))
    config = mpqjax.SearchConfig(trials=2, n_initial=1, population=1, batch_size=32, finetune_epochs=1,
                                 final_epochs=1, prune=False)
    out = tmp_path / "python-run"
    with pytest.raises(KeyboardInterrupt):
        mpqjax.run(config, out, model=module, variables=variables, progress=stop_after_the_first_trial)
    assert len(read_trials(out)) == 1 and read_json(out, "search.json")["model"] == "python:ResidualCNN"
    before = contents(out)
    capsys.readouterr()

    assert cli.main(["search", "--resume", "--out", str(out)]) == 2
    message = one_line_error(capsys.readouterr())
    assert "the model 'python:ResidualCNN' was given to mpqjax.run as a Python object: pass it again" in message
    assert contents(out) == before


# -- mpqjax cost --model package.module:factory -----------------------------------------------------------------------


def test_cost_of_a_users_factory_is_reported_per_layer_by_its_names(capsys):
    assert cli.main(["cost", "--model", SPEC, "--input-shape", "8,8,1", "--bits", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in report["layers"]] == LAYERS
    assert [row["bits"] for row in report["layers"]] == [4] * 5
    assert [row["weights"] for row in report["layers"]] == [3 * 3 * 1 * 8, 3 * 3 * 8 * 8, 3 * 3 * 8 * 8,
                                                            3 * 3 * 8 * 16, 16 * 10]
    import own_models_factory

    table = wrap(own_models_factory.ResidualCNN(), input_shape=(8, 8, 1)).table()
    expected = json.loads(json.dumps(cost_model.cost_report(table, [4] * 5, [1.0] * 5)))
    assert report["totals"] == expected["totals"]
    assert [row["size_bytes"] for row in report["layers"]] == [row["size_bytes"] for row in expected["layers"]]


def test_the_installed_command_imports_the_factory_from_the_current_folder(tmp_path):
    # the console script, as a user runs it: it puts its own folder on sys.path, not the current one
    script = shutil.which("mpqjax", path=os.path.dirname(sys.executable)) or shutil.which("mpqjax")
    assert script is not None, "the mpqjax console script is not installed"
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    done = subprocess.run([script, "cost", "--model", SPEC, "--input-shape", "8,8,1", "--bits", "4", "--json"],
                          cwd=FACTORY_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [row["name"] for row in json.loads(done.stdout)["layers"]] == LAYERS


def test_cost_of_a_users_factory_needs_its_input_shape(capsys):
    assert cli.main(["cost", "--model", SPEC, "--bits", "4"]) == 2
    message = one_line_error(capsys.readouterr(), "cost")
    assert SPEC in message and "--input-shape" in message


# -- bad input ---------------------------------------------------------------------------------------------------------


@pytest.fixture()
def broken_module(tmp_path, monkeypatch):
    """A user module that fails while it is imported."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "broken_user_module.py").write_text('raise RuntimeError("needs a GPU")\n\n\ndef make():\n    pass\n')
    monkeypatch.syspath_prepend(str(folder))


BAD_INPUT = [  # (arguments, what the message names)
    (["--model", "own_models_factory:make_failing"],
     ["'own_models_factory:make_failing'", "RuntimeError: no weights here"]),
    (["--model", "broken_user_module:make"],
     ["'broken_user_module:make'", "cannot import 'broken_user_module'", "RuntimeError: needs a GPU"]),
    (["--model", "no_such_user_module:make"],
     ["'no_such_user_module:make'", "cannot import 'no_such_user_module'", "ModuleNotFoundError"]),
    (["--model", "own_models_factory:make_missing"],
     ["'own_models_factory:make_missing'", "'own_models_factory' has no attribute 'make_missing'"]),
    (["--model", "own_models_factory:make_number"],
     ["'own_models_factory:make_number'", "flax.linen or flax.nnx module, got int"]),
    (["--model", "own_models_factory:make_no_layer"],
     ["'own_models_factory:make_no_layer' has no quantisable layer"]),
    (["--model", SPEC, "--widths", "0.5,1,1.5"],
     [f"'{SPEC}' is a plain module: width multipliers above 1 are unavailable (asked for [1.5])"]),
]


@pytest.mark.parametrize("arguments, fragments", BAD_INPUT, ids=["factory-raises", "module-fails-to-import",
                                                               "no-such-module", "no-such-attribute",
                                                               "not-a-module", "no-quantisable-layer", "widths"])
def test_bad_user_models_are_refused_in_one_line_and_nothing_is_written(broken_module, tmp_path, capsys, arguments,
                                                                        fragments):
    out = tmp_path / "run"
    assert cli.main(["search", *arguments, "--out", str(out)]) == 2
    message = one_line_error(capsys.readouterr())
    for fragment in fragments:
        assert fragment in message
    assert not out.exists()


def test_the_cost_command_refuses_a_failing_factory_in_one_line(capsys):
    assert cli.main(["cost", "--model", "own_models_factory:make_failing", "--input-shape", "8,8,1"]) == 2
    assert "RuntimeError: no weights here" in one_line_error(capsys.readouterr(), "cost")

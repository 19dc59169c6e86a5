"""Specification of the mpqjax.report face: lazy, free of JAX, and re-exporting the run folder's reading.

`Run`, `load_run` and `best_trial` are `mpqjax.store.run_folder`'s; the checks of how a report reads a folder through
them (finished, running, refused) live here, beside the face that re-exports them.
"""

import os
import subprocess
import sys

import pytest

from mpqjax import report, store
from mpqjax.store import run_folder

NO_JAX = """
import sys
import mpqjax.report
assert "matplotlib" not in sys.modules, "importing the face drew no plot yet: matplotlib must not be imported"
mpqjax.report.write(sys.argv[1])
print(sorted(name for name in ("jax", "flax", "optax", "chex") if name in sys.modules))
"""


def test_report_needs_no_jax(finished, tmp_path):
    """Reports run on finished folders, on machines without an accelerator: import and write load no JAX or Flax."""
    folder, _, _ = finished
    result = subprocess.run([sys.executable, "-c", NO_JAX, folder], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MPLBACKEND": "Agg"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_face_exports_every_public_name_of_its_modules():
    modules = ("folder", "format", "pareto", "plots", "records", "summary", "tables")
    for module_name in modules:
        module = getattr(report, module_name)
        for name in module.__all__:
            assert getattr(report, name) is getattr(module, name), name
    public = {name for module_name in modules for name in getattr(report, module_name).__all__}
    assert set(report.__all__) == {*modules, *public, "Run", "best_trial", "load_run"}
    assert report.load_run is run_folder.load_run and report.Run is run_folder.Run
    assert report.best_trial is run_folder.best_trial


# -- the run folder as the report reads it ------------------------------------------------------------------------


def test_load_run_reads_every_file_of_a_finished_search(finished, run_folders):
    folder, trials, _ = finished
    run = report.load_run(folder)
    assert run.status == "finished" and run.planned_trials == 30
    assert run.trials == store.read_jsonl(os.path.join(folder, "trials.jsonl")) and len(run.trials) == 30
    assert [r["phase"] for r in run.baseline] == ["uniform"] * 3
    assert run.hessian["bit_sets"] == run_folders.HESSIAN["bit_sets"]
    assert run.best_config["trial"] == report.best_trial(trials, resolution=run_folders.RESOLUTION)["trial"]
    assert run.layer_names == ["conv1", "conv2", "fc"]


def test_load_run_reads_a_running_search_with_an_interrupted_last_line(run_folders, tmp_path):
    trials = run_folders.write(tmp_path, status="running", trials=run_folders.make_trials(12), best=False,
                               baseline=False, hessian=False)
    with open(tmp_path / "trials.jsonl", "ab") as handle:
        handle.write(b'{"trial": 12, "phase": "model", "conf')  # a kill in the middle of an append
    run = report.load_run(tmp_path)
    assert run.status == "running" and run.best_config is None and run.hessian is None and run.baseline == []
    assert [r["trial"] for r in run.trials] == list(range(12))
    assert run.trials == store.to_json_value(trials)


def test_a_newer_format_and_a_missing_folder_are_refused(tmp_path):
    (tmp_path / "search.json").write_text('{"format": "mpqjax-search/2"}')
    with pytest.raises(ValueError, match="format 'mpqjax-search/2'; this mpqjax reads 'mpqjax-search/1'"):
        report.load_run(tmp_path)
    with pytest.raises(ValueError, match="is not a folder"):
        report.load_run(tmp_path / "absent")


def test_a_corrupt_best_config_is_named_in_the_error(run_folders, tmp_path):
    run_folders.write(tmp_path, best=False)
    (tmp_path / "best_config.json").write_text("{")
    with pytest.raises(ValueError, match="best_config.json' is not valid JSON"):
        report.load_run(tmp_path)


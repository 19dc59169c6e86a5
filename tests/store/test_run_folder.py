"""Specification of mpqjax.store.run_folder: the run folder's names and format, the checks before a new or resumed
run writes anything, the write order that makes a resume exact, reading the folder back, and the one best trial."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpqjax.optim import KMeansTPE, SearchSpace, ordinal
from mpqjax.store import FolderLock, FolderLockedError, TrialLog, load_tpe_state, run_folder
from mpqjax.store.run_folder import (
    FILES,
    FORMAT,
    RunFolder,
    best_trial,
    check_folder,
    file_path,
    is_finished,
    is_ok,
    load_run,
    number,
    read_best_layers,
    settings_differences,
)

SETTINGS = {"model": "digits_cnn", "seed": 0, "trials": 4, "baseline": False}


def test_every_file_has_one_name():
    assert len(set(FILES.values())) == len(FILES)
    assert file_path("runs/x", "trials") == os.path.join("runs/x", "trials.jsonl")


# -- before a run writes anything --------------------------------------------------------------------------------


def _search_folder(path, settings=SETTINGS, trials=0, status="running"):
    path.mkdir(parents=True, exist_ok=True)
    (path / FILES["search"]).write_text(json.dumps({"format": FORMAT, "status": status, "settings": settings}))
    (path / FILES["trials"]).write_text("".join(json.dumps({"trial": t}) + "\n" for t in range(trials)))
    return path


def test_a_new_run_needs_a_new_or_empty_folder(tmp_path):
    assert check_folder(tmp_path / "new", SETTINGS, resume=False) is None
    (tmp_path / "empty").mkdir()
    assert check_folder(tmp_path / "empty", SETTINGS, resume=False) is None
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty; choose a new or empty folder"):
        check_folder(tmp_path / "notes", SETTINGS, resume=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        check_folder(tmp_path / "file", SETTINGS, resume=False)
    with pytest.raises(ValueError, match="holds another search: use --resume to continue it, or another --out"):
        check_folder(_search_folder(tmp_path / "previous"), SETTINGS, resume=False)


def test_a_resume_needs_the_same_search(tmp_path):
    folder = _search_folder(tmp_path / "run", trials=3)
    previous = check_folder(folder, dict(SETTINGS, trials=10, baseline=True), resume=True)  # trials may grow
    assert previous["settings"] == SETTINGS
    with pytest.raises(ValueError, match="settings differ from the interrupted search in model, seed"):
        check_folder(folder, dict(SETTINGS, model="mlp", seed=1), resume=True)
    with pytest.raises(ValueError, match="3 trials are already logged, more than trials=2"):
        check_folder(folder, dict(SETTINGS, trials=2), resume=True)
    with pytest.raises(ValueError, match="holds no search to resume"):
        check_folder(tmp_path / "nowhere", SETTINGS, resume=True)
    (folder / FILES["search"]).write_text('{"format": "other/1"}')
    with pytest.raises(ValueError, match="is not an mpqjax search file"):
        check_folder(folder, SETTINGS, resume=True)


def test_a_folder_another_search_holds_is_refused_new_or_resumed_and_a_stale_lock_file_is_no_content(tmp_path):
    folder = _search_folder(tmp_path / "run", trials=1)
    (tmp_path / "new").mkdir()
    for path, resume in ((folder, True), (folder, False), (tmp_path / "new", False)):
        with FolderLock.acquire(path):
            with pytest.raises(FolderLockedError, match="is used by the search of process"):
                check_folder(path, SETTINGS, resume=resume)
            with pytest.raises(FolderLockedError), RunFolder.open(path, SETTINGS, {}, resume=resume):
                pass
    (tmp_path / "new" / FILES["lock"]).write_text('{"pid": 1}')  # left by a killed search that wrote nothing
    assert check_folder(tmp_path / "new", SETTINGS, resume=False) is None


def _snapshot(path):
    return {name: ((path / name).read_bytes(), (path / name).stat().st_mtime_ns) for name in os.listdir(path)}


def test_open_locks_the_folder_for_the_block_and_writes_a_new_runs_search_json_at_once(tmp_path):
    with RunFolder.open(tmp_path / "run", SETTINGS, {"settings": SETTINGS}, resume=False) as folder:
        with pytest.raises(FolderLockedError):
            check_folder(tmp_path / "run", SETTINGS, resume=False)
        written = json.loads((tmp_path / "run" / FILES["search"]).read_text())
        assert written == {"format": FORMAT, "status": "running", "settings": SETTINGS}
        TrialLog(folder.path("trials")).append({"trial": 0})
    assert sorted(os.listdir(tmp_path / "run")) == [FILES["search"], FILES["trials"]]  # the lock is gone


def test_a_resumed_run_keeps_every_section_and_writes_nothing_until_it_saves(tmp_path):
    folder_path = _search_folder(tmp_path / "run", trials=2)
    meta = json.loads((folder_path / FILES["search"]).read_text())
    (folder_path / FILES["search"]).write_text(json.dumps({**meta, "float": {"source": "checkpoint a"}}))
    before = _snapshot(folder_path)
    with pytest.raises(ValueError, match="diverged"), RunFolder.open(
            folder_path, dict(SETTINGS, trials=6), {"settings": dict(SETTINGS, trials=6)}, resume=True) as folder:
        assert folder.meta["float"] == {"source": "checkpoint a"} and folder.meta["settings"]["trials"] == 6
        assert set(_snapshot(folder_path)) == {*before, FILES["lock"]}
        raise ValueError("diverged")  # a failure before the first save: the folder is as it was
    assert _snapshot(folder_path) == before


@pytest.mark.parametrize("logged, error, kept", [
    (0, ValueError("the limit is unattainable after pruning"), False),  # nothing to resume: removed
    (1, ValueError("the final training diverged"), True),  # trials are never lost
    (0, KeyboardInterrupt(), True),  # Ctrl-C: kept for --resume
])
def test_a_new_run_that_fails_before_its_first_trial_leaves_nothing_behind(tmp_path, logged, error, kept):
    out = tmp_path / "run"
    with pytest.raises(type(error)), RunFolder.open(out, SETTINGS, {"settings": SETTINGS}, resume=False) as folder:
        folder.save_float({"params": {"w": np.ones(2, np.float32)}})
        folder.write_hessian({"layers": []})
        for trial in range(logged):
            TrialLog(folder.path("trials")).append({"trial": trial})
        raise error
    if kept:
        assert FILES["search"] in os.listdir(out) and FILES["lock"] not in os.listdir(out)
        check_folder(out, SETTINGS, resume=True)
    else:
        assert not out.exists()  # the same command, corrected, needs neither --resume nor a clean-up
        (tmp_path / "empty").mkdir()
        with pytest.raises(ValueError), RunFolder.open(tmp_path / "empty", SETTINGS, {}, resume=False):
            raise error
        assert os.listdir(tmp_path / "empty") == []  # a folder that existed stays, empty


def test_settings_differences_leave_out_the_resumable_changes():
    old, new = {"trials": 4, "seed": 0, "a": 1}, {"trials": 8, "seed": 1, "b": 2}
    assert settings_differences(old, new) == ["a", "b", "seed"]


def test_a_resumed_search_is_finished_only_with_its_trials_and_best_config(tmp_path):
    folder = _search_folder(tmp_path / "run", status="finished")
    previous = check_folder(folder, SETTINGS, resume=True)
    assert not is_finished(folder, previous, SETTINGS["trials"])  # no best_config.json yet
    (folder / FILES["best"]).write_text("{}")
    assert is_finished(folder, previous, SETTINGS["trials"])
    assert not is_finished(folder, previous, SETTINGS["trials"] + 1)
    assert not is_finished(folder, None, SETTINGS["trials"])


# -- writing -------------------------------------------------------------------------------------------------------


def test_create_writes_the_format_and_status_first_and_save_updates(tmp_path):
    folder = RunFolder.create(tmp_path / "run", {"model": "mlp", "timings": {}})
    written = json.loads((tmp_path / "run" / FILES["search"]).read_text())
    assert list(written) == ["format", "status", "model", "timings"] and written["format"] == FORMAT
    folder.update(space={"pruned": False})  # in memory only
    assert "space" not in json.loads((tmp_path / "run" / FILES["search"]).read_text())
    folder.save(timings={"io": 1.0})
    assert json.loads((tmp_path / "run" / FILES["search"]).read_text())["space"] == {"pruned": False}
    folder.finish({"trial": 2}, timings={"io": 2.0})
    assert json.loads((tmp_path / "run" / FILES["best"]).read_text()) == {"trial": 2}
    assert load_run(tmp_path / "run").status == "finished"
    assert load_run(tmp_path / "run").search["timings"] == {"io": 2.0}


def test_the_float_model_and_the_hessian_summary_are_kept(tmp_path):
    folder = RunFolder.create(tmp_path, {})
    assert folder.read_hessian() is None
    folder.write_hessian({"layers": [], "log10_size_after": 1.5})
    assert folder.read_hessian() == {"layers": [], "log10_size_after": 1.5}
    folder.save_float({"params": {"w": np.ones(2, np.float32)}})
    first = (tmp_path / FILES["float"]).read_bytes()
    folder.save_float({"params": {"w": np.zeros(2, np.float32)}})  # never replaced: a resume reads the same one
    assert (tmp_path / FILES["float"]).read_bytes() == first


@pytest.fixture(scope="module")
def optimiser():
    space = SearchSpace([ordinal("a", (2, 3, 4, 6)), ordinal("b", (2, 4, 8))])
    return KMeansTPE(space, maximize=True, n_initial=2, capacity=6), space


def _records(space, count):
    configs = [{"a": a, "b": b} for a in (2, 3, 4, 6) for b in (2, 4, 8)][:count]
    return [{"trial": t, "config": c, "objective": None if t == 1 else 0.1 * t} for t, c in enumerate(configs)]


def _told(opt, space, records, population_size):
    state = opt.init()
    for start in range(0, len(records), population_size):
        chunk = records[start:start + population_size]
        y = [math.nan if r["objective"] is None else r["objective"] for r in chunk]
        state = opt.tell(state, np.stack([space.encode(r["config"]) for r in chunk]), jnp.asarray(y, jnp.float32))
    return state


def _assert_same_state(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_append_writes_the_log_then_the_checkpoint_then_search_json(tmp_path, optimiser):
    opt, space = optimiser
    records = _records(space, 2)
    folder = RunFolder.create(tmp_path, {"timings": {}})
    state = _told(opt, space, records, 2)
    folder.append_trials(records, state, timings={"io": 0.5})
    assert RunFolder(tmp_path, {}).trials() == records
    _assert_same_state(load_tpe_state(tmp_path / FILES["state"]), state)
    assert json.loads((tmp_path / FILES["search"]).read_text())["timings"] == {"io": 0.5}


@pytest.mark.parametrize("population_size", [1, 2])
def test_restore_completes_a_checkpoint_that_lags_behind_the_log(tmp_path, optimiser, population_size):
    opt, space = optimiser
    records = _records(space, 5)
    whole = _told(opt, space, records, population_size)
    folder = RunFolder.create(tmp_path, {})
    assert int(folder.restore_state(opt, records, space, population_size).count) == 5  # no checkpoint: the log
    _assert_same_state(folder.restore_state(opt, records, space, population_size), whole)
    lagging = records[:4] if population_size == 2 else records[:3]
    folder.append_trials([], _told(opt, space, lagging, population_size))  # killed before the last checkpoint
    _assert_same_state(folder.restore_state(opt, records, space, population_size), whole)


def test_restore_rebuilds_from_the_log_a_checkpoint_of_another_capacity_or_ahead_of_it(tmp_path, optimiser):
    opt, space = optimiser
    records = _records(space, 3)
    folder = RunFolder.create(tmp_path, {})
    bigger = KMeansTPE(space, maximize=True, n_initial=2, capacity=8)
    folder.append_trials([], _told(bigger, space, records, 1))
    _assert_same_state(folder.restore_state(opt, records, space), _told(opt, space, records, 1))
    folder.append_trials([], _told(opt, space, records, 1))
    _assert_same_state(folder.restore_state(opt, records[:2], space),
                       _told(opt, space, records[:2], 1))
    (tmp_path / FILES["state"]).write_bytes(b"damaged")
    _assert_same_state(folder.restore_state(opt, records, space), _told(opt, space, records, 1))


def test_the_baseline_log_is_its_own_file(tmp_path):
    folder = RunFolder.create(tmp_path, {})
    folder.baseline_log().append({"trial": 0, "uniform_bits": 8})
    assert load_run(tmp_path).baseline == [{"trial": 0, "uniform_bits": 8}] and load_run(tmp_path).trials == []


# -- reading -------------------------------------------------------------------------------------------------------


def test_load_run_reads_a_running_search_without_its_optional_files(tmp_path):
    _search_folder(tmp_path, trials=2)
    with open(tmp_path / FILES["trials"], "a") as handle:
        handle.write('{"trial": 2, "objec')  # an append cut short by a kill
    run = load_run(tmp_path)
    assert run.status == "running" and run.planned_trials == 4
    assert [t["trial"] for t in run.trials] == [0, 1]
    assert run.baseline == [] and run.hessian is None and run.best_config is None


@pytest.mark.parametrize("content, message", [
    (None, "no search.json"),
    ("not json", "search.json is not valid JSON"),
    ('{"settings": {}}', 'has no "format"'),
    ('{"format": "mpqjax-search/0"}', "holds a search of format 'mpqjax-search/0'"),
])
def test_load_run_refuses_a_folder_that_is_not_a_search(tmp_path, content, message):
    if content is not None:
        (tmp_path / FILES["search"]).write_text(content)
    with pytest.raises(ValueError, match=message):
        load_run(tmp_path)
    with pytest.raises(ValueError, match="is not a folder"):
        load_run(tmp_path / "nowhere")


def test_read_best_layers(tmp_path):
    path = tmp_path / FILES["best"]
    path.write_text(json.dumps({"layers": [{"name": "conv1", "bits": 8, "width": 1.0},
                                           {"name": "head", "bits": 4, "width": 0.75}]}))
    assert read_best_layers(path) == (["conv1", "head"], [8, 4], [1.0, 0.75])
    path.write_text('{"trial": 3}')
    with pytest.raises(ValueError, match="is not a best_config.json of mpqjax search"):
        read_best_layers(path)


# -- the best trial ------------------------------------------------------------------------------------------------


def test_the_best_trial_is_ok_feasible_highest_and_earliest_on_ties():
    records = [
        {"trial": 0, "status": "ok", "validation_accuracy": 0.8, "objective": 0.8, "feasible": True},
        {"trial": 1, "status": "failed", "validation_accuracy": None, "objective": None},
        {"trial": 2, "status": "ok", "validation_accuracy": 0.99, "objective": 0.99, "feasible": False},
        {"trial": 3, "status": "ok", "validation_accuracy": 0.9, "objective": 0.9},  # no field: feasible
        {"trial": 4, "status": "ok", "validation_accuracy": 0.9, "objective": 0.9, "feasible": True},
    ]
    assert best_trial(records)["trial"] == 3
    assert best_trial(records[1:3]) is None and best_trial([]) is None


def test_numbers_and_ok_records():
    assert [number(v) for v in (1, 0.5, None, True, "x", math.nan, math.inf, "2")] == [1.0, 0.5, None, None, None,
                                                                                      None, None, 2.0]
    assert is_ok({"status": "ok", "validation_accuracy": 0.5})
    assert not is_ok({"status": "ok", "validation_accuracy": None}) and not is_ok({"status": "failed"})


def test_the_store_face_reexports_the_run_folder():
    from mpqjax import store

    for name in run_folder.__all__:
        assert getattr(store, name) is getattr(run_folder, name)

"""Specification of mpqjax.store.files: atomic writes, the append-only trial log that survives a kill, checkpoints."""

import json
import math
import os

import numpy as np
import pytest

from mpqjax import store


def test_atomic_write_replaces_whole_files_and_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "result.json"
    store.atomic_write_json(path, {"accuracy": np.float32(0.5), "bits": np.array([8, 4]), "failed": math.nan})
    assert json.loads(path.read_text()) == {"accuracy": 0.5, "bits": [8, 4], "failed": None}

    def broken(name):
        with open(name, "w") as handle:
            handle.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.atomic_write(path, broken)
    assert json.loads(path.read_text())["accuracy"] == 0.5  # the old content survives
    assert sorted(os.listdir(tmp_path)) == ["result.json"]  # no temporary file left behind


def test_trial_log_appends_whole_records_and_reads_them_back(tmp_path):
    log = store.TrialLog(tmp_path / "trials.jsonl")
    assert log.records() == []
    log.append({"trial": 0, "objective": 0.9})
    log.extend([{"trial": 1, "objective": math.inf}, {"trial": 2, "objective": 0.7}])
    assert [r["trial"] for r in log.records()] == [0, 1, 2]
    assert log.records()[1]["objective"] is None


def test_an_append_cut_short_by_a_kill_is_ignored_then_truncated(tmp_path):
    path = tmp_path / "trials.jsonl"
    path.write_text('{"trial": 0}\n{"trial": 1}\n{"trial": 2, "obj')
    assert [r["trial"] for r in store.read_jsonl(path)] == [0, 1]
    log = store.TrialLog(path)  # reopening repairs the file, so the next append starts on a fresh line
    log.append({"trial": 2})
    assert path.read_text() == '{"trial": 0}\n{"trial": 1}\n{"trial": 2}\n'


def test_a_damaged_line_before_the_last_is_an_error_not_silent_loss(tmp_path):
    path = tmp_path / "trials.jsonl"
    path.write_text('{"trial": 0}\nnot json\n{"trial": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        store.read_jsonl(path)
    with pytest.raises(ValueError, match="line 2"):
        store.TrialLog(path)
    assert path.read_text().count("\n") == 3  # untouched


def test_read_json_names_the_bad_file(tmp_path):
    path = tmp_path / "search.json"
    path.write_text("{")
    with pytest.raises(ValueError, match="search.json"):
        store.read_json(path)


@pytest.fixture
def variables():
    return {"params": {"dense": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
                                 "bias": np.zeros(3, np.float32)}},
            "batch_stats": {"bn": {"mean": np.ones(3, np.float32)}}}


def test_variables_round_trip_through_msgpack_and_orbax(tmp_path, variables):
    path = tmp_path / "float.msgpack"
    store.save_variables(path, variables)
    restored = store.load_variables(path, variables)
    np.testing.assert_array_equal(restored["params"]["dense"]["kernel"], variables["params"]["dense"]["kernel"])

    import orbax.checkpoint as ocp

    folder = tmp_path / "orbax"
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(folder, variables)
    checkpointer.wait_until_finished()
    restored = store.load_variables(folder, variables)
    np.testing.assert_array_equal(restored["batch_stats"]["bn"]["mean"], variables["batch_stats"]["bn"]["mean"])


def test_checkpoints_of_another_model_or_garbage_are_refused(tmp_path, variables):
    path = tmp_path / "float.msgpack"
    store.save_variables(path, variables)
    other = {"params": {"dense": {"kernel": np.zeros((2, 4), np.float32), "bias": np.zeros(4, np.float32)}},
             "batch_stats": {"bn": {"mean": np.ones(4, np.float32)}}}
    with pytest.raises(ValueError, match="different shapes"):
        store.load_variables(path, other)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\x01 not msgpack")
    with pytest.raises(ValueError, match="cannot read"):
        store.load_variables(garbage, variables)
    with pytest.raises(ValueError, match="does not exist"):
        store.load_variables(tmp_path / "missing", variables)


def test_a_checkpoint_reads_back_as_saved_whatever_its_layout(tmp_path):
    tree = {"conv": {"kernel": np.ones((3, 3, 1, 2), np.float32)}, "bn": {"mean": np.zeros(2, np.float32)}}
    path = tmp_path / "state.msgpack"
    store.save_variables(path, tree)
    restored = store.read_checkpoint(path)
    assert set(restored) == {"conv", "bn"}
    np.testing.assert_array_equal(restored["conv"]["kernel"], tree["conv"]["kernel"])
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\x01 not msgpack")
    with pytest.raises(ValueError, match="cannot read .* as a checkpoint"):
        store.read_checkpoint(garbage)
    with pytest.raises(ValueError, match="does not exist"):
        store.read_checkpoint(tmp_path / "missing")

"""Specification of mpqjax.search.loop: Algorithm 1 end to end on digits, its output folder and progress events, exact
resume after kill -9, failed trials, populations, the population choice, the checks that refuse bad input before
anything is written, a failed resume that changes nothing, and a new run that fails before its first trial leaving
nothing behind."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mpqjax import data, export, search, store
from mpqjax.search import steps
from mpqjax.training import devices, strategy

# Tiny but real: every phase runs (float training, Hessian pruning, random and model-based trials, final training,
# export, report) in seconds once compiled.
SMALL = dict(trials=6, n_initial=3, float_epochs=3, batch_size=128, finetune_epochs=1, final_epochs=2,
             hessian_batch_size=64, hessian_batches=1, hessian_max_probes=8)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "run"
    events = []
    result = search.run(search.SearchConfig(**SMALL, baseline=True, baseline_bits=(8, 2)), str(out),
                        progress=events.append)
    return result, out, events


@pytest.mark.slow
def test_a_search_writes_every_output_and_its_best_meets_the_limit(finished):
    result, out, events = finished
    for name in ["search.json", "trials.jsonl", "trials.csv", "baseline.jsonl", "hessian.json", "hessian.png",
                 "best_config.json", "model.npz", "pareto.png", "report.md", "tpe_state.npz", "float_params.msgpack"]:
        assert (out / name).is_file(), name
    meta = json.loads((out / "search.json").read_text())
    assert meta["status"] == "finished" and meta["space"]["pruned"]
    limit = meta["limits"]["size_bytes"]
    assert limit == pytest.approx(meta["fip16_size_bytes"] / search.DEFAULT_SIZE_REDUCTION)

    trials = result.trials
    assert [t["trial"] for t in trials] == list(range(6))
    assert [t["phase"] for t in trials] == ["random"] * 3 + ["model"] * 3
    assert len({json.dumps(t["config"], sort_keys=True) for t in trials}) == 6  # never the same configuration twice
    for record in trials:  # hard limits: nothing over the limit is ever evaluated
        assert record["feasible"] and record["size_bytes"] <= limit
        assert record["status"] == "ok" and record["objective"] == pytest.approx(record["validation_accuracy"])
    best = result.best
    assert best["trial"] == store.best_trial(trials, resolution=best["selection"]["resolution"])["trial"]
    assert best["size_reduction_vs_fip16"] >= search.DEFAULT_SIZE_REDUCTION
    assert [row["name"] for row in best["layers"]] == [layer["name"] for layer in meta["layers"]]
    assert sum(row["size_bytes"] for row in best["layers"]) == pytest.approx(best["size_bytes"], rel=1e-5)
    assert 0 < best["test_accuracy"] <= 1 and 0 < best["float_test_accuracy"] <= 1

    # every trial used the pruned candidate bits of its layer
    hessian = json.loads((out / "hessian.json").read_text())
    candidates = {row["name"]: row["candidate_bits"] for row in hessian["layers"]}
    for record in trials:
        for name, bits in zip(candidates, record["bits"], strict=True):
            assert bits in candidates[name]

    assert [r["uniform_bits"] for r in result.baseline] == [8, 2]
    assert all(r["widths"] == [1.0] * len(meta["layers"]) for r in result.baseline)
    assert set(result.timings) >= {"float_model", "hessian", "evaluations", "optimiser", "io", "final_training"}
    assert result.timings["total"] == pytest.approx(sum(v for k, v in result.timings.items() if k != "total"))
    assert "| conv1 |" in (out / "report.md").read_text()
    assert not (out / "search.lock").exists()  # released at the end
    assert meta["command"] == sys.argv and set(meta["versions"]) >= {"mpqjax", "jax", "jaxlib", "flax", "python"}
    assert meta["float"]["source"].startswith(("trained 3 epochs", "cache "))


@pytest.mark.slow
def test_the_progress_events_say_where_the_search_writes_and_number_trials_as_the_files_do(finished):
    result, out, events = finished
    assert events[0] == {"event": "start", "out_dir": str(out), "resume": False,
                         "message": f"search of 6 trials, output folder {out}"}
    trials = [e for e in events if e["event"] == "trial"]
    assert [e["trial"] for e in trials] == [t["trial"] for t in result.trials] == list(range(6))
    assert [e["done"] for e in trials] == list(range(1, 7)) and all(e["trials"] == 6 for e in trials)
    # the first trial compiles the training step: no estimate from it; then the median trial time
    assert trials[0]["eta"] is None and all(e["eta"] > 0 for e in trials[1:-1]) and trials[-1]["eta"] == 0
    phases = [e["phase"] for e in events if e["event"] == "phase"]
    assert phases[:3] == ["float_model", "hessian", "trials"] and "final_training" in phases
    assert events[-1]["event"] == "done"


@pytest.mark.slow
def test_the_exported_model_reproduces_the_reported_test_accuracy(finished):
    result, out, _ = finished
    program = export.load_program(out / "model.npz")
    dataset = data.load("digits", seed=0)
    accuracy = float(np.mean(program(dataset.test.x).argmax(-1) == dataset.test.y))
    assert accuracy == pytest.approx(result.best["test_accuracy"], abs=1e-9)
    assert program.metadata["bits"] == [row["bits"] for row in result.best["layers"]]


def _comparable(records):
    return [{k: v for k, v in record.items() if k not in search.TIME_FIELDS} for record in records]


@pytest.mark.slow
def test_resume_after_kill_9_ends_exactly_like_an_uninterrupted_run(finished, tmp_path):
    result, _, _ = finished
    out = tmp_path / "killed"
    settings = dict(SMALL, baseline=True, baseline_bits=(8, 2))
    script = f"from mpqjax import search; search.run(search.SearchConfig(**{settings!r}), {str(out)!r})"
    process = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while len(store.read_jsonl(out / "trials.jsonl")) < 3 and process.poll() is None:
            assert time.monotonic() < deadline, "the search made no progress"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    logged = store.read_jsonl(out / "trials.jsonl")
    assert 3 <= len(logged) < 6, "killed mid-search"
    assert not (out / "best_config.json").exists()
    assert (out / "search.lock").exists()  # the killed process's lock, stale: taken over below
    source = json.loads((out / "search.json").read_text())["float"]["source"]

    events = []
    resumed = search.run(search.SearchConfig(**settings), str(out), resume=True, progress=events.append)
    assert _comparable(resumed.trials) == _comparable(result.trials)
    assert {k: v for k, v in resumed.best.items()} == result.best
    assert _comparable(resumed.baseline) == _comparable(result.baseline)
    assert events[0]["message"] == (f"resuming the search in {out} after trial {len(logged) - 1} ({len(logged)} of 6 "
                                    f"trials logged; float model: {source})")
    meta = json.loads((out / "search.json").read_text())
    assert meta["float"]["source"] == source and not source.startswith("checkpoint")  # the origin, not the copy
    assert meta["command"][0] == "-c" and [session["trials_logged"] for session in meta["resumed"]] == [len(logged)]
    assert not (out / "search.lock").exists()


@pytest.mark.slow
def test_a_diverged_trial_is_recorded_as_failed_and_the_search_goes_on(tmp_path, monkeypatch):
    real_training = steps.train_configuration
    calls = []

    def diverge_on_second(*args, **kwargs):
        variables, losses = real_training(*args, **kwargs)
        calls.append(1)
        return variables, (losses * np.nan if len(calls) == 2 else losses)

    monkeypatch.setattr(steps, "train_configuration", diverge_on_second)
    config = search.SearchConfig(**dict(SMALL, trials=4, prune=False))
    result = search.run(config, str(tmp_path / "run"))
    statuses = [t["status"] for t in result.trials]
    assert statuses == ["ok", "failed", "ok", "ok"]
    failed = result.trials[1]
    assert failed["objective"] is None and "diverged" in failed["error"]
    assert result.best["trial"] != 1
    state = store.load_tpe_state(tmp_path / "run" / "tpe_state.npz")
    assert int(state.count) == 4 and np.isnan(np.asarray(state.y)[np.asarray(state.order)]).sum() == 1


@pytest.mark.slow
def test_a_population_search_asks_evaluates_and_tells_whole_populations_and_resumes_exactly(tmp_path, monkeypatch):
    settings = dict(SMALL, trials=5, n_initial=2, prune=False, population=2, strategy="vmap", final_epochs=1)
    # a run that fails after the float model, before its first trial, leaves nothing: the same command then runs
    def too_small(*args, minimum, **kwargs):
        raise ValueError(f"a population of {minimum} does not fit")

    with monkeypatch.context() as patched:
        patched.setattr(devices, "max_population", too_small)
        with pytest.raises(ValueError, match="a population of 2 does not fit"):
            search.run(search.SearchConfig(**settings), str(tmp_path / "whole"))
    assert not (tmp_path / "whole").exists()
    whole = search.run(search.SearchConfig(**settings), str(tmp_path / "whole"))
    meta = json.loads((tmp_path / "whole" / "search.json").read_text())
    assert meta["population"] == {"population": 2, "strategy": "vmap", "measured": False}
    trials = whole.trials
    assert [t["trial"] for t in trials] == list(range(5)) and all(t["status"] == "ok" for t in trials)
    assert [t["phase"] for t in trials] == ["random"] * 2 + ["model"] * 3
    assert len({json.dumps(t["config"], sort_keys=True) for t in trials}) == 5  # distinct within and across
    # members of one population share its time; the last population holds the fifth trial alone
    assert trials[0]["seconds"] == trials[1]["seconds"] and trials[2]["seconds"] == trials[3]["seconds"]
    assert trials[4]["seconds"] != trials[3]["seconds"]

    # a first session of one population, then a resumed one with more trials: the optimiser state is rebuilt from
    # the log (its capacity changed) and the search continues exactly as the uninterrupted one
    partial = tmp_path / "partial"
    search.run(search.SearchConfig(**dict(settings, trials=2)), str(partial))
    resumed = search.run(search.SearchConfig(**settings), str(partial), resume=True)
    assert _comparable(resumed.trials) == _comparable(trials)
    assert resumed.best["config"] == whole.best["config"]


@pytest.mark.parametrize("settings, message", [
    (dict(model="no_such_model"), "unknown model"),
    (dict(dataset="mnist"), "unknown dataset"),
    (dict(target="no_such_target"), "target"),
    (dict(max_size_bytes=-5.0), "max_size_bytes"),
    (dict(trials=0), "trials"),
    (dict(float_checkpoint="garbage.msgpack"), "garbage.msgpack"),
    (dict(max_size_bytes=1000.0), "smallest possible size is"),
    (dict(min_speedup=1000.0), "smallest possible latency is"),
    (dict(fixed_bits=(("conv9", 8),)), "unknown layers"),
    (dict(population=0), "population must be a positive integer or 'auto'"),
    (dict(population=61), "population 61 exceeds trials=60"),
    (dict(strategy="pmap"), "strategy must be auto or one of sequential, vmap, scan"),
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, settings, message):
    (tmp_path / "garbage.msgpack").write_bytes(b"not a checkpoint")
    if "float_checkpoint" in settings:
        settings = dict(settings, float_checkpoint=str(tmp_path / "garbage.msgpack"))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        search.run(search.SearchConfig(**settings), str(out))
    assert not out.exists()


def test_an_output_folder_holding_another_search_is_never_touched(tmp_path):
    out = tmp_path / "previous"
    out.mkdir()
    (out / "search.json").write_text('{"format": "mpqjax-search/1", "settings": {}}')
    (out / "trials.jsonl").write_text('{"trial": 0}\n')
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    with pytest.raises(ValueError, match="holds another search"):
        search.run(search.SearchConfig(), str(out))
    with pytest.raises(ValueError, match="settings differ"):
        search.run(search.SearchConfig(), str(out), resume=True)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        search.run(search.SearchConfig(), str(other))
    with pytest.raises(ValueError, match="no search to resume"):
        search.run(search.SearchConfig(), str(other), resume=True)


@pytest.mark.slow
@pytest.mark.parametrize("damage, message", [
    (("hessian.json", b"{ not json"), "hessian.json' is not valid JSON"),
    (("hessian.json", b'{"layers": []}'), "hessian.json' is not the sensitivity analysis of this search"),
    (("float_params.msgpack", b"garbage"), "float_params.msgpack' as a checkpoint"),
    (("trials.jsonl", b"garbage\n"), "line 1 is not a JSON record"),
    (None, "settings differ from the interrupted search in seed"),
])
def test_a_failed_resume_changes_no_file(finished, tmp_path, damage, message):
    _, out, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    settings = dict(SMALL, baseline=True, baseline_bits=(8, 2), trials=7)  # more trials: the search goes on
    if damage is None:
        settings["seed"] = 1
    else:
        name, content = damage
        (copy / name).write_bytes(content + ((copy / name).read_bytes() if name == "trials.jsonl" else b""))
    before = {name: ((copy / name).read_bytes(), (copy / name).stat().st_mtime_ns) for name in os.listdir(copy)}
    with pytest.raises(ValueError, match=message):
        search.run(search.SearchConfig(**settings), str(copy), resume=True)
    assert {name: ((copy / name).read_bytes(), (copy / name).stat().st_mtime_ns) for name in os.listdir(copy)} == before


def test_population_choice_measures_only_when_asked(monkeypatch, digits):
    asked = []

    def fake_choose(model, dataset, **kwargs):
        asked.append(kwargs)
        measurements = ({"population": 1, "strategy": "sequential", "seconds_per_step": 1.0,
                         "configurations_per_hour": 100.0},
                        {"population": 4, "strategy": "vmap", "seconds_per_step": 2.0,
                         "configurations_per_hour": 200.0})
        return strategy.Choice(4, "vmap", measurements, 32)

    monkeypatch.setattr(strategy, "choose", fake_choose)
    monkeypatch.setattr(devices, "max_population", lambda *args, **kwargs: 32)

    def choice(**settings):
        return search.choose_population(search.SearchConfig(**settings), None, digits)

    assert choice() == {"population": 1, "strategy": "sequential", "measured": False}
    assert choice(population=8, strategy="scan") == {"population": 8, "strategy": "scan", "measured": False}
    assert not asked
    auto = choice(population="auto")
    assert auto["population"] == 4 and auto["strategy"] == "vmap" and auto["measured"]
    assert asked[-1]["populations"] is None and asked[-1]["max_size"] == 60
    assert asked[-1]["steps_per_configuration"] == 4 * (len(digits.train) // 64)
    explicit = choice(population=8)  # the size is the user's; the fastest strategy is measured at it
    assert explicit["population"] == 8 and explicit["strategy"] == "vmap"
    assert asked[-1]["populations"] == [8] and tuple(asked[-1]["strategies"]) == ("sequential", "vmap", "scan")


def test_an_explicit_population_that_does_not_fit_is_refused_before_any_trial(monkeypatch, digits):
    def too_small(*args, minimum, **kwargs):
        raise ValueError(f"a population of {minimum} does not fit")

    monkeypatch.setattr(devices, "max_population", too_small)
    with pytest.raises(ValueError, match="a population of 8 does not fit"):
        search.choose_population(search.SearchConfig(population=8, strategy="vmap"), None, digits)

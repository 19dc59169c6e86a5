"""Specification of mpqjax.report.records: the best configuration a report shows, and the baseline's labels."""

import json

from mpqjax import report


def test_the_best_record_is_final_once_best_config_json_exists(finished, run_folders):
    folder, trials, _ = finished
    run = report.load_run(folder)
    record, final = report.best_record(run)
    best = report.best_trial(trials, resolution=run_folders.RESOLUTION)
    assert final and record["trial"] == best["trial"] and record["phase"] == best["phase"]
    # best_config.json's fields win over the trial record's; its per-layer table is left out.
    assert record["test_accuracy"] == run.best_config["test_accuracy"] and "layers" not in record
    assert record["export"] == "model.npz" and record["bits"] == best["bits"]


def test_before_best_config_json_the_best_record_is_the_best_trial_so_far(run_folders, tmp_path):
    trials = run_folders.write(tmp_path, status="running", trials=run_folders.make_trials(14), best=False)
    record, final = report.best_record(report.load_run(tmp_path))
    assert not final and record == report.best_trial(trials)
    run_folders.write(tmp_path / "failed", status="running", best=False,
                      trials=[run_folders.trial_record(0, [4, 4, 4], [1.0] * 3, failed=True)])
    assert report.best_record(report.load_run(tmp_path / "failed")) == (None, False)


def test_a_best_config_json_of_a_trial_not_in_the_log_is_shown_alone(run_folders, tmp_path):
    run_folders.write(tmp_path, trials=run_folders.make_trials(5))
    (tmp_path / "best_config.json").write_text(json.dumps({"trial": 99, "objective": 0.5, "layers": []}))
    assert report.best_record(report.load_run(tmp_path)) == ({"trial": 99, "objective": 0.5, "layers": []}, True)


def test_uniform_labels():
    assert report.uniform_label({"uniform_bits": 6, "bits": [8, 8]}) == "6b"
    assert report.uniform_label({"bits": [4, 4, 4]}) == "4b"
    assert report.uniform_label({"bits": [8, 4]}) == "mixed" and report.uniform_label({}) == "mixed"

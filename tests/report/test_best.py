"""The best configuration agrees everywhere a report shows it: best_config.json, report.md, trials.csv and the star of
pareto.png all name `best_trial`'s trial, and the report says how it was chosen and why it is off a front.

The constructed folder (100 validation examples: a resolution of 0.01): trials 0 and 2 are the most accurate
feasible ones (97 %), trial 1 is one example worse (96 %, tied) and the smallest of the three; trial 3 is more
accurate (99 %) and smaller but breaks the latency limit.
"""

import csv
import json
import os

import pytest

from mpqjax import report, store

# trial: (validation accuracy, size in bytes, latency in seconds, feasible)
TRIALS = {0: (0.97, 2900.0, 0.9e-3, True), 1: (0.96, 2000.0, 1.0e-3, True), 2: (0.97, 2500.0, 0.5e-3, True),
          3: (0.99, 1800.0, 1.5e-3, False), 4: (0.90, 1500.0, 0.4e-3, True)}


def constructed_trials(run_folders, numbers=tuple(TRIALS)):
    records = []
    for number in numbers:
        accuracy, size, latency, feasible = TRIALS[number]
        record = run_folders.trial_record(number, [4, 4, 4], [1.0] * 3)
        records.append({**record, "validation_accuracy": accuracy, "objective": accuracy, "size_bytes": size,
                        "latency_seconds": latency, "feasible": feasible})
    return [*records, run_folders.trial_record(5, [2, 2, 2], [1.0] * 3, failed=True)]


@pytest.fixture(scope="module")
def tied(run_folders, tmp_path_factory):
    """The constructed finished folder, its trials and its derived files (no baseline: the x units are the trials'
    and the limits', kB and ms)."""
    folder = tmp_path_factory.mktemp("tied")
    trials = run_folders.write(folder, trials=constructed_trials(run_folders), baseline=False)
    report.write(folder)
    return folder, trials


def test_best_config_report_csv_and_star_name_the_one_best_trial(tied, run_folders):
    folder, trials = tied
    best = store.best_trial(trials, resolution=run_folders.RESOLUTION)
    assert best["trial"] == 1  # not trial 0, the earliest of the most accurate
    best_config = json.loads((folder / "best_config.json").read_text())
    assert best_config["trial"] == 1 and best_config["selection"]["resolution"] == 0.01
    lines = (folder / "report.md").read_text().splitlines()
    assert "| trial | 1 (random phase) |" in lines
    explanation = store.selection.explain_choice(trials, resolution=run_folders.RESOLUTION)
    assert explanation == ("trial 1: validation accuracy 0.9600, within one validation example (0.0100) of the best "
                           "0.9700 (trial 0); of the 3 such trials, the smallest on the size/latency front; 1 more "
                           "accurate trial breaks a limit")
    assert f"| how it was chosen | {explanation} |" in lines
    assert f"The selection rule: {store.selection.RULE}." in lines
    with open(folder / "trials.csv", newline="") as handle:
        assert [row["trial"] for row in csv.DictReader(handle) if row["best"] == "True"] == ["1"]
    figure = report.plot_pareto(folder / "again.png", report.load_run(folder))
    size_axes, latency_axes = figure.axes
    for axes, x in ((size_axes, 2.0), (latency_axes, 1.0)):  # 2000 B in kB, 1e-3 s in ms
        (star,) = [artist for artist in axes.collections if artist.get_gid() == "best"]
        assert star.get_offsets().tolist() == [[x, 96.0]]
        (band,) = [artist for artist in axes.patches if artist.get_gid() == "tied"]
        heights = band.get_path().transformed(band.get_patch_transform()).vertices[:, 1]
        assert (heights.min(), heights.max()) == pytest.approx((96.0, 97.0))  # the accuracies tied with the top
        assert star.get_label() == "best (trial 1: the smallest of the 3 tied)"


def test_the_report_says_why_the_best_is_off_each_front(tied):
    folder, _ = tied
    lines = (folder / "report.md").read_text().splitlines()
    assert ("The best configuration, trial 1, is not on this front: trial 3 is more accurate (99.00 % against "
            "96.00 %) at no larger size, but breaks a limit.") in lines
    assert ("The best configuration, trial 1, is not on this front: trial 2 is more accurate (97.00 % against "
            "96.00 %) by less than one validation example, a tie for the selection, and larger (2.5 kB against "
            "2 kB).") in lines


def test_a_best_on_the_front_is_marked_in_its_table(run_folders, tmp_path):
    trials = run_folders.write(tmp_path, trials=constructed_trials(run_folders, (0, 1, 4)), baseline=False)
    lines = report.markdown(report.load_run(tmp_path)).splitlines()
    start = lines.index("## Pareto front: validation accuracy vs size") + 4
    assert [row.split("|")[1].strip() for row in lines[start:start + 3]] == ["4", "1 (best)", "0"]
    assert store.best_trial(trials, resolution=run_folders.RESOLUTION)["trial"] == 1
    # On the latency front trial 0 (97 %, 0.9 ms) beats it: a tie at a larger size.
    assert any(line.startswith("The best configuration, trial 1, is not on this front: trial 0 is more accurate")
               and line.endswith("and larger (2.9 kB against 2 kB).") for line in lines)


def test_a_running_search_uses_the_resolution_search_json_records(run_folders, tmp_path):
    run_folders.write(tmp_path, status="running", trials=constructed_trials(run_folders), best=False, baseline=False)
    run = report.load_run(tmp_path)
    # Nothing recorded: only equal accuracies tie (trials 0 and 2; 2 is smaller and faster), and the report says so.
    assert report.best_record(run) == (store.best_trial(run.trials), False) and report.best_record(run)[0]["trial"] == 2
    assert report.selection_note(run).endswith("(no resolution recorded yet: only equal accuracies tie)")
    search = json.loads((tmp_path / "search.json").read_text())
    search["selection"] = store.selection.selection_settings(run_folders.EXAMPLES)
    (tmp_path / "search.json").write_text(json.dumps(search))
    run = report.load_run(tmp_path)
    assert report.resolution_of(run) == 0.01 and report.best_record(run)[0]["trial"] == 1
    lines = report.markdown(run).splitlines()
    assert "| trial | 1 (random phase) |" in lines and "## Best configuration so far" in lines


def test_a_folder_of_an_earlier_mpqjax_keeps_its_best_and_says_so(run_folders, tmp_path):
    run_folders.write(tmp_path, trials=constructed_trials(run_folders), baseline=False, recorded=False)
    run = report.load_run(tmp_path)
    assert run.best_config["trial"] == 0 and report.resolution_of(run) is None
    record, final = report.best_record(run)
    assert final and record["trial"] == 0  # the exported model's trial, whatever the rule now
    assert report.selection_note(run).startswith("best_config.json records no selection rule (written by an earlier "
                                                 "mpqjax): its trial 0 was chosen by that version's rule")
    report.write(tmp_path)
    assert "| trial | 0 (random phase) |" in (tmp_path / "report.md").read_text().splitlines()
    with open(os.path.join(tmp_path, "trials.csv"), newline="") as handle:
        assert [row["trial"] for row in csv.DictReader(handle) if row["best"] == "True"] == ["0"]


def test_a_best_config_json_that_disagrees_with_the_log_is_said_so(run_folders, tmp_path):
    trials = run_folders.write(tmp_path, trials=constructed_trials(run_folders), baseline=False)
    best_config = json.loads((tmp_path / "best_config.json").read_text())
    (tmp_path / "best_config.json").write_text(json.dumps(run_folders.best_config_of(trials[0], trials)))
    assert best_config["trial"] == 1
    note = report.selection_note(report.load_run(tmp_path))
    assert note.startswith("best_config.json names trial 0, but the trial log now gives trial 1: validation accuracy")

"""Specification of mpqjax.report.tables: the trial table as CSV, every number read back unchanged."""

import csv
import os

import numpy as np

from mpqjax import report


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_trials_csv_round_trips_every_number(finished):
    folder, trials, _ = finished
    rows = read_rows(os.path.join(folder, "trials.csv"))
    assert len(rows) == len(trials)
    # The record's fields in order, the best configuration's mark, then one column per configuration dimension.
    assert list(rows[0]) == [key for key in trials[0] if key != "config"] + ["best"] + list(trials[0]["config"])
    for row, trial in zip(rows, trials, strict=True):
        for key in ("size_bytes", "latency_seconds", "latency_cycles", "energy_joules", "speedup_vs_fip16",
                    "seconds"):
            assert float(row[key]) == trial[key]
        for key in ("objective", "validation_accuracy"):
            assert (row[key] == "") if trial[key] is None else (float(row[key]) == trial[key])
        assert int(row["trial"]) == trial["trial"] and row["status"] == trial["status"]
        assert [int(b) for b in row["bits"].split()] == trial["bits"]
        assert [float(w) for w in row["widths"].split()] == trial["widths"]
        assert float(row["width/conv2"]) == trial["config"]["width/conv2"]
        assert int(row["bits/fc"]) == trial["config"]["bits/fc"]
        assert row["feasible"] == str(trial["feasible"])
        assert row["error"] == (trial["error"] or "")


def test_fields_missing_from_some_records_and_a_dimension_named_like_a_field(tmp_path):
    records = [{"trial": 0, "config": {"bits/a": 4, "seed": 1}, "seed": 7},
               {"trial": 1, "config": {"bits/a": 2}, "extra": 0.1}]
    report.write_trials_csv(tmp_path / "t.csv", records)
    rows = read_rows(tmp_path / "t.csv")
    assert list(rows[0]) == ["trial", "seed", "extra", "bits/a", "config:seed"]
    assert rows == [{"trial": "0", "seed": "7", "extra": "", "bits/a": "4", "config:seed": "1"},
                    {"trial": "1", "seed": "", "extra": "0.1", "bits/a": "2", "config:seed": ""}]
    assert os.listdir(tmp_path) == ["t.csv"]  # written atomically: no temporary file left


def test_the_best_column_and_float32_widths_read_back_exactly(tmp_path):
    width = float(np.float32(1.1))  # 1.100000023841858, as a trial record stores a float32 width
    records = [{"trial": 0, "widths": [width, 1.0], "size_bytes": 10.0}, {"trial": 1, "widths": [0.875, 1.125]}]
    report.write_trials_csv(tmp_path / "t.csv", records, best=1)
    rows = read_rows(tmp_path / "t.csv")
    assert list(rows[0]) == ["trial", "widths", "size_bytes", "best"]
    assert [row["best"] for row in rows] == ["False", "True"]
    assert [float(w) for w in rows[0]["widths"].split()] == [width, 1.0] and rows[1]["widths"] == "0.875 1.125"

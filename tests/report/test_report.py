"""Specification of mpqjax.report: reading a search folder (finished or running), Pareto fronts, plots, CSV, markdown.

The folders are built here by hand, following the output-folder contract, with the store's own writers.
"""

import ast
import csv
import math
import os

import matplotlib.pyplot as plt
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpqjax import report, store

LAYERS = [{"name": "conv1", "kind": "conv", "weights": 144, "macs": 9216},
          {"name": "conv2", "kind": "conv", "weights": 4608, "macs": 73728},
          {"name": "fc", "kind": "dense", "weights": 640, "macs": 640}]
BITS, WIDTHS = (2, 3, 4, 6, 8), (0.75, 1.0, 1.25)
SIZE_LIMIT, LATENCY_LIMIT = 3000.0, 1.2e-3
CLOCK = 200e6
FAILED = (4, 11)  # trial numbers whose training diverged


def trial_record(trial, bits, widths, *, failed=False):
    """A trial record of the contract's schema with a made-up but consistent cost and accuracy."""
    size = float(sum(layer["weights"] * b * w / 8 for layer, b, w in zip(LAYERS, bits, widths, strict=True)))
    cycles = float(sum(layer["macs"] * w * math.ceil(b / 2) for layer, b, w in zip(LAYERS, bits, widths, strict=True)))
    accuracy = None if failed else round(0.55 + 0.04 * min(bits) + 0.08 * min(widths) - 0.01 * (trial % 3), 4)
    feasible = size <= SIZE_LIMIT and cycles / CLOCK <= LATENCY_LIMIT
    objective = None if failed else (accuracy if feasible else accuracy - (size - SIZE_LIMIT) / SIZE_LIMIT)
    return {
        "trial": trial, "phase": "random" if trial < 8 else "model",
        "config": {**{f"bits/{layer['name']}": b for layer, b in zip(LAYERS, bits, strict=True)},
                   **{f"width/{layer['name']}": w for layer, w in zip(LAYERS, widths, strict=True)}},
        "bits": list(bits), "widths": list(widths), "status": "failed" if failed else "ok",
        "objective": objective, "validation_accuracy": accuracy, "size_bytes": size,
        "latency_seconds": cycles / CLOCK, "latency_cycles": cycles, "energy_joules": 1e-9 * cycles,
        "speedup_vs_fip16": 400000.0 / cycles, "size_reduction_vs_fip16": 2 * 5392 / size,
        "size_reduction_vs_fp32": 4 * 5392 / size, "feasible": feasible, "seconds": 1.5 + trial / 10,
        "error": "NaN loss at step 3" if failed else None,
    }


def make_trials(count, seed=0):
    rng = np.random.default_rng(seed)
    return [trial_record(t, rng.choice(BITS, 3).tolist(), rng.choice(WIDTHS, 3).tolist(), failed=t in FAILED)
            for t in range(count)]


def search_meta(status, planned=30):
    return {
        "format": "mpqjax-search/1", "status": status, "model": "digits_cnn", "dataset": "digits", "seed": 0,
        "settings": {"trials": planned, "n_initial": 8, "epochs": 1},
        "target": {"kind": "fpga", "rows": 16, "cols": 16, "clock_hz": CLOCK, "name": "fpga"},
        "limits": {"size_bytes": SIZE_LIMIT, "latency_seconds": LATENCY_LIMIT, "energy_joules": None,
                   "throughput_per_second": None},
        "layers": LAYERS, "fip16_size_bytes": 2 * 5392.0, "fp32_size_bytes": 4 * 5392.0,
        "float": {"validation_accuracy": 0.9861, "test_accuracy": 0.9778, "source": "trained 20 epochs"},
        "space": {"dimensions": [{"name": f"bits/{layer['name']}", "choices": list(BITS)} for layer in LAYERS],
                  "pruned": True, "log10_size_before": 4.1, "log10_size_after": 2.9},
        "timings": {"float_model": 20.0, "hessian": 5.0, "evaluations": 70.0, "optimiser": 0.5, "io": 0.5,
                    "final_training": 4.0, "total": 100.0},
    }


HESSIAN = {"model": "digits_cnn", "dataset": "digits", "bit_sets": [[8, 6], [4, 3], [3, 2]],
           "centroids": [1.0, 0.1, 0.01], "log10_size_before": 4.1, "log10_size_after": 2.9,
           "layers": [{"name": "conv1", "weights": 144, "trace": 12.0, "std_error": 0.5, "trace_per_weight": 0.083,
                       "cluster": -1, "candidate_bits": [8]},
                      {"name": "conv2", "weights": 4608, "trace": 30.0, "std_error": None,
                       "trace_per_weight": 0.0065, "cluster": 1, "candidate_bits": [4, 3]},
                      {"name": "fc", "weights": 640, "trace": 2.0, "std_error": 0.1, "trace_per_weight": 0.0031,
                       "cluster": 2, "candidate_bits": [3, 2]}]}


def best_config_of(record):
    return {
        "trial": record["trial"], "config": record["config"], "objective": record["objective"],
        "validation_accuracy": record["validation_accuracy"], "final_validation_accuracy": 0.9722,
        "test_accuracy": 0.9694, "float_test_accuracy": 0.9778,
        **{key: record[key] for key in ("size_bytes", "latency_seconds", "latency_cycles", "energy_joules",
                                        "size_reduction_vs_fip16", "size_reduction_vs_fp32", "speedup_vs_fip16")},
        "layers": [{"name": "conv1", "bits": 8, "width": 0.875, "weights": 126, "size_bytes": 126.0,
                    "cycles": 3456.0},
                   {"name": "conv2", "bits": 3, "width": 1.25, "weights": 5040, "size_bytes": 1890.0,
                    "cycles": 61440.0},
                   {"name": "fc", "bits": 4, "width": 1.0, "weights": 800, "size_bytes": 400.0, "cycles": 800.0}],
        "export": "model.npz",
    }


def uniform_baseline():
    records = []
    for index, bits in enumerate((8, 4, 2)):
        record = trial_record(100 + index, [bits] * 3, [1.0] * 3)
        records.append({**record, "phase": "uniform", "test_accuracy": record["validation_accuracy"] - 0.01})
    return records


def write_folder(folder, *, status="finished", trials=None, baseline=True, hessian=True, best=True):
    os.makedirs(folder, exist_ok=True)
    trials = make_trials(30) if trials is None else trials
    store.atomic_write_json(os.path.join(folder, "search.json"), search_meta(status))
    log = store.TrialLog(os.path.join(folder, "trials.jsonl"))
    log.extend(trials)
    if baseline:
        store.TrialLog(os.path.join(folder, "baseline.jsonl")).extend(uniform_baseline())
    if hessian:
        store.atomic_write_json(os.path.join(folder, "hessian.json"), HESSIAN)
    if best:
        store.atomic_write_json(os.path.join(folder, "best_config.json"), best_config_of(report.best_trial(trials)))
    return trials


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished search folder with every optional file, and its derived files written once."""
    folder = str(tmp_path_factory.mktemp("finished"))
    trials = write_folder(folder)
    return folder, trials, report.write(folder)


# -- reading a folder ---------------------------------------------------------------------------------------------


def test_load_run_reads_every_file_of_a_finished_search(finished):
    folder, trials, _ = finished
    run = report.load_run(folder)
    assert run.status == "finished" and run.planned_trials == 30
    assert run.trials == store.read_jsonl(os.path.join(folder, "trials.jsonl")) and len(run.trials) == 30
    assert [r["phase"] for r in run.baseline] == ["uniform"] * 3
    assert run.hessian["bit_sets"] == HESSIAN["bit_sets"]
    assert run.best_config["trial"] == report.best_trial(trials)["trial"]
    assert run.layer_names == ["conv1", "conv2", "fc"]


def test_load_run_reads_a_running_search_with_an_interrupted_last_line(tmp_path):
    trials = write_folder(tmp_path, status="running", trials=make_trials(12), best=False, baseline=False,
                          hessian=False)
    with open(tmp_path / "trials.jsonl", "ab") as handle:
        handle.write(b'{"trial": 12, "phase": "model", "conf')  # a kill in the middle of an append
    run = report.load_run(tmp_path)
    assert run.status == "running" and run.best_config is None and run.hessian is None and run.baseline == []
    assert [r["trial"] for r in run.trials] == list(range(12))
    assert run.trials == store.to_json_value(trials)


@pytest.mark.parametrize(
    "content, problem",
    [(None, "no search.json"), ("{not json", "search.json is not valid JSON"), ('[1, 2]', 'no "format"'),
     ('{"format": "something-else/1"}', 'no "format"')],
)
def test_a_folder_without_a_readable_search_json_is_refused_in_one_line(tmp_path, content, problem):
    if content is not None:
        (tmp_path / "search.json").write_text(content)
    with pytest.raises(ValueError) as error:
        report.write(tmp_path)
    message = str(error.value)
    assert message == f"{str(tmp_path)!r} is not an mpqjax search folder ({problem})" or (
        problem == 'no "format"' and message.startswith(f"{str(tmp_path)!r} is not an mpqjax search folder (search"))
    assert "\n" not in message
    assert sorted(os.listdir(tmp_path)) == ([] if content is None else ["search.json"])  # nothing written


def test_a_newer_format_and_a_missing_folder_are_refused(tmp_path):
    (tmp_path / "search.json").write_text('{"format": "mpqjax-search/2"}')
    with pytest.raises(ValueError, match="format 'mpqjax-search/2'; this mpqjax reads 'mpqjax-search/1'"):
        report.load_run(tmp_path)
    with pytest.raises(ValueError, match="is not a folder"):
        report.load_run(tmp_path / "absent")


def test_a_corrupt_best_config_is_named_in_the_error(tmp_path):
    write_folder(tmp_path, best=False)
    (tmp_path / "best_config.json").write_text("{")
    with pytest.raises(ValueError, match="best_config.json' is not valid JSON"):
        report.load_run(tmp_path)


# -- Pareto front -------------------------------------------------------------------------------------------------


def brute_force_front(accuracy, cost):
    """Reference: O(n^2) domination check; of identical points only the first counts; sorted by cost."""
    valid = [i for i in range(len(accuracy)) if accuracy[i] is not None and cost[i] is not None
             and math.isfinite(accuracy[i]) and math.isfinite(cost[i])]
    front = []
    for i in valid:
        dominated = any(accuracy[j] >= accuracy[i] and cost[j] <= cost[i]
                        and (accuracy[j] > accuracy[i] or cost[j] < cost[i]) for j in valid)
        duplicate = any(j < i and accuracy[j] == accuracy[i] and cost[j] == cost[i] for j in valid)
        if not dominated and not duplicate:
            front.append(i)
    return sorted(front, key=lambda i: (cost[i], i))


# Few distinct values, so ties in accuracy, in cost and in both are common.
values = st.one_of(st.none(), st.just(math.nan), st.just(math.inf), st.sampled_from([0.0, 0.25, 0.5, 1.0]),
                   st.floats(0, 1))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(values, values), max_size=25))
def test_pareto_front_matches_brute_force(points):
    accuracy, cost = [p[0] for p in points], [p[1] for p in points]
    front = report.pareto_front(accuracy, cost)
    assert front.dtype.kind == "i"
    assert front.tolist() == brute_force_front(accuracy, cost)
    # Along the front cost rises and accuracy strictly rises.
    assert all(cost[a] < cost[b] and accuracy[a] < accuracy[b] for a, b in zip(front[:-1], front[1:], strict=True))


def test_pareto_front_examples():
    assert report.pareto_front([0.9, 0.8, 0.95, None], [2.0, 3.0, 5.0, 1.0]).tolist() == [0, 2]
    assert report.pareto_front([0.9, 0.9, 0.9], [1.0, 1.0, 2.0]).tolist() == [0]  # identical: the first one
    assert report.pareto_front([0.5, 0.9], [1.0, 1.0]).tolist() == [1]  # same cost: the more accurate
    assert report.pareto_front([None, math.nan], [1.0, 2.0]).tolist() == []
    assert report.pareto_front([], []).tolist() == []
    with pytest.raises(ValueError, match="same length"):
        report.pareto_front([0.5, 0.6], [1.0])


def test_best_trial_is_the_ok_feasible_trial_of_highest_objective():
    trials = make_trials(30)
    candidates = [t for t in trials if t["status"] == "ok" and t["feasible"]]
    top = max(t["objective"] for t in candidates)
    assert report.best_trial(trials) is next(t for t in candidates if t["objective"] == top)  # earliest on ties
    assert report.best_trial([t for t in trials if t["status"] == "failed"]) is None
    assert report.best_trial([]) is None


# -- CSV ----------------------------------------------------------------------------------------------------------


def test_trials_csv_round_trips_every_number(finished):
    folder, trials, _ = finished
    with open(os.path.join(folder, "trials.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(trials)
    # The record's fields in order, then one column per configuration dimension.
    assert list(rows[0]) == [key for key in trials[0] if key != "config"] + list(trials[0]["config"])
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


# -- plots --------------------------------------------------------------------------------------------------------


def read_png(path):
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 1000
    image = plt.imread(path)[..., :3]
    assert image.ndim == 3 and min(image.shape[:2]) > 200
    return image


def colour_pixels(image, rgb, tolerance=0.04):
    return int(np.sum(np.all(np.abs(image - np.array(rgb)) < tolerance, axis=-1)))


def test_pareto_plot_is_a_drawn_png_with_the_best_highlighted(finished):
    folder, _, written = finished
    image = read_png(os.path.join(folder, "pareto.png"))
    assert np.mean(np.any(image < 0.9, axis=-1)) > 0.02  # not blank
    assert colour_pixels(image, (1.0, 0.843, 0.0)) > 20  # the gold star of the best configuration
    assert colour_pixels(image, (1.0, 0.498, 0.055)) > 20  # the orange Pareto front (tab:orange)


def test_hessian_plot_matches_the_cli_input_and_is_drawn(finished, tmp_path):
    folder, _, _ = finished
    image = read_png(os.path.join(folder, "hessian.png"))
    assert np.mean(np.any(image < 0.9, axis=-1)) > 0.02
    assert colour_pixels(image, (0.65, 0.65, 0.65), 0.01) > 50  # the layer fixed by hand, in grey
    # A trace the estimator could not compute (None) still plots.
    broken = {**HESSIAN, "layers": [{**HESSIAN["layers"][0], "trace": None, "trace_per_weight": None},
                                    *HESSIAN["layers"][1:]]}
    report.plot_hessian(tmp_path / "h.png", broken)
    read_png(tmp_path / "h.png")


def test_plots_of_a_search_with_only_failed_trials_or_none_yet(tmp_path):
    only_failed = [trial_record(t, [4, 4, 4], [1.0] * 3, failed=True) for t in range(3)]
    for folder, trials in ((tmp_path / "failed", only_failed), (tmp_path / "empty", [])):
        write_folder(folder, status="running", trials=trials, best=False, baseline=False, hessian=False)
        written = report.write(folder)
        assert [os.path.basename(p) for p in written] == ["trials.csv", "pareto.png", "report.md"]
        read_png(folder / "pareto.png")
        text = (folder / "report.md").read_text()
        assert "No successful feasible trial yet." in text and "## Pareto front" not in text


# -- markdown -----------------------------------------------------------------------------------------------------


def test_report_of_a_finished_search(finished):
    folder, trials, written = finished
    assert written == [os.path.join(folder, name) for name in ("trials.csv", "pareto.png", "hessian.png",
                                                               "report.md")]
    assert not [name for name in os.listdir(folder) if name.startswith(".tmp-")]
    text = open(os.path.join(folder, "report.md")).read()
    assert text == report.markdown(report.load_run(folder))
    best = report.best_trial(trials)
    lines = text.splitlines()
    # Header.
    assert lines[0] == "# mpqjax search: digits_cnn on digits"
    assert "| status | finished |" in lines
    assert "| target | fpga (fpga: 16x16 systolic array, 200 MHz) |" in lines
    assert "| limits | size <= 3 kB, latency <= 1.2 ms |" in lines
    infeasible = sum(1 for t in trials if t["status"] == "ok" and not t["feasible"])
    assert 0 < infeasible < 28
    assert f"| trials | 30 of 30 planned (8 random, 22 model): 28 ok, 2 failed, {infeasible} infeasible |" in lines
    assert "| float model | validation accuracy 98.61 %, test accuracy 97.78 % (trained 20 epochs) |" in lines
    # Time split, with shares of the total.
    assert "| evaluations | 70.00 | 70.0 % |" in lines and "| optimiser | 0.50 | 0.5 % |" in lines
    assert "| **total** | **100.00** | 100 % |" in lines
    # Best configuration, from best_config.json.
    assert "## Best configuration" in lines and "search running" not in text
    assert f"| trial | {best['trial']} ({best['phase']} phase) |" in lines
    assert "| test accuracy (final training) | 96.94 % (float model 97.78 %, -0.84 points) |" in lines
    assert f"| validation accuracy (short fine-tune) | {100 * best['validation_accuracy']:.2f} % |" in lines
    assert any(line.startswith(f"| size | {report.format_size(best['size_bytes'])}: "
                               f"{best['size_reduction_vs_fip16']:.2f}x smaller than FiP16, "
                               f"{best['size_reduction_vs_fp32']:.2f}x smaller than FP32") for line in lines)
    assert any(f"{best['speedup_vs_fip16']:.2f}x faster than FiP16" in line for line in lines)
    # The per-layer table of best_config.json, with totals.
    assert "| # | layer | bits | width | weights | size | cycles |" in lines
    assert "| 0 | conv1 | 8 | 0.875 | 126 | 126 B | 3,456 |" in lines
    assert "| 1 | conv2 | 3 | 1.25 | 5,040 | 1.89 kB | 61,440 |" in lines
    assert "| 2 | fc | 4 | 1 | 800 | 400 B | 800 |" in lines
    assert "|  | **total** |  |  | 5,966 | 2.416 kB | 65,696 |" in lines
    # The Pareto front tables: exactly the front's trials, cheapest first.
    ok = [t for t in trials if t["status"] == "ok"]
    for key, title in (("size_bytes", "size"), ("latency_seconds", "latency")):
        front = brute_force_front([t["validation_accuracy"] for t in ok], [t[key] for t in ok])
        start = lines.index(f"## Pareto front: validation accuracy vs {title}") + 4
        rows = lines[start:start + len(front) + 1]
        assert [int(row.split("|")[1]) for row in rows[:-1]] == [ok[i]["trial"] for i in front]
        assert rows[-1] == ""
        first = ok[front[0]]
        assert rows[0] == (f"| {first['trial']} | {first['phase']} | {100 * first['validation_accuracy']:.2f} % | "
                           f"{report.format_size(first['size_bytes'])} | "
                           f"{report.format_seconds(first['latency_seconds'])} | "
                           f"{'yes' if first['feasible'] else 'no'} | {' '.join(map(str, first['bits']))} | "
                           f"{' '.join(f'{w:g}' for w in first['widths'])} |")
    # The uniform baseline beside the search's best trial of at most its size.
    baseline = sorted(uniform_baseline(), key=lambda r: r["size_bytes"])
    start = lines.index("## Uniform precision against the search") + 6
    for line, uniform in zip(lines[start:start + 3], baseline, strict=True):
        rivals = [t for t in ok if t["size_bytes"] <= uniform["size_bytes"]]
        rival = max(rivals, key=lambda t: (t["validation_accuracy"], -t["trial"]))
        bits = uniform["bits"][0]
        assert line.startswith(f"| {bits}b | {100 * uniform['validation_accuracy']:.2f} % | "
                               f"{100 * uniform['test_accuracy']:.2f} % | {report.format_size(uniform['size_bytes'])}")
        assert f"| {rival['trial']} | {100 * rival['validation_accuracy']:.2f} % |" in line
    # Links to the plots and the CSV.
    for name in ("pareto.png", "hessian.png", "trials.csv"):
        assert f"]({name})" in text


def test_report_of_a_running_search_shows_the_best_trial_so_far(tmp_path):
    trials = write_folder(tmp_path, status="running", trials=make_trials(14), best=False, baseline=False)
    with open(tmp_path / "trials.jsonl", "ab") as handle:
        handle.write(b'{"trial": 14, ')
    written = report.write(tmp_path)
    assert "best_config.json" not in os.listdir(tmp_path)
    text = (tmp_path / "report.md").read_text()
    lines = text.splitlines()
    best = report.best_trial(trials)
    assert "**Search running**: this report shows the trials finished so far." in lines
    assert "## Best configuration so far" in lines and "## Time split (so far)" in lines
    assert "(search running: best trial so far, before final training)" in lines
    assert f"| trial | {best['trial']} ({best['phase']} phase) |" in lines
    assert "test accuracy (final training)" not in text
    for index, layer in enumerate(LAYERS):
        assert (f"| {index} | {layer['name']} | {layer['kind']} | {best['bits'][index]} | "
                f"{best['widths'][index]:g} | {layer['weights']:,} |") in lines
    assert "| trials | 14 of 30 planned (8 random, 6 model): 12 ok, 2 failed" in text
    assert "hessian.png" in [os.path.basename(p) for p in written]
    with open(tmp_path / "trials.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 14


def test_formatting_of_sizes_and_durations():
    assert report.format_size(2104) == "2.104 kB" and report.format_size(12.0) == "12 B"
    assert report.format_size(3.5e6) == "3.5 MB" and report.format_size(None) == "–"
    assert report.format_seconds(1.25e-5) == "12.5 µs" and report.format_seconds(0.002) == "2 ms"
    assert report.format_seconds(3.0) == "3 s" and report.format_seconds(float("nan")) == "–"


def test_report_needs_no_jax():
    """Reports run on finished folders, on machines without an accelerator: the module imports no JAX or Flax."""
    tree = ast.parse(open(report.__file__).read())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.split(".")[0] in ("jax", "flax", "optax", "chex")}
    assert {name for name in imported if name.startswith("mpqjax")} == {"mpqjax"}  # only `from mpqjax import store`

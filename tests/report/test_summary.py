"""Specification of mpqjax.report.summary: the markdown report of a finished or running search."""

import json

from mpqjax import report


def test_report_of_a_finished_search(finished, run_folders):
    folder, trials, _ = finished
    text = report.markdown(report.load_run(folder))
    best = report.best_trial(trials, resolution=run_folders.RESOLUTION)
    lines = text.splitlines()
    # Header.
    assert lines[0] == "# mpqjax search: digits_cnn on digits"
    assert "| status | finished |" in lines
    assert "| target | fpga (fpga: 16x16 systolic array, 200 MHz) |" in lines
    assert "| limits | size <= 3 kB, latency <= 1.2 ms |" in lines
    infeasible = sum(1 for t in trials if t["status"] == "ok" and not t["feasible"])
    assert 0 < infeasible < 28
    assert f"| trials | 30 of 30 planned (8 random, 22 model): 28 ok, 2 failed, {infeasible} infeasible |" in lines
    assert "| search space | 10^4.10 configurations, 10^2.90 after pruning |" in lines
    assert "| float model | validation accuracy 98.61 %, test accuracy 97.78 % (trained 20 epochs) |" in lines
    assert "| reference sizes | FiP16 10.78 kB, FP32 21.57 kB |" in lines
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
    assert "| exported model | [model.npz](model.npz) |" in lines
    # The per-layer table of best_config.json, with totals.
    assert "| # | layer | bits | width | weights | size | cycles |" in lines
    assert "| 0 | conv1 | 8 | 0.875 | 126 | 126 B | 3,456 |" in lines
    assert "| 1 | conv2 | 3 | 1.25 | 5,040 | 1.89 kB | 61,440 |" in lines
    assert "| 2 | fc | 4 | 1 | 800 | 400 B | 800 |" in lines
    assert "|  | **total** |  |  | 5,966 | 2.416 kB | 65,696 |" in lines
    # The Pareto front tables: exactly the front's trials (mpqjax.report.pareto), cheapest first.
    ok = [t for t in trials if t["status"] == "ok"]
    for key, title in (("size_bytes", "size"), ("latency_seconds", "latency")):
        front = report.pareto_front([t["validation_accuracy"] for t in ok], [t[key] for t in ok]).tolist()
        assert len(front) >= 2 and [ok[i][key] for i in front] == sorted(ok[i][key] for i in front)
        start = lines.index(f"## Pareto front: validation accuracy vs {title}") + 4
        rows = lines[start:start + len(front) + 1]
        assert [int(row.split("|")[1].split()[0]) for row in rows[:-1]] == [ok[i]["trial"] for i in front]
        assert rows[-1] == ""
        first = ok[front[0]]
        assert rows[0] == (f"| {first['trial']} | {first['phase']} | {100 * first['validation_accuracy']:.2f} % | "
                           f"{report.format_size(first['size_bytes'])} | "
                           f"{report.format_seconds(first['latency_seconds'])} | "
                           f"{'yes' if first['feasible'] else 'no'} | {' '.join(map(str, first['bits']))} | "
                           f"{' '.join(f'{w:g}' for w in first['widths'])} |")
    # The uniform baseline beside the search's best trial of at most its size.
    baseline = sorted(run_folders.uniform_baseline(), key=lambda r: r["size_bytes"])
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


def test_report_of_a_running_search_shows_the_best_trial_so_far(run_folders, tmp_path):
    trials = run_folders.write(tmp_path, status="running", trials=run_folders.make_trials(14), best=False,
                               baseline=False)
    with open(tmp_path / "trials.jsonl", "ab") as handle:
        handle.write(b'{"trial": 14, ')
    text = report.markdown(report.load_run(tmp_path))
    lines = text.splitlines()
    best = report.best_trial(trials)
    assert "**Search running**: this report shows the trials finished so far." in lines
    assert "## Best configuration so far" in lines and "## Time split (so far)" in lines
    assert "(search running: best trial so far, before final training)" in lines
    assert f"| trial | {best['trial']} ({best['phase']} phase) |" in lines
    assert "test accuracy (final training)" not in text
    for index, layer in enumerate(run_folders.LAYERS):
        assert (f"| {index} | {layer['name']} | {layer['kind']} | {best['bits'][index]} | "
                f"{best['widths'][index]:g} | {layer['weights']:,} |") in lines
    assert "| trials | 14 of 30 planned (8 random, 6 model): 12 ok, 2 failed" in text
    assert "## Uniform precision against the search" not in text and "](hessian.png)" in text


def test_report_without_successful_trials(run_folders, tmp_path):
    only_failed = [run_folders.trial_record(t, [4, 4, 4], [1.0] * 3, failed=True) for t in range(3)]
    run_folders.write(tmp_path, status="running", trials=only_failed, best=False, baseline=False, hessian=False)
    text = report.markdown(report.load_run(tmp_path))
    assert "No successful feasible trial yet." in text and "## Pareto front" not in text
    assert "| trials | 3 of 30 planned (3 random): 0 ok, 3 failed, 0 infeasible |" in text.splitlines()
    assert "hessian.png" not in text


def test_header_and_time_split_of_other_targets_limits_and_phases(run_folders, tmp_path):
    run_folders.write(tmp_path, trials=run_folders.make_trials(5))
    search = json.loads((tmp_path / "search.json").read_text())
    search["target"] = {"kind": "generic", "name": "cpu", "bops_per_cycle": 512.0}
    search["limits"] = {"size_bytes": None, "energy_joules": 2e-6, "throughput_per_second": 100}
    search["timings"] = {"hessian": 5.0, "extra_step": 3.0, "float_model": 20.0, "total": 40.0}
    search["space"] = {"log10_size_before": 4.1, "pruned": False}
    (tmp_path / "search.json").write_text(json.dumps(search))
    best_config = json.loads((tmp_path / "best_config.json").read_text())
    (tmp_path / "best_config.json").write_text(json.dumps({**best_config, "layers": []}))
    lines = report.markdown(report.load_run(tmp_path)).splitlines()
    assert "| target | cpu (generic: 512 bit-ops/cycle) |" in lines
    assert "| limits | energy <= 2 µJ, throughput >= 100 /s |" in lines
    assert "| search space | 10^4.10 configurations (not pruned) |" in lines
    # Pipeline order first, then any other phase; the unaccounted rest as "other".
    start = lines.index("## Time split") + 4
    assert lines[start:start + 5] == ["| float model | 20.00 | 50.0 % |", "| hessian | 5.00 | 12.5 % |",
                                      "| extra step | 3.00 | 7.5 % |", "| other | 12.00 | 30.0 % |",
                                      "| **total** | **40.00** | 100 % |"]
    assert "(best_config.json lists no layers: the configuration only)" in lines

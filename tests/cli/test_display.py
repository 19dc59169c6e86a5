"""Specification of mpqjax.cli.display: the search's progress bar (in place on a terminal, sparse in a log, phases
counting their seconds), the line of an interrupted search and the summaries the commands print."""

import io
import json
import time
import types

from mpqjax.cli import display

BEST = {"trial": 3, "objective": 0.95, "validation_accuracy": 0.96, "size_bytes": 12_300.0, "latency_seconds": 2e-6}


def _trial(done, total=4, best=BEST, eta=30.0):
    return {"event": "trial", "trial": done - 1, "done": done, "trials": total, "best": best, "elapsed": 12.0,
            "eta": eta}


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_the_folder_a_line_per_phase_the_first_and_the_last_trial():
    stream = io.StringIO()
    with display.ProgressBar(stream, width=4) as bar:
        bar({"event": "start", "message": "search of 4 trials, output folder runs/x"})
        bar({"event": "phase", "message": "training the float digits_cnn"})
        for done in range(1, 5):
            bar(_trial(done, best=None if done == 1 else BEST, eta=None if done == 1 else 30.0))
    lines = stream.getvalue().splitlines()
    assert lines[:2] == ["search of 4 trials, output folder runs/x", "training the float digits_cnn ..."]
    assert lines[2] == "trial 0: 1/4 done [#...] best: -; elapsed 12s, time left: estimating"
    assert lines[3].startswith("trial 3: 4/4 done [####] best: trial 3, 0.9500 (acc 0.9600, 12.3 kB, 2 µs); "
                               "elapsed 12s, ~30s left") and len(lines) == 4


def test_a_terminal_gets_one_line_rewritten_in_place():
    stream = _Terminal()
    bar = display.ProgressBar(stream, width=4)
    bar(_trial(1))
    bar(_trial(2))
    assert stream.getvalue().count("\r\x1b[2K") == 2 and "\n" not in stream.getvalue()
    bar(_trial(4))
    assert stream.getvalue().endswith("\n")


def test_a_running_phase_counts_its_seconds_until_the_next_event_or_the_end():
    stream = _Terminal()
    with display.ProgressBar(stream, tick=0.01) as bar:
        bar({"event": "phase", "message": "estimating per-layer Hessian traces"})
        time.sleep(0.2)
        assert stream.getvalue().count("\r\x1b[2Kestimating per-layer Hessian traces ... 0s") >= 3  # rewritten
        bar({"event": "phase", "message": "training the best configuration"})
    lines = stream.getvalue().split("\n")
    assert lines[0].endswith("estimating per-layer Hessian traces ... 0s") and len(lines) == 3  # each ended, once
    assert lines[1].endswith("training the best configuration ... 0s") and lines[2] == ""
    quiet = io.StringIO()
    with display.ProgressBar(quiet, enabled=False) as bar:
        bar({"event": "phase", "message": "training the float digits_cnn"})
    assert quiet.getvalue() == ""


def test_an_interrupted_search_says_after_which_trial_and_how_to_resume(tmp_path):
    assert display.interrupted(None) == "interrupted before the search started; nothing was written"
    assert display.interrupted(tmp_path / "nowhere") == "interrupted before the search started; nothing was written"
    (tmp_path / "search.json").write_text("{}")
    resume = f"resume with: mpqjax search --out {tmp_path} --resume"
    assert display.interrupted(tmp_path) == f"interrupted before the first trial; {resume}"
    (tmp_path / "trials.jsonl").write_text("".join(json.dumps({"trial": t}) + "\n" for t in range(3)))
    assert display.interrupted(tmp_path) == f"interrupted after trial 2; {resume}"
    spaced = tmp_path / "my run"
    spaced.mkdir()
    (spaced / "search.json").write_text("{}")
    assert display.interrupted(spaced).endswith(f"mpqjax search --out '{spaced}' --resume")  # a command to paste


def test_the_summary_of_a_search(tmp_path):
    best = dict(BEST, final_validation_accuracy=0.97, test_accuracy=0.955, float_test_accuracy=0.96,
                size_reduction_vs_fip16=6.5, size_reduction_vs_fp32=13.0, speedup_vs_fip16=3.0,
                layers=[{"name": "conv1", "bits": 8, "width": 1.0, "weights": 288, "size_bytes": 300.0,
                         "cycles": 1234.0}])
    for name in ("best_config.json", "model.npz", "report.md", "search.json", "trials.jsonl", "hessian.png"):
        (tmp_path / name).write_text("")
    result = types.SimpleNamespace(best=best, trials=[{}] * 6, out_dir=str(tmp_path),
                                   timings={"float_model": 1.0, "evaluations": 3.0, "io": 0.0, "total": 4.0})
    stream = io.StringIO()
    display.print_summary(result, stream)
    text = stream.getvalue()
    assert text.startswith("best configuration: trial 3 of 6\n")
    assert "conv1" in text and "1,234" in text
    assert "test 0.9550 (float model 0.9600)" in text and "6.50x smaller than FiP16" in text
    assert "time 4.0s: float_model 1.0s (25.0%), evaluations 3.0s (75.0%)\n" in text
    assert text.endswith(f"results in {tmp_path}: best_config.json, model.npz, report.md, hessian.png, trials.jsonl, "
                         "search.json\n")  # every file written, the ones to open first first


def test_the_hessian_table():
    summary = {"hessian": {"probes": 8, "converged": False, "examples": 64, "batches": 1},
               "layers": [{"name": "conv1", "weights": 288, "trace": 1.5, "trace_per_weight": 0.0052,
                           "std_error": None, "cluster": -1, "candidate_bits": [8]},
                          {"name": "head", "weights": 640, "trace": 0.25, "trace_per_weight": 0.00039,
                           "std_error": 0.01, "cluster": 1, "candidate_bits": [4, 3, 2]}],
               "log10_size_before": 5.0, "log10_size_after": 2.25}
    stream = io.StringIO()
    display.print_hessian(summary, stream)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "8 probes (probe budget reached) on 64 training examples in 1 batches"
    assert "fixed  {8}" in lines[2] and lines[3].endswith("1  {4, 3, 2}")
    assert lines[-1] == "search space: 10^5.00 configurations before pruning, 10^2.25 after"

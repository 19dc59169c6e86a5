"""Search folders for the report tests, built by hand following the run folder's contract with the store's writers.

`run_folders` makes trial records with a made-up but consistent cost and accuracy and writes folders of finished
or running searches; `finished` is one finished folder with every optional file and its derived files written. A
finished folder records the selection's resolution as a search does (`EXAMPLES` validation examples) and its
best_config.json is `best_trial` at that resolution.
"""

import math
import os
import types

import numpy as np
import pytest

from mpqjax.store import files, run_folder, selection

LAYERS = [{"name": "conv1", "kind": "conv", "weights": 144, "macs": 9216},
          {"name": "conv2", "kind": "conv", "weights": 4608, "macs": 73728},
          {"name": "fc", "kind": "dense", "weights": 640, "macs": 640}]
BITS, WIDTHS = (2, 3, 4, 6, 8), (0.75, 1.0, 1.25)
SIZE_LIMIT, LATENCY_LIMIT = 3000.0, 1.2e-3
CLOCK = 200e6
FAILED = (4, 11)  # trial numbers whose training diverged
EXAMPLES = 100  # validation examples: the selection's resolution is 0.01
RESOLUTION = 1 / EXAMPLES

HESSIAN = {"model": "digits_cnn", "dataset": "digits", "bit_sets": [[8, 6], [4, 3], [3, 2]],
           "centroids": [1.0, 0.1, 0.01], "log10_size_before": 4.1, "log10_size_after": 2.9,
           "layers": [{"name": "conv1", "weights": 144, "trace": 12.0, "std_error": 0.5, "trace_per_weight": 0.083,
                       "cluster": -1, "candidate_bits": [8]},
                      {"name": "conv2", "weights": 4608, "trace": 30.0, "std_error": None,
                       "trace_per_weight": 0.0065, "cluster": 1, "candidate_bits": [4, 3]},
                      {"name": "fc", "weights": 640, "trace": 2.0, "std_error": 0.1, "trace_per_weight": 0.0031,
                       "cluster": 2, "candidate_bits": [3, 2]}]}


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
    """``count`` trials of random configurations; those numbered in `FAILED` failed."""
    rng = np.random.default_rng(seed)
    return [trial_record(t, rng.choice(BITS, 3).tolist(), rng.choice(WIDTHS, 3).tolist(), failed=t in FAILED)
            for t in range(count)]


def search_meta(status, planned=30):
    return {
        "format": run_folder.FORMAT, "status": status, "model": "digits_cnn", "dataset": "digits", "seed": 0,
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


def best_config_of(record, trials=None):
    """``best_config.json`` of a search whose best trial is ``record`` (final training and per-layer costs); with
    ``trials``, the selection a search records (rule, resolution, explanation)."""
    chosen = {} if trials is None else {"selection": {**selection.selection_settings(EXAMPLES),
                                                      "explanation": selection.explain_choice(
                                                          trials, resolution=RESOLUTION)}}
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
        **chosen,
    }


def uniform_baseline():
    """The uniform-precision baseline at 8, 4 and 2 bits (widths 1)."""
    records = []
    for index, bits in enumerate((8, 4, 2)):
        record = trial_record(100 + index, [bits] * 3, [1.0] * 3)
        records.append({**record, "phase": "uniform", "test_accuracy": record["validation_accuracy"] - 0.01})
    return records


def write_folder(folder, *, status="finished", trials=None, baseline=True, hessian=True, best=True, recorded=True):
    """Write a search folder (30 trials unless given; the optional files on request); returns its trials.

    ``recorded=False`` writes a best_config.json of an earlier mpqjax: no selection recorded, the trial of highest
    objective (the earliest on ties)."""
    os.makedirs(folder, exist_ok=True)
    trials = make_trials(30) if trials is None else trials
    files.atomic_write_json(os.path.join(folder, run_folder.FILES["search"]), search_meta(status))
    files.TrialLog(os.path.join(folder, run_folder.FILES["trials"])).extend(trials)
    if baseline:
        files.TrialLog(os.path.join(folder, run_folder.FILES["baseline"])).extend(uniform_baseline())
    if hessian:
        files.atomic_write_json(os.path.join(folder, run_folder.FILES["hessian"]), HESSIAN)
    if best and recorded:
        files.atomic_write_json(os.path.join(folder, run_folder.FILES["best"]),
                                best_config_of(selection.best_trial(trials, resolution=RESOLUTION), trials))
    elif best:
        ok = [t for t in trials if t["status"] == "ok" and t["feasible"]]
        earlier_rule = max(ok, key=lambda t: (t["objective"], -t["trial"]))
        files.atomic_write_json(os.path.join(folder, run_folder.FILES["best"]), best_config_of(earlier_rule))
    return trials


@pytest.fixture(scope="session")
def run_folders():
    """The folder builders and their constants: ``run_folders.write(folder, status=..., trials=...)``, ..."""
    return types.SimpleNamespace(
        LAYERS=LAYERS, HESSIAN=HESSIAN, EXAMPLES=EXAMPLES, RESOLUTION=RESOLUTION, trial_record=trial_record,
        make_trials=make_trials, best_config_of=best_config_of, uniform_baseline=uniform_baseline, write=write_folder)


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """A finished search folder with every optional file, its trials and the derived files written once."""
    from mpqjax import report

    folder = str(tmp_path_factory.mktemp("finished"))
    trials = write_folder(folder)
    return folder, trials, report.write(folder)

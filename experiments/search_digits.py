"""The main job on the embedded default: `mpqjax search` on digits with digits_cnn, plus the uniform-precision
baseline, and the time split of the search.

Prints one JSON object and writes it to experiments/results/search_digits.json:

* ``best``: the configuration found (size reduction against FiP16, test accuracy after the final training, the float
  model's test accuracy, the difference in points);
* ``uniform_baseline``: every layer at 8, 6, 4, 3 and 2 bits (widths 1), same fine-tune and final training;
* ``front``: the search's Pareto front of validation accuracy against size;
* ``timings``: seconds per phase and the optimiser's share, for a cold run (empty float-model and compilation
  caches) and a warm one (both caches filled by the cold run);
* ``optimiser_steps``: the optimiser's per-trial time (ask + tell) without its one-off compilation;
* ``trial_time_in_training_steps``: the share of the trials' time spent in training steps (the rest: weight
  transfer, calibration, validation), cold and warm.

Usage:
    python experiments/search_digits.py            # the default search (60 trials, 90 final epochs), twice
    python experiments/search_digits.py --quick    # 12 trials, 5 final epochs: checks the script in a minute
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from mpqjax import report, search
from mpqjax.optim import tpe


def optimiser_step_seconds(out_dir: str, config: search.SearchConfig) -> float:
    """Median seconds of one ask + tell on the search's own space and history (after compilation)."""
    from mpqjax import cost as cost_model
    from mpqjax import sensitivity
    from mpqjax.nn import models
    from mpqjax.search import objective
    from mpqjax.store import run_folder

    run = run_folder.load_run(out_dir)
    meta = run.search
    table = models.layer_table(config.model, input_shape=(8, 8, 1))
    candidates = [next(d["choices"] for d in meta["space"]["dimensions"] if d["name"] == f"bits/{name}")
                  for name in table.names]
    layer_space = sensitivity.layer_space(table, candidates, widths=config.widths)
    target = cost_model.load_target(config.target)
    limits = objective.make_limits(**{k: v for k, v in meta["limits"].items() if v is not None})

    def feasible(values):
        bits, widths = layer_space.values_to_arrays(values)
        return objective.is_feasible(cost_model.cost(table, bits, widths, target), limits)

    opt = tpe.KMeansTPE(layer_space.space, maximize=True, n_initial=config.n_initial, capacity=config.trials,
                        feasible=feasible)
    state = opt.init()
    records = run.trials
    seconds = []
    for index, record in enumerate(records):
        start = time.perf_counter()
        x, _ = opt.ask(jax.random.key(index), state, n=1)
        x = np.asarray(x)
        state = opt.tell(state, layer_space.space.encode(record["config"])[None],
                         jnp.asarray([record["objective"]], jnp.float32))
        jax.block_until_ready(state)
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds[1:]))  # the first call compiles


def summarise(result: search.SearchResult, total_wall: float) -> dict:
    timings = result.timings
    total = timings["total"]
    return {"wall_seconds": total_wall, "phases": timings,
            "shares_percent": {k: 100 * v / total for k, v in timings.items() if k != "total"}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "search_digits.json"))
    args = parser.parse_args()
    settings = dict(trials=12, n_initial=6, final_epochs=5) if args.quick else {}
    config = search.SearchConfig(**settings, baseline=True)
    work = tempfile.mkdtemp(prefix="mpqjax-search-digits-")
    os.environ["MPQJAX_CACHE_DIR"] = os.path.join(work, "cache")  # cold: no float model, no compiled programs
    search.enable_compilation_cache()
    runs = {}
    for name in ("cold", "warm"):
        start = time.perf_counter()
        runs[name] = search.run(config, os.path.join(work, name))
        runs[name + "_wall"] = time.perf_counter() - start
    result = runs["cold"]
    best = result.best
    same = [{k: v for k, v in r.items() if k not in search.TIME_FIELDS} for r in runs["warm"].trials] == \
        [{k: v for k, v in r.items() if k not in search.TIME_FIELDS} for r in result.trials]
    trials = [t for t in result.trials if t["status"] == "ok"]
    front = [trials[i] for i in report.pareto_front([t["validation_accuracy"] for t in trials],
                                                     [t["size_bytes"] for t in trials])]
    figures = {
        "settings": config.to_dict(),
        "best": {"trial": best["trial"], "bits": [r["bits"] for r in best["layers"]],
                 "widths": [r["width"] for r in best["layers"]],
                 "size_bytes": best["size_bytes"], "size_reduction_vs_fip16": best["size_reduction_vs_fip16"],
                 "speedup_vs_fip16": best["speedup_vs_fip16"], "validation_accuracy": best["validation_accuracy"],
                 "test_accuracy": best["test_accuracy"], "float_test_accuracy": best["float_test_accuracy"],
                 "test_points_vs_float": 100 * (best["test_accuracy"] - best["float_test_accuracy"])},
        "uniform_baseline": [{"bits": r["uniform_bits"], "size_reduction_vs_fip16": r["size_reduction_vs_fip16"],
                              "validation_accuracy": r["validation_accuracy"], "test_accuracy": r["test_accuracy"]}
                             for r in result.baseline],
        "front": [{"trial": t["trial"], "size_reduction_vs_fip16": t["size_reduction_vs_fip16"],
                   "validation_accuracy": t["validation_accuracy"], "bits": t["bits"], "widths": t["widths"]}
                  for t in front],
        "timings": {"cold": summarise(runs["cold"], runs["cold_wall"]),
                    "warm": summarise(runs["warm"], runs["warm_wall"])},
        "trial_time_in_training_steps": {run: runs[run].search_cost["training_share"] for run in ("cold", "warm")},
        "warm_run_repeats_cold_run_trial_for_trial": same,
        "optimiser_step_median_ms": 1e3 * optimiser_step_seconds(os.path.join(work, "cold"), config),
        "device": jax.devices()[0].device_kind,
    }
    text = json.dumps(figures, indent=2)
    print(text)
    if not args.quick:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
        for name in ("pareto.png", "report.md"):
            shutil.copy(os.path.join(work, "cold", name), os.path.join(os.path.dirname(args.out),
                                                                        f"search_digits_{name}"))


if __name__ == "__main__":
    main()

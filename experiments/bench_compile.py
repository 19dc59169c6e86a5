"""Compilation and ask cost of k-means TPE: cold and warm compiles, a new space of a known bucket, ask time.

Printed as JSON (and written to ``experiments/results/bench_compile.json``):

- ``cold_compile_s``: a fresh process with an empty persistent cache, the first model-based proposal
  (`mpqjax.integrations.proposals.propose`) on each of three spaces of different buckets (2 continuous
  dimensions; 5 mixed ones; 40 ordinal ones), median of the processes;
- ``warm_process_s``: the same in a second fresh process that finds the programs in the persistent cache;
- ``new_space_of_known_bucket_s``: in one process, the first proposal on a new space whose bucket is compiled;
- ``ask_cpu_ms``: process CPU time of one `KMeansTPE.ask` (40 ordinal dimensions, capacity 1024) with 100, 300
  and 1000 trials of history, median of 50, against optuna's ``TPESampler`` ``study.ask`` on the same space and
  history (median of 5).

Run: ``python experiments/bench_compile.py`` (about 3 minutes on a 2-core CPU) or ``--quick`` (one process each,
no optuna).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

_FIRST_PROPOSALS = r"""
import json, sys, time
import jax, numpy as np
from mpqjax.integrations.proposals import propose
from mpqjax.optim.space import SearchSpace, categorical, integer, ordinal, real

spaces = {
    "continuous2": SearchSpace([real("x", -5.0, 5.0), real("y", 0.0, 1.0)]),
    "mixed5": SearchSpace([real("lr", 1e-4, 1.0, log=True), integer("depth", 1, 10), categorical("act", "abc"),
                           ordinal("bits", (2, 4, 8)), integer("units", 1, 1000, log=True)]),
    "ordinal40": SearchSpace([ordinal(f"b{i}", (2, 3, 4, 6, 8)) for i in range(40)]),
}
seconds = {}
for name, space in spaces.items():
    x = np.asarray(space.sample(jax.random.key(0), 30))
    y = np.random.default_rng(0).normal(size=30)
    start = time.perf_counter()
    propose(jax.random.key(1), space, x, y)
    seconds[name] = time.perf_counter() - start
print(json.dumps(seconds))
"""

_KNOWN_BUCKET = r"""
import json, time
import jax, numpy as np
from mpqjax.integrations.proposals import propose
from mpqjax.optim.space import SearchSpace, real

x = np.random.default_rng(0).uniform(size=(30, 2))
propose(jax.random.key(0), SearchSpace([real("a", 0.0, 1.0), real("b", 0.0, 1.0)]), x, x[:, 0])
other = SearchSpace([real("lr", 1e-4, 1.0, log=True), real("momentum", 0.5, 0.99)])
start = time.perf_counter()
propose(jax.random.key(1), other, np.stack([np.log(1e-4 + x[:, 0]), 0.5 + 0.49 * x[:, 1]], 1), x[:, 1])
print(json.dumps(time.perf_counter() - start))
"""


def _run(script: str, cache: str) -> object:
    env = {**os.environ, "MPQJAX_CACHE_DIR": cache, "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("MPQJAX_NO_COMPILATION_CACHE", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compile_times(processes: int) -> dict:
    cold, warm = [], []
    for _ in range(processes):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(_run(_FIRST_PROPOSALS, cache))
            warm.append(_run(_FIRST_PROPOSALS, cache))
    with tempfile.TemporaryDirectory() as cache:
        known = [_run(_KNOWN_BUCKET, cache) for _ in range(processes)]

    def medians(runs):
        return {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    return {"cold_compile_s": medians(cold), "warm_process_s": medians(warm),
            "new_space_of_known_bucket_s": statistics.median(known)}


def ask_times(with_optuna: bool) -> dict:
    import jax
    import numpy as np

    from mpqjax.optim.space import SearchSpace, ordinal
    from mpqjax.optim.tpe import KMeansTPE

    space = SearchSpace([ordinal(f"b{i}", (2, 3, 4, 6, 8)) for i in range(40)])
    opt = KMeansTPE(space, capacity=1024)
    rng = np.random.default_rng(0)
    history = np.asarray(space.sample(jax.random.key(0), 1000))
    values = rng.normal(size=1000).astype(np.float32)
    result = {}
    for told in (100, 300, 1000):
        state = opt.tell(opt.init(), history[:told], values[:told])
        opt.ask(jax.random.key(0), state)[0].block_until_ready()  # compiled
        times = []
        for repeat in range(50):
            start = time.process_time()
            opt.ask(jax.random.key(repeat), state)[0].block_until_ready()
            times.append((time.process_time() - start) * 1e3)
        result[f"kmeans_tpe_{told}"] = statistics.median(times)
        if with_optuna:
            result[f"optuna_tpe_{told}"] = _optuna_ask_ms(space, history[:told], values[:told])
            result[f"ratio_optuna_over_kmeans_{told}"] = result[f"optuna_tpe_{told}"] / result[f"kmeans_tpe_{told}"]
    return result


def _optuna_ask_ms(space, history, values) -> float:
    import optuna
    from optuna.distributions import IntDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {d.name: IntDistribution(0, len(d.choices) - 1) for d in space.dimensions}
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    names = [d.name for d in space.dimensions]
    study.add_trials([optuna.trial.create_trial(params={name: int(v) for name, v in zip(names, row, strict=True)},
                                                distributions=distributions, value=float(value))
                      for row, value in zip(history, values, strict=True)])
    times = []
    for _ in range(5):
        start = time.process_time()
        trial = study.ask(distributions)
        times.append((time.process_time() - start) * 1e3)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one process each, no optuna")
    parser.add_argument("--out", default=os.path.join(RESULTS, "bench_compile.json"))
    args = parser.parse_args(argv)
    result = {**compile_times(1 if args.quick else 3), "ask_cpu_ms": ask_times(not args.quick),
              "machine": f"{os.cpu_count()} CPUs"}
    from mpqjax import store

    store.atomic_write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

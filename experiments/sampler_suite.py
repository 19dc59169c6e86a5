"""optuna's own sampler test-suite run against `KMeansTPESampler` and optuna's `TPESampler`, timed.

The suite is ``optuna.testing.pytest_samplers``' ``BasicSamplerTestCase`` and ``RelativeSamplerTestCase`` (the
cases optuna runs on every single-objective sampler; optuna's ``TPESampler`` with ``multivariate=True,
n_startup_trials=0``: the relative cases ask for relative samples from the first trial, which its defaults do not
give, so they fail 42 of the 110 tests): each sampler runs it in a fresh pytest process, first with an
empty persistent compilation cache (``cold``), then again with the cache the first run left (``warm``; optuna's
sampler compiles nothing, so its two runs are repeats).

Printed as JSON (and written to ``experiments/results/sampler_suite.json``): per sampler and run, the wall seconds,
the tests passed and failed.

Run: ``python experiments/sampler_suite.py`` (a few minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

SUITE = '''
import pytest
from optuna.testing.pytest_samplers import BasicSamplerTestCase, RelativeSamplerTestCase

from {module} import {sampler}


class TestSampler(BasicSamplerTestCase, RelativeSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return lambda: {sampler}({arguments})
'''

SAMPLERS = {
    "kmeans_tpe": ("mpqjax.integrations.optuna", "KMeansTPESampler", ""),
    # relative sampling from the first trial, as the relative cases need (the defaults fail 42 of the 110 tests)
    "optuna_tpe": ("optuna.samplers", "TPESampler", "multivariate=True, n_startup_trials=0"),
}


def run_suite(name: str, cache: str) -> dict:
    """One pytest run of the suite for sampler ``name`` with ``cache`` as mpqjax's cache folder."""
    module, sampler, arguments = SAMPLERS[name]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"test_{name}.py")
        with open(path, "w") as file:
            file.write(SUITE.format(module=module, sampler=sampler, arguments=arguments))
        env = {**os.environ, "MPQJAX_CACHE_DIR": cache, "JAX_PLATFORMS": "cpu"}
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        env.pop("MPQJAX_NO_COMPILATION_CACHE", None)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore", path],
                              env=env, capture_output=True, text=True, cwd=folder)
        seconds = time.perf_counter() - start
    counts = {kind: int(number) for number, kind in re.findall(r"(\d+) (passed|failed|error)", done.stdout)}
    return {"seconds": seconds, "passed": counts.get("passed", 0), "failed": counts.get("failed", 0),
            "errors": counts.get("error", 0), "tail": done.stdout.strip().splitlines()[-1:]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(RESULTS, "sampler_suite.json"))
    args = parser.parse_args(argv)
    result = {}
    for name in SAMPLERS:
        with tempfile.TemporaryDirectory() as cache:
            result[name] = {"cold": run_suite(name, cache), "warm": run_suite(name, cache)}
    result["ratio_cold_kmeans_over_optuna"] = result["kmeans_tpe"]["cold"]["seconds"] / result["optuna_tpe"]["cold"][
        "seconds"]
    from mpqjax import store

    store.atomic_write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""hyperopt's own benchmark domains: k-means TPE (`mpqjax.integrations.hyperopt.suggest`) against ``tpe.suggest``.

The eight domains of hyperopt's optimiser test (``hyperopt.tests.unit.test_tpe.TestOpt``, built from
``hyperopt.tests.unit.test_domains``), at that test's evaluation budgets and loss thresholds: a run *solves* a
domain when its best loss is below the threshold. hyperopt's ``tpe.suggest`` runs with its defaults (the test
tunes gamma, the prior weight and the candidate count per domain; the defaults are what a user gets), k-means TPE
with its own; random search (``rand.suggest``) for scale. Seeds 0, 1, 2 (``fmin``'s ``rstate``).

Printed as JSON (and written to ``experiments/results/hyperopt_domains.json``): per domain and algorithm, the best
loss of each seed, the domains solved by every seed, and the algorithm's refusal message if it refuses the space.

Run: ``python experiments/hyperopt_domains.py`` (about 10 minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def domains() -> dict:
    """``name -> (domain, budget, threshold)`` as hyperopt's TestOpt has them."""
    from hyperopt.tests.unit import test_domains
    from hyperopt.tests.unit.test_tpe import TestOpt

    return {name: (getattr(test_domains, name)(), TestOpt.LEN.get(name, 50), TestOpt.thresholds[name])
            for name in TestOpt.thresholds}


def best_losses(domain, budget: int, algo, seeds) -> list[float]:
    from hyperopt import Trials, fmin
    from hyperopt.tests.unit.test_tpe import passthrough

    losses = []
    for seed in seeds:
        trials = Trials()
        fmin(passthrough, space=domain.expr, algo=algo, trials=trials, max_evals=budget,
             rstate=np.random.default_rng(seed), show_progressbar=False, catch_eval_exceptions=False)
        losses.append(float(min(trials.losses())))
    return losses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(RESULTS, "hyperopt_domains.json"))
    args = parser.parse_args(argv)
    logging.getLogger("hyperopt").setLevel(logging.ERROR)
    from hyperopt import rand, tpe

    from mpqjax.integrations.hyperopt import suggest

    algorithms = {"kmeans_tpe": suggest, "hyperopt_tpe": tpe.suggest, "random": rand.suggest}
    seeds = list(range(args.seeds))
    result = {"seeds": seeds, "domains": {}}
    solved = dict.fromkeys(algorithms, 0)
    for name, (domain, budget, threshold) in domains().items():
        entry = {"budget": budget, "threshold": threshold}
        for algorithm, algo in algorithms.items():
            try:
                losses = best_losses(domain, budget, algo, seeds)
            except ValueError as error:
                entry[algorithm] = {"refused": str(error)}
                continue
            every = all(loss < threshold for loss in losses)
            solved[algorithm] += every
            entry[algorithm] = {"best_losses": losses, "median": statistics.median(losses), "solved": every}
        result["domains"][name] = entry
        print(name, {a: entry[a].get("median", "refused") for a in algorithms}, flush=True)
    result["solved_by_every_seed"] = {a: f"{count}/{len(result['domains'])}" for a, count in solved.items()}
    from mpqjax import store

    store.atomic_write_json(args.out, result)
    print(json.dumps(result["solved_by_every_seed"]))


if __name__ == "__main__":
    main()

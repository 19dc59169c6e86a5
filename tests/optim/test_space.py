"""Specification of `mpqjax.optim.space`: named dimensions, encoding, sampling, validation."""

import math

import jax
import numpy as np
import pytest

from mpqjax.optim.space import (
    CONTINUOUS,
    GRID,
    LOG_INT,
    TABLE,
    SearchSpace,
    active,
    categorical,
    conditional,
    integer,
    optional,
    ordinal,
    real,
)


@pytest.fixture(scope="module")
def mixed_space():
    return SearchSpace([
        ordinal("bits", (8, 2, 3, 4, 6)),
        ordinal("width", (0.75, 0.875, 1.0, 1.125, 1.25)),
        categorical("act", ("relu", "gelu", None)),
        integer("layers", 1, 8),
        integer("trees", 10, 1000, log=True),
        integer("batch", 16, 4096, step=16),
        real("lr", 1e-4, 1e-1, log=True),
        real("dropout", 0.0, 0.5),
        real("momentum", 0.8, 0.99, step=0.01),
    ])


def test_models_of_dimensions(mixed_space):
    assert mixed_space.spec().model.tolist() == [TABLE, TABLE, TABLE, TABLE, LOG_INT, GRID, CONTINUOUS, CONTINUOUS,
                                                 TABLE]


def test_ordinal_choices_are_sorted(mixed_space):
    assert mixed_space["bits"].choices == (2, 3, 4, 6, 8)
    assert mixed_space.encode(dict(_example(), bits=8))[0] == 4.0


def _example():
    return {"bits": 4, "width": 1.125, "act": None, "layers": 3, "trees": 137, "batch": 256, "lr": 0.003,
            "dropout": 0.25, "momentum": 0.9}


def test_decode_inverts_encode(mixed_space):
    config = _example()
    decoded = mixed_space.decode(mixed_space.encode(config))
    for name, value in config.items():
        if isinstance(value, float):
            assert decoded[name] == pytest.approx(value, rel=1e-6)
        else:
            assert decoded[name] == value and type(decoded[name]) is type(value)


def test_random_samples_decode_to_valid_configs_and_back(mixed_space):
    encoded = np.asarray(mixed_space.sample(jax.random.key(0), 200))
    assert encoded.shape == (200, len(mixed_space))
    for row, config in zip(encoded, mixed_space.decode_batch(encoded), strict=True):
        mixed_space.validate(config)
        np.testing.assert_allclose(mixed_space.encode(config), row, rtol=1e-5, atol=1e-5)


def test_samples_cover_every_choice(mixed_space):
    configs = mixed_space.decode_batch(mixed_space.sample(jax.random.key(1), 300))
    assert {c["bits"] for c in configs} == {2, 3, 4, 6, 8}
    assert {c["act"] for c in configs} == {"relu", "gelu", None}
    assert {c["layers"] for c in configs} == set(range(1, 9))


def test_values_give_numeric_values_of_configs(mixed_space):
    encoded = mixed_space.sample(jax.random.key(2), 50)
    values = np.asarray(mixed_space.values(encoded))
    for row, config in zip(values, mixed_space.decode_batch(encoded), strict=True):
        assert row[0] == config["bits"] and row[1] == config["width"]
        assert row[2] == ("relu", "gelu", None).index(config["act"])
        np.testing.assert_allclose(row[3:], [config[n] for n in ("layers", "trees", "batch", "lr", "dropout",
                                                                  "momentum")], rtol=1e-5)


def test_sampling_is_deterministic(mixed_space):
    np.testing.assert_array_equal(mixed_space.sample(jax.random.key(3), 5), mixed_space.sample(jax.random.key(3), 5))


def test_log10_size():
    space = SearchSpace([ordinal("a", (1, 2, 3, 4, 5)), integer("b", 0, 9), categorical("c", "xy")])
    assert space.log10_size() == pytest.approx(math.log10(5 * 10 * 2))
    assert SearchSpace([real("x", 0, 1)]).log10_size() == math.inf


@pytest.mark.parametrize("build, message", [
    (lambda: SearchSpace([]), "at least one dimension"),
    (lambda: SearchSpace([ordinal("a", (1, 2)), categorical("a", "xy")]), "duplicate dimension names: \\['a'\\]"),
    (lambda: ordinal("bits", ("low", "high")), "ordinal choices must be finite numbers"),
    (lambda: ordinal("bits", ()), "at least one choice"),
    (lambda: ordinal("bits", (2, 2)), "distinct"),
    (lambda: integer("n", 5, 1), "low 5 is above high 1"),
    (lambda: integer("n", 0, 10, log=True), "needs low > 0"),
    (lambda: integer("n", 1.5, 10), "must be integers"),
    (lambda: real("x", 0.1, 1, step=0.1, log=True), "cannot be combined with log"),
    (lambda: SearchSpace(["bits"]), "expected Dimension objects"),
])
def test_bad_spaces_raise_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("change, message", [
    ({"bits": 5}, "'bits': 5 is not among the choices"),
    ({"layers": 9}, "outside"),
    ({"layers": 2.5}, "expected an integer"),
    ({"batch": 20}, "not on the grid"),
    ({"lr": float("nan")}, "finite number"),
    ({"act": "tanh"}, "not among the choices"),
    ({"nope": 1}, "unknown dimension names: \\['nope'\\]"),
])
def test_invalid_configs_raise_clear_errors(mixed_space, change, message):
    with pytest.raises(ValueError, match=message):
        mixed_space.validate({**_example(), **change})


def test_missing_dimension_is_named(mixed_space):
    config = _example()
    del config["lr"]
    with pytest.raises(ValueError, match="missing dimensions: \\['lr'\\]"):
        mixed_space.encode(config)


# -- tree-structured spaces ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree_space():
    """A choice of model, each with its own parameters (one nested a level deeper), a shared one, an optional one."""
    return SearchSpace([
        categorical("model", ("svm", "forest", "knn")),
        conditional(real("C", 1e-3, 1e3, log=True), "model", ["svm"]),
        conditional(integer("depth", 1, 20), "model", ["forest"]),
        conditional(categorical("criterion", ("gini", "entropy")), "model", ["forest"]),
        conditional(real("leaf", 0.0, 0.5), "criterion", ["entropy"]),
        real("shared", 0.0, 1.0),
        optional(integer("seed", 0, 9)),
    ])


def test_a_configuration_names_exactly_its_active_dimensions(tree_space):
    assert tree_space.conditional and tree_space.depth() == 2
    config = {"model": "forest", "depth": 7, "criterion": "entropy", "leaf": 0.125, "shared": 0.5}  # exact in f32
    assert tree_space.active(config) == ["model", "depth", "criterion", "leaf", "shared"]
    x = tree_space.encode(config)
    assert np.isnan(x[[1, 6]]).all() and not np.isnan(x[[0, 2, 3, 4, 5]]).any()
    assert tree_space.decode(x) == config
    with_seed = {"model": "knn", "shared": 0.25, "seed": 3}
    assert tree_space.decode(tree_space.encode(with_seed)) == with_seed
    assert tree_space.active({"model": "forest", "criterion": "gini"})[:3] == ["model", "depth", "criterion"]


@pytest.mark.parametrize("change, message", [
    ({"C": 1.0}, "sets inactive dimensions .*\\['C'\\]"),
    ({"leaf": None}, "missing dimensions: \\['leaf'\\]"),
    ({"criterion": "gini", "leaf": 0.2}, "sets inactive dimensions .*\\['leaf'\\]"),
    ({"model": "tree"}, "'model': 'tree' is not among the choices"),
])
def test_conditions_are_validated_with_clear_errors(tree_space, change, message):
    config = {"model": "forest", "depth": 7, "criterion": "entropy", "leaf": 0.1, "shared": 0.5, **change}
    config = {name: value for name, value in config.items() if value is not None}
    with pytest.raises(ValueError, match=message):
        tree_space.validate(config)


def test_random_samples_of_a_tree_are_valid_and_cover_every_branch(tree_space):
    samples = tree_space.decode_batch(tree_space.sample(jax.random.key(0), 200))
    for config in samples:
        tree_space.validate(config)
    assert {config["model"] for config in samples} == {"svm", "forest", "knn"}
    assert any("leaf" in config for config in samples) and all("seed" in config for config in samples)
    encoded = np.asarray(tree_space.sample(jax.random.key(0), 200))
    np.testing.assert_array_equal(np.asarray(active(tree_space.spec(), encoded)), ~np.isnan(encoded))


@pytest.mark.parametrize("build, message", [
    (lambda: SearchSpace([conditional(real("x", 0, 1), "model", ["a"])]), "parent 'model' must be an earlier"),
    (lambda: SearchSpace([real("y", 0, 1), conditional(real("x", 0, 1), "y", [0.5])]),
     "parent 'y' must be ordinal or categorical"),
    (lambda: SearchSpace([categorical("m", "ab"), conditional(real("x", 0, 1), "m", ["c"])]),
     "'m': 'c' is not among the choices"),
    (lambda: conditional(real("x", 0, 1), "m", []), "at least one of its choices"),
])
def test_bad_conditions_raise_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_weighted_categorical_choices_are_drawn_by_their_weights():
    space = SearchSpace([categorical("k", ("a", "b", "c"), weights=(1, 8, 1)), ordinal("bits", (2, 4))])
    assert space["k"].weights == pytest.approx((0.1, 0.8, 0.1))
    drawn = np.asarray(space.sample(jax.random.key(0), 4000))[:, 0]
    np.testing.assert_allclose(np.bincount(drawn.astype(int), minlength=3) / 4000, [0.1, 0.8, 0.1], atol=0.02)
    with pytest.raises(ValueError, match="weights must be 3 non-negative numbers"):
        categorical("k", "abc", weights=(1, -1, 1))

"""Specification of `mpqjax.sensitivity.leaves`: which parameter leaves make up each layer whose trace is estimated."""

import jax.numpy as jnp
import pytest

from mpqjax.sensitivity.leaves import group_leaves, leaf_layers, leaf_paths

# a two-layer dense net as Flax names it: kernels and biases
PARAMS = {
    "Dense_0": {"kernel": jnp.ones((64, 8)), "bias": jnp.zeros(8)},
    "Dense_1": {"kernel": jnp.ones((8, 10)), "bias": jnp.zeros(10)},
}
NESTED = {"stage1": {"block0": {"conv1": {"kernel": jnp.ones((3, 3, 1, 2)), "bn": {"scale": jnp.ones(2)}}}}}


def test_leaf_paths_join_the_keys_in_flattening_order():
    assert leaf_paths(PARAMS) == ["Dense_0/bias", "Dense_0/kernel", "Dense_1/bias", "Dense_1/kernel"]
    assert leaf_paths({"blocks": [{"w": jnp.ones(1)}, {"w": jnp.ones(1)}]}) == ["blocks/0/w", "blocks/1/w"]


def test_default_layers_are_kernels_grouped_by_module():
    assert group_leaves(PARAMS) == {"Dense_0": ("Dense_0/kernel",), "Dense_1": ("Dense_1/kernel",)}
    with_bias = group_leaves(PARAMS, leaf_names=("kernel", "bias"))
    assert with_bias["Dense_0"] == ("Dense_0/bias", "Dense_0/kernel")
    assert group_leaves(NESTED) == {"stage1/block0/conv1": ("stage1/block0/conv1/kernel",)}
    assert group_leaves(NESTED, ["stage1/block0"], leaf_names=None) == {
        "stage1/block0": ("stage1/block0/conv1/bn/scale", "stage1/block0/conv1/kernel")
    }
    assert group_leaves({"kernel": jnp.ones(2)}) == {"kernel": ("kernel",)}  # a top-level leaf is its own layer


def test_leaf_layers_index_every_leaf_by_its_layer():
    assert leaf_layers(PARAMS, None) == (("Dense_0", "Dense_1"), [-1, 0, -1, 1])
    assert leaf_layers(PARAMS, ["Dense_1"]) == (("Dense_1",), [-1, -1, -1, 0])
    mapping = {"all": ["Dense_0/kernel", "Dense_0/bias"], "empty": []}
    assert leaf_layers(PARAMS, mapping) == (("all", "empty"), [0, 0, -1, -1])


@pytest.mark.parametrize("layers, message", [
    ({"Dense_0": ["Dense_0/weights"]}, "no parameter leaf at path 'Dense_0/weights'"),
    ({"a": ["Dense_0/kernel"], "b": ["Dense_0/kernel"]}, "belongs to more than one layer"),
    ({"a": "Dense_0/kernel"}, "give a sequence of leaf paths, not one string"),
    (["Conv_0"], "layer 'Conv_0' matches no parameter leaf"),
    ({}, "no layers to estimate"),
])
def test_bad_layers_are_refused_with_a_clear_message(layers, message):
    with pytest.raises(ValueError, match=message):
        leaf_layers(PARAMS, layers)


def test_bad_prefixes_and_unmatched_leaf_names_are_refused():
    with pytest.raises(ValueError, match="not one string"):
        group_leaves(PARAMS, "Dense_0")
    with pytest.raises(ValueError, match="no parameter leaf is named any of"):
        group_leaves({"w": jnp.ones(2)})
